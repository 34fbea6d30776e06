"""Training on agentic data end to end: the shipped tool recipe on LLaMA-Factory's glaive tool-call demo
(SFT, packed), and DPO pairs whose prompts hold calls and results and whose replies are calls or text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_fixtures
from tiny import tiny_llama
from tuneful.config import build
from tuneful.data.loader import load
from tuneful.data.types import Message
from tuneful.samples import train_tokenizer
from tuneful.templates.registry import builtin

REPO = Path(__file__).resolve().parents[1]


def _glaive(fixtures: Path) -> Path:
    return fixtures / "data" / "llamafactory" / "glaive_toolcall_en_demo.json"


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory, fixtures) -> Path:
    """A tiny random Llama with a tokenizer trained on the demo's texts, calls and schemas (chatml template)."""
    conversations = load(_glaive(fixtures)).conversations
    texts = [m.content for c in conversations for m in c.messages]
    texts += [json.dumps(c.to_json()) for c in conversations]
    tok = train_tokenizer(texts, vocab_size=2000)
    tok.chat_template = builtin("chatml").source
    folder = tmp_path_factory.mktemp("tools") / "model"
    tiny_llama(len(tok)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def _trained_runs(example) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@needs_fixtures
def test_tool_recipe_trains_on_the_glaive_demo(tool_model: Path, fixtures: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    from tuneful.sft.config import SFTConfig
    from tuneful.sft.data import prepare_data
    from tuneful.sft.trainer import run_sft

    cfg = build(SFTConfig, REPO / "recipes" / "sft_tools_tiny.yaml", [
        f"model.name_or_path={tool_model}", f"data.train={_glaive(fixtures)}", f"train.output_dir={tmp_path / 'run'}",
        "train.progress=false", "train.max_steps=12", "train.eval_every=6", "train.save_every=12"])
    tok = AutoTokenizer.from_pretrained(tool_model)
    prepared = prepare_data(cfg.data, tok, cfg.train.seed)
    assert not prepared.preflight_report.errors
    trained = [tok.decode(run) for e in prepared.train for run in _trained_runs(e)]
    calls = [t for t in trained if "<tool_call>" in t]
    assert len(calls) > 50 and all(t.endswith("<|im_end|>") for t in trained)
    assert all('"name": "' in t and '"arguments": {' in t for t in calls)
    results = {m.content for c in load(_glaive(fixtures)).conversations for m in c.messages if m.role == "tool"}
    joined = "\n".join(trained)
    assert not [r for r in results if len(r) > 30 and r in joined]  # tool results are never trained
    assert "<|im_start|>tools" not in joined and "<|im_start|>tool\n" not in joined

    result = run_sft(cfg)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert result.steps == 12 and losses[-1] < losses[0]
    saved = AutoTokenizer.from_pretrained(result.model_dir)
    assert saved.chat_template == builtin("chatml").source  # inference renders tools and calls the same way


def _tool_pairs(fixtures: Path, path: Path) -> Path:
    """From the demo: prompts up to a call (chosen: the call, rejected: a refusal to use the tool) and
    prompts up to the answer after a tool result (chosen: the answer, rejected: a call made again)."""
    lines = []
    for conv in load(_glaive(fixtures)).conversations:
        messages = conv.messages
        tools = [t for t in conv.inputs.tools or ()]
        for k, m in enumerate(messages):
            if m.role == "assistant" and m.tool_calls and k + 2 < len(messages):
                prompt = [x.to_dict() for x in messages[:k]]
                lines.append({"prompt": prompt, "chosen": m.to_dict(), "tools": tools,
                              "rejected": "I cannot look that up for you."})
                answer = messages[k + 2]
                if answer.role == "assistant" and not answer.tool_calls:
                    lines.append({"prompt": [x.to_dict() for x in messages[: k + 2]], "chosen": answer.content,
                                  "rejected": m.to_dict(), "tools": tools})
                break
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@needs_fixtures
def test_dpo_pairs_with_tool_calls_load_tokenize_and_train(tool_model: Path, fixtures: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    from tuneful.dpo.config import DPOConfig
    from tuneful.preference.pairs import preference_tokenizer, tokenize_pairs
    from tuneful.dpo.trainer import run_dpo

    pairs_file = _tool_pairs(fixtures, tmp_path / "pairs.jsonl")
    loaded = load(pairs_file)
    assert loaded.report.format == "preference" and len(loaded.preferences) > 100
    calls_chosen = [p for p in loaded.preferences if p.chosen.tool_calls]
    after_results = [p for p in loaded.preferences if p.prompt[-1].role == "tool"]
    assert calls_chosen and after_results and all(isinstance(p.rejected, Message) for p in loaded.preferences)

    tok = AutoTokenizer.from_pretrained(tool_model)
    examples = tokenize_pairs(preference_tokenizer(tok, builtin("chatml")), loaded.preferences[:40])
    by_kind = {("call" if p.chosen.tool_calls else "answer"): e for p, e in zip(loaded.preferences[:40], examples)}
    call = by_kind["call"]
    assert tok.decode(call.chosen_ids).startswith("<tool_call>") and tok.decode(call.chosen_ids).endswith("<|im_end|>")
    assert tok.decode(call.prompt_ids).startswith("<|im_start|>tools\n")  # the schemas are prompt, never trained
    answer = by_kind["answer"]
    assert "<|im_start|>tool\n" in tok.decode(answer.prompt_ids) and "<tool_call>" in tok.decode(answer.rejected_ids)

    cfg = build(DPOConfig, None, [f"model.name_or_path={tool_model}", f"data.train={pairs_file}",
                                  f"train.output_dir={tmp_path / 'dpo'}", "train.progress=false", "train.max_steps=3",
                                  "data.max_length=1024", "train.micro_batch_size=4", "train.lr=1e-3"])
    result = run_dpo(cfg)
    assert result.steps == 3 and result.final_loss is not None and result.final_loss == result.final_loss
