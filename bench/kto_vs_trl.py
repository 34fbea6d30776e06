#!/usr/bin/env python
"""tuneful KTO vs TRL's KTOTrainer: same tiny Llama, tokenizer, labelled replies and hyperparameters.

The data are the DPO bench's pairs unpaired (chosen → desirable, rejected → undesirable); both
frameworks train on the same tokens (checked). They pick the mismatched replies for KTO's reference
point differently: TRL cycles replies within each batch of its sequential order, tuneful gives each
item the reply of the nearest earlier item with another prompt (fixed, so batches can be shuffled
and reference log-probs precomputed). Each configuration trains in its own subprocess (its own peak RSS), in alternating rounds:

- ``trl``: KTOTrainer with ``precompute_ref_log_probs=True`` (its fastest full-weight setting); it runs
  the reply row and the mismatched-reply row as two padded batches
- ``tuneful``: reference log-probs precomputed (cached on disk), shared-prompt layout (one row per item:
  prompt | reply | mismatched reply, the prompt encoded once) — the headline ratio
- ``tuneful-two-rows``: the same with a row per reply (the flash-attention layout, and TRL's)

Throughput counts the real tokens of both rows of each item (2P + reply + mismatched reply) over the
training loop's wall time. ``loss_abs_diff`` compares the KTO loss each framework computes on TRL's first
batch (its items and its mismatched replies) for a *probe* policy (another random init) against the
starting weights as reference.

    python bench/kto_vs_trl.py --quick     # ~3 min on 2 cores; last line is JSON
    python bench/kto_vs_trl.py             # more steps, two rounds
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpo_vs_trl import load_probe, prepare  # noqa: E402
from sft_vs_trl import SEED, alternate, count_params, peak_rss_mb, peer_bench_args  # noqa: E402

BATCH, MAX_LEN, LR, BETA = 8, 1024, 1e-4, 0.1


def write_labeled(workdir: Path) -> None:
    """Every chosen reply (desirable), then every rejected one: neighbours answer different prompts, so TRL's
    mismatched reply (the previous item's, whatever its prompt) is the one tuneful picks (the nearest earlier
    item with another prompt)."""
    pairs = [json.loads(line) for line in (workdir / "pairs.jsonl").read_text().splitlines()]
    lines = [json.dumps({"messages": pair["prompt"] + [{"role": "assistant", "content": pair[key]}],
                         "label": key == "chosen"}) for key in ("chosen", "rejected") for pair in pairs]
    (workdir / "labeled.jsonl").write_text("\n".join(lines) + "\n")


def worker_tuneful(workdir: Path, steps: int, out: Path, layout: str = "auto") -> dict:
    import torch

    from tuneful.config import build
    from tuneful.preference.reference import ResponseLogps
    from tuneful.kto.config import KTOConfig
    from tuneful.kto.trainer import KTOTrainer, unpaired_loss

    cfg = build(KTOConfig, None, [
        f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'labeled.jsonl'}",
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={BATCH}",
        f"data.max_length={MAX_LEN}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false", "train.report_to=",
        "train.resume=false", f"train.seed={SEED}", f"kto.beta={BETA}", "kto.reference=precomputed",
        f"train.pair_layout={layout}"])
    started = time.perf_counter()
    trainer = KTOTrainer(cfg).setup()
    setup_seconds = time.perf_counter() - started
    # the loss check on TRL's first batch: its mismatched reply for item k is item k-1's within the batch
    block = [trainer.data.train[i] for i in range(BATCH)]
    trl_batch = [replace(e, rejected_ids=block[k - 1].chosen_ids, rejected_mask=block[k - 1].chosen_mask)
                 for k, e in enumerate(block)]
    batch = trainer.policy.pairs.collate(trl_batch, trainer.pad_token_id)
    with torch.no_grad():
        sums, _ = ResponseLogps(load_probe(workdir))(**batch.inputs())
        reference, _ = ResponseLogps(trainer.model)(**batch.inputs())  # the starting weights (nothing trained yet)
        labels = torch.tensor([trainer.data.train_desirable[i] for i in range(BATCH)])
        probe = unpaired_loss(cfg.kto, sums, reference, labels)
        step0, reference_point = float(probe.losses.mean()), float(probe.reference_point)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trainer.acc.end_training()
    tokens = sum(r["tokens"] for r in result.history if "tokens" in r)
    items = [{"prompt_ids": e.prompt_ids, "completion_ids": e.chosen_ids} for e in trainer.data.train]
    (out / "items.json").write_text(json.dumps(items))
    return {"framework": "tuneful" + ("" if layout == "auto" else f"-{layout}"), "step0_loss": step0,
            "reference_point": reference_point,
            "seconds": seconds, "setup_seconds": setup_seconds, "reference_seconds": trainer.policy.precompute_seconds,
            "tokens": tokens, "peak_rss_mb": peak_rss_mb(), "params": count_params(trainer.model),
            "final_loss": result.final_loss}


def worker_trl(workdir: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from tuneful.tokenization.masking import special_tokens_of
    from tuneful.templates.render import render

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    end = tok.eos_token  # <|im_end|>: the end-of-turn, so TRL adds no second one
    rows = []
    for line in (workdir / "labeled.jsonl").read_text().splitlines():
        record = json.loads(line)
        prompt = render(record["messages"][:-1], tok.chat_template, add_generation_prompt=True,
                        special_tokens=special_tokens_of(tok))
        rows.append({"prompt": prompt, "completion": record["messages"][-1]["content"] + end, "label": record["label"]})
    args = KTOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=BETA, precompute_ref_log_probs=True, max_length=MAX_LEN, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, seed=SEED, logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_tqdm=True)
    started = time.perf_counter()
    trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    setup_seconds = time.perf_counter() - started
    from trl.trainer.utils import add_fused_lm_head

    probe = load_probe(workdir)
    add_fused_lm_head(probe, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    with torch.no_grad():
        step0 = float(trainer.compute_loss(probe, batch))
    theirs = [{k: trainer.train_dataset[i][k] for k in ("prompt_ids", "completion_ids")}
              for i in range(len(trainer.train_dataset))]
    counts = {"real": 0}
    collate = trainer.data_collator

    def counting_collator(examples):
        out_batch = collate(examples)
        counts["real"] += int(out_batch["attention_mask"].sum()) + int(out_batch["KL_attention_mask"].sum())
        return out_batch

    trainer.data_collator = counting_collator
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.json").write_text(json.dumps(theirs))
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"framework": "trl", "step0_loss": step0, "seconds": seconds, "setup_seconds": setup_seconds,
            "tokens": counts["real"], "peak_rss_mb": peak_rss_mb(), "params": count_params(model),
            "final_loss": losses[-1] if losses else None}


WORKERS = {
    "trl": worker_trl,
    "tuneful": lambda w, s, o: worker_tuneful(w, s, o),
    "tuneful-two-rows": lambda w, s, o: worker_tuneful(w, s, o, "two-rows"),
}


def main() -> None:
    args = peer_bench_args(__doc__, WORKERS, "/tmp/tuneful-bench-kto", "fewer steps, one round (~2 min)",
                           lambda parser: parser.add_argument("--pairs", type=int, default=None,
                                                              help="pairs unpaired into 2x labelled replies"))
    if args is None:
        return
    steps = args.steps or (15 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 2)
    prepare(args.workdir, args.pairs or (100 if args.quick else 400))
    write_labeled(args.workdir)
    names = ["trl", "tuneful", "tuneful-two-rows"]
    results = alternate(names, args.workdir, steps, rounds, __file__)

    def tok_s(name: str) -> float:
        return statistics.median(x["tokens"] / x["seconds"] for x in results[name])

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    same = [json.loads((args.workdir / f"run-{n}-0" / "items.json").read_text()) for n in ("trl", "tuneful")]
    trl, ours = results["trl"][0], results["tuneful"][0]
    print(f"\n{len(same[1])} labelled replies, {steps} steps x {BATCH}, rounds {rounds}, "
          f"model {ours['params'] / 1e6:.2f}M params")
    print(f"probe-policy KTO loss on the same batch: tuneful {ours['step0_loss']:.6f}  trl {trl['step0_loss']:.6f}  "
          f"|diff| {abs(ours['step0_loss'] - trl['step0_loss']):.2e} (reference point z_ref "
          f"{ours['reference_point']:.4f}); same tokens: {same[0] == same[1]}")
    print(f"{'configuration':<22}{'tok/s':>10}{'vs trl':>8}{'setup s':>9}{'peak RSS MB':>13}")
    for name in names:
        print(f"{name:<22}{tok_s(name):>10,.0f}{tok_s(name) / tok_s('trl'):>7.2f}x"
              f"{median(name, 'setup_seconds'):>9.1f}{median(name, 'peak_rss_mb'):>13,.0f}")
    print(json.dumps({"tuneful_tok_s": tok_s("tuneful"), "trl_tok_s": tok_s("trl"),
                      "ratio": tok_s("tuneful") / tok_s("trl"),
                      "loss_abs_diff": abs(ours["step0_loss"] - trl["step0_loss"]), "same_tokens": same[0] == same[1],
                      "tuneful_peak_rss_mb": median("tuneful", "peak_rss_mb"),
                      "trl_peak_rss_mb": median("trl", "peak_rss_mb")}))


if __name__ == "__main__":
    main()
