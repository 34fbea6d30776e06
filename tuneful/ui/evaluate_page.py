"""The Evaluate page of ``tuneful ui``: ``tuneful eval`` on several models and the same prompts, run as a process
of its own (:mod:`.runs`); its report, plots and the answers side by side once it finishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from . import runs
from .page_parts import SANDBOX, failed, latest_run, model_choices, picture
from .paths import RootFolder


def evaluate_page(app: gr.Blocks, root: RootFolder) -> None:
    gr.Markdown("Run `tuneful eval` on the same prompts for several models (base, tuned, adapters): instruction "
                "checks, sandbox accuracy, held-out loss, stop rate; answers side by side.")
    with gr.Row():
        models = gr.Textbox(value=SANDBOX, label="Models (comma-separated: folders under the root, hf:owner/name ids, adapters, "
                                                 "'sandbox')", elem_id="eval-models", scale=3)
        names = gr.Textbox(label="Names (comma-separated, optional)", elem_id="eval-names", scale=2)
    with gr.Row():
        prompts = gr.Textbox(value=SANDBOX, label="Prompts (a JSONL file under the root, or 'sandbox')",
                             elem_id="eval-prompts", scale=2)
        out = gr.Textbox(value="evals/eval", label="Report folder (under the root)", elem_id="eval-out", scale=2)
        limit = gr.Number(value=20, precision=0, label="Only the first N prompts (0: all)", elem_id="eval-limit",
                          scale=1)
        max_new = gr.Number(value=64, precision=0, label="Max new tokens", scale=1)
    found = gr.CheckboxGroup(label="Models under the root (ticking fills the box above)", choices=[SANDBOX],
                             elem_id="eval-found")
    start = gr.Button("Run the evaluation", variant="primary", elem_id="eval-run")
    state = gr.Markdown(elem_id="eval-status")
    watched = gr.Textbox(label="Report folder being shown", elem_id="eval-watch")
    log = gr.Textbox(label="Log", lines=6, max_lines=6, elem_id="eval-log")
    report = gr.Markdown(elem_id="eval-report")
    with gr.Row():
        summary_plot = gr.Image(type="pil", label="summary.png", elem_id="eval-plot")
        loss_plot = gr.Image(type="pil", label="heldout_loss.png", elem_id="eval-loss-plot")
    answers = gr.Dataframe(label="Answers side by side", interactive=False, wrap=True, elem_id="eval-answers")

    def run(model_text: str, name_text: str, prompt_text: str, out_text: str, first: float, new_tokens: float) -> list[Any]:
        try:
            specs = [root.source(m, names=(SANDBOX,)) for m in model_text.split(",") if m.strip()]
            if not specs:
                raise ValueError("name at least one model")
            prompt_source = root.source(prompt_text, names=(SANDBOX,)) or SANDBOX
            folder = root.path(out_text or "evals/eval")
        except (ValueError, OSError) as exc:
            return [failed(exc), gr.skip()]
        args = ["eval", "--models", ",".join(root.relative(s) if Path(s).is_absolute() else s for s in specs),
                "--prompts", root.relative(prompt_source) if Path(prompt_source).is_absolute() else prompt_source,
                "--out", root.relative(folder), "--max-new-tokens", str(int(new_tokens or 64))]
        if name_text.strip():
            args += ["--names", name_text.strip()]
        if first:
            args += ["--limit", str(int(first))]
        try:
            info = runs.launch(folder, args, "eval", cwd=root.root)
        except RuntimeError as exc:
            return [failed(exc), gr.skip()]
        return [f"✅ started `{info.command}`", root.relative(folder)]

    def show(folder_text: str) -> list[Any]:
        if not folder_text:
            return ["", "", "", None, None, None]
        try:
            folder = root.path(folder_text, must_exist=True)
        except (ValueError, OSError) as exc:
            return [failed(exc), "", "", None, None, None]
        state_text = f"**{root.relative(folder)}** — {runs.status(folder)}"
        report_file = folder / "report.md"
        if runs.status(folder) != "finished" or not report_file.exists():
            return [state_text, runs.log_tail(folder, 12), "", None, None, None]
        return [state_text, runs.log_tail(folder, 12), report_file.read_text(), picture(folder / "summary.png"),
                picture(folder / "heldout_loss.png"), _side_by_side(folder)]

    found.input(lambda ticked: ", ".join(ticked), found, models)
    app.load(lambda: gr.update(choices=model_choices(root)), None, found)
    start.click(run, [models, names, prompts, out, limit, max_new], [state, watched])
    gr.Timer(2.0).tick(show, watched, [state, log, report, summary_plot, loss_plot, answers])
    app.load(lambda: latest_run(root, kinds=("eval",)), None, watched)


def _side_by_side(folder: Path) -> Any:
    """answers.jsonl as one row per prompt, one column per model."""
    import pandas as pd

    by_prompt: dict[str, dict[str, str]] = {}
    models: list[str] = []
    for line in (folder / "answers.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["model"] not in models:
            models.append(row["model"])
        by_prompt.setdefault(row["prompt"], {})[row["model"]] = row["answer"]
    return pd.DataFrame([{"prompt": p, **a} for p, a in by_prompt.items()], columns=["prompt", *models])
