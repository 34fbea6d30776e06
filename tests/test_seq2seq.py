"""Encoder-decoder SFT on a tiny random T5 built here: the source/target split, literal batches, the loss
against transformers' own, accumulation, resume, LoRA, the output folder, and inference (generate, chat
model, held-out loss) reading the same template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import killed_at_step
from tuneful.config import build
from tuneful.tokenization.masking import starter_tokenizer
from tuneful.sft.config import SFTConfig
from tuneful.models.seq2seq import Seq2SeqTokenLoss, is_encoder_decoder, target_nll_sum
from tuneful.sft.seq2seq import show_example
from tuneful.tokenization.seq2seq import (PLAIN_SEQ2SEQ_TEMPLATE, Seq2SeqDataError, Seq2SeqExample, Seq2SeqTokenizer,
                                         collate_seq2seq, encode_source, seq2seq_template)
from tuneful.sft.trainer import Seq2SeqSFTTrainer, run_sft
from tuneful.templates.render import render

REPO = Path(__file__).resolve().parents[1]
FACTS = [("Name the colour of the sky.", "Blue."), ("What do cows drink?", "Water, mostly."),
         ("Say hello in French.", "Bonjour."), ("Count to three.", "One, two, three.")]


def tiny_t5(tokenizer, seed: int = 0, width: int = 64):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=16, d_ff=2 * width, num_layers=2,
                      num_decoder_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return T5ForConditionalGeneration(config)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seq2seq")
    tok = starter_tokenizer()
    tiny_t5(tok).save_pretrained(root / "t5", safe_serialization=True)
    tok.save_pretrained(root / "t5")
    lines = []
    for k in range(6):
        for q, a in FACTS:
            lines.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    lines.append({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                               {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye?"},
                               {"role": "assistant", "content": "Bye."}]})
    (root / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def config(workdir: Path, out: str, *extra: str, recipe: Path | None = None) -> SFTConfig:
    base = [f"model.name_or_path={workdir / 't5'}", f"data.train={workdir / 'train.jsonl'}", "data.template=plain",
            f"train.output_dir={workdir / out}", "train.progress=false", "data.max_length=64"]
    return build(SFTConfig, recipe, base + list(extra))


# --- literal --------------------------------------------------------------------------------------------


def test_plain_template_renders_an_instruction_as_itself_and_a_history_as_lines():
    one = [{"role": "user", "content": "Translate: cat"}]
    assert render(one, PLAIN_SEQ2SEQ_TEMPLATE, add_generation_prompt=True) == "Translate: cat"
    with_system = [{"role": "system", "content": "Be brief."}] + one
    assert render(with_system, PLAIN_SEQ2SEQ_TEMPLATE, add_generation_prompt=True) == "Be brief.\n\nTranslate: cat"
    history = one + [{"role": "assistant", "content": "chat"}, {"role": "user", "content": "And dog?"}]
    assert render(history, PLAIN_SEQ2SEQ_TEMPLATE, add_generation_prompt=True) == \
        "User: Translate: cat\nAssistant: chat\nUser: And dog?\nAssistant:"


def test_one_example_per_reply_in_its_inference_context_with_eos():
    from tuneful.data.types import Message, make_conversation

    tok = starter_tokenizer()
    enc = Seq2SeqTokenizer(tok, seq2seq_template("plain", tok))
    conv = make_conversation([Message("user", "A?"), Message("assistant", "a."), Message("user", "B?"),
                              Message("assistant", "b.")])
    first, second = enc.examples(conv)
    assert tok.decode(first.source_ids) == "A?"
    assert tok.decode(second.source_ids) == "User: A?\nAssistant: a.\nUser: B?\nAssistant:"
    assert first.target_ids == tok("a.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert second.target_ids[-1] == tok.eos_token_id
    assert len(Seq2SeqTokenizer(tok, seq2seq_template("plain", tok), last_turn_only=True).examples(conv)) == 1
    assert "decoder target" in show_example(tok, [{"role": "user", "content": "A?"},
                                                  {"role": "assistant", "content": "a."}], "plain")
    # the tokenizer's own template when it has one, plain when it has none
    assert seq2seq_template("tokenizer", tok).source == tok.chat_template
    tok.chat_template = None
    assert seq2seq_template("tokenizer", tok).source == PLAIN_SEQ2SEQ_TEMPLATE


def test_collate_pads_sources_and_ignores_target_padding():
    batch = collate_seq2seq([Seq2SeqExample([5, 6, 7], [8, 2]), Seq2SeqExample([9], [10, 11, 2])], pad=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 2, -100], [10, 11, 2]]


def test_loss_equals_transformers_t5_loss_times_tokens():
    tok = starter_tokenizer()
    model = tiny_t5(tok).eval()
    batch = collate_seq2seq([Seq2SeqExample([5, 6, 7, 2], [8, 9, 2]), Seq2SeqExample([9, 2], [10, 11, 12, 2])],
                            pad=tok.pad_token_id)
    with torch.no_grad():
        total, count = Seq2SeqTokenLoss(model)(**batch)
        reference = model(**batch).loss  # transformers' mean over non-ignored labels
    assert int(count) == 7
    assert float(total) / int(count) == pytest.approx(float(reference), rel=1e-5)
    logits = torch.zeros(1, 2, 5)
    assert target_nll_sum(logits, torch.tensor([[1, -100]]))[1] == 1  # no shift: position 0 is trained


def test_accumulation_4x2_equals_batch_8(workdir: Path):
    """The trainer's optimizer step over 4 micro-batches of 2 equals one batch of 8: the loss is divided by
    the step's target tokens, not averaged per micro-batch."""
    def one_step(out: str, micro: list[list[Seq2SeqExample]]) -> tuple[float, list[torch.Tensor]]:
        trainer = Seq2SeqSFTTrainer(config(workdir, out, "train.max_grad_norm=0", "train.warmup_ratio=0",
                                           "train.resume=false")).setup()
        batches = [(collate_seq2seq(m, 0), sum(len(e) for e in m)) for m in micro]
        loss, _ = trainer._optimizer_step(batches)
        return loss, [p.detach().clone() for p in trainer.model.parameters()]

    g = torch.Generator().manual_seed(0)
    exs = [Seq2SeqExample(torch.randint(3, 90, (4 + k,), generator=g).tolist(),
                          torch.randint(3, 90, (1 + 2 * k,), generator=g).tolist() + [2]) for k in range(8)]
    loss_big, big = one_step("acc-big", [exs])
    loss_acc, small = one_step("acc-small", [exs[i : i + 2] for i in range(0, 8, 2)])
    assert loss_big == pytest.approx(loss_acc, abs=1e-5)
    for a, b in zip(big, small):
        assert torch.allclose(a, b, atol=1e-6)
    model = tiny_t5(starter_tokenizer())  # the per-micro-batch mean would have given another number
    with torch.no_grad():
        parts = [Seq2SeqTokenLoss(model)(**collate_seq2seq(exs[i : i + 2], 0)) for i in range(0, 8, 2)]
        total, count = Seq2SeqTokenLoss(model)(**collate_seq2seq(exs, 0))
    assert abs(sum(float(s) / int(n) for s, n in parts) / 4 - float(total) / int(count)) > 1e-4


# --- end to end ---------------------------------------------------------------------------------------


def test_detected_from_config_trains_and_the_folder_loads(workdir: Path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    assert is_encoder_decoder(str(workdir / "t5"))
    cfg = config(workdir, "full", "train.max_steps=3", "data.eval_fraction=0.2")
    from tuneful.sft.trainer import trainer_for

    assert isinstance(trainer_for(cfg), Seq2SeqSFTTrainer)
    result = run_sft(cfg)
    folder = result.model_dir
    AutoModelForSeq2SeqLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template == PLAIN_SEQ2SEQ_TEMPLATE
    assert starter_tokenizer().eos_token_id in GenerationConfig.from_pretrained(folder).eos_token_id
    summary = json.loads((folder / "tuneful.json").read_text())
    assert summary["architecture"] == "encoder-decoder" and summary["train_examples"] > 20
    assert any("packing is off" in w for w in summary["preflight_warnings"])
    assert result.eval_loss is not None and result.final_loss > 0


def test_tool_calls_are_refused_by_name(workdir: Path, tmp_path: Path):
    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}) + "\n")
    with pytest.raises(Seq2SeqDataError, match="tool calls and tool results.*train a causal LM"):
        run_sft(config(workdir, "tools", f"data.train={data}", "train.max_steps=1"))


def test_resume_continues_exactly(workdir: Path, monkeypatch):
    common = ("train.max_steps=4", "train.save_every=2", "train.micro_batch_size=4", "train.lr=1e-3")
    run_sft(config(workdir, "straight", *common))
    rows = lambda run: [(r["step"], r["loss"]) for r in map(json.loads, (workdir / run / "metrics.jsonl")
                                                            .read_text().splitlines()) if "loss" in r]
    killed_at_step(monkeypatch, Seq2SeqSFTTrainer, 3, lambda: run_sft(config(workdir, "resumed", *common)))
    run_sft(config(workdir, "resumed", *common))
    assert rows("resumed") == rows("straight") and len(rows("straight")) == 4


def test_lora_adapter_merges_and_learns_to_answer(workdir: Path):
    """LoRA on the tiny T5 memorises the facts; the adapter folder loads through the chat model (merged into
    its base), greedy replies reproduce the targets, the held-out loss reads the same template, and the
    server and the terminal chat answer the same."""
    from tuneful.eval.runner import heldout_loss
    from tuneful.eval.prompts import EvalPrompt
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.infer.generate import generate

    plain = workdir / "plain.jinja"
    plain.write_text(PLAIN_SEQ2SEQ_TEMPLATE)
    before = load_chat_model(str(workdir / "t5"), template=str(plain), device="cpu")
    result = run_sft(config(workdir, "lora", "lora.enabled=true", "lora.r=16", "lora.alpha=32",
                            "lora.target_modules=all-linear", "train.max_steps=400", "train.lr=1e-2",
                            "train.micro_batch_size=8", "train.warmup_ratio=0"))
    assert (result.model_dir / "adapter_config.json").exists()
    chat = load_chat_model(str(result.model_dir), device="cpu")
    assert chat.encoder_decoder and chat.template.source == PLAIN_SEQ2SEQ_TEMPLATE
    prompts = [chat.prompt_ids([{"role": "user", "content": q}]) for q, _ in FACTS]
    assert prompts[0] == encode_source(chat.tokenizer, FACTS[0][0])  # the encoder input SFT trained on
    replies = generate(chat.model, chat.tokenizer, prompts, stop_ids=chat.stop_ids, max_new_tokens=12)
    assert [r.text for r in replies] == [a for _, a in FACTS]
    assert all(r.stopped for r in replies)
    scored = [EvalPrompt(id=str(i), messages=[{"role": "user", "content": q}], reference=a)
              for i, (q, a) in enumerate(FACTS)]
    tuned_loss, base_loss = heldout_loss(chat, scored, 4), heldout_loss(before, scored, 4)
    assert tuned_loss["loss"] < 0.5 < base_loss["loss"] and tuned_loss["references"] == 4

    # served: the OpenAI-compatible server answers as local generation does (static batches for seq2seq)
    import openai

    from tuneful.serve.server import ChatServer, ServeSettings

    server = ChatServer(chat, ServeSettings(port=0, api_key="k", max_batch=4, max_queue=8))
    thread = server.start_in_thread()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=30) as client:
            reply = client.chat.completions.create(
                model=chat.name, messages=[{"role": "user", "content": FACTS[2][0]}], max_tokens=12)
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model=chat.name, messages=[{"role": "user", "content": FACTS[3][0]}], max_tokens=12, stream=True)
                if chunk.choices)
    finally:
        server.stop()
        thread.join(10)
    assert reply.choices[0].message.content == FACTS[2][1] and reply.choices[0].finish_reason == "stop"
    assert streamed == FACTS[3][1]

    # and the terminal chat (the same engine, one row): the reply streams and joins the history
    from tuneful.infer.chat_repl import ChatSession
    from tuneful.infer.engine import GenerationEngine

    session, pieces = ChatSession(chat, max_new_tokens=12), []
    engine = GenerationEngine(chat, max_batch=1, max_queue=1).start()
    try:
        assert session.reply(engine, FACTS[0][0], pieces.append) == FACTS[0][1]
    finally:
        engine.stop()
    assert "".join(pieces).strip() == FACTS[0][1] and session.turns[-1]["content"] == FACTS[0][1]


def test_shipped_seq2seq_recipe_runs(workdir: Path):
    recipe = REPO / "recipes" / "seq2seq_flan_t5_lora.yaml"
    result = run_sft(config(workdir, "recipe", "train.max_steps=2", "train.save_every=1", recipe=recipe))
    assert result.steps == 2 and (result.model_dir / "adapter_config.json").exists()
