#!/usr/bin/env python
"""tuneful DPO vs TRL's DPOTrainer: same tiny Llama, tokenizer, preference pairs and hyperparameters.

Each configuration trains in its own subprocess (so its peak RSS is its own), in one run:

- ``trl``: DPOTrainer with ``precompute_ref_log_probs=True`` (its fastest full-weight setting)
- ``tuneful``: reference log-probs precomputed (and cached on disk), shared-prompt layout (each pair
  one row, the prompt encoded once) — the headline ratio
- ``tuneful-two-rows``: the same with the prompt repeated in a row per reply (the flash-attention
  layout, and TRL's), to show what the shared prompt is worth
- ``tuneful-frozen``: a frozen reference copy, run forward every step
- ``tuneful-adapters-off``: LoRA, the reference is the same model with adapters disabled
- ``trl-lora`` (full run only): TRL with the same LoRA settings (its reference: adapters disabled)

TRL gets text pairs whose tokens equal tuneful's (prompt rendered with ChatML, reply + ``<|im_end|>``);
the bench checks the tokenized pairs are identical. Both run fp32 (TRL's default on a CPU is bf16
autocast), no gradient checkpointing. Throughput counts the real (non-pad) tokens of chosen and
rejected rows processed by the training steps (prompt + reply for each reply, 2P + C + R per pair,
whatever layout computed them), over the training loop's wall time; the reference pre-pass is timed
separately. ``computed`` is the share of those tokens the model actually ran over. ``loss_abs_diff`` compares the sigmoid loss each framework computes
on the same first batch for a *probe* policy (another random init) against the precomputed
reference, so the loss is not the trivial log 2 of step 0.

    python bench/dpo_vs_trl.py --quick     # < 4 min on 2 cores; last line is JSON
    python bench/dpo_vs_trl.py             # more steps, two rounds, plus TRL with LoRA
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sft_vs_trl import (SEED, VOCAB, alternate, count_params, make_conversations, peak_rss_mb,  # noqa: E402
                        peer_bench_args, save_random_llama)

BATCH, MAX_LEN, LR, BETA = 4, 1024, 1e-4, 0.1
LORA_R, LORA_ALPHA = 16, 32


def make_pairs(n: int, seed: int) -> list[dict]:
    """Prompt = a conversation up to its last user turn; chosen = its reply; rejected = another one's."""
    convs = make_conversations(n, seed)
    rng = random.Random(seed + 1)
    pairs = []
    for conv in convs:
        messages = conv["messages"]
        other = rng.choice(convs)["messages"][-1]["content"]
        if other == messages[-1]["content"]:
            other = other + " Maybe."
        pairs.append({"prompt": messages[:-1], "chosen": messages[-1]["content"], "rejected": other})
    return pairs


def prepare(workdir: Path, n_pairs: int) -> None:
    from tuneful.samples import train_tokenizer
    from tuneful.templates.registry import builtin

    workdir.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(n_pairs, SEED)
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    texts = [m["content"] for p in pairs for m in p["prompt"]] + [p["chosen"] for p in pairs]
    tok = train_tokenizer(texts, vocab_size=VOCAB)
    tok.chat_template = builtin("chatml").source
    tok.save_pretrained(workdir / "model")
    save_random_llama(workdir / "model", len(tok), MAX_LEN, SEED)
    save_random_llama(workdir / "probe", len(tok), MAX_LEN, SEED + 1)  # the probe policy for the loss comparison


def load_probe(workdir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(workdir / "probe", dtype=torch.float32).eval()


def tokenized_pairs(workdir: Path) -> list[dict]:
    """tuneful's tokenization of the pairs (what both frameworks must train on)."""
    from transformers import AutoTokenizer

    from tuneful.data.loader import load
    from tuneful.preference.pairs import preference_tokenizer, tokenize_pairs
    from tuneful.templates.registry import builtin

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    examples = tokenize_pairs(preference_tokenizer(tok, builtin("chatml")), load(workdir / "pairs.jsonl").preferences)
    return [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids} for e in examples]


# --- workers (each runs in its own process) ----------------------------------------------------------


def worker_tuneful(workdir: Path, steps: int, out: Path, reference: str, layout: str = "auto") -> dict:
    import torch

    from tuneful.config import build
    from tuneful.dpo.config import DPOConfig
    from tuneful.dpo.losses import pair_terms
    from tuneful.preference.reference import ResponseLogps
    from tuneful.dpo.trainer import DPOTrainer

    lora = reference == "adapters-off"
    cfg = build(DPOConfig, None, [
        f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'pairs.jsonl'}",
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={BATCH}",
        f"data.max_length={MAX_LEN}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false", "train.report_to=",
        "train.resume=false", f"train.seed={SEED}", f"dpo.beta={BETA}", f"dpo.reference={reference}",
        f"train.pair_layout={layout}",
        f"lora.enabled={lora}", f"lora.r={LORA_R}", f"lora.alpha={LORA_ALPHA}",
    ])
    started = time.perf_counter()
    trainer = DPOTrainer(cfg).setup()
    setup_seconds = time.perf_counter() - started
    first = list(range(BATCH))
    batch = trainer.policy.pairs.collate([trainer.data.train[i] for i in first], trainer.pad_token_id)
    with torch.no_grad():
        sums, counts = ResponseLogps(load_probe(workdir))(**batch.inputs())
        step0 = float(pair_terms(trainer.objective, cfg.dpo, sums, counts,
                                 trainer.policy.reference("train", first, batch)).pair_loss_sum) / BATCH
    padded = computed = 0
    for step in range(steps):
        for indices in trainer.micro_batches(step):
            b = trainer.policy.pairs.collate([trainer.data.train[i] for i in indices], trainer.pad_token_id)
            padded, computed = padded + b.input_ids.numel(), computed + b.computed
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trainer.acc.end_training()
    tokens = sum(r["tokens"] for r in result.history if "tokens" in r)
    name = "tuneful" if reference == "precomputed" else f"tuneful-{reference}"
    return {"framework": name + ("" if layout == "auto" else f"-{layout}"), "step0_loss": step0,
            "seconds": seconds, "setup_seconds": setup_seconds, "reference_seconds": trainer.policy.precompute_seconds,
            "tokens": tokens, "padding_fraction": 1 - computed / padded, "computed_fraction": computed / tokens,
            "peak_rss_mb": peak_rss_mb(), "params": count_params(trainer.model), "final_loss": result.final_loss}


def worker_trl(workdir: Path, steps: int, out: Path, lora: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tuneful.tokenization.masking import special_tokens_of
    from tuneful.templates.render import render

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    end = tok.eos_token  # <|im_end|>: the end-of-turn, so TRL adds no second one
    rows = []
    for line in (workdir / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        prompt = render(pair["prompt"], tok.chat_template, add_generation_prompt=True,
                        special_tokens=special_tokens_of(tok))
        rows.append({"prompt": prompt, "chosen": pair["chosen"] + end, "rejected": pair["rejected"] + end})
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    args = DPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=not lora, max_length=MAX_LEN,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=SEED, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True,
    )
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_config)
    setup_seconds = time.perf_counter() - started
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    theirs = [{k: trainer.train_dataset[i][k] for k in columns} for i in range(len(trainer.train_dataset))]
    same_tokens = theirs == tokenized_pairs(workdir)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    step0 = None
    if not lora:  # the probe against TRL's precomputed reference log-probs (in the batch)
        from trl.trainer.utils import add_fused_lm_head

        probe = load_probe(workdir)
        add_fused_lm_head(probe, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
        with torch.no_grad():
            step0 = float(trainer.compute_loss(probe, batch))

    counts = {"real": 0, "padded": 0}
    collate = trainer.data_collator

    def counting_collator(examples):
        out_batch = collate(examples)
        counts["real"] += int(out_batch["attention_mask"].sum())
        counts["padded"] += out_batch["attention_mask"].numel()
        return out_batch

    trainer.data_collator = counting_collator
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"framework": "trl-lora" if lora else "trl", "step0_loss": step0, "seconds": seconds,
            "setup_seconds": setup_seconds, "reference_seconds": None, "tokens": counts["real"],
            "padding_fraction": 1 - counts["real"] / max(1, counts["padded"]), "computed_fraction": 1.0,
            "peak_rss_mb": peak_rss_mb(),
            "params": count_params(model), "final_loss": losses[-1] if losses else None, "same_tokens": same_tokens}


WORKERS = {
    "trl": lambda w, s, o: worker_trl(w, s, o, lora=False),
    "tuneful": lambda w, s, o: worker_tuneful(w, s, o, "precomputed"),
    "tuneful-two-rows": lambda w, s, o: worker_tuneful(w, s, o, "precomputed", "two-rows"),
    "tuneful-frozen": lambda w, s, o: worker_tuneful(w, s, o, "frozen"),
    "tuneful-adapters-off": lambda w, s, o: worker_tuneful(w, s, o, "adapters-off"),
    "trl-lora": lambda w, s, o: worker_trl(w, s, o, lora=True),
}


def main() -> None:
    args = peer_bench_args(__doc__, WORKERS, "/tmp/tuneful-bench-dpo",
                           "fewer steps, one round, no TRL-LoRA run (< 4 min)",
                           lambda parser: parser.add_argument("--pairs", type=int, default=None,
                                                              help="preference pairs in the data set"))
    if args is None:
        return
    steps = args.steps or (20 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 2)
    n_pairs = args.pairs or (200 if args.quick else 800)
    prepare(args.workdir, n_pairs)
    names = ["trl", "tuneful", "tuneful-two-rows", "tuneful-frozen", "tuneful-adapters-off"]
    names += [] if args.quick else ["trl-lora"]
    results = alternate(names, args.workdir, steps, rounds, __file__)

    def tok_s(name: str) -> float:
        return statistics.median(x["tokens"] / x["seconds"] for x in results[name])

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    trl, ours = results["trl"][0], results["tuneful"][0]
    print(f"\n{n_pairs} pairs, {steps} steps x {BATCH} pairs, rounds {rounds}, model {ours['params'] / 1e6:.2f}M params")
    print(f"probe-policy sigmoid loss on the same batch: tuneful {ours['step0_loss']:.6f}  trl {trl['step0_loss']:.6f}  "
          f"|diff| {abs(ours['step0_loss'] - trl['step0_loss']):.2e}; TRL trains on tuneful's tokens: "
          f"{trl['same_tokens']}")
    print(f"{'configuration':<26}{'tok/s':>10}{'vs trl':>8}{'padding':>9}{'computed':>10}{'setup s':>9}"
          f"{'peak RSS MB':>13}")
    for name in names:
        print(f"{name:<26}{tok_s(name):>10,.0f}{tok_s(name) / tok_s('trl'):>7.2f}x{median(name, 'padding_fraction'):>9.1%}"
              f"{median(name, 'computed_fraction'):>10.1%}{median(name, 'setup_seconds'):>9.1f}"
              f"{median(name, 'peak_rss_mb'):>13,.0f}")
    summary = {"tuneful_tok_s": tok_s("tuneful"), "trl_tok_s": tok_s("trl"), "ratio": tok_s("tuneful") / tok_s("trl"),
               "loss_abs_diff": abs(ours["step0_loss"] - trl["step0_loss"]),
               "tuneful_peak_rss_mb": median("tuneful", "peak_rss_mb"), "trl_peak_rss_mb": median("trl", "peak_rss_mb")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
