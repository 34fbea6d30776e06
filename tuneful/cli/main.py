"""The ``tuneful`` command. Sub-commands import heavy libraries lazily so ``--help`` stays fast."""

from __future__ import annotations

from typing import Mapping

import typer

from .data import data_app
from .template import template_app
from .model import model_app
from .sandbox import demo, sandbox_app
from ..registry import TRAINERS, TrainerEntry
from .train import merge, trainer_command
from .evaluate import evaluate
from .generate import generate_cmd
from .curate import curate_cmd
from .use import chat, export, serve
from .reward import RM_HELP, score
from .ui import ui


def make_app(trainers: Mapping[str, TrainerEntry] = TRAINERS) -> typer.Typer:
    """The ``tuneful`` command: the stages' sub-commands and one training command per registered trainer."""
    app = typer.Typer(
        help="tuneful: turn a pretrained base language model into an instruction-following chat model.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.add_typer(data_app, name="data")
    app.add_typer(template_app, name="template")
    app.add_typer(model_app, name="model")
    groups = {"rm": typer.Typer(help=RM_HELP, no_args_is_help=True)}
    groups["rm"].command("score")(score)
    for entry in trainers.values():
        if len(entry.command) == 1:
            app.command(entry.command[0])(trainer_command(entry))
        else:
            groups[entry.command[0]].command(entry.command[1])(trainer_command(entry))
    for name, group in groups.items():
        app.add_typer(group, name=name)
    app.command("merge")(merge)
    app.command("demo")(demo)
    app.add_typer(sandbox_app, name="sandbox")
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.command("export")(export)
    app.command("eval")(evaluate)
    app.command("generate")(generate_cmd)
    app.command("curate")(curate_cmd)
    app.command("ui")(ui)
    return app


app = make_app()


if __name__ == "__main__":  # pragma: no cover
    app()
