"""Small samples written by the project, so commands work on a fresh machine with no downloads.
Floor 1: imports no other tuneful package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Iterable

CHATML_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def starter_path() -> Path:
    """The starter conversations (OpenAI ``messages`` JSONL) shipped inside the package."""
    return Path(str(resources.files("tuneful.samples") / "starter.jsonl"))


def sandbox_base_dir() -> Path:
    """The sandbox's tiny base model shipped with tuneful (what ``tuneful chat sandbox`` names); built by
    ``tuneful.sandbox.base``, kept here with the other shipped artefacts so inference needs no sandbox code."""
    return Path(str(resources.files("tuneful.samples") / "sandbox_base"))


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 600,
    special_tokens: list[str] = CHATML_SPECIAL_TOKENS,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
) -> Any:
    """A byte-level BPE tokenizer trained in-process (deterministic), wrapped for transformers.

    Used for demos on a fresh machine and by tests; the sandbox's base model has its own.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos_token, pad_token=pad_token)
