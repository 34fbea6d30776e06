"""What a run leaves behind: a model folder that loads anywhere, with its template and stop tokens.

Full fine-tuning writes a Hugging Face folder (safetensors); LoRA writes a PEFT adapter folder. Both
get the tokenizer with the chat template used in training embedded (so inference uses the same
one), a ``generation_config.json`` whose ``eos_token_id`` includes the end-of-turn token(s), the
run's recipe in ``tuneful.json``, and a loss-curve PNG.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..data.tool_parsers import parser_for_template
from ..models.loading import merged_adapter
from ..tokenization.masking import pad_id, stop_token_ids


def save_final(folder: Path, model: nn.Module, tokenizer: Any, *, template_source: str, end_of_turn_ids: list[int],
               summary: dict, history: list[dict], lora: bool, initial_adapter: Path | None = None,
               state_dict: dict | None = None) -> None:
    """Model (or adapter), tokenizer with the training template, stop tokens, ``tuneful.json``, loss plot.

    ``initial_adapter``: PiSSA/OLoRA rewrote the base weights at the start; the adapter is converted
    against its initial state so that it applies to the original, unmodified base. ``state_dict``: the
    weights as full tensors when the model itself is sharded (FSDP).
    """
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    if initial_adapter is not None:
        model.save_pretrained(folder, safe_serialization=True,
                              path_initial_model_for_weight_conversion=str(initial_adapter))
    else:
        extra = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(folder, safe_serialization=True, **extra)
    tokenizer.chat_template = template_source
    tokenizer.save_pretrained(folder)
    base_config = getattr(model, "generation_config", None) if not lora else None
    generation = base_config or GenerationConfig()
    generation.eos_token_id = stop_token_ids(tokenizer, end_of_turn_ids)
    generation.pad_token_id = pad_id(tokenizer, generation.eos_token_id)
    generation.save_pretrained(folder)
    summary = {**summary, "end_of_turn_ids": end_of_turn_ids, "kind": "lora-adapter" if lora else "full",
               "tool_parser": parser_for_template(template_source)}
    (folder / "tuneful.json").write_text(json.dumps(summary, indent=2))
    plot_loss(history, folder.parent / "loss.png")


def plot_loss(history: list[dict], path: Path) -> Path | None:
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="train loss")
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / trained token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None,
                  trust_remote_code: bool = False) -> Path:
    """Fold a LoRA adapter into its base model and write a plain Hugging Face folder."""
    import shutil

    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = base or config["base_model_name_or_path"]
    if not base:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base model; pass --base")
    merged = merged_adapter(adapter_dir, base, trust_remote_code=trust_remote_code)
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    for name in ("generation_config.json", "tuneful.json"):
        if (adapter_dir / name).exists():
            shutil.copy(adapter_dir / name, out_dir / name)
    return out_dir
