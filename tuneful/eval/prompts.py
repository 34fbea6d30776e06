"""Evaluation prompt sets: one JSONL line per prompt; which metrics apply is read from its fields.

A line holds ``prompt`` (a user message) or ``messages`` (a conversation ending with a user turn),
and optionally:

- ``instruction_id_list`` + ``kwargs`` (IFEval's shape): scored by the instruction checks;
- ``sandbox``: ``{"family", "check"}``: scored by a task suite's verifier (:class:`TaskSuite`: the sandbox's);
- ``reference``: a reference reply: scored by held-out loss (NLL per reference token);
- ``tools`` + ``expected_calls`` (``[{"name", "arguments"}]``; ``[]``: no call is expected): scored by
  tool-use accuracy; ``messages`` may then hold earlier calls and results (read by the data layer);
- ``answer``: a word or phrase the final answer must contain: task success of an episode with tools
  (``tuneful eval --tools FILE.py``: the model's calls are run until it answers);
- ``id`` or ``key``: a name for the prompt in answers and reports.

A task suite's name as the file name (``sandbox``) gives its held-out prompt set (for the sandbox: phrasings and
families never trained on), with verifier checks and reference replies. Evaluation takes the suite through the
:class:`TaskSuite` interface and imports nothing of the application that provides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..data.messages import Conversion, openai_messages
from ..data.sources import read_jsonl
from ..data.types import RecordError, TemplateInputs, make_conversation, make_tool_call, make_tools


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    messages: list[dict]
    ifeval: dict | None = None  # {"prompt", "instruction_id_list", "kwargs"}
    sandbox: dict | None = None  # {"family", "check", "set"}
    reference: str | None = None
    tools: list[dict] | None = None  # offered to the model (the template's ``tools``)
    expected_calls: list[dict] | None = None  # [{"name", "arguments"}]; [] = no call expected
    answer: str | None = None  # what a final answer must contain (episodes with tools: task success)


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
    answer = record.get("answer")
    if answer is not None and not (isinstance(answer, str) and answer.strip()):
        raise PromptFileError(f"{where}: 'answer' must be a non-empty string (what the final answer must contain)")
    name = record.get("id", record.get("key", index))
    return EvalPrompt(str(name), messages, ifeval, sandbox, reference, answer=answer)


def _tool_prompt(record: dict, where: str, index: int) -> EvalPrompt:
    """A tool-use prompt: messages and tools read by the data layer's own rules, calls as JSON objects."""
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


class TaskSuite(Protocol):
    """Prompts whose answers a program verifies, from an application above evaluation (the sandbox's task
    families: ``tuneful.sandbox.tasks.SandboxTasks``)."""

    name: str  # the --prompts value that selects its held-out set

    def held_out(self, seed: int) -> list[EvalPrompt]:
        """Its held-out prompts, each with a ``sandbox`` check and a reference reply."""

    def verify(self, check: dict, answer: str) -> bool:
        """Whether ``answer`` passes a prompt's ``sandbox`` check."""


def load_prompts(source: str, *, limit: int | None = None, seed: int = 0, tasks: TaskSuite | None = None) -> list[EvalPrompt]:
    """Every line is checked; all bad lines are reported together with file:line. ``source`` may name ``tasks``
    (its held-out set) instead of a file."""
    if tasks is not None and source == tasks.name:
        return tasks.held_out(seed)[:limit]
    path = Path(source)
    if not path.is_file():
        suite = f" (or '{tasks.name}' for its held-out set)" if tasks is not None else ""
        raise PromptFileError(f"--prompts {source}: no such file{suite}")
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
