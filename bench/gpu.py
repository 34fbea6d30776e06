#!/usr/bin/env python
"""One prepared GPU run: tuneful against TRL 1.16 on the same data, on one CUDA device, as ratios.

Models: random-init models of Qwen2.5-0.5B's shape (SFT full and LoRA, DPO, GRPO, the loss kernels) and of
Qwen2.5-1.5B's (QLoRA), weights kept in fp32 and trained under bf16 autocast by both frameworks (mixed precision,
fp32 master weights). Data: conversations of long-tailed lengths (log-normal, a few near the 2,048-token limit),
the same file for both; tokenizer Qwen2.5's own where ``--tokenizer`` or the shared fixtures have it.

Configurations, each in its own process (its own peak memory), each framework at its best documented settings
on the same data: packed rows of ``MAX_LEN`` tokens (tuneful: block-diagonal packing; TRL: ``packing=True``,
padding-free, position ids restarting per example), gradient checkpointing on for both, bf16 autocast,
flash-attention 2 where ``flash_attn`` loads, Liger kernels for TRL where ``liger_kernel`` loads.

- ``sft-full-*``, ``sft-lora-*`` (r 16, all-linear), ``sft-qlora-tuneful`` (NF4 base, bitsandbytes, 1.5B shape);
- ``dpo-*`` (sigmoid, precomputed reference), ``grpo-*`` (generation and the update, group 8);
- ``packing-check``: the loss and gradients of 8 conversations packed in one row against each alone, on the
  device, through SDPA's block mask and, where flash-attn loads, flash-attention's varlen path;
- ``loss-kernels``: one forward and backward of the loss over a batch's hidden states: full logits, tuneful's
  fused chunked cross-entropy, Liger's fused linear cross-entropy where it loads (time and peak memory).

Each configuration prints one JSON line; the summary line (``device``, ``sft_full_ratio``, ``sft_lora_ratio``,
``dpo_ratio``, ``grpo_ratio``, ``qlora_peak_gb``, ``peak_memory_share_vs_trl``, ...) comes last.

    python bench/gpu.py                 # on the device: about 6-8 min on one H100 (--only to split it)
    python bench/gpu.py --dry-run       # every code path, TRL's included, on the CPU with a tiny model (~2 min)
    python bench/gpu.py --wheels        # what the device needs besides its image (the machine is offline)

Throughput is steady state (the steps after the first ``WARMUP``) in trained tokens per second; peak memory is
``torch.cuda.max_memory_allocated`` (on the CPU, the process's peak RSS).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from grpo_vs_trl import short_reply_batch  # noqa: E402  (GRPO's reward, the same for both frameworks)
from sft_vs_trl import GENERATION_CHATML, WORDS, make_conversations, peak_rss_mb  # noqa: E402

QWEN = {"intermediate_size": 4864, "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
        "num_hidden_layers": 24, "vocab_size": 151936, "tie_word_embeddings": True}
SHAPES = {
    "0.5b": QWEN,
    "1.5b": {**QWEN, "hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
             "num_hidden_layers": 28},
    "tiny": {**QWEN, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_hidden_layers": 2, "vocab_size": None},  # the tokenizer's vocabulary
}
SEED, LR, LORA_R, LORA_ALPHA, LORA_LR, BETA, GROUP = 0, 1e-5, 16, 32, 1e-4, 0.1, 8
CONFIGS = ("packing-check", "loss-kernels", "sft-full-tuneful", "sft-full-trl", "sft-lora-tuneful", "sft-lora-trl",
           "sft-qlora-tuneful", "dpo-tuneful", "dpo-trl", "grpo-tuneful", "grpo-trl")
# module → what provides it: the run needs these (the last image seen lacked the first six: scripts/gpu-wheels)
NEEDS = {"trl": "trl==1.16.0", "peft": "peft", "datasets": "datasets", "dill": "dill",
         "multiprocess": "multiprocess", "xxhash": "xxhash", "transformers": "transformers", "accelerate": "accelerate",
         "safetensors": "safetensors", "pyarrow": "pyarrow", "jinja2": "jinja2", "yaml": "pyyaml", "tqdm": "tqdm"}
# and these where they load (a configuration or a kernel is reported as not run without them)
OPTIONAL = {"bitsandbytes": "bitsandbytes (QLoRA)", "liger_kernel": "liger-kernel (TRL's Liger kernels, the loss "
            "kernels' comparison)", "flash_attn": "flash-attn (flash-attention 2; PyPI has only its CUDA source build)"}


class Plan:
    """The sizes of one run: the device's, or the dry run's tiny ones on the CPU."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.max_len = 256 if dry else 2048
        self.rows = 2 if dry else 4  # packed rows of max_len tokens per optimizer step
        self.steps = 3 if dry else 10
        self.rl_steps = 3 if dry else 5  # GRPO's steps hold its generation: fewer, and the first is warm-up
        self.warmup = 1 if dry else 3
        self.pairs_per_step = 2 if dry else 8
        self.prompts_per_step = 2 if dry else 8
        self.max_new = 16 if dry else 128
        self.shape = "tiny" if dry else "0.5b"
        self.qlora_shape = "tiny" if dry else "1.5b"


# --- data and models ---------------------------------------------------------------------------------

def long_tailed_conversations(n: int, max_len: int, seed: int) -> list[dict]:
    """Conversations whose lengths follow a log-normal (median a sixth of ``max_len`` tokens, a tail near it):
    ``make_conversations``'s turns joined until each reaches its drawn length (about 4 characters a token)."""
    rng = random.Random(seed)
    turns = [m for c in make_conversations(8 * n, seed) for m in c["messages"] if m["role"] != "system"]
    out, at = [], 0
    for _ in range(n):
        target = min(0.9 * max_len, math.exp(rng.gauss(math.log(max_len / 6), 0.8))) * 4
        messages: list[dict] = []
        while sum(len(m["content"]) for m in messages) < target or not messages:
            messages += turns[at % len(turns): at % len(turns) + 2]
            at += 2
        out.append({"messages": messages})
    return out


def pairs_of(convs: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": c["messages"][:-1], "chosen": c["messages"][-1]["content"],
             "rejected": " ".join(rng.choices(WORDS, k=rng.randint(3, 60)))} for c in convs]


def tokenizer_source(given: str | None) -> Path | None:
    if given:
        return Path(given)
    folder = Path(os.environ.get("TUNEFUL_FIXTURES", REPO.parent / "shared" / "fixtures")) / "tokenizers" / "qwen2.5"
    return folder if folder.exists() else None


def prepare(workdir: Path, plan: Plan, tokenizer: str | None) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tuneful.templates.registry import builtin
    from tuneful.templates.render import render
    from tuneful.tokenization.masking import starter_tokenizer

    marker = workdir / "prepared-v1"
    if marker.exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    source = tokenizer_source(tokenizer)
    tok = AutoTokenizer.from_pretrained(source) if source else starter_tokenizer()
    tok.chat_template = builtin("chatml").source
    # enough conversations for every step of every configuration (~max_len / 5 tokens each on average)
    convs = long_tailed_conversations(plan.steps * plan.rows * 8 + 64, plan.max_len, SEED)
    for c in convs[:50]:  # TRL's template (with generation marks) must render exactly what tuneful renders
        assert render(c["messages"], GENERATION_CHATML) == render(c["messages"], tok.chat_template)
    (workdir / "sft.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    short = [c for c in convs if len(json.dumps(c)) < plan.max_len * 2][: plan.steps * plan.pairs_per_step + 32]
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs_of(short, SEED)))
    (workdir / "prompts.jsonl").write_text("".join(json.dumps({"messages": c["messages"][:1]}) + "\n"
                                                   for c in short))
    for name in sorted({plan.shape, plan.qlora_shape}):
        shape = {**SHAPES[name], "vocab_size": SHAPES[name]["vocab_size"] or len(tok)}
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=plan.max_len, **shape))
        model.to(torch.bfloat16).save_pretrained(workdir / f"model-{name}", safe_serialization=True)
        tok.save_pretrained(workdir / f"model-{name}")
    marker.write_text("ok")


# --- measuring ------------------------------------------------------------------------------------------

def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_mb() / 1024


def steady(times: list[float], trained: list[int], warmup: int) -> float:
    """Trained tokens per second over the steps after ``warmup`` (step end times, trained tokens per step)."""
    late = range(warmup, len(times)) if len(times) > warmup else range(1, len(times))
    seconds = times[late[-1]] - times[late[0] - 1]
    return sum(trained[i] for i in late) / seconds


def attention() -> str:
    return "flash_attention_2" if cuda() and importlib.util.find_spec("flash_attn") else "sdpa"


def tuneful_common(workdir: Path, plan: Plan, out: Path, shape: str, steps: int | None = None) -> list[str]:
    return [f"model.name_or_path={workdir / f'model-{shape}'}", f"train.output_dir={out}",
            f"train.max_steps={steps or plan.steps}", "train.warmup_ratio=0", "train.progress=false", "train.report_to=",
            "train.resume=false", f"train.seed={SEED}", "train.log_every=1", "train.save_every=0",
            "model.gradient_checkpointing=true", f"model.attn_implementation={attention()}",
            "train.loss_chunk_size=1024", "data.eval_fraction=0", "data.template=chatml"]


def tuneful_rates(history: list[dict], plan: Plan, key: str = "trained_tokens") -> dict:
    """Steady-state trained tokens per second from tuneful's per-step metrics, and the first and last loss."""
    rows = [r for r in history if "tok_s" in r]
    ends = [sum(r["tokens"] / r["tok_s"] for r in rows[: k + 1]) for k in range(len(rows))]
    trained = [int(r.get(key, r["tokens"])) for r in rows]
    return {"trained_tok_s": steady(ends, trained, plan.warmup), "loss_first": rows[0]["loss"],
            "loss_last": rows[-1]["loss"], "steps": len(rows)}


def trl_args(cls, plan: Plan, out: Path, steps: int | None = None, **kw):
    """TRL's settings shared by every configuration: bf16 on the GPU, gradient checkpointing, Liger where it loads."""
    on_gpu = cuda()
    return cls(output_dir=str(out), max_steps=steps or plan.steps, gradient_accumulation_steps=1, warmup_steps=0,
               weight_decay=0.0, max_grad_norm=1.0, bf16=on_gpu, fp16=False, gradient_checkpointing=True,
               use_cpu=not on_gpu, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
               dataloader_num_workers=0, disable_tqdm=True,
               use_liger_kernel=on_gpu and importlib.util.find_spec("liger_kernel") is not None, **kw)


def trl_model(workdir: Path, shape: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(workdir / f"model-{shape}")
    tok.chat_template = GENERATION_CHATML
    model = AutoModelForCausalLM.from_pretrained(workdir / f"model-{shape}", dtype=torch.float32,
                                                 attn_implementation=attention())
    return tok, model


def trl_timed(trainer, count) -> tuple[list[float], list[int]]:
    """Train, recording each step's end time and the trained tokens ``count(batch)`` of the batches it took."""
    import torch
    from transformers import TrainerCallback

    ends: list[float] = []
    trained: list[int] = []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        trained.append(count(batch))
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    trainer.data_collator = counting
    trainer.add_callback(Clock())
    trainer.train()
    return ends, trained[: len(ends)]


def trl_losses(trainer) -> tuple[float, float]:
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return losses[0], losses[-1]


# --- workers ---------------------------------------------------------------------------------------------

def sft_tuneful(kind: str):
    def work(workdir: Path, plan: Plan, out: Path) -> dict:
        from tuneful.config import build
        from tuneful.sft.config import SFTConfig
        from tuneful.sft.trainer import run_sft

        shape = plan.qlora_shape if kind == "qlora" else plan.shape
        if kind == "qlora" and not cuda():
            return {"skipped": "QLoRA needs a CUDA GPU (bitsandbytes NF4)"}
        if kind == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
            return {"skipped": "bitsandbytes is not installed (bash scripts/gpu-wheels)"}
        extra = {"full": [f"train.lr={LR}"],
                 "lora": ["lora.enabled=true", f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}", f"train.lr={LORA_LR}"],
                 "qlora": ["lora.enabled=true", "lora.qlora=true", f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}",
                           f"train.lr={LORA_LR}"]}[kind]
        cfg = build(SFTConfig, None, [*tuneful_common(workdir, plan, out, shape), f"data.train={workdir / 'sft.jsonl'}",
                                      f"data.max_length={plan.max_len}", "data.packing=true", "data.overlong=truncate",
                                      f"train.micro_batch_size={plan.rows}", *extra])
        result = run_sft(cfg)
        return {**tuneful_rates(result.history, plan), "peak_gb": peak_gb(), "shape": shape}
    return work


def sft_trl(kind: str):
    def work(workdir: Path, plan: Plan, out: Path) -> dict:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        tok, model = trl_model(workdir, plan.shape)
        peft_config = None
        if kind == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
        rows = [json.loads(x) for x in (workdir / "sft.jsonl").read_text().splitlines()]
        args = trl_args(SFTConfig, plan, out, per_device_train_batch_size=plan.rows, assistant_only_loss=True,
                        max_length=plan.max_len, packing=True, learning_rate=LORA_LR if kind == "lora" else LR,
                        lr_scheduler_type="cosine")
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_config)
        ends, trained = trl_timed(trainer, lambda b: int((b["labels"][:, 1:] != -100).sum()))
        first, last = trl_losses(trainer)
        return {"trained_tok_s": steady(ends, trained, plan.warmup), "loss_first": first, "loss_last": last,
                "steps": len(ends), "peak_gb": peak_gb(), "shape": plan.shape, "liger": args.use_liger_kernel}
    return work


def dpo_tuneful(workdir: Path, plan: Plan, out: Path) -> dict:
    from tuneful.config import build
    from tuneful.dpo.config import DPOConfig
    from tuneful.dpo.trainer import run_dpo

    cfg = build(DPOConfig, None, [*tuneful_common(workdir, plan, out, plan.shape), f"data.train={workdir / 'pairs.jsonl'}",
                                  f"data.max_length={plan.max_len}", f"train.micro_batch_size={plan.pairs_per_step}",
                                  f"train.lr={LR}", f"dpo.beta={BETA}", "dpo.reference=precomputed"])
    result = run_dpo(cfg)
    rates = tuneful_rates(result.history, plan, key="tokens")
    return {**rates, "peak_gb": peak_gb(), "reference_seconds": result.details["precompute_seconds"]}


def dpo_trl(workdir: Path, plan: Plan, out: Path) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tuneful.templates.render import render
    from tuneful.tokenization.masking import special_tokens_of

    tok, model = trl_model(workdir, plan.shape)
    rows = []
    for line in (workdir / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        prompt = render(pair["prompt"], tok.chat_template, add_generation_prompt=True,
                        special_tokens=special_tokens_of(tok))
        rows.append({"prompt": prompt, "chosen": pair["chosen"] + "<|im_end|>",
                     "rejected": pair["rejected"] + "<|im_end|>"})
    args = trl_args(DPOConfig, plan, out, per_device_train_batch_size=plan.pairs_per_step, learning_rate=LR,
                    lr_scheduler_type="cosine", beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                    max_length=plan.max_len)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    ends, tokens = trl_timed(trainer, lambda b: int(b["attention_mask"].sum()) if "attention_mask" in b else 0)
    first, last = trl_losses(trainer)
    return {"trained_tok_s": steady(ends, tokens, plan.warmup), "loss_first": first, "loss_last": last,
            "steps": len(ends), "peak_gb": peak_gb()}


def grpo_tuneful(workdir: Path, plan: Plan, out: Path) -> dict:
    from tuneful.config import build
    from tuneful.rl.config import GRPOConfig
    from tuneful.rl.trainer import run_grpo

    cfg = build(GRPOConfig, None, [*tuneful_common(workdir, plan, out, plan.shape, plan.rl_steps),
                                   f"data.train={workdir / 'prompts.jsonl'}", "data.template=chatml",
                                   f"train.micro_batch_size={plan.prompts_per_step}", f"train.lr={LR}",
                                   f"grpo.rewards=python:{REPO / 'bench' / 'grpo_vs_trl.py'}:short_reply",
                                   f"grpo.group_size={GROUP}", f"grpo.max_new_tokens={plan.max_new}", "grpo.loss=dapo"])
    result = run_grpo(cfg)
    rows = [r for r in result.history if "reward_mean" in r]
    ends = [sum(r["tokens"] / r["tok_s"] for r in rows[: k + 1]) for k in range(len(rows))]
    completion_tokens = [int(r["completion_length"] * r["completions"]) for r in rows]
    return {"completion_tok_s": steady(ends, completion_tokens, 1), "loss_first": rows[0]["loss"],
            "loss_last": rows[-1]["loss"], "steps": len(rows), "peak_gb": peak_gb()}


def grpo_trl(workdir: Path, plan: Plan, out: Path) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok, model = trl_model(workdir, plan.shape)
    rows = [{"prompt": json.loads(x)["messages"]} for x in (workdir / "prompts.jsonl").read_text().splitlines()]
    args = trl_args(GRPOConfig, plan, out, plan.rl_steps, per_device_train_batch_size=plan.prompts_per_step * GROUP,
                    num_generations=GROUP, max_completion_length=plan.max_new, learning_rate=LR,
                    lr_scheduler_type="constant", beta=0.0, loss_type="dapo", temperature=1.0)
    trainer = GRPOTrainer(model=model, reward_funcs=short_reply_batch, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok)
    ends, _ = trl_timed(trainer, lambda b: 0)
    logs = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    completion_tokens = [int(r["completions/mean_length"] * plan.prompts_per_step * GROUP) for r in logs]
    first, last = trl_losses(trainer)
    return {"completion_tok_s": steady(ends, completion_tokens[: len(ends)], 1), "loss_first": first,
            "loss_last": last, "steps": len(ends), "peak_gb": peak_gb()}


def packing_check(workdir: Path, plan: Plan, out: Path) -> dict:
    """8 conversations packed into one row against each alone, under bf16 autocast on the device: SDPA with the
    block-diagonal mask, and flash-attention's varlen path (restarted position ids) where flash-attn loads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneful.sft.losses import SelectedTokenLoss
    from tuneful.templates.registry import builtin
    from tuneful.tokenization.batching import Example, collate_packed, collate_padded
    from tuneful.tokenization.masking import ConversationTokenizer, labels_from_mask

    device = "cuda" if cuda() else "cpu"
    folder = workdir / f"model-{plan.shape}"
    tok = AutoTokenizer.from_pretrained(folder)
    encode = ConversationTokenizer(tok, builtin("chatml"))
    convs = [json.loads(x)["messages"] for x in (workdir / "sft.jsonl").read_text().splitlines()[:8]]
    examples = [Example(e.input_ids[: plan.max_len // 8], labels_from_mask(e.input_ids, e.train_mask)[: plan.max_len // 8])
                for e in map(encode, convs)]
    out_row: dict = {"tokens": sum(len(e) for e in examples)}
    kernels = ["sdpa"] + (["flash_attention_2"] if attention() == "flash_attention_2" else [])
    for kernel in kernels:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=kernel).to(device)
        loss = SelectedTokenLoss(model)

        def loss_and_grads(batches):
            model.zero_grad()
            total = 0.0
            for batch in batches:
                with torch.autocast(device, dtype=torch.bfloat16):
                    summed, _ = loss(**{k: v.to(device) for k, v in batch.items()})
                summed.backward()
                total += float(summed)
            return total, torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])

        packed_row = collate_packed([examples], pad_id=0, block_mask=kernel == "sdpa")
        packed, packed_grads = loss_and_grads([packed_row])
        alone, alone_grads = loss_and_grads([collate_padded([e], pad_id=0) for e in examples])
        key = "sdpa" if kernel == "sdpa" else "flash_varlen"
        out_row[f"{key}_relative_loss_diff"] = abs(packed - alone) / alone
        out_row[f"{key}_relative_grad_diff"] = float((packed_grads - alone_grads).norm() / alone_grads.norm())
    if "flash_attention_2" not in kernels:
        out_row["flash_varlen"] = "not run: " + ("flash-attn is not installed" if cuda() else "needs a CUDA GPU")
    return out_row


def loss_kernels(workdir: Path, plan: Plan, out: Path) -> dict:
    """The loss over one batch of hidden states and the output head: its time and peak memory, full logits against
    tuneful's fused chunked cross-entropy and (where it loads) Liger's fused linear cross-entropy."""
    import torch
    import torch.nn.functional as F

    from tuneful.models.losses import fused_linear_nll_sum

    device = "cuda" if cuda() else "cpu"
    shape = SHAPES[plan.shape]
    vocab = shape["vocab_size"] or 1024
    tokens = plan.rows * plan.max_len
    torch.manual_seed(SEED)
    # positions 0..T-1 predict labels 1..T: the same T predictions for every kind
    hidden = torch.randn(tokens + 1, shape["hidden_size"], device=device,
                         dtype=torch.bfloat16 if cuda() else torch.float32)
    weight = (torch.randn(vocab, shape["hidden_size"], device=device) * 0.02).to(hidden.dtype).requires_grad_()
    labels = torch.randint(0, vocab, (tokens + 1,), device=device)
    labels[::3] = -100

    def full():
        return F.cross_entropy((hidden[:-1] @ weight.T).float(), labels[1:], ignore_index=-100, reduction="sum")

    def chunked():
        return fused_linear_nll_sum(hidden.unsqueeze(0), labels.unsqueeze(0), weight, chunk_size=1024)[0]

    kinds = {"full_logits": full, "tuneful_chunked": chunked}
    if cuda() and importlib.util.find_spec("liger_kernel"):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="sum")
        kinds["liger_fused"] = lambda: liger(weight, hidden[:-1], labels[1:])
    row: dict = {"tokens": tokens, "vocab": vocab}
    for name, fn in kinds.items():
        for _ in range(2):  # the second pass is timed (the first warms the kernels up)
            weight.grad = None
            if cuda():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() if cuda() else 0
            started = time.perf_counter()
            value = fn()
            value.backward()
            if cuda():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        row[name] = {"seconds": seconds, "loss": float(value),
                     "peak_extra_gb": (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda() else None}
    if "liger_fused" not in kinds:
        row["liger_fused"] = "not run: " + ("liger-kernel is not installed" if cuda() else "Liger's kernels are Triton (GPU)")
    return row


WORKERS = {"packing-check": packing_check, "loss-kernels": loss_kernels,
           "sft-full-tuneful": sft_tuneful("full"), "sft-full-trl": sft_trl("full"),
           "sft-lora-tuneful": sft_tuneful("lora"), "sft-lora-trl": sft_trl("lora"),
           "sft-qlora-tuneful": sft_tuneful("qlora"), "dpo-tuneful": dpo_tuneful, "dpo-trl": dpo_trl,
           "grpo-tuneful": grpo_tuneful, "grpo-trl": grpo_trl}


# --- the run -------------------------------------------------------------------------------------------

def wheels() -> dict:
    """What this machine lacks of what the run imports (on the device: what to carry in)."""
    def lacking(table: dict) -> dict:
        return {module: wheel for module, wheel in table.items() if importlib.util.find_spec(module) is None}

    return {"missing": lacking(NEEDS), "optional_missing": lacking(OPTIONAL),
            "download": "bash scripts/gpu-wheels (pip download into .gpu-wheels/, carried to the device and installed "
                        "there with --no-index)"}


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def run_config(name: str, workdir: Path, dry: bool) -> dict:
    out = workdir / f"run-{name}"
    cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir), "--out", str(out)]
    if dry:
        cmd.append("--dry-run")
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        return {"config": name, "failed": done.stderr[-3000:], "wall_s": time.perf_counter() - started}
    return {"config": name, **json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - started}


def summary(results: dict[str, dict], dry: bool) -> dict:
    def ratio(ours: str, theirs: str, key: str = "trained_tok_s") -> float | None:
        a, b = results.get(ours, {}).get(key), results.get(theirs, {}).get(key)
        return a / b if a and b else None

    def share(ours: str, theirs: str) -> float | None:
        a, b = results.get(ours, {}).get("peak_gb"), results.get(theirs, {}).get("peak_gb")
        return a / b if a and b else None

    def loss_gap(ours: str, theirs: str, key: str) -> float | None:
        a, b = results.get(ours, {}).get(key), results.get(theirs, {}).get(key)
        return abs(a - b) / abs(b) if a is not None and b else None

    check = results.get("packing-check", {})
    return {"summary": True, "device": device_name(), "dry_run": dry,
            "precision": "fp32 weights, bf16 autocast" if not dry else "fp32 (CPU)",
            "sft_full_ratio": ratio("sft-full-tuneful", "sft-full-trl"),
            "sft_lora_ratio": ratio("sft-lora-tuneful", "sft-lora-trl"),
            "dpo_ratio": ratio("dpo-tuneful", "dpo-trl"),
            "grpo_ratio": ratio("grpo-tuneful", "grpo-trl", "completion_tok_s"),
            "qlora_peak_gb": results.get("sft-qlora-tuneful", {}).get("peak_gb"),
            "peak_memory_share_vs_trl": share("sft-full-tuneful", "sft-full-trl"),
            "lora_peak_memory_share_vs_trl": share("sft-lora-tuneful", "sft-lora-trl"),
            "sft_first_loss_relative_gap": loss_gap("sft-full-tuneful", "sft-full-trl", "loss_first"),
            "sft_last_loss_relative_gap": loss_gap("sft-full-tuneful", "sft-full-trl", "loss_last"),
            "packed_relative_loss_diff": check.get("sdpa_relative_loss_diff"),
            "flash_varlen_relative_loss_diff": check.get("flash_varlen_relative_loss_diff"),
            "not_run": {n: (r.get("skipped") or r.get("failed", ""))[:300] for n, r in results.items()
                        if "skipped" in r or "failed" in r},
            "wheels_missing": sorted(wheels()["missing"]), "optional_missing": sorted(wheels()["optional_missing"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every path on the CPU with a tiny model")
    parser.add_argument("--wheels", action="store_true", help="list what the device needs besides its image")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the fixtures' Qwen2.5)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tuneful-bench-gpu-run"))
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    plan = Plan(args.dry_run)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.workdir, plan, args.out)))
        return
    if args.wheels:
        listed = wheels()
        print(json.dumps(listed))
        sys.exit(1 if listed["missing"] else 0)  # scripts/gpu-run stops here rather than fail in every worker
    if not args.dry_run and not cuda():
        print(json.dumps({"summary": True, "device": "cpu", "skipped": "needs a CUDA GPU; --dry-run runs every path "
                                                                     "on the CPU"}))
        return
    workdir = args.workdir / ("dry" if args.dry_run else "device")
    started = time.perf_counter()
    prepare(workdir, plan, args.tokenizer)
    results: dict[str, dict] = {}
    for name in [n for n in args.only.split(",") if n]:
        results[name] = run_config(name, workdir, args.dry_run)
        print(json.dumps(results[name]), flush=True)
    print(json.dumps({**summary(results, args.dry_run), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
