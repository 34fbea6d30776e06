#!/usr/bin/env python
"""tuneful SFT vs TRL's SFTTrainer: same tiny Llama, tokenizer, conversations and hyperparameters.

Each framework trains in its own subprocess (so peak RSS is its own), alternating, in one run.
Both train only assistant tokens + the end-of-turn token: TRL through ``assistant_only_loss`` with a
ChatML template carrying ``{% generation %}`` markers (it refuses plain ChatML), tuneful with the
plain built-in ChatML; the bench checks that both render the same text and mask the same tokens.

    python bench/sft_vs_trl.py --quick     # < 4 min on 2 cores; last line is JSON
    python bench/sft_vs_trl.py             # full comparison (more steps, two rounds)

TRL runs in its best CPU configuration: fp32, no gradient checkpointing (its defaults on CPU
stall), padded batches (its packing relies on flash-attention to keep examples apart). The headline
"tuneful" row uses the same batches semantics (8 conversations per step, packing off, grouped by
length) and projects to the vocabulary only at trained positions; "tuneful-packed" adds packing
into 512-token rows with block-diagonal attention (more tokens per step: a different batch size,
so it is reported beside, not in, the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HIDDEN, LAYERS, VOCAB = 256, 4, 4096
SIZE = (HIDDEN, LAYERS, 4)  # hidden, layers, attention heads of the random-init Llama
BATCH, MAX_LEN, LR, SEED = 8, 512, 3e-4, 0
GENERATION_CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

WORDS = ("river stone lantern maple orbit copper meadow signal harbor velvet canyon ember frost willow "
         "granite pepper violet thunder marble saddle cobalt prairie falcon cedar").split()


def make_conversations(n: int, seed: int) -> list[dict]:
    """Multi-turn conversations of varied length (1-3 turns), generated deterministically."""
    rng = random.Random(seed)
    convs = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": "You are a precise assistant."})
        for _turn in range(rng.randint(1, 3)):
            kind = rng.choice(["sum", "list", "echo", "story"])
            if kind == "sum":
                a, b = rng.randint(1, 999), rng.randint(1, 999)
                q, ans = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
            elif kind == "list":
                k = rng.randint(2, 12)
                items = rng.sample(WORDS, k)
                q, ans = f"List {k} words.", "\n".join(f"- {w}" for w in items)
            elif kind == "echo":
                words = " ".join(rng.choices(WORDS, k=rng.randint(3, 20)))
                q, ans = f"Repeat after me: {words}", words
            else:
                words = rng.choices(WORDS, k=rng.randint(20, 90))
                q, ans = "Tell me a short story.", "Once upon a time " + " ".join(words) + "."
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        convs.append({"messages": messages})
    return convs


def prepare(workdir: Path, n_convs: int, *, max_len: int = MAX_LEN, size: tuple[int, int, int] = SIZE) -> None:
    """Data, tokenizer (ChatML template) and the random-init model (``size`` = hidden, layers, heads) both
    frameworks start from."""
    from tuneful.samples import train_tokenizer
    from tuneful.templates.registry import builtin
    from tuneful.templates.render import render

    workdir.mkdir(parents=True, exist_ok=True)
    convs = make_conversations(n_convs, SEED)
    (workdir / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    texts = [m["content"] for c in convs for m in c["messages"]]
    tok = train_tokenizer(texts, vocab_size=VOCAB)
    tok.chat_template = builtin("chatml").source
    for c in convs[:200]:  # the TRL template must render exactly what tuneful renders
        assert render(c["messages"], GENERATION_CHATML) == render(c["messages"], tok.chat_template)
    tok.save_pretrained(workdir / "model")
    save_random_llama(workdir / "model", len(tok), max_len, SEED, size)


def save_random_llama(folder: Path, vocab: int, max_len: int, seed: int,
                      size: tuple[int, int, int] = SIZE) -> None:
    """The benchmark's random-init Llama (``size``: hidden 256, 4 layers, 4 heads unless given), as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads = size
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_len, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- workers (each runs in its own process) ----------------------------------------------------------


def worker_tuneful(workdir: Path, steps: int, out: Path, packing: bool) -> dict:
    import torch

    from tuneful.config import build
    from tuneful.tokenization.batching import Example, collate_padded
    from tuneful.tokenization.masking import labels_from_mask
    from tuneful.sft.config import SFTConfig
    from tuneful.sft.trainer import SFTTrainer

    cfg = build(SFTConfig, None, [
        f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'train.jsonl'}",
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={BATCH}",
        f"data.max_length={MAX_LEN}", f"train.lr={LR}", "train.warmup_ratio=0", "train.schedule=cosine",
        "train.progress=false", "train.report_to=", "train.resume=false", f"train.seed={SEED}", "train.log_every=1",
        f"data.packing={packing}",
    ])
    trainer = SFTTrainer(cfg).setup()
    # step-0 loss on the first BATCH conversations, unpacked, before any update
    convs = [json.loads(x)["messages"] for x in (workdir / "train.jsonl").read_text().splitlines()[:BATCH]]
    first = [trainer.data.conversation_tokenizer(c) for c in convs]
    batch = collate_padded([Example(e.input_ids, labels_from_mask(e.input_ids, e.train_mask)) for e in first],
                           trainer.pad_token_id)
    with torch.no_grad():
        s, n = trainer.module(**batch)
    step0 = float(s) / int(n)
    masks = [[t for t, m in zip(e.input_ids, e.train_mask) if m] for e in first]
    padded = real = 0
    for step in range(steps):  # padding accounting from the exact batches the loop will use
        for b, n_real in trainer.micro_batches(step):
            padded += b["input_ids"].numel()
            real += n_real
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trained = sum(r["trained_tokens"] for r in result.history if "trained_tokens" in r)
    tokens = sum(r["tokens"] for r in result.history if "tokens" in r)
    return {"framework": "tuneful-packed" if packing else "tuneful", "step0_loss": step0, "seconds": seconds, "trained_tokens": trained,
            "tokens": tokens, "padding_fraction": 1 - real / padded, "peak_rss_mb": peak_rss_mb(),
            "params": count_params(trainer.model), "trained_masks": masks,
            "final_loss": result.final_loss}


def worker_trl(workdir: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    tok.chat_template = GENERATION_CHATML
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    rows = [json.loads(x) for x in (workdir / "train.jsonl").read_text().splitlines()]
    args = SFTConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, assistant_only_loss=True,
        max_length=MAX_LEN, packing=False, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    first = [trainer.train_dataset[i] for i in range(BATCH)]
    batch = trainer.data_collator(first)
    with torch.no_grad():
        step0 = float(trainer.compute_loss(model, batch))
    masks = [[t for t, y in zip(ids, labels) if y != -100][:] for ids, labels in
             zip(batch["input_ids"].tolist(), batch["labels"].tolist())]

    seconds, counts = train_counting(trainer)
    return {"framework": "trl", "step0_loss": step0, "seconds": seconds, "trained_tokens": counts["trained"],
            "tokens": counts["real"], "padding_fraction": 1 - counts["real"] / max(1, counts["padded"]),
            "peak_rss_mb": peak_rss_mb(), "params": count_params(model), "trained_masks": masks,
            "final_loss": trainer.state.log_history[-2].get("loss") if len(trainer.state.log_history) > 1 else None}


def train_counting(trainer) -> tuple[float, dict[str, int]]:
    """Train a TRL trainer, counting what its collator hands the model: (seconds, {trained, real, padded})."""
    counts = {"trained": 0, "real": 0, "padded": 0}
    collate = trainer.data_collator

    def counting_collator(examples):
        out_batch = collate(examples)
        labels = out_batch["labels"]
        counts["trained"] += int((labels[:, 1:] != -100).sum())
        counts["real"] += int(out_batch["attention_mask"].sum()) if "attention_mask" in out_batch else labels.numel()
        counts["padded"] += labels.numel()
        return out_batch

    trainer.data_collator = counting_collator
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started, counts


def matmul_peak_gflops(seconds: float = 2.0) -> float:
    """Measured fp32 matmul throughput on this machine (the denominator for utilisation)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - started) / 1e9


def run_worker(name: str, workdir: Path, steps: int, round_no: int, script: str = __file__) -> dict:
    """Run ``script --worker name`` in a fresh process (its own peak RSS); its last stdout line is JSON."""
    out = workdir / f"run-{name}-{round_no}"
    cmd = [sys.executable, script, "--worker", name, "--workdir", str(workdir), "--steps", str(steps),
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer_bench_args(doc: str, workers: dict, workdir: str, quick_help: str,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace | None:
    """The command line every peer bench shares (--quick, --steps, --rounds, --workdir, extras). Run as a
    worker (``--worker NAME``), it runs that worker, prints its JSON and returns None."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per configuration")
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--worker", choices=sorted(workers), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(workers[args.worker](args.workdir, args.steps, args.out)))
        return None
    return args


def alternate(names: Sequence[str], workdir: Path, steps: int, rounds: int, script: str) -> dict[str, list[dict]]:
    """Each configuration once per round, in turn, each in its own process: {name: [result per round]}."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            results[name].append(run_worker(name, workdir, steps, r, script=script))
            print(f"round {r + 1}: {name} trained in {results[name][-1]['seconds']:.1f}s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and one round (< 4 min)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per framework")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tuneful-bench-sft"))
    parser.add_argument("--worker", choices=["tuneful", "tuneful-packed", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "trl":
            result = worker_trl(args.workdir, args.steps, args.out)
        else:
            result = worker_tuneful(args.workdir, args.steps, args.out, packing=args.worker == "tuneful-packed")
        print(json.dumps(result))
        return

    steps = args.steps or (12 if args.quick else 60)
    rounds = args.rounds or (1 if args.quick else 2)
    prepare(args.workdir, 2000)
    names = ("tuneful", "trl", "tuneful-packed")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            results[name].append(run_worker(name, args.workdir, steps, r))
            print(f"round {r + 1}: {name} done in {results[name][-1]['seconds']:.1f}s", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    def tok_s(name: str, key: str) -> float:
        return statistics.median(x[key] / x["seconds"] for x in results[name])

    peak = matmul_peak_gflops()
    t, p = results["tuneful"][0], results["trl"][0]
    same_masks = t["trained_masks"] == p["trained_masks"]
    rows = []
    for name in names:
        model_flops = 6 * results[name][0]["params"] * tok_s(name, "tokens") / 1e9
        rows.append((name, tok_s(name, "trained_tokens"), tok_s(name, "tokens"), median(name, "padding_fraction"),
                     median(name, "peak_rss_mb"), model_flops, model_flops / peak))
    print(f"\nsteps {steps} x batch {BATCH} (max_length {MAX_LEN}), rounds {rounds}, "
          f"model {t['params'] / 1e6:.2f}M params, matmul peak {peak:.1f} GFLOP/s")
    print(f"step-0 loss on the same unpacked batch: tuneful {t['step0_loss']:.6f}  trl {p['step0_loss']:.6f}  "
          f"|diff| {abs(t['step0_loss'] - p['step0_loss']):.2e}; same trained tokens: {same_masks}")
    print(f"{'framework':<15}{'trained tok/s':>15}{'total tok/s':>13}{'padding':>9}{'peak RSS MB':>13}"
          f"{'GFLOP/s':>9}{'of peak':>9}")
    for name, trained, total, pad, rss, gflops, util in rows:
        print(f"{name:<15}{trained:>15,.0f}{total:>13,.0f}{pad:>9.1%}{rss:>13,.0f}{gflops:>9.1f}{util:>9.1%}")
    summary = {
        "tuneful_trained_tok_s": rows[0][1], "trl_trained_tok_s": rows[1][1], "ratio": rows[0][1] / rows[1][1],
        "step0_loss_abs_diff": abs(t["step0_loss"] - p["step0_loss"]),
        "tuneful_peak_rss_mb": rows[0][4], "trl_peak_rss_mb": rows[1][4],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
