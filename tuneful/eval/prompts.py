"""Evaluation prompt sets: one JSONL line per prompt; which metrics apply is read from its fields.

A line holds ``prompt`` (a user message) or ``messages`` (a conversation ending with a user turn),
and optionally:

- ``instruction_id_list`` + ``kwargs`` (IFEval's shape): scored by the instruction checks;
- ``sandbox``: ``{"family", "check"}``: scored by the sandbox task verifier;
- ``reference``: a reference reply: scored by held-out loss (NLL per reference token);
- ``tools`` + ``expected_calls`` (``[{"name", "arguments"}]``; ``[]``: no call is expected): scored by
  tool-use accuracy; ``messages`` may then hold earlier calls and results (read by the data layer);
- ``id`` or ``key``: a name for the prompt in answers and reports.

``sandbox`` as the file name gives the sandbox's held-out prompt set (phrasings and families never
trained on), with verifier checks and reference replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.sources import read_jsonl

SANDBOX_SET = "sandbox"


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    messages: list[dict]
    ifeval: dict | None = None  # {"prompt", "instruction_id_list", "kwargs"}
    sandbox: dict | None = None  # {"family", "check", "set"}
    reference: str | None = None
    tools: list[dict] | None = None  # offered to the model (the template's ``tools``)
    expected_calls: list[dict] | None = None  # [{"name", "arguments"}]; [] = no call expected


class PromptFileError(ValueError):
    pass


def _parse(record: object, where: str, index: int) -> EvalPrompt:
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: expected a JSON object")
    if "expected_calls" in record:
        return _tool_prompt(record, where, index)
    if isinstance(record.get("messages"), list):
        messages = record["messages"]
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise PromptFileError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        if messages[-1].get("role") != "user":
            raise PromptFileError(f"{where}: the last message must be the user's (the model answers it)")
    elif isinstance(record.get("prompt"), str):
        messages = [{"role": "user", "content": record["prompt"]}]
    else:
        raise PromptFileError(f"{where}: needs 'prompt' (a string) or 'messages' (a list)")
    ifeval = None
    if "instruction_id_list" in record:
        ids = record["instruction_id_list"]
        kwargs = record["kwargs"] if "kwargs" in record else [{}] * len(ids if isinstance(ids, list) else [])
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise PromptFileError(f"{where}: 'instruction_id_list' and 'kwargs' must be lists of equal length")
        ifeval = {"prompt": messages[-1]["content"], "instruction_id_list": ids, "kwargs": kwargs}
    sandbox = record.get("sandbox")
    if sandbox is not None and not (isinstance(sandbox, dict) and isinstance(sandbox.get("family"), str)):
        raise PromptFileError(f"{where}: 'sandbox' must be an object with a 'family' name")
    reference = record.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise PromptFileError(f"{where}: 'reference' must be a string")
    name = record.get("id", record.get("key", index))
    return EvalPrompt(str(name), messages, ifeval, sandbox, reference)


def _tool_prompt(record: dict, where: str, index: int) -> EvalPrompt:
    """A tool-use prompt: messages and tools read by the data layer's own rules, calls as JSON objects."""
    from ..data.messages import Conversion, openai_messages
    from ..data.types import RecordError, TemplateInputs, make_conversation, make_tool_call, make_tools

    try:
        tools = make_tools(record.get("tools"))
        messages = record.get("messages") or [{"role": "user", "content": record.get("prompt")}]
        conv = make_conversation(openai_messages(messages, Conversion()), inputs=TemplateInputs(tools),
                                 require_assistant=False, allow_empty_assistant=True)
        expected = record["expected_calls"]
        if not isinstance(expected, list):
            raise RecordError("bad_expected_calls", "'expected_calls' must be a list of {name, arguments} ([] = no call)")
        calls = [make_tool_call(c) for c in expected]
    except RecordError as exc:
        raise PromptFileError(f"{where}: {exc.rule}: {exc.detail}") from None
    if conv.messages[-1].role not in ("user", "tool"):
        raise PromptFileError(f"{where}: the last message must be the user's or a tool result (the model answers it)")
    name = record.get("id", record.get("key", index))
    return EvalPrompt(str(name), conv.to_dicts(), tools=list(tools) if tools else None,
                      expected_calls=[{"name": c.name, "arguments": c.arguments} for c in calls])


def load_prompts(source: str, *, limit: int | None = None, seed: int = 0) -> list[EvalPrompt]:
    """Every line is checked; all bad lines are reported together with file:line."""
    if source == SANDBOX_SET:
        return sandbox_prompts(seed)[:limit]
    path = Path(source)
    if not path.is_file():
        raise PromptFileError(f"--prompts {source}: no such file (or 'sandbox' for the sandbox's held-out set)")
    prompts, errors = [], []
    for raw in read_jsonl(path):
        if raw.error is not None:
            errors.append(f"{raw.where}: not JSON ({raw.error.detail})")
            continue
        try:
            prompts.append(_parse(raw.value, raw.where, len(prompts)))
        except PromptFileError as exc:
            errors.append(str(exc))
    if errors:
        raise PromptFileError(f"{len(errors)} bad line(s) in {path}:\n  " + "\n  ".join(errors[:20]))
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts")
    return prompts[:limit]


def sandbox_prompts(seed: int = 0, per_family: int = 20) -> list[EvalPrompt]:
    from ..sandbox.base import load_recipe, shipped_base_dir
    from ..sandbox.tasks import eval_instances
    from ..sandbox.world import make_world

    recipe = load_recipe(shipped_base_dir())
    world = make_world(recipe.seed, recipe.countries)
    out = []
    for set_name, instances in eval_instances(world, per_family, seed).items():
        for k, inst in enumerate(instances):
            out.append(EvalPrompt(f"{set_name}-{k}", inst.messages, None,
                                  {"family": inst.family, "check": inst.check, "set": set_name}, inst.answer))
    return out
