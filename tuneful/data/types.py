"""The conversation types of tuneful, and their validation.

Every loader converts its format into these types; every later stage (templates, masks, SFT, DPO,
eval) reads only these. Messages follow the OpenAI / transformers chat format: an assistant message
may carry ``tool_calls`` (parallel calls = several) and ``reasoning_content`` (its thinking trace); a
``tool`` message carries a call's result. A conversation may carry ``tools`` (JSON-schema function
definitions, as ``apply_chat_template(tools=...)`` takes them) and ``chat_template_kwargs`` (passed
to the template, e.g. ``{"enable_thinking": false}``).

Validation errors name the record (``file:line`` or dataset row) and the rule that failed, so a bad
line can be found and fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

ROLES = ("system", "user", "assistant", "tool")
IGNORE_INDEX = -100  # the label of a token no loss is computed on (torch cross-entropy's ignore_index)


class RecordError(ValueError):
    """A record that breaks a rule. ``rule`` is a short machine-readable reason used in skip reports."""

    def __init__(self, rule: str, detail: str, where: str = ""):
        self.rule = rule
        self.detail = detail
        self.where = where
        super().__init__(f"{where + ': ' if where else ''}{rule}: {detail}")

    def __reduce__(self) -> tuple:  # rebuilt from its fields when it crosses to another process
        return RecordError, (self.rule, self.detail, self.where)

    def at(self, where: str) -> "RecordError":
        """The same error, located at ``where`` (e.g. ``data.jsonl:12``)."""
        return RecordError(self.rule, self.detail, where)


@dataclass(frozen=True)
class ToolCall:
    """One function call made by the assistant. ``arguments`` is a JSON object (templates print it with tojson)."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        out["type"] = "function"
        out["function"] = {"name": self.name, "arguments": self.arguments}
        return out


@dataclass(frozen=True)
class Message:
    """One turn.

    ``content`` is plain text ("" on an assistant message that only makes tool calls: OpenAI's
    ``content: null`` is read as ""). ``tool_calls`` and ``reasoning_content`` belong to assistant
    messages, ``tool_call_id`` and ``name`` to tool messages. ``weight`` (assistant messages only, as in
    OpenAI's fine-tuning format): 0 = the turn is context, never trained (e.g. a mistaken call the next turn
    recovers from); 1 or None = trained as the training settings say.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning_content: str | None = None
    tool_call_id: str | None = None
    name: str | None = None
    weight: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI / transformers message dict the chat template reads (optional keys only when set;
        no ``weight``: it decides what is trained, never what is rendered)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        for key in ("reasoning_content", "tool_call_id", "name"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        """The message as a data file holds it: :meth:`to_dict` and its ``weight`` where set."""
        out = self.to_dict()
        if self.weight is not None:
            out["weight"] = self.weight
        return out

    @property
    def trained(self) -> bool:
        """An assistant turn that is not marked ``weight: 0``."""
        return self.role == "assistant" and self.weight != 0

    @property
    def is_plain_text(self) -> bool:
        """Only text content: no calls, no reasoning, no tool fields, no weight."""
        return self.to_json().keys() == {"role", "content"}


@dataclass(frozen=True)
class TemplateInputs:
    """What a conversation passes to the chat template besides its messages."""

    tools: tuple[dict[str, Any], ...] | None = None
    chat_template_kwargs: dict[str, Any] | None = field(default=None, compare=False)

    def render_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`tuneful.templates.render.render`."""
        return {"tools": list(self.tools) if self.tools else None,
                "template_kwargs": dict(self.chat_template_kwargs or {})}

    def json_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tools:
            out["tools"] = list(self.tools)
        if self.chat_template_kwargs:
            out["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        return out


NO_TEMPLATE_INPUTS = TemplateInputs()


@dataclass(frozen=True)
class Conversation:
    """An ordered list of messages, what the template needs besides them, and metadata (never rendered)."""

    messages: tuple[Message, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    inputs: TemplateInputs = NO_TEMPLATE_INPUTS

    def to_dicts(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.messages]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_json() for m in self.messages], **self.inputs.json_fields()}
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Conversation":
        """The inverse of :meth:`to_json` for a conversation validated before it was written (not re-validated:
        this is how prepared data reads back its own rows; outside data goes through the loader)."""
        return cls(tuple(_message_from_json(m) for m in data["messages"]), dict(data.get("meta") or {}),
                   _inputs_from_json(data))


def _message_from_json(m: Mapping[str, Any] | str) -> Message:
    if isinstance(m, str):  # a preference reply written as plain text
        return Message("assistant", m)
    calls = tuple(ToolCall(c["function"]["name"], c["function"]["arguments"], c.get("id"))
                  for c in m.get("tool_calls") or ())
    return Message(m["role"], m["content"], calls, m.get("reasoning_content"), m.get("tool_call_id"), m.get("name"),
                   m.get("weight"))


def _inputs_from_json(data: Mapping[str, Any]) -> TemplateInputs:
    tools, kwargs = data.get("tools"), data.get("chat_template_kwargs")
    return TemplateInputs(tuple(tools) if tools else None, kwargs) if tools or kwargs else NO_TEMPLATE_INPUTS


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (ending with a user or tool turn) and two candidate final assistant messages.

    ``chosen`` / ``rejected`` are assistant messages: text, tool calls, reasoning, or several of them
    (a plain string is taken as the text of an assistant message).
    """

    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    inputs: TemplateInputs = NO_TEMPLATE_INPUTS

    def __post_init__(self) -> None:
        for name in ("chosen", "rejected"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Message("assistant", getattr(self, name)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PreferencePair":
        """The inverse of :meth:`to_json` for a pair validated before it was written (not re-validated)."""
        return cls(tuple(_message_from_json(m) for m in data["prompt"]), _message_from_json(data["chosen"]),
                   _message_from_json(data["rejected"]), dict(data.get("meta") or {}), _inputs_from_json(data))

    def to_json(self) -> dict[str, Any]:
        def reply(m: Message) -> Any:  # plain text stays a string, as most preference files write it
            return m.content if m.is_plain_text else m.to_json()

        out: dict[str, Any] = {
            "prompt": [m.to_json() for m in self.prompt],
            "chosen": reply(self.chosen),
            "rejected": reply(self.rejected),
            **self.inputs.json_fields(),
        }
        if self.meta:
            out["meta"] = self.meta
        return out


@dataclass(frozen=True)
class LabeledConversation:
    """Unpaired preference data (KTO): a conversation whose final assistant reply is desirable or not.

    Never an SFT conversation: an undesirable reply must not become a training target.
    """

    messages: tuple[Message, ...]
    label: bool
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    inputs: TemplateInputs = NO_TEMPLATE_INPUTS

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LabeledConversation":
        """The inverse of :meth:`to_json` for a record validated before it was written (not re-validated)."""
        return cls(tuple(_message_from_json(m) for m in data["messages"]), bool(data["label"]),
                   dict(data.get("meta") or {}), _inputs_from_json(data))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_json() for m in self.messages], "label": self.label,
                               **self.inputs.json_fields()}
        if self.meta:
            out["meta"] = self.meta
        return out


# --- building and checking -----------------------------------------------------------------------


def parse_arguments(value: Any, call_name: str) -> dict[str, Any]:
    """Call arguments as a JSON object; a JSON string is parsed (OpenAI sends them as strings)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise RecordError("bad_tool_arguments",
                              f"the arguments of call {call_name!r} are not valid JSON ({exc.msg}): {value[:80]!r}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError("bad_tool_arguments",
                          f"the arguments of call {call_name!r} are a {type(value).__name__}, not a JSON object")
    return value


def make_tool_call(raw: Any) -> ToolCall:
    """A call in OpenAI form ``{"id", "type", "function": {"name", "arguments"}}`` or flat ``{"name", "arguments"}``."""
    if not isinstance(raw, dict):
        raise RecordError("bad_tool_call", f"a tool call must be an object, got {type(raw).__name__}")
    function = raw.get("function", raw)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RecordError("bad_tool_call", f"a tool call needs a function name: {json.dumps(raw)[:120]}")
    call_id = raw.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise RecordError("bad_tool_call", f"call {function['name']!r} has a non-string id {call_id!r}")
    return ToolCall(function["name"], parse_arguments(function.get("arguments"), function["name"]), call_id)


def make_tools(raw: Any) -> tuple[dict[str, Any], ...] | None:
    """Function definitions as the templates take them: ``{"type": "function", "function": {...}}``.

    A JSON string is parsed, and a bare definition (``{"name", "description", "parameters"}``, as
    LLaMA-Factory and Glaive write them) is wrapped in the OpenAI form the templates expect.
    """
    if raw is None or raw == "" or raw == []:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordError("bad_tools", f"'tools' is a string that is not valid JSON ({exc.msg})") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecordError("bad_tools", f"'tools' must be a list of function definitions, got {type(raw).__name__}")
    tools = []
    for tool in raw:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            definition = tool
        elif isinstance(tool, dict) and "name" in tool:
            definition = {"type": "function", "function": tool}
        else:
            raise RecordError("bad_tools", f"a tool must be a function definition with a name: {json.dumps(tool)[:120]}")
        if not isinstance(definition["function"].get("name"), str):
            raise RecordError("bad_tools", f"a tool's function has no name: {json.dumps(tool)[:120]}")
        tools.append(definition)
    return tuple(tools) if tools else None


def tool_names(tools: tuple[dict[str, Any], ...] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or ()]


def make_message(role: Any, content: Any, **extra: Any) -> Message:
    """A message with its role and content checked (tool fields are checked with the conversation)."""
    if not isinstance(role, str) or role not in ROLES:
        raise RecordError("unknown_role", f"role {role!r} is not one of {', '.join(ROLES)}")
    calls = tuple(extra.pop("tool_calls", None) or ())
    if content is None and role == "assistant" and calls:
        content = ""  # OpenAI's null beside calls; templates differ on a missing key (Qwen3 fails), all accept ""
    if content is None:
        raise RecordError("content_not_string", f"{role} content is null (only an assistant message with tool calls may have none)")
    if content is not None and not isinstance(content, str):
        raise RecordError("content_not_string", f"{role} content is {type(content).__name__}, not a string")
    for key in ("reasoning_content", "tool_call_id", "name"):
        value = extra.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordError("bad_field", f"{role} message field {key!r} is {type(value).__name__}, not a string")
    if calls and role != "assistant":
        raise RecordError("tool_calls_not_assistant", f"a {role} message carries tool_calls; only assistant messages may")
    weight = extra.pop("weight", None)
    if weight is not None:
        if role != "assistant":
            raise RecordError("bad_weight", f"a {role} message has a 'weight'; only assistant messages carry one "
                                            "(0: the turn is context, not trained; 1: trained)")
        if weight not in (0, 1):
            raise RecordError("bad_weight", f"an assistant message's 'weight' must be 0 (not trained) or 1 (trained), "
                                            f"got {weight!r}")
        weight = int(weight)
    return Message(role, content, calls, weight=weight, **extra)


def _has_reply(m: Message) -> bool:
    return bool((m.content or "").strip()) or bool(m.tool_calls)


def validate_messages(
    messages: tuple[Message, ...] | list[Message],
    *,
    tools: tuple[dict[str, Any], ...] | None = None,
    require_assistant: bool = True,
    allow_empty_assistant: bool = False,
) -> None:
    """Check the rules every conversation must meet; raise :class:`RecordError` on the first break."""
    if not messages:
        raise RecordError("empty_conversation", "the conversation has no messages")
    known_tools = set(tool_names(tools))
    open_ids: set[str] = set()  # ids of the calls of the latest assistant turn with calls
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise RecordError("unknown_role", f"message {i} has role {m.role!r}")
        if m.content is not None and not isinstance(m.content, str):
            raise RecordError("content_not_string", f"message {i} content is not a string")
        if m.role == "system" and i != 0:
            raise RecordError("system_not_first", f"message {i} is a system message; only the first may be")
        if m.role == "assistant" and not _has_reply(m) and not allow_empty_assistant:
            raise RecordError(
                "empty_assistant",
                f"message {i} is an empty assistant turn (allow with allow_empty_assistant=True)",
            )
        if m.role == "assistant" and m.tool_calls:
            for call in m.tool_calls:
                if tools is not None and call.name not in known_tools:
                    raise RecordError("unknown_tool", f"message {i} calls {call.name!r}, which is not in the "
                                                      f"conversation's tools ({', '.join(sorted(known_tools))})")
            open_ids = {c.id for c in m.tool_calls if c.id}
        if m.role == "tool":
            previous = messages[i - 1] if i else None
            if previous is None or not (previous.role == "tool" or (previous.role == "assistant" and previous.tool_calls)):
                raise RecordError("tool_without_call", f"message {i} is a tool result that follows no assistant "
                                                       "message with tool calls")
            if m.tool_call_id and open_ids and m.tool_call_id not in open_ids:
                raise RecordError("unknown_tool_call_id", f"message {i} answers call id {m.tool_call_id!r}, which the "
                                                          f"preceding calls do not have ({', '.join(sorted(open_ids))})")
    if require_assistant and not any(m.role == "assistant" for m in messages):
        raise RecordError("no_assistant_turn", "an SFT conversation needs at least one assistant turn")


def make_conversation(
    messages: list[Message],
    meta: dict[str, Any] | None = None,
    *,
    inputs: TemplateInputs = NO_TEMPLATE_INPUTS,
    require_assistant: bool = True,
    allow_empty_assistant: bool = False,
) -> Conversation:
    validate_messages(messages, tools=inputs.tools, require_assistant=require_assistant,
                      allow_empty_assistant=allow_empty_assistant)
    return Conversation(tuple(messages), dict(meta or {}), inputs)


def make_preference(
    prompt: list[Message], chosen: Any, rejected: Any, meta: dict[str, Any] | None = None,
    *, inputs: TemplateInputs = NO_TEMPLATE_INPUTS,
) -> PreferencePair:
    """``chosen`` / ``rejected``: a reply text or an assistant :class:`Message`."""
    if not prompt:
        raise RecordError("empty_prompt", "the preference prompt has no messages")
    validate_messages(prompt, tools=inputs.tools, require_assistant=False, allow_empty_assistant=True)
    if prompt[-1].role not in ("user", "tool"):
        raise RecordError("prompt_not_ending_with_user", "a preference prompt must end with a user (or tool result) turn")
    replies = []
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(reply, str):
            reply = Message("assistant", reply)
        if not isinstance(reply, Message):
            raise RecordError("content_not_string", f"{name} is {type(reply).__name__}, not a string or message")
        if reply.role != "assistant":
            raise RecordError("bad_preference", f"{name} must be an assistant message, not {reply.role}")
        if not _has_reply(reply):
            raise RecordError("empty_response", f"{name} is empty")
        if reply.weight == 0:
            raise RecordError("bad_weight", f"{name} has weight 0, but the replies of a pair are what DPO trains on")
        validate_messages([*prompt, reply], tools=inputs.tools, require_assistant=False)
        replies.append(reply)
    if replies[0] == replies[1]:
        raise RecordError("chosen_equals_rejected", "chosen and rejected are identical")
    return PreferencePair(tuple(prompt), replies[0], replies[1], dict(meta or {}), inputs)


def make_labeled(messages: list[Message], label: Any, meta: dict[str, Any] | None = None,
                 *, inputs: TemplateInputs = NO_TEMPLATE_INPUTS) -> LabeledConversation:
    if not isinstance(label, bool):
        raise RecordError("bad_label", f"'label' must be true (desirable) or false (undesirable), got {label!r}")
    validate_messages(messages, tools=inputs.tools)
    if messages[-1].role != "assistant":
        raise RecordError("bad_label", "a labelled conversation must end with the assistant reply the label is about")
    if messages[-1].weight == 0:
        raise RecordError("bad_weight", "the reply the label is about has weight 0, but it is what KTO trains on")
    return LabeledConversation(tuple(messages), label, dict(meta or {}), inputs)
