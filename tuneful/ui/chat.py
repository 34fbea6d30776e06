"""The Chat page's machinery, without the page: models loaded once per (spec, template) with a generation engine
each, and one model's reply written in a thread by the terminal chat's own ``ChatSession.reply`` (tools, reasoning
and stops handled there), read by the page while it streams."""

from __future__ import annotations

import json
import threading
from typing import Any

from ..infer.chat_model import load_chat_model
from ..infer.chat_repl import ChatSession
from ..infer.engine import GenerationEngine
from ..infer.prefix_cache import PrefixCache


class ChatModels:
    """Models loaded for the Chat page, by (spec, template), each with its generation engine; the oldest is
    let go beyond ``keep``."""

    def __init__(self, keep: int = 3):
        self.keep, self.loaded, self.lock = keep, {}, threading.Lock()

    def get(self, spec: str, template: str | None) -> Any:
        key = (spec, template)
        with self.lock:
            if key not in self.loaded:
                chat = load_chat_model(spec, template=template)
                engine = GenerationEngine(chat, max_batch=1, max_queue=4, prefix_cache=PrefixCache(256 << 20))
                self.loaded[key] = (chat, engine.start())  # a conversation's next turn prefills only what is new
                while len(self.loaded) > self.keep:
                    _, engine = self.loaded.pop(next(iter(self.loaded)))
                    engine.stop()
            return self.loaded[key]


def _shown(turns: list[dict]) -> list[dict]:
    """A conversation as the Chatbot shows it: reasoning, tool calls and tool results in titled boxes of their own."""
    out = []
    for m in turns:
        if m["role"] == "user":
            out.append({"role": "user", "content": m["content"]})
        elif m["role"] == "tool":
            out.append({"role": "assistant", "content": m["content"],
                        "metadata": {"title": f"tool result ({m.get('name', 'tool')})"}})
        elif m["role"] == "assistant":
            if m.get("reasoning_content"):
                out.append({"role": "assistant", "content": m["reasoning_content"], "metadata": {"title": "reasoning"}})
            for call in m.get("tool_calls", []):
                out.append({"role": "assistant", "metadata": {"title": "tool call"},
                            "content": f"{call['function']['name']}({json.dumps(call['function']['arguments'])})"})
            if m.get("content"):
                out.append({"role": "assistant", "content": m["content"]})
    return out


class Side:
    """One model's reply being written, in a thread: what it has written so far, and its turns when done."""

    def __init__(self, chats: ChatModels, spec: str | None, template: str | None, turns: list[dict], text: str,
                 max_new_tokens: int, temperature: float):
        self.past, self.text = list(turns), text
        self.turns, self.written, self.error, self.notes = list(turns), "", None, []
        self.done = spec is None
        if spec is not None:
            threading.Thread(target=self._run, args=(chats, spec, template, max_new_tokens, temperature),
                             daemon=True).start()

    def _run(self, chats: ChatModels, spec: str, template: str | None, max_new_tokens: int, temperature: float) -> None:
        try:
            chat, engine = chats.get(spec, template)
            self.notes = list(chat.notes)
            session = ChatSession(chat, max_new_tokens=max_new_tokens, temperature=temperature, turns=self.turns)
            session.reply(engine, self.text, self._write)  # the terminal chat's reply: tools, reasoning, stops
        except Exception as exc:  # shown on the page (a model that does not load, a conversation too long)
            self.error = exc
        finally:
            self.done = True

    def _write(self, piece: str) -> None:
        self.written += piece

    def shown(self) -> list[dict]:
        if self.done and self.error is None:
            return _shown(self.turns)
        asked = _shown([*self.past, {"role": "user", "content": self.text}])
        said = f"error: {self.error}" if self.error is not None else self.written or "…"
        return asked + [{"role": "assistant", "content": said}]
