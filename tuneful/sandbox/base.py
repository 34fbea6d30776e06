"""The sandbox base model: a BPE tokenizer and a small Llama pretrained on the world's documents.

``tuneful sandbox build-base`` runs :func:`build_base` from scratch; the result shipped in the
package (``tuneful/samples/sandbox_base``) carries ``recipe.json`` with the settings and the losses
of the first steps, which a test reproduces.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.losses import token_nll_sum
from ..samples import sandbox_base_dir, train_tokenizer
from .agent import agent_world_names
from .world import corpus, make_world


SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@dataclass
class BaseRecipe:
    seed: int = 0
    countries: int = 120
    vocab_size: int = 2048
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 688
    seq_len: int = 256
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 100
    steps: int = 1800  # 1500 before the copying documents (same passes over the facts)
    weight_decay: float = 0.1
    bf16_autocast: bool = True
    threads: int = 2
    copy_docs: int = 3000  # documents about fresh lands, for in-context copying (world.copy_documents)


def shipped_base_dir() -> Path:
    return sandbox_base_dir()


def load_recipe(base_dir: Path) -> BaseRecipe:
    """The recipe a base model folder was built with (its world is ``make_world(seed, countries)``)."""
    recorded = json.loads((base_dir / "recipe.json").read_text())["recipe"]
    return BaseRecipe(**{"copy_docs": 0, **recorded})  # recipes older than the field had no copying documents


def base_corpus(recipe: BaseRecipe) -> list[str]:
    """The pretraining documents of a recipe; copying documents never name a country of the agent's world."""
    return corpus(make_world(recipe.seed, recipe.countries), recipe.seed, copy_docs=recipe.copy_docs,
                  taken=agent_world_names(recipe.seed))


def build_tokenizer(docs: list[str], recipe: BaseRecipe) -> Any:
    return train_tokenizer(docs, vocab_size=recipe.vocab_size, special_tokens=SPECIAL_TOKENS,
                           eos_token="<|endoftext|>", pad_token="<|pad|>")


def token_stream(docs: list[str], tokenizer: Any) -> torch.Tensor:
    """All documents as one stream, each followed by <|endoftext|> (standard pretraining layout)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += encoded + [eos]
    return torch.tensor(ids, dtype=torch.long)


def init_model(recipe: BaseRecipe, vocab_size: int, tokenizer: Any = None) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
                         num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                         num_key_value_heads=recipe.heads, max_position_embeddings=1024,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    if tokenizer is not None:
        # Set after construction: a pad id given to the config would zero an embedding row at init.
        # Documents start without BOS; LlamaConfig's defaults (bos 1, eos 2) name other tokens here.
        for target in (model.config, model.generation_config):
            target.bos_token_id = None
            target.eos_token_id = tokenizer.eos_token_id
            target.pad_token_id = tokenizer.pad_token_id
    return model


def pretrain(model: Any, stream: torch.Tensor, recipe: BaseRecipe, *, steps: int | None = None,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Next-token training on every token of fixed-length chunks; returns the loss per step."""
    torch.set_num_threads(recipe.threads)
    steps = recipe.steps if steps is None else steps
    n_chunks = (len(stream) - 1) // recipe.seq_len
    chunks = stream[: n_chunks * recipe.seq_len].view(n_chunks, recipe.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                  weight_decay=recipe.weight_decay)

    def factor(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(recipe.seed)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(steps):
        if len(order) < recipe.batch:
            epoch = list(range(n_chunks))
            rng.shuffle(epoch)
            order += epoch
        batch = chunks[order[: recipe.batch]]
        del order[: recipe.batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            logits = model(input_ids=batch).logits
        total, count = token_nll_sum(logits, batch)
        loss = total / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, losses[-1])
    return losses


def build_base(out: Path, recipe: BaseRecipe = BaseRecipe(), *, progress: bool = True) -> dict:
    """World → corpus → tokenizer → pretraining → ``out`` (safetensors, tokenizer, recipe.json)."""
    started = time.perf_counter()
    docs = base_corpus(recipe)
    tokenizer = build_tokenizer(docs, recipe)
    stream = token_stream(docs, tokenizer)
    model = init_model(recipe, len(tokenizer), tokenizer)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc="pretrain", unit="step")

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

    losses = pretrain(model, stream, recipe, on_step=on_step)
    if bar is not None:
        bar.close()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - started
    record = {"recipe": asdict(recipe), "corpus_chars": sum(map(len, docs)), "corpus_tokens": len(stream),
              "tokens_seen": recipe.steps * recipe.batch * recipe.seq_len, "first_losses": losses[:10],
              "final_loss_mean_last_50": sum(losses[-50:]) / len(losses[-50:]), "seconds": seconds,
              "params": sum(p.numel() for p in model.parameters()), "losses_every_50": losses[::50]}
    (out / "recipe.json").write_text(json.dumps(record, indent=2))
    return record
