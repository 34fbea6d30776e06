"""What an SFT run records about its data in the output folder's ``tuneful.json``."""

from __future__ import annotations

from typing import Any


def sft_summary(data: Any, recipe: dict) -> dict:
    return {
        "recipe": recipe,
        "template": data.template.origin,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "preflight_warnings": [str(f) for f in data.preflight_report.warnings],
        "data": data.load_report.summary(),
    }
