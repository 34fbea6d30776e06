#!/usr/bin/env python
"""SFT at real size on this CPU: a Qwen2.5-0.5B-shaped random model, tuneful against TRL's SFTTrainer.

The model has Qwen2.5-0.5B's shape (hidden 896, 14 heads / 2 KV heads, MLP 4,864, tied 151,936-token vocabulary;
24 layers, or 4 with --quick) and random weights; the tokenizer is Qwen2.5's own (from the shared fixtures). The
conversations are ``sft_vs_trl.py``'s generated ones joined to some 700-1,100 tokens, packed for neither (padded
rows of up to 1,024 tokens, ``BATCH`` conversations a step, longer ones truncated by both). Both frameworks train
on assistant tokens only, fp32, each in its own process (peak RSS is each one's own), full and LoRA (r 16,
all-linear), with gradient checkpointing off and on, alternating.

Where the difference comes from: TRL's loss reads the model's full logits, batch x length x 151,936 floats
(and their gradient); tuneful projects only the trained positions, in checkpointed chunks of
``train.loss_chunk_size`` rows (``logits_mb_avoided`` in each row is the full-logits tensor it never builds).

    python bench/real_size.py --quick     # 4 layers, 2 steps, each configuration once; last line is JSON
    python bench/real_size.py             # 24 layers (494M parameters), 3 steps
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sft_vs_trl import (GENERATION_CHATML, make_conversations, peak_rss_mb, peer_bench_args,  # noqa: E402
                        train_counting)

SHAPE = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14, "num_key_value_heads": 2,
         "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 2048}
BATCH, MAX_LEN, LR, SEED, CHUNK = 2, 1024, 1e-5, 0, 256
CONFIGS = [f"{framework}-{kind}-gc{gc}" for kind in ("full", "lora") for gc in ("off", "on")
           for framework in ("tuneful", "trl")]


def fixture_tokenizer() -> Path:
    root = Path(os.environ.get("TUNEFUL_FIXTURES", REPO.parent / "shared" / "fixtures"))
    folder = root / "tokenizers" / "qwen2.5"
    if not folder.exists():
        raise SystemExit(f"needs the Qwen2.5 tokenizer of the shared fixtures ({folder}); set TUNEFUL_FIXTURES")
    return folder


def long_conversations(n: int, seed: int) -> list[dict]:
    """``sft_vs_trl``'s conversations joined until each is some 700-1,100 Qwen tokens (most rows near the
    1,024-token limit, so padding is small for both frameworks and tokens, not steps, dominate the time)."""
    short = make_conversations(12 * n, seed)
    out, at = [], 0
    for _ in range(n):
        messages: list[dict] = []
        while sum(len(m["content"]) for m in messages) < 3200:
            messages += [m for m in short[at]["messages"] if m["role"] != "system"]
            at += 1
        out.append({"messages": messages})
    return out


def prepare(workdir: Path, layers: int) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from tuneful.templates.registry import builtin

    marker = workdir / "prepared-v2"
    if marker.exists():
        return
    workdir.mkdir(parents=True, exist_ok=True)
    convs = long_conversations(120, SEED)
    (workdir / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    tok = AutoTokenizer.from_pretrained(fixture_tokenizer())
    tok.chat_template = builtin("chatml").source
    tok.save_pretrained(workdir / "model")
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=layers, **SHAPE))
    model.save_pretrained(workdir / "model", safe_serialization=True)
    marker.write_text("ok")


def _parts(name: str) -> tuple[str, bool, bool]:
    framework, kind, gc = name.split("-")
    return framework, kind == "lora", gc == "gcon"


def worker(name: str):
    def run(workdir: Path, steps: int, out: Path) -> dict:
        framework, lora, gc = _parts(name)
        return (worker_tuneful if framework == "tuneful" else worker_trl)(workdir, steps, out, lora, gc) | {"name": name}
    return run


def worker_tuneful(workdir: Path, steps: int, out: Path, lora: bool, gc: bool) -> dict:
    import torch

    from tuneful.config import build
    from tuneful.tokenization.batching import Example, collate_padded
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import SFTTrainer
    from tuneful.tokenization.masking import labels_from_mask

    cfg = build(SFTConfig, None, [
        f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}", "data.template=chatml",
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={BATCH}",
        f"data.max_length={MAX_LEN}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false",
        "train.report_to=", "train.resume=false", f"train.seed={SEED}", "train.log_every=1", "data.packing=false",
        f"train.loss_chunk_size={CHUNK}", "train.save_every=0", f"model.gradient_checkpointing={str(gc).lower()}",
        f"lora.enabled={str(lora).lower()}", "lora.r=16", "lora.alpha=32", "data.overlong=truncate", "data.eval_fraction=0",
    ])
    trainer = SFTTrainer(cfg).setup()
    convs = [json.loads(x)["messages"] for x in (workdir / "train.jsonl").read_text().splitlines()[:BATCH]]
    first = [trainer.data.conversation_tokenizer(c) for c in convs]
    batch = collate_padded([Example(e.input_ids[:MAX_LEN], labels_from_mask(e.input_ids, e.train_mask)[:MAX_LEN])
                            for e in first], trainer.pad_token_id)
    with torch.no_grad():
        total, count = trainer.module(**batch)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    rows = [r for r in result.history if "trained_tokens" in r]
    return {"seconds": seconds, "steps": len(rows), "trained_tokens": sum(r["trained_tokens"] for r in rows),
            "tokens": sum(r["tokens"] for r in rows), "step0_loss": float(total) / int(count),
            "peak_rss_mb": peak_rss_mb(),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "logits_mb_avoided": BATCH * MAX_LEN * SHAPE["vocab_size"] * 4 / 2**20}


def worker_trl(workdir: Path, steps: int, out: Path, lora: bool, gc: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    tok.chat_template = GENERATION_CHATML
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    rows = [json.loads(x) for x in (workdir / "train.jsonl").read_text().splitlines()]
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, warmup_steps=0, bf16=False, fp16=False, gradient_checkpointing=gc, use_cpu=True,
        assistant_only_loss=True, max_length=MAX_LEN, packing=False, seed=SEED, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config)
    with torch.no_grad():
        step0 = float(trainer.compute_loss(model, trainer.data_collator([trainer.train_dataset[i]
                                                                         for i in range(BATCH)])))
    seconds, counts = train_counting(trainer)
    return {"seconds": seconds, "steps": steps, "trained_tokens": counts["trained"], "tokens": counts["real"],
            "step0_loss": step0, "peak_rss_mb": peak_rss_mb(),
            "parameters": sum(p.numel() for p in model.parameters()), "logits_mb_avoided": 0.0}


def main() -> None:
    from sft_vs_trl import run_worker

    workers = {name: worker(name) for name in CONFIGS}
    args = peer_bench_args(__doc__, workers, "/tmp/tuneful-bench-real-size", "4 layers, 2 steps, one round",
                           lambda p: p.add_argument("--layers", type=int, default=None))
    if args is None:
        return
    layers = args.layers or (4 if args.quick else 24)
    steps = args.steps or (2 if args.quick else 3)
    rounds = args.rounds or 1
    workdir = args.workdir / f"layers-{layers}"
    prepare(workdir, layers)
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for r in range(rounds):
        for name in CONFIGS:
            results[name].append(run_worker(name, workdir, steps, r, script=__file__))
            x = results[name][-1]
            print(f"round {r + 1}: {name:<22} {x['trained_tokens'] / x['seconds']:8.1f} trained tok/s  "
                  f"peak RSS {x['peak_rss_mb']:8,.0f} MB  step-0 loss {x['step0_loss']:.5f}", flush=True)

    def tok_s(name: str) -> float:
        return statistics.median(x["trained_tokens"] / x["seconds"] for x in results[name])

    def rss(name: str) -> float:
        return statistics.median(x["peak_rss_mb"] for x in results[name])

    table = {}
    for kind in ("full", "lora"):
        for gc in ("off", "on"):
            ours, theirs = f"tuneful-{kind}-gc{gc}", f"trl-{kind}-gc{gc}"
            table[f"{kind}-gc{gc}"] = {"ratio": tok_s(ours) / tok_s(theirs), "peak_rss_share": rss(ours) / rss(theirs),
                                      "tuneful_tok_s": tok_s(ours), "trl_tok_s": tok_s(theirs),
                                      "tuneful_peak_rss_mb": rss(ours), "trl_peak_rss_mb": rss(theirs),
                                      "step0_loss_abs_diff": abs(results[ours][0]["step0_loss"]
                                                                 - results[theirs][0]["step0_loss"])}
    print(f"\n{layers} layers, {results[CONFIGS[0]][0]['parameters'] / 1e6:.0f}M parameters, batch {BATCH} x up to "
          f"{MAX_LEN} tokens, {steps} steps, {rounds} round(s); full logits tuneful never builds: "
          f"{results[CONFIGS[0]][0]['logits_mb_avoided']:,.0f} MB a micro-batch")
    print(f"{'configuration':<14}{'ratio':>8}{'RSS share':>11}{'tuneful tok/s':>15}{'TRL tok/s':>11}"
          f"{'tuneful MB':>12}{'TRL MB':>9}")
    for key, row in table.items():
        print(f"{key:<14}{row['ratio']:>8.2f}{row['peak_rss_share']:>11.2f}{row['tuneful_tok_s']:>15.1f}"
              f"{row['trl_tok_s']:>11.1f}{row['tuneful_peak_rss_mb']:>12,.0f}{row['trl_peak_rss_mb']:>9,.0f}")
    headline = table["full-gcoff"]
    print(json.dumps({"parameters": results[CONFIGS[0]][0]["parameters"], "layers": layers,
                      "ratio": headline["ratio"], "peak_rss_share": headline["peak_rss_share"],
                      "configurations": table}))


if __name__ == "__main__":
    main()
