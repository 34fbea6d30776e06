"""The Runs page of ``tuneful ui``: every run folder under the root (started from the UI or a terminal), their
loss curves overlaid, one run's settings, final metrics and loss plot. It only reads run folders."""

from __future__ import annotations

from typing import Any

import gradio as gr

from . import runs
from .page_parts import picture
from .paths import RootFolder


def runs_page(app: gr.Blocks, root: RootFolder) -> None:
    gr.Markdown("Every run folder under the root (started here or with `tuneful sft …` in a terminal).")
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(headers=["run", "kind", "status", "step", "loss", "held-out loss", "started"],
                         interactive=False, elem_id="runs-table")
    chosen = gr.CheckboxGroup(label="Overlay the curves of", choices=[], elem_id="runs-chosen")
    overlay = gr.LinePlot(x="step", y="value", color="run", label="Train loss by run", y_title="train loss",
                          x_title="optimizer step", elem_id="runs-curves", height=300)
    detail = gr.Dropdown(label="Details of", choices=[], elem_id="runs-detail")
    with gr.Row():
        settings_view = gr.Code(language="yaml", label="Settings", elem_id="runs-settings")
        with gr.Column():
            final = gr.JSON(label="Final metrics", elem_id="runs-final")
            plot = gr.Image(type="pil", label="loss.png", elem_id="runs-plot")

    def listing() -> list[Any]:
        folders = runs.find_runs(root.root)
        rows = []
        for folder in folders:
            s = runs.summary(folder)
            rows.append([root.relative(folder), s["kind"], s["status"], s["step"], s["loss"], s["eval_loss"],
                         s["started"]])
        names = [root.relative(f) for f in folders]
        return [rows, gr.update(choices=names), gr.update(choices=names)]

    def curves(names: list[str]) -> Any:
        import pandas as pd

        points = []
        for name in names or []:
            points += [{"step": r["step"], "value": r["loss"], "run": name}
                       for r in runs.metrics(root.path(name)) if "loss" in r]
        return pd.DataFrame(points or [], columns=["step", "value", "run"])

    def details(name: str | None) -> list[Any]:
        if not name:
            return ["", None, None]
        folder = root.path(name, must_exist=True)
        recipe_file, summary_file = folder / "recipe.yaml", folder / "model" / "tuneful.json"
        settings = recipe_file.read_text() if recipe_file.exists() else \
            summary_file.read_text() if summary_file.exists() else ""
        rows = runs.metrics(folder)
        final_metrics = {**runs.summary(folder), **{k: v for r in rows for k, v in r.items()}} if rows else \
            runs.summary(folder)
        return [settings, final_metrics, picture(folder / "loss.png")]

    refresh.click(listing, None, [table, chosen, detail])
    app.load(listing, None, [table, chosen, detail])
    chosen.change(curves, chosen, overlay)
    detail.change(details, detail, [settings_view, final, plot])
