"""What a run reports while it trains: the JSONL metrics log (and the trackers of ``train.report_to``
beside it, :mod:`tuneful.train.trackers`) and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence


class MetricsLog:
    """JSONL metrics, each row also sent to the trackers. On resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, start_step: int, enabled: bool, trackers: Sequence[Any] = ()):
        self.path, self.enabled, self.rows, self.trackers = path, enabled, [], list(trackers)
        if not enabled:
            return
        if path.exists():
            self.rows = [r for r in read_metrics(path) if r["step"] <= start_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(row)

    def finish(self, files: Sequence[Path]) -> None:
        """Hand the trackers the run's output files (those that exist) and close them."""
        for tracker in self.trackers:
            tracker.finish([f for f in files if f.exists()])
        self.trackers = []


def read_metrics(path: Path) -> list[dict]:
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


class Progress:
    """tqdm bar with loss and tok/s (ETA from tqdm); silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool, desc: str):
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
