"""The OpenAI chat-completions request, validated; and the response bodies the server sends.

Every rejection is an :class:`ApiError` carrying an HTTP status and an OpenAI-style error body, so
clients (the official ``openai`` package included) raise a typed exception with a readable message.
Parameters the server cannot honour are refused by name instead of being silently ignored; a tool's
``parameters`` must be an object's JSON schema, checked against its metaschema with ``jsonschema``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema

from ..data.messages import Conversion, openai_messages
from ..data.tool_parsers import tool_call_body
from ..data.types import RecordError, TemplateInputs, make_conversation, make_tools


ROLES = ("system", "user", "assistant", "tool")
# Accepted but with no effect on the answer (metadata in OpenAI's API).
_METADATA = {"user", "metadata", "store"}
_SUPPORTED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
              "stream_options", "n", "seed", "stop", "tools", "tool_choice", "parallel_tool_calls"} | _METADATA


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.retry_after = retry_after  # seconds, sent as Retry-After (a 503 the client may retry)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int | None
    temperature: float | None  # None: the model's own default (see ChatModel.default_temperature)
    top_p: float
    stream: bool
    include_usage: bool
    seed: int | None
    stop: list[str]
    tools: list[dict] | None = None  # offered to the model (None: none, or tool_choice="none")
    forced_calls: list[dict] | None = None  # tool_choice "required" / a named function: the reply must call one of these
    parallel_tool_calls: bool = True  # False: a forced reply is exactly one call


def _messages(value: Any, tools: Any) -> tuple[list[dict], list[dict] | None]:
    """Messages and tools through the data layer's own conversion and rules (the code that reads
    training data), so a request is understood exactly as a training conversation would be."""

    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    raw = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        role = "system" if message.get("role") == "developer" else message.get("role")  # OpenAI's newer name
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", param="messages")
        raw.append({**message, "role": role})
    try:
        offered = make_tools(tools) if tools is not None else None
        conversation = make_conversation(openai_messages(raw, Conversion()), inputs=TemplateInputs(offered),
                                         require_assistant=False, allow_empty_assistant=True)
    except RecordError as exc:
        param = "tools" if exc.rule == "bad_tools" else "messages"
        raise ApiError(400, f"{param}: {exc.rule}: {exc.detail}", param=param, code=exc.rule)
    if conversation.messages[-1].role not in ("user", "tool"):
        raise ApiError(400, "the last message must come from the user (or be a tool result)", param="messages")
    for k, tool in enumerate(offered or ()):
        problem = _schema_problem(tool["function"].get("parameters"))
        if problem:
            raise ApiError(400, f"tools[{k}] ({tool['function']['name']}): parameters {problem}", param="tools",
                           code="bad_tools")
    return conversation.to_dicts(), (list(offered) if offered else None)


def _schema_problem(schema: Any) -> str | None:
    """Why a function's ``parameters`` is not the JSON schema of an object of arguments (None: it is, or absent)."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        return f"must be a JSON schema object, got {type(schema).__name__}"
    if schema.get("type", "object") != "object":
        return f"must describe an object (type 'object'), got type {schema.get('type')!r}"
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
        return "'properties' must map each argument's name to its schema (an object)"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r in properties for r in required):
        return "'required' must list names of its 'properties'"
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)  # against its own metaschema ($schema, else draft 2020-12)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"is not a valid JSON schema{f' at {where}' if where else ''}: {exc.message}"
    return None


def _tool_choice(body: dict, tools: list[dict] | None) -> tuple[str, list[dict] | None]:
    """("auto" | "none" | "required", the tools a forced reply must call, or None)."""
    choice = body.get("tool_choice", "auto")
    if choice in ("auto", "none"):
        return choice, None
    if choice == "required" or isinstance(choice, dict):
        if not tools:
            raise ApiError(400, "tool_choice 'required' or a named function needs 'tools'", param="tool_choice")
        if choice == "required":
            return "required", tools
        function = choice.get("function") if choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise ApiError(400, "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": NAME}}",
                           param="tool_choice")
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise ApiError(400, f"tool_choice names {name!r}, which is not among the offered tools", param="tool_choice",
                           code="unknown_tool")
        return "required", named
    raise ApiError(400, f"tool_choice must be 'auto', 'none', 'required' or a named function, got {choice!r}",
                   param="tool_choice")


def _number(body: dict, name: str, default: float | None, low: float, high: float) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def _top_p(body: dict) -> float:
    value = _number(body, "top_p", 1.0, 0.0, 1.0)
    if not value:
        raise ApiError(400, "'top_p' must be in (0, 1]", param="top_p")
    return value


def _positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{name}' must be a positive integer, got {value!r}", param=name)
    return value


def parse_chat_request(body: Any, served_model: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - _SUPPORTED)
    if unknown:
        raise ApiError(400, f"unsupported parameter(s): {', '.join(unknown)}", param=unknown[0])
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, f"'model' is required (this server serves {served_model!r})", param="model")
    if body["model"] != served_model:
        raise ApiError(404, f"model {body.get('model')!r} is not served here; this server serves {served_model!r}",
                       param="model", code="model_not_found")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "only n=1 is supported", param="n")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop) and len(stop) <= 4):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    messages, tools = _messages(body.get("messages"), body.get("tools"))
    tool_choice, forced = _tool_choice(body, tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ApiError(400, "'parallel_tool_calls' must be true or false", param="parallel_tool_calls")
    if not parallel and tools and forced is None and tool_choice == "auto":
        raise ApiError(400, "parallel_tool_calls=false is honoured with tool_choice 'required' or a named function "
                            "(decoding is then constrained to one call); with 'auto' the model may call several tools",
                       param="parallel_tool_calls")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ApiError(400, "'seed' must be an integer in [0, 2^63)", param="seed")
    return ChatRequest(
        messages=messages,
        max_tokens=_positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens"),
        temperature=_number(body, "temperature", None, 0.0, 2.0),
        top_p=_top_p(body),
        stream=stream,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        seed=seed,
        stop=stop,
        tools=tools if tool_choice != "none" else None,  # "none": the model is not shown the tools
        forced_calls=forced,
        parallel_tool_calls=parallel,
    )


def request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion_body(rid: str, model: str, message: dict, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def reply_message(reply: Any) -> dict:
    """The assistant message of a parsed reply (tuneful.data.tool_parsers.ParsedReply)."""
    message: dict = {"role": "assistant", "content": reply.content if (reply.content or not reply.tool_calls) else None}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [tool_call_body(c) for c in reply.tool_calls]
    return message


def chunk_body(rid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class StopStrings:
    """Cuts streamed text at the first user-given stop string, holding back text that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            out, self.pending = self.pending[: min(found)], ""
            return out
        keep = max(len(s) - 1 for s in self.stops)
        cut = max(0, len(self.pending) - keep)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
