#!/usr/bin/env python
"""tuneful GRPO vs TRL's GRPOTrainer (transformers generation, no vLLM): same tiny Llama, tokenizer,
prompts, reward function, group size, completion cap, loss type and steps.

Each configuration trains in its own subprocess (its own peak RSS), in alternating rounds. Both sample
with temperature 1 from the current policy, reward with the same Python function (shorter replies score
higher), normalise within groups and take one DAPO-normalised step per batch (no KL, so no reference).
Throughput is *trained completions per second* over the training loop's wall time, generation included
(tuneful generates each step's completions in one batched KV-cache pass, sorted by prompt length, and
trains each group as one row with its prompt encoded once; ``tuneful-rows`` trains a row per
completion, as TRL does, to show what that layout is worth). ``loss_abs_diff`` compares the loss each framework computes for the same fixed completions and
advantages on the starting weights.

    python bench/grpo_vs_trl.py --quick     # ~3 min on 2 cores; last line is JSON
    python bench/grpo_vs_trl.py             # more steps, two rounds
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

from dpo_vs_trl import prepare  # noqa: E402
from sft_vs_trl import SEED, alternate, count_params, peak_rss_mb, peer_bench_args  # noqa: E402

PROMPTS_PER_STEP, GROUP, MAX_NEW, LR = 4, 4, 32, 1e-5


def short_reply(prompt, completion, record):
    """tuneful's reward: 1 for an empty reply, falling with its length."""
    return 1.0 - min(len(completion), 200) / 200


def short_reply_batch(completions, **kwargs):
    """The same reward with TRL's signature (conversational completions: lists of messages)."""
    return [short_reply(None, c[0]["content"] if isinstance(c, list) else c, None) for c in completions]


def write_prompts(workdir: Path) -> None:
    pairs = [json.loads(line) for line in (workdir / "pairs.jsonl").read_text().splitlines()]
    (workdir / "prompts.jsonl").write_text("".join(json.dumps({"messages": p["prompt"]}) + "\n" for p in pairs))


def fixed_completions(workdir: Path) -> list[dict]:
    """Two prompts x GROUP completions of random tokens with advantages: what both losses are computed on."""
    from transformers import AutoTokenizer

    from tuneful.infer.chat_model import ChatModel
    from tuneful.templates.registry import resolve

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    render = ChatModel("bench", None, tok, resolve(None, tok), [], [], 0)
    prompts = [json.loads(line)["messages"] for line in (workdir / "prompts.jsonl").read_text().splitlines()]
    lengths = sorted({len(render.prompt_ids(p)): p for p in prompts}.items())
    prompt = render.prompt_ids(lengths[len(lengths) // 2][1])  # one prompt: TRL left-pads prompts, tuneful does not
    rng = random.Random(SEED)
    return [{"prompt_ids": prompt, "ids": [rng.randrange(5, len(tok)) for _ in range(rng.randint(3, MAX_NEW))],
             "advantage": rng.uniform(-1.5, 1.5)} for _ in range(2 * GROUP)]


def worker_tuneful(workdir: Path, steps: int, out: Path, layout: str = "auto") -> dict:
    import torch

    from tuneful.config import build
    from tuneful.rl.config import GRPOConfig
    from tuneful.rl.losses import clipped_policy_gradient
    from tuneful.rl.rollout import Completion, CompletionLogps, completion_inputs
    from tuneful.rl.trainer import GRPOTrainer, aggregate_token_losses

    cfg = build(GRPOConfig, None, [
        f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'prompts.jsonl'}",
        f"train.output_dir={out}", f"train.max_steps={steps}", f"train.micro_batch_size={PROMPTS_PER_STEP}",
        f"train.lr={LR}", "train.progress=false", "train.report_to=", "train.resume=false", f"train.seed={SEED}",
        f"grpo.rewards=python:{Path(__file__).resolve()}:short_reply", f"grpo.group_size={GROUP}",
        f"grpo.max_new_tokens={MAX_NEW}", "grpo.loss=dapo", f"grpo.layout={layout}"])
    started = time.perf_counter()
    trainer = GRPOTrainer(cfg).setup()
    setup_seconds = time.perf_counter() - started
    fixed = [Completion(0, c["prompt_ids"], c["ids"], "", True, 0.0, c["advantage"])
             for c in json.loads((workdir / "fixed.json").read_text())]
    inputs = completion_inputs(fixed, trainer.pad_token_id)
    with torch.no_grad():
        logps = CompletionLogps(trainer.model)(**inputs.model_args())
        terms = clipped_policy_gradient(logps, logps, inputs.advantages[inputs.sequence])
        step0 = float(aggregate_token_losses(terms.token_losses, inputs.sequence, inputs.lengths, loss="dapo",
                                             step_completions=len(fixed), step_tokens=int(inputs.lengths.sum()),
                                             max_new_tokens=MAX_NEW))
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    trainer.acc.end_training()
    rows = [r for r in result.history if "reward_mean" in r]
    return {"framework": "tuneful" + ("" if layout == "auto" else f"-{layout}"), "step0_loss": step0, "seconds": seconds, "setup_seconds": setup_seconds,
            "completions": sum(r["completions"] for r in rows),
            "completion_tokens": sum(r["completion_length"] * r["completions"] for r in rows),
            "reward_first": rows[0]["reward_mean"], "reward_last": rows[-1]["reward_mean"],
            "peak_rss_mb": peak_rss_mb(), "params": count_params(trainer.model)}


def worker_trl(workdir: Path, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    rows = [{"prompt": json.loads(line)["messages"]} for line in (workdir / "prompts.jsonl").read_text().splitlines()]
    args = GRPOConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        num_generations=GROUP, max_completion_length=MAX_NEW, gradient_accumulation_steps=1, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.0,
        loss_type="dapo", temperature=1.0, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        seed=SEED, logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
        disable_tqdm=True)
    started = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=short_reply_batch, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok)
    setup_seconds = time.perf_counter() - started
    fixed = json.loads((workdir / "fixed.json").read_text())
    width = max(len(c["ids"]) for c in fixed)
    completion_ids = torch.full((len(fixed), width), tok.pad_token_id)
    completion_mask = torch.zeros((len(fixed), width), dtype=torch.long)
    for row, c in enumerate(fixed):
        completion_ids[row, : len(c["ids"])] = torch.tensor(c["ids"])
        completion_mask[row, : len(c["ids"])] = 1
    prompt = torch.tensor([c["prompt_ids"] for c in fixed])
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        step0 = float(trainer._compute_loss(trainer.model, {
            "prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.tensor([c["advantage"] for c in fixed]),
            "num_items_in_batch": completion_mask.sum()}))
    trainer._metrics["train"].clear()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logs = [r for r in trainer.state.log_history if "reward" in r]
    return {"framework": "trl", "step0_loss": step0, "seconds": seconds, "setup_seconds": setup_seconds,
            "completions": steps * PROMPTS_PER_STEP * GROUP,
            "completion_tokens": sum(r.get("completions/mean_length", 0) for r in logs) * PROMPTS_PER_STEP * GROUP,
            "reward_first": logs[0]["reward"] if logs else None, "reward_last": logs[-1]["reward"] if logs else None,
            "peak_rss_mb": peak_rss_mb(), "params": count_params(model)}


WORKERS = {"trl": worker_trl, "tuneful": worker_tuneful,
           "tuneful-rows": lambda w, s, o: worker_tuneful(w, s, o, "rows")}


def main() -> None:
    args = peer_bench_args(__doc__, WORKERS, "/tmp/tuneful-bench-grpo", "fewer steps, one round (~1 min)")
    if args is None:
        return
    steps = args.steps or (8 if args.quick else 20)
    rounds = args.rounds or (1 if args.quick else 2)
    prepare(args.workdir, 64)
    write_prompts(args.workdir)
    (args.workdir / "fixed.json").write_text(json.dumps(fixed_completions(args.workdir)))
    names = ["trl", "tuneful", "tuneful-rows"]
    results = alternate(names, args.workdir, steps, rounds, __file__)

    def per_s(name: str, key: str = "completions") -> float:
        return statistics.median(x[key] / x["seconds"] for x in results[name])

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    trl, ours = results["trl"][0], results["tuneful"][0]
    print(f"\n{steps} steps x {PROMPTS_PER_STEP} prompts x {GROUP} completions (cap {MAX_NEW} tokens), rounds {rounds}, "
          f"model {ours['params'] / 1e6:.2f}M params")
    print(f"loss on the same fixed completions: tuneful {ours['step0_loss']:.7f}  trl {trl['step0_loss']:.7f}  "
          f"|diff| {abs(ours['step0_loss'] - trl['step0_loss']):.2e}")
    print(f"{'framework':<14}{'completions/s':>15}{'vs trl':>8}{'tokens/s':>10}{'reward first→last':>20}"
          f"{'peak RSS MB':>13}")
    for name in names:
        x = results[name][0]
        print(f"{name:<14}{per_s(name):>15.2f}{per_s(name) / per_s('trl'):>7.2f}x{per_s(name, 'completion_tokens'):>10,.0f}"
              f"{x['reward_first']:>11.3f} → {x['reward_last']:.3f}{median(name, 'peak_rss_mb'):>13,.0f}")
    print(json.dumps({"tuneful_completions_s": per_s("tuneful"), "trl_completions_s": per_s("trl"),
                      "ratio": per_s("tuneful") / per_s("trl"),
                      "loss_abs_diff": abs(ours["step0_loss"] - trl["step0_loss"]),
                      "tuneful_peak_rss_mb": median("tuneful", "peak_rss_mb"),
                      "trl_peak_rss_mb": median("trl", "peak_rss_mb")}))


if __name__ == "__main__":
    main()
