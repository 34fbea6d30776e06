"""``tuneful chat``: a multi-turn terminal chat that streams tokens as the model writes them.

The conversation is rendered with the model's own template on every turn (history included), and
the reply ends at the template's end-of-turn token. Commands: ``/system TEXT``, ``/reset``,
``/save FILE``, ``/help``, ``/exit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .chat_model import ChatModel
from .serve.engine import GenerationEngine, GenerationRequest, Sampling, TextDeltas

HELP = ("commands: /system TEXT (set the system prompt), /reset (forget the conversation), "
        "/save FILE (write it as JSON), /help, /exit")


@dataclass
class ChatSession:
    chat: ChatModel
    max_new_tokens: int = 256
    temperature: float = 0.0
    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reply(self, engine: GenerationEngine, user_text: str, write: Callable[[str], None]) -> str:
        self.turns.append({"role": "user", "content": user_text})
        prompt = self.chat.prompt_ids(self.messages())
        room = self.chat.context_length - len(prompt)
        if room < 1:
            self.turns.pop()
            raise ValueError(f"the conversation is {len(prompt)} tokens, over the model's context of "
                             f"{self.chat.context_length}; /reset to start over")
        sampling = Sampling(self.temperature) if self.temperature > 0 else Sampling()
        request = engine.submit(GenerationRequest(prompt, min(self.max_new_tokens, room), sampling))
        deltas, pieces = TextDeltas(self.chat.tokenizer), []
        for token in request.tokens():
            piece = deltas.add(token)
            pieces.append(piece)
            write(piece)
        text = "".join(pieces)
        self.turns.append({"role": "assistant", "content": text})
        if request.finish_reason == "length":
            write("  [cut at the length limit]")
        return text

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"messages": self.messages(), "model": self.chat.name,
                                    "template": self.chat.template.origin}, indent=2), encoding="utf-8")


def run_chat(session: ChatSession, lines: Iterable[str], write: Callable[[str], None]) -> None:
    """Drive a session from input lines (a terminal, or a test's list) until /exit or end of input."""
    engine = GenerationEngine(session.chat, max_batch=1, max_queue=1).start()
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
