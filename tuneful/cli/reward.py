"""``tuneful rm score`` (score data with a reward model); ``tuneful rm train`` is the registry's (:mod:`tuneful.registry`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import fail

RM_HELP = "Reward models: train one on preference pairs, score conversations with it."


def score(
    model: Path = typer.Argument(..., help="Reward-model folder written by tuneful rm train."),
    data: str = typer.Argument(..., help="Conversations ending with an assistant reply, or preference pairs "
                                         "(any format tuneful data convert reads)."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL of scores, one line per record."),
    batch_size: int = typer.Option(16, "--batch-size"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the checkpoint."),
) -> None:
    """Score every record; for pairs, chosen and rejected and the pair accuracy. The last stdout line is JSON."""
    from ..data.loader import load
    from ..preference.reward_score import RewardScorer

    try:
        loaded = load(data)
        scorer = RewardScorer(model, batch_size=batch_size, trust_remote_code=trust_remote_code)
        if loaded.preferences:
            chosen, rejected = scorer.score_pairs(loaded.preferences)
            rows = [{"index": k, "chosen_reward": c, "rejected_reward": r} for k, (c, r) in enumerate(zip(chosen, rejected))]
            summary = {"pairs": len(rows), "pair_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(rows),
                       "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(rows)}
        else:
            items = loaded.conversations or loaded.labeled
            if not items:
                fail(f"{data}: no conversations or preference pairs to score")
            from ..data.types import Conversation

            rewards = scorer.score([Conversation(c.messages, inputs=c.inputs) for c in items])
            rows = [{"index": k, "reward": r} for k, r in enumerate(rewards)]
            summary = {"scored": len(rows), "mean_reward": sum(rewards) / len(rows)}
    except (OSError, ValueError) as exc:
        fail(str(exc))
    if out is not None:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary["out"] = str(out)
    typer.echo(json.dumps(summary))
