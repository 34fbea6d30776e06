"""Tiny models and data built in-process for training tests (no downloads)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable

import torch

from tuneful.samples import starter_path
from tuneful.tokenization.masking import starter_tokenizer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A tokenizer (trained on the starter sample) and a random-init Llama saved as a HF folder."""
    tok = starter_tokenizer()
    model = tiny_llama(len(tok), seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def save_tiny_moe(folder: Path, seed: int = 0) -> Path:
    """The starter tokenizer and a random-init Mixtral (4 experts, top-2) with its router loss on, as a HF folder."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = starter_tokenizer()
    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=512, output_router_logits=True, router_aux_loss_coef=0.02)
    MixtralForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def write_data(path: Path, copies: int = 4) -> Path:
    """The starter conversations repeated (so there is enough to batch, pack and split)."""
    lines = starter_path().read_text().splitlines()
    path.write_text("\n".join(lines * copies) + "\n")
    return path


def model_and_data(root: Path, copies: int = 4) -> Path:
    """A folder with a tiny model (``model/``) and the starter conversations (``train.jsonl``), for training tests."""
    save_tiny_model(root / "model")
    write_data(root / "train.jsonl", copies)
    return root


def write_pairs(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Preference pairs (prompt/chosen/rejected JSONL): chosen answers the sum, rejected gets it wrong or rambles."""
    import random

    rng = random.Random(seed)
    lines = []
    for k in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        prompt = [{"role": "user", "content": f"What is {a} plus {b}?"}]
        if k % 3 == 0:
            prompt.insert(0, {"role": "system", "content": "Answer briefly."})
        chosen = f"{a + b}."
        rejected = f"{a + b + rng.randint(1, 9)}." if k % 2 else f"Well, let me think. It is {a + b}, I believe."
        lines.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_labeled(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Unpaired KTO data (messages + label JSONL): the pairs of :func:`write_pairs`, each reply on its own line,
    the right sum desirable, the wrong or rambling one undesirable."""
    pairs = [json.loads(line) for line in write_pairs(path, (n + 1) // 2, seed).read_text().splitlines()]
    lines = []
    for k, pair in enumerate(pairs):
        for reply, label in ((pair["chosen"], True), (pair["rejected"], False)):
            if len(lines) < n:
                lines.append(json.dumps({"messages": pair["prompt"] + [{"role": "assistant", "content": reply}],
                                         "label": label}))
    path.write_text("\n".join(lines) + "\n")
    return path


def killed_at_step(monkeypatch, trainer_cls: type, step: int, run: Callable[[], Any]) -> None:
    """``run()`` with ``trainer_cls``'s optimizer step killed (KeyboardInterrupt) at its ``step``-th call, the step
    restored after: what a kill mid-run leaves behind (its checkpoints), for a resume test."""
    import pytest

    original, calls = trainer_cls._optimizer_step, {"n": 0}

    def dies(self, micro):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self, micro)

    monkeypatch.setattr(trainer_cls, "_optimizer_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(trainer_cls, "_optimizer_step", original)
