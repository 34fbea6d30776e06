"""New chat tokens for a base model: GPT-2's real tokenizer with ChatML lacks <|im_start|>/<|im_end|>.
With data.add_template_tokens they become special tokens, the embeddings grow (new rows at the mean),
the new rows train (full fine-tuning, and LoRA through peft's trainable tokens), the saved model
carries them, and the tuned model stops on <|im_end|>."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import needs_fixtures
from tiny import tiny_llama, write_data
from tuneful.tokenization.masking import ConversationTokenizer, add_template_tokens, template_markers
from tuneful.templates.registry import builtin


def _gpt2(fixtures: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixtures / "tokenizers" / "gpt-2")


@needs_fixtures
def test_the_templates_markers_become_single_special_tokens(fixtures: Path):
    from tuneful.data.formats import FORMATS
    from tuneful.tokenization.preflight import preflight

    tok = _gpt2(fixtures)
    assert template_markers(tok, builtin("chatml")) == ["<|im_end|>", "<|im_start|>"]
    assert template_markers(tok, builtin("gemma")) == ["<end_of_turn>", "<start_of_turn>"]
    assert template_markers(tok, builtin("llama-3")) == ["<|end_header_id|>", "<|eot_id|>", "<|start_header_id|>"]
    [conv] = FORMATS["messages"].convert({"messages": [{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "hello"}]})
    before = preflight(tok, ConversationTokenizer(tok, builtin("chatml")), [conv])
    assert "end_of_turn_not_trained" in {f.check for f in before.errors}
    assert "--add-template-tokens" in str(before.errors[0])
    ids = add_template_tokens(tok, builtin("chatml"))
    assert ids == [50257, 50258] and template_markers(tok, builtin("chatml")) == []  # added once
    assert tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).input_ids[0] == ids[1]
    after = preflight(tok, ConversationTokenizer(tok, builtin("chatml")), [conv])
    assert not after.errors
    [example] = after.training_examples
    last_trained = max(i for i, m in enumerate(example.train_mask) if m)
    assert example.input_ids[last_trained] == ids[0]  # the turn ends with <|im_end|>, and it is trained


def test_new_rows_start_at_the_mean_of_the_old_ones():
    from tuneful.models.loading import add_token_rows

    model = tiny_llama(50)
    old_in = model.get_input_embeddings().weight[:50].clone()
    old_out = model.get_output_embeddings().weight[:50].clone()
    add_token_rows(model, 52, [50, 51])
    assert model.get_input_embeddings().weight.shape[0] == 52
    assert torch.allclose(model.get_input_embeddings().weight[50], old_in.mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[51], old_out.mean(0))
    assert torch.equal(model.get_input_embeddings().weight[:50], old_in)


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory, fixtures) -> Path:
    """A random tiny Llama with GPT-2's vocabulary and tokenizer (no chat template, no chat tokens)."""
    folder = tmp_path_factory.mktemp("gpt2-base") / "model"
    tok = _gpt2(fixtures)
    tiny_llama(len(tok)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    write_data(folder.parent / "train.jsonl", copies=6)
    return folder


def _stop_rate(model_dir: Path, data: Path) -> float:
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.infer.generate import generate

    chat = load_chat_model(str(model_dir), device="cpu")
    assert chat.tokenizer.convert_tokens_to_ids("<|im_end|>") in chat.stop_ids
    prompts = [json.loads(x)["messages"][:-1] for x in data.read_text().splitlines()[:16]]
    outputs = generate(chat.model, chat.tokenizer, [chat.prompt_ids(p) for p in prompts], stop_ids=chat.stop_ids,
                       max_new_tokens=48)
    return sum(o.stopped for o in outputs) / len(outputs)


@needs_fixtures
@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_a_gpt2_vocabulary_model_learns_to_stop_on_new_chatml_tokens(gpt2_base: Path, tmp_path: Path, lora: bool):
    from transformers import AutoTokenizer

    from tuneful.config import build
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import SFTTrainer
    from tuneful.train.loop import run

    settings = [f"model.name_or_path={gpt2_base}", f"data.train={gpt2_base.parent / 'train.jsonl'}",
                "data.template=chatml", "data.add_template_tokens=true", f"train.output_dir={tmp_path / 'run'}",
                "train.progress=false", "train.micro_batch_size=8", "data.max_length=256",
                # a random-init model learning to stop: 80 steps left it at the edge (stop rates from 31 % to
                # over 90 % between runs that differ only in float summation order), 200 are well past it
                "train.lr=3e-3" if not lora else "train.lr=1e-2", "train.max_steps=200"]
    if lora:
        settings += ["lora.enabled=true", "lora.r=16", "lora.alpha=32"]
    trainer = SFTTrainer(build(SFTConfig, None, settings))
    result = run(trainer)
    assert trainer.new_token_ids == [50257, 50258]
    if lora:  # only the new rows of the embeddings and of the untied head are trained, nothing else of them
        trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" not in n}
        assert trained and all("trainable_tokens" in n for n in trained)
        assert {n.split(".token_adapter")[0].rsplit(".", 1)[-1] for n in trained} == {"embed_tokens", "lm_head"}
    saved = AutoTokenizer.from_pretrained(result.model_dir)
    assert saved.convert_tokens_to_ids("<|im_end|>") == 50257 and len(saved) == 50259
    rate = _stop_rate(result.model_dir, gpt2_base.parent / "train.jsonl")
    assert rate >= 0.9, rate
