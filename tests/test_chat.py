"""tuneful chat: multi-turn with the model's template, streaming, commands."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tuneful.infer.chat_repl import ChatSession, run_chat
from tuneful.cli.main import app
from tuneful.infer.generate import generate


def _greedy(chat, messages, n):
    [out] = generate(chat.model, chat.tokenizer, [chat.prompt_ids(messages)], stop_ids=chat.stop_ids, max_new_tokens=n)
    return out.text


def test_session_streams_replies_keeps_history_and_obeys_commands(sandbox_chat, tmp_path: Path):
    pieces: list[str] = []
    session = ChatSession(sandbox_chat, max_new_tokens=8)
    saved = tmp_path / "chat.json"
    run_chat(session, ["/system Answer briefly.", "What is the capital of Norland?", "And its flag?",
                       f"/save {saved}", "/reset", "/bogus", "/exit", "never read"], pieces.append)
    record = json.loads(saved.read_text())
    messages = record["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert record["template"] == "builtin:tuneful"
    # Each reply is what greedy generation gives for the conversation so far (history included).
    assert messages[2]["content"] == _greedy(sandbox_chat, messages[:2], 8)
    assert messages[4]["content"] == _greedy(sandbox_chat, messages[:4], 8)
    output = "".join(pieces)
    assert len(pieces) > 10  # streamed token by token, not printed at once
    assert "(conversation cleared)" in output and "unknown command /bogus" in output
    assert session.turns == [] and session.system == "Answer briefly."


def test_cli_chat_reads_stdin_when_not_a_terminal(tmp_path: Path):
    saved = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["chat", "sandbox", "--max-new-tokens", "6"],
                                input=f"Hello there.\n/save {saved}\n")
    assert result.exit_code == 0, result.output
    assert "assistant> " in result.output
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_cli_chat_names_a_missing_model(tmp_path: Path):
    result = CliRunner().invoke(app, ["chat", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2 and "cannot load" in result.output


def test_chat_works_with_a_plain_hugging_face_folder(tmp_path: Path):
    from tiny import save_tiny_model

    from tuneful.infer.chat_model import load_chat_model
    from tuneful.tokenization.masking import starter_tokenizer
    from tuneful.templates.registry import builtin

    folder = save_tiny_model(tmp_path / "hf")
    tokenizer = starter_tokenizer()
    tokenizer.chat_template = builtin("chatml").source
    tokenizer.save_pretrained(folder)
    chat = load_chat_model(str(folder), device="cpu")
    assert chat.template.origin.startswith("tokenizer:") and chat.end_of_turn_ids
    pieces: list[str] = []
    session = ChatSession(chat, max_new_tokens=5)
    run_chat(session, ["Hi."], pieces.append)
    assert [t["role"] for t in session.turns] == ["user", "assistant"]
    assert session.turns[1]["content"] == _greedy(chat, session.turns[:1], 5)
