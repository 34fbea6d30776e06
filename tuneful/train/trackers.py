"""Experiment trackers a run reports to besides ``metrics.jsonl``: TensorBoard, Weights & Biases,
MLflow and Trackio (``train.report_to``, several at once).

Each gets the run's settings when it starts, every logged row (training and held-out metrics, by
step) and, at the end, the loss plot and ``tuneful.json``. Each works offline by default and keeps its
files in the output folder: wandb in offline mode (``WANDB_MODE=online`` to sync), MLflow's file
store under ``output_dir/mlruns`` (unless ``MLFLOW_TRACKING_URI`` is set), Trackio's local database
(``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``), TensorBoard under
``output_dir/tensorboard``. Credentials are read by each library from its own environment; tuneful
never logs them. This module only adapts the libraries' own calls; it writes no format itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, Sequence

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "trackio": "trackio"}


class Tracker(Protocol):
    def log(self, row: dict) -> None: ...

    def finish(self, files: Sequence[Path]) -> None: ...


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_settings(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train.lr": 1e-4, ...}: nested settings as the dotted keys the CLI takes."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_settings(value, name + "."))
        else:
            out[name] = value
    return out


def quiet_stdout() -> Any:
    """Trackers announce themselves on stdout; commands keep stdout for their JSON summary, so it goes to stderr."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


class TensorBoardTracker:
    def __init__(self, folder: Path, run_name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tensorboard"))
        self.writer.add_text("settings", f"```\n{json.dumps(config, indent=2)}\n```")

    def log(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])

    def finish(self, files: Sequence[Path]) -> None:
        for path in files:
            if path.suffix == ".json":
                self.writer.add_text(path.name, f"```\n{path.read_text()}\n```")
            elif path.suffix == ".png":
                from matplotlib.image import imread

                self.writer.add_image(f"{path.stem}_plot", imread(str(path))[..., :3], dataformats="HWC")
        self.writer.close()


class WandbTracker:
    def __init__(self, folder: Path, run_name: str, config: dict):
        import wandb

        with quiet_stdout():
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "tuneful"), name=run_name,
                                  dir=str(folder), config=config, mode=os.environ.get("WANDB_MODE", "offline"),
                                  reinit="create_new")

    def log(self, row: dict) -> None:
        self.run.log(_scalars(row), step=int(row["step"]))

    def finish(self, files: Sequence[Path]) -> None:
        with quiet_stdout():
            for path in files:
                self.run.save(str(path), base_path=str(path.parent), policy="now")
            self.run.finish()


class MLflowTracker:
    def __init__(self, folder: Path, run_name: str, config: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the offline default: MLflow's file store in the output folder (MLflow 3 asks to opt in)
            uri = (folder / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tuneful")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_settings(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, row: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, int(row["step"])) for k, v in _scalars(row).items()])

    def finish(self, files: Sequence[Path]) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    def __init__(self, folder: Path, run_name: str, config: dict):
        import trackio

        self.trackio = trackio
        with quiet_stdout():
            self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "tuneful"), name=run_name,
                                    config=config, embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def log(self, row: dict) -> None:
        self.run.log(_scalars(row), step=int(row["step"]))

    def finish(self, files: Sequence[Path]) -> None:
        media: dict[str, Any] = {}
        for path in files:
            if path.suffix == ".png":
                media[f"{path.stem}_plot"] = self.trackio.Image(str(path))
            elif path.suffix == ".json":
                media[path.name] = self.trackio.Markdown(f"```json\n{path.read_text()}\n```")
        with quiet_stdout():
            if media:
                self.run.log(media)
            self.trackio.finish()  # also clears trackio's current run, so its exit hook has nothing left to do


CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker,
           "trackio": TrackioTracker}


def open_trackers(names: Sequence[str], folder: Path, run_name: str, config: dict) -> list[Tracker]:
    """The trackers named in ``train.report_to``. TensorBoard (the default) is skipped when not installed;
    a tracker asked for by name that is not installed is an error naming the package to install."""
    out: list[Tracker] = []
    try:
        for name in names:
            try:
                out.append(CLASSES[name](folder, run_name, config))
            except ImportError:
                if name == "tensorboard":
                    continue
                raise RuntimeError(f"train.report_to includes {name}, which is not installed. Fix: pip install "
                                   f"{INSTALL[name]}, or remove {name} from train.report_to") from None
    except BaseException:
        for tracker in out:  # close what was opened before the failure
            tracker.finish([])
        raise
    return out
