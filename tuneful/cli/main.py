"""The ``tuneful`` command. Sub-commands import heavy libraries lazily so ``--help`` stays fast."""

from __future__ import annotations

import typer

from .data import data_app
from .template import template_app
from .model import model_app
from .sandbox import demo, sandbox_app
from .train import dpo, grpo, kto, merge, online_dpo, sft
from .evaluate import evaluate
from .generate import generate_cmd
from .curate import curate_cmd
from .use import chat, export, serve
from .reward import rm_app
from .ui import ui

app = typer.Typer(
    help="tuneful: turn a pretrained base language model into an instruction-following chat model.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(template_app, name="template")
app.add_typer(model_app, name="model")
app.command("sft")(sft)
app.command("dpo")(dpo)
app.command("kto")(kto)
app.command("grpo")(grpo)
app.command("online-dpo")(online_dpo)
app.add_typer(rm_app, name="rm")
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


if __name__ == "__main__":  # pragma: no cover
    app()
