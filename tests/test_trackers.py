"""train.report_to: one tiny SFT run reports to TensorBoard, wandb (offline), MLflow (file store) and Trackio
(local) at once; each tracker's own files are read back and hold the run's settings and metrics."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import save_tiny_model, write_data
from tuneful.config import ConfigError, build

REPO = Path(__file__).resolve().parents[1]


def wandb_history(path: Path) -> list[dict]:
    """History rows of an offline wandb run file. wandb 0.31 ships no Python reader for it: the file is a
    7-byte header, then LevelDB-log records (32 KiB blocks; each record a 7-byte header: CRC, length, kind
    1 full / 2 first / 3 middle / 4 last) holding wandb's own protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, rows, pending, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(data):
        if (pos % 32768) > 32768 - 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            pos += 32768 - pos % 32768 if pos % 32768 else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                rows.append({"_step": record.history.step.num, **row})
    return rows


@pytest.mark.slow
def test_every_tracker_reads_back_the_run(tmp_path: Path):
    for name in ("tensorboard", "wandb", "mlflow", "trackio"):
        pytest.importorskip(name, reason=f"{name} is a tracker under test (pip install -e '.[dev]')")
    model, data, out = save_tiny_model(tmp_path / "model"), write_data(tmp_path / "data.jsonl"), tmp_path / "run"
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "WANDB_MODE": "offline"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "tuneful.cli.main", "sft", f"model.name_or_path={model}",
                           f"data.train={data}", "data.template=chatml", "data.allow_template_change=true",
                           "train.max_steps=3", f"train.output_dir={out}", "train.progress=false",
                           "data.eval_fraction=0.2", "train.report_to=tensorboard,wandb,mlflow,trackio"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 3  # trackers kept stdout for the JSON
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    eval_loss = next(r["eval_loss"] for r in rows if "eval_loss" in r)
    assert [s for s, _ in losses] == [1, 2, 3]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("loss")] == [(s, round(v, 5)) for s, v in losses]
    assert events.Images("loss_plot") and "tuneful.json/text_summary" in events.Tags()["tensors"]

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("tuneful").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == losses
    assert run.data.metrics["eval_loss"] == pytest.approx(eval_loss)
    assert run.data.params["train.max_steps"] == "3" and run.data.params["data.template"] == "chatml"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"tuneful.json", "loss.png"}

    [wandb_run] = list((out / "wandb").glob("offline-run-*"))
    history = wandb_history(next(wandb_run.glob("run-*.wandb")))
    assert [(h["_step"], h["loss"]) for h in history if "loss" in h] == losses
    assert json.loads((wandb_run / "files" / "tuneful.json").read_text())["recipe"]["train"]["max_steps"] == 3

    read = subprocess.run([sys.executable, "-c", "import json; from trackio.sqlite_storage import SQLiteStorage; "
                           "print(json.dumps(SQLiteStorage.get_logs(project='tuneful', run='run'), default=str))"],
                          capture_output=True, text=True, env=env, timeout=120)
    logs = json.loads(read.stdout.strip().splitlines()[-1])
    assert [(r["step"], r["loss"]) for r in logs if "loss" in r] == losses
    assert any("loss_plot" in r for r in logs) and any("tuneful.json" in r for r in logs)


def test_unknown_or_missing_trackers_are_named(tmp_path: Path, monkeypatch):
    from tuneful.sft.config import SFTConfig
    from tuneful.train import trackers

    with pytest.raises(ConfigError, match="report_to: comet not among tensorboard, wandb, mlflow, trackio"):
        build(SFTConfig, None, ["model.name_or_path=x", "data.train=y", "train.report_to=comet"])

    def not_installed(*args, **kwargs):
        raise ImportError("no module")

    monkeypatch.setitem(trackers.CLASSES, "wandb", not_installed)
    monkeypatch.setitem(trackers.CLASSES, "tensorboard", not_installed)
    assert trackers.open_trackers(["tensorboard"], tmp_path, "r", {}) == []  # the default is skipped quietly
    with pytest.raises(RuntimeError, match="pip install wandb"):
        trackers.open_trackers(["wandb"], tmp_path, "r", {})
