"""What a run reports while it trains: the JSONL metrics log (TensorBoard beside it when installed)
and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """JSONL metrics (and TensorBoard when installed). On resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, start_step: int, enabled: bool):
        self.path, self.enabled, self.rows = path, enabled, []
        if not enabled:
            return
        if path.exists():
            self.rows = [r for r in _read_metrics(path) if r["step"] <= start_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.tb = _tensorboard(path.parent)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])


def _read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics log. A kill during an append can leave the last line cut short; that row
    belongs to a step after the checkpoint being resumed, so it is dropped. Any other bad line raises."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}:{number}: corrupt metrics line (not the last one)") from None
    return rows


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(folder / "tensorboard"))
    except ImportError:
        return None


class Progress:
    """tqdm bar with loss and tok/s (ETA from tqdm); silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool, desc: str = "sft"):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, loss: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
