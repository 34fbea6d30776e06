"""``tuneful ui``: the pipeline in a browser (:mod:`tuneful.ui`)."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path
from typing import Optional

import typer

from .common import fail


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(auth_env: str) -> tuple[str, str]:
    """USER:PASSWORD from the environment variable named ``auth_env`` (the value is never printed)."""
    value = os.environ.get(auth_env, "")
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        fail(f"--auth-env {auth_env}: set {auth_env}=USER:PASSWORD in the environment (it is {'empty' if not value else 'not USER:PASSWORD'})")
    return user, password


def ui(
    port: int = typer.Option(7860, "--port", help="Port to serve on."),
    root: Path = typer.Option(Path("."), "--root", help="The only folder the pages read and write (file pickers, "
                                                        "recipes, runs); paths outside it are refused."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --auth-env."),
    auth_env: Optional[str] = typer.Option(None, "--auth-env", help="Environment variable holding USER:PASSWORD "
                                                                   "for a login page (required with a non-loopback --host)."),
    stop_runs_on_exit: bool = typer.Option(False, "--stop-runs-on-exit", help="Stop the runs this UI started when it "
                                                                             "closes (by default they keep running)."),
) -> None:
    """Open the web UI: Data (masks), Train (launch and watch runs), Runs, Evaluate, Chat (base vs tuned)."""
    if not _loopback(host) and not auth_env:
        fail(f"--host {host} makes the UI reachable from other machines: also pass --auth-env VAR with "
             "VAR=USER:PASSWORD in the environment (or keep the default --host 127.0.0.1)")
    auth = _credentials(auth_env) if auth_env else None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        from ..ui.app import build_app
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        fail("tuneful ui needs Gradio: pip install 'tuneful[ui]'")
    from ..ui.paths import RootFolder
    from ..ui import runs

    try:
        folder = RootFolder(root)
    except FileNotFoundError as exc:
        fail(str(exc))
    started = time.time()
    app = build_app(folder)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True, quiet=True,
               show_error=True, ssr_mode=False)
    typer.echo(f"Running on http://{host}:{port}")
    typer.echo(f"root folder: {folder.root}; Ctrl+C closes the UI (runs keep going"
               f"{'' if not stop_runs_on_exit else ', except with --stop-runs-on-exit'})")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if stop_runs_on_exit:
            for run in runs.find_runs(folder.root):
                if runs.read_info(run).started >= started:
                    runs.stop(run)
        app.close()
