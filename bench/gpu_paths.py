#!/usr/bin/env python
"""The GPU paths of SFT on one CUDA device, each in its own process, against TRL's SFTTrainer on the same data.

The model is a random-init Llama (hidden 1024, 12 layers, ~210M parameters); the data is sft_vs_trl's
conversations under ChatML, assistant tokens trained. Configurations:

- ``tuneful``: full fine-tuning, bf16 autocast over fp32 weights, padded batches grouped by length;
- ``trl``: TRL's SFTTrainer in the same precision, batch and learning rate (the peer of the ratio);
- ``tuneful-packed``: packing into max-length rows, examples kept apart by a block-diagonal SDPA mask (rows of
  1024 tokens: several times the tokens of a padded step, so beside the ratio, not in it);
- ``tuneful-flash``: packing with flash_attention_2 (position ids restart per example), when flash-attn is
  installed; otherwise reported as not run, with the reason;
- ``tuneful-lora`` / ``tuneful-qlora``: LoRA r=16 on all linear layers, over bf16-autocast fp32 weights or a
  4-bit NF4 base (bitsandbytes);
- ``trl-lora``: TRL with the same LoRA through its ``peft_config`` (the LoRA ratio's peer).

Before them, ``packing-check`` compares the loss and gradients of 8 conversations packed in one row with each
conversation alone, in bf16 on the device (the kernel SDPA picks for a block mask must keep examples apart).
FSDP is not here: tuneful shards only across processes, and NCCL refuses two processes on one GPU.

Throughput is steady-state: tokens per second of the steps after the first ``WARMUP`` (CUDA's first kernels
and allocations), from tuneful's per-step metrics and from step timestamps in TRL. Peak GPU memory is
``torch.cuda.max_memory_allocated``.

    python bench/gpu_paths.py --quick     # about 5 min on an H200 (mostly process start-up); last line is JSON
    python bench/gpu_paths.py             # 150 steps per configuration

Without a CUDA device it prints that and a JSON line saying so; ``TUNEFUL_GPU_BENCH_SIZE=tiny`` runs every
configuration on a tiny model on the CPU (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_vs_trl import GENERATION_CHATML, SEED, count_params, peer_bench_args, prepare, run_worker  # noqa: E402

HIDDEN, LAYERS, HEADS = 1024, 12, 16
BATCH, MAX_LEN, LR, WARMUP = 32, 1024, 1e-4, 5
CONFIGS = ("tuneful", "trl", "tuneful-packed", "tuneful-flash", "tuneful-lora", "trl-lora", "tuneful-qlora")
# the model's size comes from the environment so a CPU smoke run (TUNEFUL_GPU_BENCH_SIZE=tiny) is quick
SIZES = {"full": (HIDDEN, LAYERS, HEADS), "tiny": (64, 2, 2)}
LORA_R, LORA_ALPHA, LORA_LR = 16, 32, 1e-3  # tuneful's and TRL's LoRA configurations alike
LORA = ("lora.enabled=true", f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}", f"train.lr={LORA_LR}")


def sft_overrides(workdir: Path, steps: int, out: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}",
            f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={BATCH}",
            f"data.max_length={MAX_LEN}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false",
            "train.report_to=", "train.resume=false", f"train.seed={SEED}", "train.log_every=1",
            "data.eval_fraction=0", "train.save_every=0", "data.packing=false", *extra]


def steady_rate(rows: list[dict]) -> dict:
    """Tokens per second over the steps after WARMUP, from tuneful's metrics rows (``tok_s`` per step)."""
    steps = [r for r in rows if "tok_s" in r]
    late = steps[WARMUP:] or steps
    seconds = sum(r["tokens"] / r["tok_s"] for r in late)
    return {"tok_s": sum(r["tokens"] for r in late) / seconds,
            "trained_tok_s": sum(r["trained_tokens"] for r in late) / seconds,
            "steps": len(steps), "final_loss": steps[-1]["loss"], "first_loss": steps[0]["loss"]}


def gpu_facts() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_gpu_mb": None}
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def tuneful_worker(*extra: str):
    def work(workdir: Path, steps: int, out: Path) -> dict:
        from tuneful.config import build
        from tuneful.sft.config import SFTConfig
        from tuneful.sft.trainer import run_sft

        started = time.perf_counter()
        result = run_sft(build(SFTConfig, None, sft_overrides(workdir, steps, out, *extra)))
        return {**steady_rate(result.history), **gpu_facts(), "wall_s": time.perf_counter() - started}
    return work


def flash_worker(workdir: Path, steps: int, out: Path) -> dict:
    if importlib.util.find_spec("flash_attn") is None:
        return {"skipped": "flash-attn is not installed (no wheel for this torch/CUDA could be brought offline)"}
    return tuneful_worker("data.packing=true", "model.attn_implementation=flash_attention_2")(workdir, steps, out)


def qlora_worker(workdir: Path, steps: int, out: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "QLoRA needs a CUDA GPU"}
    try:
        importlib.import_module("bitsandbytes")
    except Exception as error:  # a missing package or one without this CUDA's library
        return {"skipped": f"bitsandbytes does not load: {error}"}
    return tuneful_worker(*LORA, "lora.qlora=true")(workdir, steps, out)


def packing_check(workdir: Path, steps: int, out: Path) -> dict:
    """The summed loss and its gradients of 8 conversations packed into one row (block-diagonal mask) against
    each conversation alone, in the precision training uses on this device: whether the attention kernel the
    mask selects keeps packed examples apart."""
    import torch

    from tuneful.tokenization.batching import Example, collate_packed, collate_padded
    from tuneful.sft.losses import SelectedTokenLoss
    from tuneful.templates.registry import builtin
    from tuneful.tokenization.masking import ConversationTokenizer, labels_from_mask
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32,
                                                 attn_implementation="sdpa").to(device)
    loss = SelectedTokenLoss(model)
    encode = ConversationTokenizer(tok, builtin("chatml"))
    convs = [json.loads(x)["messages"] for x in (workdir / "train.jsonl").read_text().splitlines()[:8]]
    examples = [Example(e.input_ids, labels_from_mask(e.input_ids, e.train_mask)) for e in map(encode, convs)]

    def loss_and_grads(batches):
        model.zero_grad()
        total = 0.0
        for batch in batches:
            with torch.autocast(device, dtype=torch.bfloat16):
                summed, _ = loss(**{k: v.to(device) for k, v in batch.items()})
            summed.backward()
            total += float(summed)
        return total, torch.cat([p.grad.flatten().float() for p in model.parameters()])

    packed, packed_grads = loss_and_grads([collate_packed([examples], pad_id=0)])
    alone, alone_grads = loss_and_grads([collate_padded([e], pad_id=0) for e in examples])
    # the failure the mask prevents, for scale: the same row under one causal mask over all 8 conversations (no
    # block mask, and position ids that do not restart: transformers would rebuild the blocks from restarts)
    leaky_row = collate_packed([examples], pad_id=0, block_mask=False)
    leaky_row["position_ids"] = torch.arange(leaky_row["input_ids"].shape[1]).unsqueeze(0)
    leaky, leaky_grads = loss_and_grads([leaky_row])
    return {"packed_loss": packed, "separate_loss": alone, "relative_loss_diff": abs(packed - alone) / alone,
            "relative_grad_diff": float((packed_grads - alone_grads).norm() / alone_grads.norm()),
            "unmasked_relative_loss_diff": abs(leaky - alone) / alone,
            "unmasked_relative_grad_diff": float((leaky_grads - alone_grads).norm() / alone_grads.norm()),
            "tokens": sum(len(e) for e in examples)}


def trl_worker(workdir: Path, steps: int, out: Path, lora: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(workdir / "model")
    tok.chat_template = GENERATION_CHATML
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(x) for x in (workdir / "train.jsonl").read_text().splitlines()]
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LORA_LR if lora else LR, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=cuda, fp16=False, gradient_checkpointing=False, use_cpu=not cuda, assistant_only_loss=True,
        max_length=MAX_LEN, packing=False, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy="group_by_length",
    )
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config)
    tokens: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        labels = batch["labels"]
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else labels.numel()
        tokens.append((real, int((labels[:, 1:] != -100).sum())))
        return batch

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    late = range(WARMUP, len(ends))
    seconds = ends[-1] - ends[WARMUP - 1]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"tok_s": sum(tokens[i][0] for i in late) / seconds,
            "trained_tok_s": sum(tokens[i][1] for i in late) / seconds, "steps": len(ends),
            "first_loss": losses[0], "final_loss": losses[-1], "wall_s": wall, **gpu_facts(),
            "params": count_params(model)}


WORKERS = {
    "packing-check": packing_check,
    "tuneful": tuneful_worker(),
    "trl": trl_worker,
    "tuneful-packed": tuneful_worker("data.packing=true"),
    "tuneful-flash": flash_worker,
    "tuneful-lora": tuneful_worker(*LORA),
    "trl-lora": lambda w, s, o: trl_worker(w, s, o, lora=True),
    "tuneful-qlora": qlora_worker,
}


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    args = peer_bench_args(__doc__, WORKERS, "/tmp/tuneful-bench-gpu", "40 steps per configuration (about 5 min on an H200)",
                           lambda p: p.add_argument("--only", default=",".join(CONFIGS),
                                                    help="comma-separated configurations to run"))
    if args is None:
        return
    import torch

    if not torch.cuda.is_available() and os.environ.get("TUNEFUL_GPU_BENCH_SIZE", "full") == "full":
        print("no CUDA device: this bench measures GPU paths (TUNEFUL_GPU_BENCH_SIZE=tiny runs it on the CPU as a "
              "smoke test of the script)")
        print(json.dumps({"device": "cpu", "skipped": "needs a CUDA GPU"}))
        return
    steps = args.steps or (40 if args.quick else 150)
    names = [n for n in args.only.split(",") if n]
    prepare(args.workdir, max(2000, steps * BATCH), max_len=MAX_LEN,
            size=SIZES[os.environ.get("TUNEFUL_GPU_BENCH_SIZE", "full")])
    check = run_worker("packing-check", args.workdir, steps, 0, script=__file__)
    print(f"packing check: {json.dumps(check)}", flush=True)
    results: dict[str, dict] = {}
    for name in names:
        started = time.perf_counter()
        try:
            results[name] = run_worker(name, args.workdir, steps, 0, script=__file__)
        except RuntimeError as error:  # one configuration's failure is reported, the others still run
            results[name] = {"failed": str(error)[-3000:]}
        print(f"{name}: {time.perf_counter() - started:.1f}s {json.dumps(results[name])[:400]}", flush=True)

    print(f"\npacked vs one by one (8 conversations, {check['tokens']} tokens, bf16 autocast): relative loss "
          f"difference {check['relative_loss_diff']:.2e}, relative gradient difference {check['relative_grad_diff']:.2e} "
          f"(one causal mask over the row instead: {check['unmasked_relative_loss_diff']:.2e} and "
          f"{check['unmasked_relative_grad_diff']:.2e})")
    print(f"{device_name()}: {steps} steps x batch {BATCH} (max_length {MAX_LEN}), steady state after "
          f"{WARMUP} steps")
    print(f"{'configuration':<16}{'tok/s':>12}{'trained tok/s':>15}{'peak GPU MB':>13}{'loss first→last':>20}")
    for name in names:
        r = results[name]
        if "tok_s" not in r:
            print(f"{name:<16}  not run: {(r.get('skipped') or r.get('failed', ''))[:200]}")
            continue
        peak = f"{r['peak_gpu_mb']:,.0f}" if r.get("peak_gpu_mb") else "-"
        print(f"{name:<16}{r['tok_s']:>12,.0f}{r['trained_tok_s']:>15,.0f}{peak:>13}"
              f"{r['first_loss']:>10.3f}→{r['final_loss']:<9.3f}")

    def rate(name: str) -> float | None:
        return results.get(name, {}).get("trained_tok_s")

    summary = {"device": device_name(), "steps": steps, "batch": BATCH,
               **{f"{name.replace('-', '_')}_trained_tok_s": rate(name) for name in names},
               "ratio": (rate("tuneful") / rate("trl")) if rate("tuneful") and rate("trl") else None,
               "lora_ratio": (rate("tuneful-lora") / rate("trl-lora")) if rate("tuneful-lora") and rate("trl-lora")
               else None,
               "packed_relative_loss_diff": check["relative_loss_diff"],
               "packed_relative_grad_diff": check["relative_grad_diff"],
               "not_run": {n: (r.get("skipped") or r.get("failed", ""))[:300] for n, r in results.items()
                           if "tok_s" not in r}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
