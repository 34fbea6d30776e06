"""``tuneful chat``: a multi-turn terminal chat that streams tokens as the model writes them.

The conversation is rendered with the model's own template on every turn (history included), and
the reply ends at the template's end-of-turn token. Reasoning is shown apart from the answer, and
with ``--tools FILE.py`` the plain functions of that file are offered to the model as tools (schemas
from their signatures and docstrings); a call the model makes is shown, run after a confirmation
(unless ``--yes``), and its result handed back until the model answers. Commands: ``/system TEXT``,
``/reset``, ``/save FILE``, ``/help``, ``/exit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .chat_model import ChatModel, TextDeltas
from .engine import GenerationEngine, GenerationRequest, Sampling
from .prefix_cache import PrefixCache
from .tools import call_tool, tool_schemas
from ..data.tool_parsers import PARSERS, ReplyStream

MAX_TOOL_ROUNDS = 8  # calls and results handed back before the model must answer


def ask(question: str) -> bool:
    """Confirmation at the terminal (no input: no)."""
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False

HELP = ("commands: /system TEXT (set the system prompt), /reset (forget the conversation), "
        "/save FILE (write it as JSON), /help, /exit")


@dataclass
class ChatSession:
    chat: ChatModel
    max_new_tokens: int = 256
    temperature: float = 0.0
    system: str | None = None
    turns: list[dict] = field(default_factory=list)
    tools: dict[str, Callable[..., Any]] = field(default_factory=dict)  # offered to the model, by name
    confirm: Callable[[str], bool] = ask  # asked before a call runs (``lambda _: True`` for --yes)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reply(self, engine: GenerationEngine, user_text: str, write: Callable[[str], None]) -> str:
        """Answer ``user_text``, running the tools the model calls on the way; returns the final text."""
        self.turns.append({"role": "user", "content": user_text})
        schemas = tool_schemas(self.tools) if self.tools else None
        parser = PARSERS.get(self.chat.tool_parser or "") if self.tools else None
        if self.tools and parser is None:
            self.turns.pop()
            raise ValueError(f"the template {self.chat.template.origin} prints no tool calls tuneful can parse")
        for round_ in range(MAX_TOOL_ROUNDS):
            try:
                message = self._turn(engine, schemas, parser, write)
            except ValueError:
                if round_ == 0:
                    self.turns.pop()  # the question is withdrawn; tool results already shown stay
                raise
            self.turns.append(message)
            if not message.get("tool_calls"):
                return message["content"]
            for call in message["tool_calls"]:
                self.turns.append(self._run(call, write))
            write("\nassistant> ")
        write(f"  [stopped after {MAX_TOOL_ROUNDS} rounds of tool calls]")
        return ""

    def _turn(self, engine: GenerationEngine, schemas: list[dict] | None, parser: Any,
              write: Callable[[str], None]) -> dict:
        prompt = self.chat.prompt_ids(self.messages(), schemas)
        room = self.chat.context_length - len(prompt)
        if room < 1:
            raise ValueError(f"the conversation is {len(prompt)} tokens, over the model's context of "
                             f"{self.chat.context_length}; /reset to start over")
        sampling = Sampling(self.temperature) if self.temperature > 0 else Sampling()
        request = engine.submit(GenerationRequest(prompt, min(self.max_new_tokens, room), sampling))
        deltas = TextDeltas(self.chat.tokenizer, skip_special_tokens=parser is None)
        stream = ReplyStream(parser)
        for token in request.tokens():
            self._show(stream.feed(deltas.add(token)), write)
        rest, reply = stream.finish(truncated=request.finish_reason == "length")
        self._show(rest, write)
        if request.finish_reason == "length":
            write("  [cut at the length limit]")
        message: dict = {"role": "assistant", "content": reply.content}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [{"id": f"call_{len(self.turns)}_{k}", "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for k, c in enumerate(reply.tool_calls)]
        return message

    @staticmethod
    def _show(deltas: list[dict], write: Callable[[str], None]) -> None:
        for delta in deltas:
            if delta.get("reasoning_content"):
                write(f"[thinking] {delta['reasoning_content']}\n")
            if delta.get("content"):
                write(delta["content"])
            for call in delta.get("tool_calls", []):
                write(f"\n[calls {call['function']['name']}({call['function']['arguments']})]")

    def _run(self, call: dict, write: Callable[[str], None]) -> dict:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        fn = self.tools.get(name)
        if fn is None:
            result = f"error: there is no tool named {name!r}"
        elif not self.confirm(f"\nrun {name}({json.dumps(arguments)})? [y/N] "):
            result = "error: the user declined to run this tool"
        else:
            result = call_tool(self.tools, name, arguments)
        write(f"\n[{name} returned {result}]")
        return {"role": "tool", "tool_call_id": call["id"], "name": name, "content": result}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"messages": self.messages(), "model": self.chat.name,
                                    "template": self.chat.template.origin,
                                    **({"tools": tool_schemas(self.tools)} if self.tools else {})}, indent=2),
                        encoding="utf-8")


def run_chat(session: ChatSession, lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Drive a session from input lines (a terminal, or a test's list) until /exit or end of input."""
    # each turn resends the conversation: it prefills only what the turn before did not hold
    engine = GenerationEngine(session.chat, max_batch=1, max_queue=1, prefix_cache=PrefixCache(256 << 20)).start()
    try:
        for raw in lines:
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            command, _, argument = line.partition(" ")
            if command in ("/exit", "/quit"):
                break
            if command == "/help":
                write(HELP + "\n")
            elif command == "/reset":
                session.turns.clear()
                write("(conversation cleared)\n")
            elif command == "/system":
                session.system = argument.strip() or None
                write(f"(system prompt {'set' if session.system else 'removed'})\n")
            elif command == "/save":
                if not argument.strip():
                    write("usage: /save FILE\n")
                    continue
                session.save(Path(argument.strip()))
                write(f"(saved to {argument.strip()})\n")
            elif command.startswith("/"):
                write(f"unknown command {command}; {HELP}\n")
            else:
                write("assistant> ")
                try:
                    session.reply(engine, line, write)
                except ValueError as exc:
                    write(f"error: {exc}")
                write("\n")
    finally:
        engine.stop()
