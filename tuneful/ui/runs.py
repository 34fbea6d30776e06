"""Runs the UI starts — trainings and evaluations — each a ``tuneful …`` process in its own folder.

A run *is* its folder: ``ui_run.json`` (the command, its kind, when, the process id), ``run.log`` (the
process's output), ``exit_code`` once it ends, and what the command writes there (``metrics.jsonl``,
``checkpoints/``, ``model/``, ``loss.png``; an evaluation's ``report.json``). The process runs in a
session of its own, so a page reload or closing the UI does not stop it; every page reads the state
back from the folder. Resuming starts the same command again: trainers resume from the latest
checkpoint in their output folder by default (``train.resume``).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..train.metrics import read_metrics

RUN_FILE, LOG_FILE, EXIT_FILE = "ui_run.json", "run.log", "exit_code"
_SEARCH_DEPTH = 4  # how deep under the root the Runs page looks for run folders


def shown_command(args: list[str]) -> str:
    """The command as a person would type it."""
    return "tuneful " + shlex.join(args)


def launch(folder: Path, args: list[str], kind: str, *, cwd: Path) -> "RunInfo":
    """Start ``tuneful ARGS`` writing into ``folder`` (its log, its exit code); returns at once."""
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()  # the shell writes the exit code there whatever its working directory
    if status(folder) == "running":
        raise RuntimeError(f"{folder} already has a running process; stop it first")
    (folder / EXIT_FILE).unlink(missing_ok=True)
    log, exit_file = folder / LOG_FILE, folder / EXIT_FILE
    argv = [sys.executable, "-m", "tuneful.cli.main", *args]
    with log.open("a") as fh:
        fh.write(f"$ {shown_command(args)}\n")
    # The shell outlives a stop (its trap is a no-op; a caught signal is reset for the command it starts) to
    # write the command's exit status: 143 after SIGTERM.
    script = (f"trap true TERM INT; {shlex.join(argv)} >> {shlex.quote(str(log))} 2>&1; "
              f"echo $? > {shlex.quote(str(exit_file))}")
    process = subprocess.Popen(["/bin/sh", "-c", script], cwd=cwd, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    threading.Thread(target=process.wait, daemon=True).start()  # reaps the shell if it ends while the UI lives
    info = {"args": args, "command": shown_command(args), "kind": kind, "pid": process.pid,
            "pid_created": _created(process.pid), "started": time.time()}
    (folder / RUN_FILE).write_text(json.dumps(info, indent=2))
    return read_info(folder)


@dataclass(frozen=True)
class RunInfo:
    folder: Path
    args: list[str]
    command: str
    kind: str
    pid: int | None
    started: float


def read_info(folder: Path) -> RunInfo:
    """The run's record; a training folder the UI did not start (``tuneful sft`` in a terminal) gets one
    from what it wrote."""
    path = folder / RUN_FILE
    if path.exists():
        info = json.loads(path.read_text())
        return RunInfo(folder, info["args"], info["command"], info["kind"], info.get("pid"), info["started"])
    metrics_file = folder / "metrics.jsonl"
    started = (metrics_file if metrics_file.exists() else folder).stat().st_mtime
    return RunInfo(folder, [], "(started outside the UI)", "training", None, started)


def _created(pid: int) -> float | None:
    """When the process got its number (set at fork, kept through exec): with the number, who it is."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, created: float | None) -> bool:
    """The run's shell is still there: the process exists, is not a zombie, and is the one started then,
    not another process that got the number later. (Its command line cannot tell: it reads empty while
    the shell is still inside exec, right after the launch returns.)"""
    try:
        process = psutil.Process(pid)
        if created is not None and abs(process.create_time() - created) > 1e-3:
            return False
        return process.status() != psutil.STATUS_ZOMBIE  # a zombie has ended and is not yet reaped
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def exit_code(folder: Path) -> int | None:
    try:
        return int((folder / EXIT_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def status(folder: Path) -> str:
    """running, finished, stopped, failed (exit N), or ended (no exit code; finished if it wrote a model)."""
    path = folder / RUN_FILE
    info = json.loads(path.read_text()) if path.exists() else {}
    # Whether the shell lives is asked before its exit code is read: a shell that ends between the two has
    # written the code by then. Read the other way round, a run ending in between reads as "ended".
    alive = bool(info.get("pid")) and _alive(info["pid"], info.get("pid_created"))
    code = exit_code(folder)
    if code is not None:
        return "finished" if code == 0 else "stopped" if code in (143, -signal.SIGTERM) else f"failed (exit {code})"
    if alive:
        return "running"
    if (folder / "model" / "tuneful.json").exists() or (folder / "report.json").exists():
        return "finished"
    return "ended" if path.exists() else "unknown"


def stop(folder: Path) -> bool:
    """Send SIGTERM to the run's process group; False when it is not running."""
    info = read_info(folder)
    if info.pid is None or status(folder) != "running":
        return False
    os.killpg(info.pid, signal.SIGTERM)
    return True


def resume(folder: Path, *, cwd: Path) -> RunInfo:
    """Start the run's command again (a trainer resumes from its latest checkpoint)."""
    info = read_info(folder)
    if not info.args:
        raise ValueError(f"{folder} was not started from the UI: resume it with its own command")
    with (folder / LOG_FILE).open("a") as fh:
        fh.write("\n--- resumed ---\n")
    return launch(folder, info.args, info.kind, cwd=cwd)


def log_tail(folder: Path, lines: int = 40) -> str:
    """The last lines of the run's output (progress-bar redraws as lines of their own)."""
    path = folder / LOG_FILE
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def metrics(folder: Path) -> list[dict]:
    """The rows of the run's ``metrics.jsonl`` (a row being written is left out)."""
    path = folder / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (started by the UI, or holding a trainer's ``metrics.jsonl``), newest first."""
    found: set[Path] = set()

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = list(folder.iterdir())
        except OSError:
            return
        names = {e.name for e in entries}
        if RUN_FILE in names or "metrics.jsonl" in names:
            found.add(folder)
        if depth < _SEARCH_DEPTH:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith(".") and \
                        entry.name not in ("checkpoints", "model", "__pycache__"):
                    walk(entry, depth + 1)

    walk(root, 0)
    return sorted(found, key=lambda f: read_info(f).started, reverse=True)


def summary(folder: Path) -> dict:
    """One row of the Runs table."""
    info, rows = read_info(folder), metrics(folder)
    trained = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    return {"kind": info.kind, "status": status(folder), "step": trained[-1]["step"] if trained else 0,
            "loss": trained[-1]["loss"] if trained else None, "eval_loss": evals[-1]["eval_loss"] if evals else None,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started))}
