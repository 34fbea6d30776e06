"""The pages of ``tuneful ui`` — Data, Train, Runs, Evaluate, Chat — as one Gradio Blocks app.

Layout and wiring only: every handler calls the package's Python API (the one the CLI calls) or reads a
run folder (:mod:`.runs`); every path typed on a page goes through the root folder (:mod:`.paths`).
Work longer than a page request (training, evaluation) runs as a ``tuneful`` process of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from ..samples import sandbox_base_dir
from ..templates.registry import builtin_names
from ..tokenization.view import KIND_COLOURS, inspect_data, token_kinds
from . import runs
from .forms import TRAINERS, check_form, fields, load_recipe, unknown_settings
from .chat import ChatModels, Side
from .paths import RootFolder

OWN_TEMPLATE = "(the model's or tokenizer's own)"
EXAMPLES_SHOWN = 3
FIELDS_PER_ROW = 3
SANDBOX = "sandbox"


def _failed(exc: BaseException) -> str:
    return f"❌ {exc}"


def build_app(root: RootFolder) -> gr.Blocks:
    chats = ChatModels()
    with gr.Blocks(title="tuneful") as app:
        gr.Markdown(f"# tuneful\nFrom a base model to a chat model. Root folder: `{root.root}` — every path on these "
                    "pages is read from it, and paths outside it are refused.")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                _data_page(root)
            with gr.Tab("Train", id="train"):
                _train_page(app, root)
            with gr.Tab("Runs", id="runs"):
                _runs_page(app, root)
            with gr.Tab("Evaluate", id="evaluate"):
                _evaluate_page(app, root)
            with gr.Tab("Chat", id="chat"):
                _chat_page(app, root, chats)
    return app


def _template_choice(root: RootFolder, choice: str | None) -> str | None:
    """The template setting a page's dropdown stands for: None (the own one), a built-in name, or a .jinja file."""
    if not choice or choice == OWN_TEMPLATE:
        return None
    return choice if choice in builtin_names() else str(root.path(choice, must_exist=True))


# --- Data ---------------------------------------------------------------------------------------------------

def _data_page(root: RootFolder) -> None:
    gr.Markdown("Open a data file (or a Hugging Face dataset id) and see it as training sees it: each conversation "
                "rendered with the template, token by token, the trained tokens highlighted by kind.")
    with gr.Row():
        source = gr.Textbox(label="Data", placeholder="empty: the starter sample shipped with tuneful",
                            elem_id="data-source", scale=3)
        tokenizer = gr.Textbox(label="Tokenizer", placeholder="empty: a tiny tokenizer trained on the starter sample; "
                               "'sandbox': the sandbox model's", elem_id="data-tokenizer", scale=2)
        template = gr.Dropdown([OWN_TEMPLATE, *builtin_names()], value=OWN_TEMPLATE, label="Chat template",
                               allow_custom_value=True, elem_id="data-template", scale=2)
        max_length = gr.Number(label="Max length (tokens)", value=None, precision=0, scale=1)
        start = gr.Number(label="Show from conversation", value=1, minimum=1, precision=0, elem_id="data-first",
                          scale=1)
    with gr.Accordion("Pick a file under the root", open=False):
        picker = gr.FileExplorer(root_dir=root.root, file_count="single", glob="**/*.json*",
                                 ignore_glob="**/.*", label="Data files under the root")
    inspect = gr.Button("Inspect", variant="primary", elem_id="data-inspect")
    message = gr.Markdown(elem_id="data-message")
    examples = [gr.HighlightedText(label=f"Conversation {i + 1} shown", color_map=KIND_COLOURS, show_legend=True,
                                   combine_adjacent=False, elem_id=f"data-example-{i + 1}")
                for i in range(EXAMPLES_SHOWN)]
    findings = gr.Markdown(elem_id="data-findings")
    with gr.Row():
        stats = gr.Dataframe(headers=["statistic", "value"], label="Dataset", interactive=False, elem_id="data-stats")
        lengths = gr.Plot(label="Tokens per training example")

    def pick(path: Any) -> Any:
        return root.relative(path) if path else gr.skip()

    def run(source_text: str, tokenizer_text: str, template_choice: str, limit: float | None,
            first: float | None) -> list[Any]:
        try:
            tokenizer_source = root.source(tokenizer_text, names=(SANDBOX,))
            seen = inspect_data(root.source(source_text),
                                tokenizer=str(sandbox_base_dir()) if tokenizer_source == SANDBOX else tokenizer_source,
                                template=_template_choice(root, template_choice), shown=EXAMPLES_SHOWN,
                                first=max(0, int(first or 1) - 1), max_length=int(limit) if limit else None)
        except Exception as exc:  # the page shows the cause (a refused path, a bad record, a missing file)
            return [_failed(exc), *[None] * EXAMPLES_SHOWN, "", None, None]
        report = seen.loaded.report
        skipped = ", ".join(f"{k}: {v}" for k, v in report.skipped_by_reason.items()) or "none"
        head = (f"**{seen.source}** — format `{report.format}`, template `{seen.template.origin}`; "
                f"{report.records_in} records, {len(seen.loaded.conversations)} conversations; skipped: {skipped}")
        if report.ignored_fields:
            head += "\n\nFields this format's loader does not use: " + ", ".join(
                f"`{name}` ({count})" for name, count in report.ignored_fields.most_common(12))
        if report.skipped:
            head += "\n\nSkipped records (first 20):\n" + "\n".join(
                f"- `{where}`: {reason}" for where, reason in report.skipped[:20])
        shown = [[(text, kind) for text, kind in token_kinds(conv, example)] for conv, example in seen.shown]
        shown += [None] * (EXAMPLES_SHOWN - len(shown))
        lines = [f"- {'❌' if f.severity == 'error' else '⚠️'} {f}" for f in seen.report.findings]
        found = "**Preflight**\n" + ("\n".join(lines) if lines else "✅ all checks passed")
        return [head, *shown, found, [list(row) for row in seen.stats.rows()], _histogram(seen.lengths)]

    picker.change(pick, picker, source)
    inspect.click(run, [source, tokenizer, template, max_length, start], [message, *examples, findings, stats, lengths])


def _histogram(lengths: list[int]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#2e7d32")
    ax.set_xlabel("tokens per training example")
    ax.set_ylabel("examples")
    fig.tight_layout()
    plt.close(fig)
    return fig


# --- Train --------------------------------------------------------------------------------------------------

def _field_id(key: str) -> str:
    return "setting-" + key.replace(".", "-").replace("_", "-")


def _path_problems(root: RootFolder, settings: Any) -> dict[str, list[str]]:
    """Paths a run would read or write must lie inside the root (the shipped sandbox model excepted); a missing
    file is the trainer's to report when it runs."""
    problems: dict[str, list[str]] = {}
    checks = [("train.output_dir", settings.train.output_dir, "write")]
    for name in ("train", "eval", "replay"):
        value = getattr(settings.data, name, None)
        sources = [s.get("path") for s in value if isinstance(s, dict)] if isinstance(value, list) else [value]
        checks += [(f"data.{name}", source, "read") for source in sources]
    checks.append(("model.name_or_path", settings.model.name_or_path, "read"))
    for key, value, use in checks:
        if not isinstance(value, str) or not value or value == str(sandbox_base_dir()):
            continue
        try:
            root.path(value) if use == "write" else root.source(value, must_exist=False)
        except (ValueError, OSError) as exc:
            problems.setdefault(key, []).append(f"{key}: {exc}")
    return problems


def _curve(rows: list[dict]) -> Any:
    """A run's train and held-out loss as the long table a LinePlot draws."""
    import pandas as pd

    points = [{"step": r["step"], "value": r[key], "series": label} for r in rows
              for key, label in (("loss", "train loss"), ("eval_loss", "held-out loss")) if key in r]
    return pd.DataFrame(points or [], columns=["step", "value", "series"])


def _watch(root: RootFolder, folder_text: str) -> list[Any]:
    """Status, log and curve of the run in ``folder_text``."""
    if not folder_text:
        return ["No run yet: launch one above.", "", _curve([])]
    try:
        folder = root.path(folder_text, must_exist=True)
        info, rows = runs.read_info(folder), runs.metrics(folder)
    except (ValueError, OSError) as exc:  # outside the root, missing, or a corrupt metrics line
        return [_failed(exc), "", _curve([])]
    trained = [r for r in rows if "loss" in r]
    state = runs.status(folder)
    line = f"**{root.relative(folder)}** — {info.kind} — **{state}**"
    if trained:
        line += f" — step {trained[-1]['step']}, loss {trained[-1]['loss']:.4f}"
    line += f"\n\n`{info.command}`"
    return [line, runs.log_tail(folder), _curve(rows)]


def _train_page(app: gr.Blocks, root: RootFolder) -> None:
    gr.Markdown("Settings of each trainer, with the defaults and help of `tuneful <trainer> --settings`. Launching "
                "writes the recipe into the output folder and starts `tuneful <trainer> <recipe>` as a process of its "
                "own: it keeps running when the page reloads or the UI closes.")
    with gr.Row():
        trainer = gr.Dropdown(list(TRAINERS), value="sft", label="Trainer", elem_id="train-trainer", scale=1)
        recipe_path = gr.Textbox(label="Recipe YAML under the root", elem_id="train-recipe-path", scale=3)
        load = gr.Button("Load recipe", elem_id="train-load", scale=1)
        starter = gr.Button("The sandbox demo's SFT", elem_id="train-sandbox", scale=1)
    loaded = gr.Markdown(elem_id="train-loaded")
    recipe = gr.State({})
    with gr.Row():
        check = gr.Button("Check settings", elem_id="train-check")
        save_path = gr.Textbox(label="Save recipe as (under the root)", elem_id="train-save-path", scale=2)
        save = gr.Button("Save recipe", elem_id="train-save")
        launch = gr.Button("Launch run", variant="primary", elem_id="train-launch")
    problems = gr.Markdown(elem_id="train-problems")
    # placed below the form (render() further down); made first because the form's buttons write to them
    recipe_view = gr.Code(language="yaml", label="Recipe (what the run reads)", elem_id="train-yaml", render=False)
    watched = gr.Textbox(label="Watching (a run folder under the root)", elem_id="train-watch", scale=3, render=False)

    @gr.render(inputs=[trainer, recipe])
    def form(trainer_name: str, values: dict) -> None:
        settings_class = TRAINERS[trainer_name].settings_class()
        form_fields = fields(settings_class, values)
        boxes: list[Any] = []
        sections = list(dict.fromkeys(f.section for f in form_fields))
        for section in sections:
            in_section = [f for f in form_fields if f.section == section]
            with gr.Accordion(section, open=section in ("model", "data", "train")):
                for start in range(0, len(in_section), FIELDS_PER_ROW):
                    with gr.Row(equal_height=False):
                        for f in in_section[start:start + FIELDS_PER_ROW]:
                            if f.boolean:
                                boxes.append(gr.Checkbox(value=bool(f.value), label=f.key, info=f.help,
                                                         interactive=True, elem_id=_field_id(f.key)))
                            else:
                                boxes.append(gr.Textbox(value=f.text, label=f.key, info=f.help, max_lines=1,
                                                        interactive=True, elem_id=_field_id(f.key)))

        def checked(shown: tuple) -> tuple[Any, str]:
            result = check_form(settings_class, form_fields, list(shown))
            if result.ok:
                result.problems = _path_problems(root, result.settings)
                if result.problems:
                    result.settings = None
            return result, result.markdown()

        def beside_fields(result: Any) -> list[Any]:
            """Each field's problems under its name, in place of its help (the help again once it is fixed)."""
            return [gr.update(info="❌ " + "; ".join(result.problems[f.key]) if f.key in result.problems else f.help)
                    for f in form_fields]

        def on_check(*shown: Any) -> list[Any]:
            result, text = checked(shown)
            return [text, _recipe_yaml(result.settings), *beside_fields(result)]

        def on_save(*shown: Any) -> list[Any]:
            *shown, target = shown
            result, text = checked(tuple(shown))
            if not result.ok:
                return [text, "", *beside_fields(result)]
            try:
                path = root.path(target or Path(result.settings.train.output_dir) / "recipe.yaml")
            except ValueError as exc:
                return [_failed(exc), "", *beside_fields(result)]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_recipe_yaml(result.settings))
            return [f"✅ saved {root.relative(path)}", _recipe_yaml(result.settings), *beside_fields(result)]

        def on_launch(*shown: Any) -> list[Any]:
            result, text = checked(shown)
            if not result.ok:
                return [text, "", gr.skip(), *beside_fields(result)]
            out = root.path(result.settings.train.output_dir)
            recipe_file = out / "recipe.yaml"
            out.mkdir(parents=True, exist_ok=True)
            recipe_file.write_text(_recipe_yaml(result.settings))
            try:
                info = runs.launch(out, [*TRAINERS[trainer_name].command, root.relative(recipe_file)], trainer_name,
                                   cwd=root.root)
            except RuntimeError as exc:
                return [_failed(exc), "", gr.skip(), *beside_fields(result)]
            return [f"✅ started `{info.command}`", _recipe_yaml(result.settings), root.relative(out),
                    *beside_fields(result)]

        check.click(on_check, boxes, [problems, recipe_view, *boxes])
        save.click(on_save, [*boxes, save_path], [problems, recipe_view, *boxes])
        launch.click(on_launch, boxes, [problems, recipe_view, watched, *boxes])

    recipe_view.render()
    with gr.Column(elem_id="train-run"):
        gr.Markdown("### The run")
        with gr.Row():
            watched.render()
            stop = gr.Button("Stop", elem_id="train-stop", scale=1)
            resume = gr.Button("Resume from the latest checkpoint", elem_id="train-resume", scale=1)
        state = gr.Markdown(elem_id="train-status")
        with gr.Row():
            curve = gr.LinePlot(x="step", y="value", color="series", label="Loss", y_title="loss per trained token",
                                x_title="optimizer step", color_title="", elem_id="train-curve", height=300)
            log = gr.Textbox(label="Log", lines=14, max_lines=14, autoscroll=True, elem_id="train-log")

    def from_recipe(trainer_name: str, path_text: str) -> list[Any]:
        try:
            path = root.path(path_text, must_exist=True)
            values = load_recipe(path.read_text())
        except (ValueError, OSError) as exc:
            return [gr.skip(), _failed(exc), gr.skip()]
        unknown = unknown_settings(TRAINERS[trainer_name].settings_class(), values)
        text = f"✅ loaded {root.relative(path)}"
        if unknown:  # not silently dropped: a recipe for another trainer, or a misspelt key
            text = (f"⚠️ loaded {root.relative(path)}, but {trainer_name} has no setting "
                    + ", ".join(f"`{k}`" for k in unknown) + ": those are not in the form (another trainer's recipe?)")
        return [values, text, trainer_name]

    def sandbox_recipe() -> list[Any]:
        from ..sandbox.demo import DemoSettings, quick_sizes, write_sft_recipe

        settings = quick_sizes(DemoSettings(out=root.path("sandbox-sft"), progress=False), agent=True)
        try:
            path = write_sft_recipe(settings)
        except (OSError, ValueError) as exc:  # e.g. a rebuilt base model missing
            return [gr.skip(), _failed(exc), gr.skip(), gr.skip()]
        return [load_recipe(path.read_text()), f"✅ wrote the sandbox demo's SFT data and recipe (the demo's --quick "
                f"sizes, about a minute on a CPU): {root.relative(path)}", "sft", root.relative(path)]

    def on_stop(folder_text: str) -> str:
        try:
            stopped = runs.stop(root.path(folder_text, must_exist=True))
        except (ValueError, OSError) as exc:
            return _failed(exc)
        return "stopping…" if stopped else "that run is not running"

    def on_resume(folder_text: str) -> str:
        try:
            info = runs.resume(root.path(folder_text, must_exist=True), cwd=root.root)
        except (ValueError, OSError, RuntimeError) as exc:
            return _failed(exc)
        return f"✅ resumed: `{info.command}`"

    load.click(from_recipe, [trainer, recipe_path], [recipe, loaded, trainer])
    starter.click(sandbox_recipe, None, [recipe, loaded, trainer, recipe_path])
    stop.click(on_stop, watched, state)
    resume.click(on_resume, watched, state)
    gr.Timer(2.0).tick(lambda folder: _watch(root, folder), watched, [state, log, curve])
    app.load(lambda: _latest(root, kinds=tuple(TRAINERS)), None, watched)


def _recipe_yaml(settings: Any) -> str:
    from ..config import to_yaml

    return to_yaml(settings) if settings is not None else ""


def _latest(root: RootFolder, kinds: tuple[str, ...]) -> str:
    """The most recently started run of these kinds (what a reloaded page watches again)."""
    found = [f for f in runs.find_runs(root.root) if runs.read_info(f).kind in kinds]
    return root.relative(found[0]) if found else ""


def _picture(path: Path) -> Any:
    """A PNG a run wrote, as an image the page shows (None when it is not there)."""
    if not path.exists():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


def _models(root: RootFolder) -> list[str]:
    """Models a page can offer: the shipped sandbox base, and every trained model (or adapter) under the root."""
    return [SANDBOX, *(root.relative(f / "model") for f in runs.find_runs(root.root)
                       if (f / "model" / "tuneful.json").exists())]


# --- Runs ---------------------------------------------------------------------------------------------------

def _runs_page(app: gr.Blocks, root: RootFolder) -> None:
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
        return [settings, final_metrics, _picture(folder / "loss.png")]

    refresh.click(listing, None, [table, chosen, detail])
    app.load(listing, None, [table, chosen, detail])
    chosen.change(curves, chosen, overlay)
    detail.change(details, detail, [settings_view, final, plot])


# --- Evaluate -----------------------------------------------------------------------------------------------

def _evaluate_page(app: gr.Blocks, root: RootFolder) -> None:
    gr.Markdown("Run `tuneful eval` on the same prompts for several models (base, tuned, adapters): instruction "
                "checks, sandbox accuracy, held-out loss, stop rate; answers side by side.")
    with gr.Row():
        models = gr.Textbox(value=SANDBOX, label="Models (comma-separated: folders under the root, hub ids, adapters, "
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
            return [_failed(exc), gr.skip()]
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
            return [_failed(exc), gr.skip()]
        return [f"✅ started `{info.command}`", root.relative(folder)]

    def show(folder_text: str) -> list[Any]:
        if not folder_text:
            return ["", "", "", None, None, None]
        try:
            folder = root.path(folder_text, must_exist=True)
        except (ValueError, OSError) as exc:
            return [_failed(exc), "", "", None, None, None]
        state_text = f"**{root.relative(folder)}** — {runs.status(folder)}"
        report_file = folder / "report.md"
        if runs.status(folder) != "finished" or not report_file.exists():
            return [state_text, runs.log_tail(folder, 12), "", None, None, None]
        return [state_text, runs.log_tail(folder, 12), report_file.read_text(), _picture(folder / "summary.png"),
                _picture(folder / "heldout_loss.png"), _side_by_side(folder)]

    found.input(lambda ticked: ", ".join(ticked), found, models)
    app.load(lambda: gr.update(choices=_models(root)), None, found)
    start.click(run, [models, names, prompts, out, limit, max_new], [state, watched])
    gr.Timer(2.0).tick(show, watched, [state, log, report, summary_plot, loss_plot, answers])
    app.load(lambda: _latest(root, kinds=("eval",)), None, watched)


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


# --- Chat ---------------------------------------------------------------------------------------------------

def _chat_page(app: gr.Blocks, root: RootFolder, chats: ChatModels) -> None:
    gr.Markdown("Chat with one model, or two side by side on the same messages (base vs tuned). The template is the "
                "one saved with each model; choose another to see what a wrong template does.")
    with gr.Row():
        spec_a = gr.Dropdown([SANDBOX], value=SANDBOX, label="Model A", allow_custom_value=True,
                             elem_id="chat-model-a")
        spec_b = gr.Dropdown([SANDBOX], value=None, label="Model B (optional, side by side)", allow_custom_value=True,
                             elem_id="chat-model-b")
        template = gr.Dropdown([OWN_TEMPLATE, *builtin_names()], value=OWN_TEMPLATE, label="Template",
                               allow_custom_value=True, elem_id="chat-template")
        max_new = gr.Slider(8, 512, value=64, step=8, label="Max new tokens")
        temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.1, label="Temperature (0: greedy)")
    notes = gr.Markdown(elem_id="chat-notes")
    with gr.Row():
        chat_a = gr.Chatbot(label="A", elem_id="chat-a", height=380)
        chat_b = gr.Chatbot(label="B", elem_id="chat-b", height=380)
    turns_a, turns_b = gr.State([]), gr.State([])
    with gr.Row():
        message = gr.Textbox(placeholder="Write a message and press Enter", show_label=False, elem_id="chat-message",
                             scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1)

    def reply(text: str, a: str, b: str, template_choice: str, new_tokens: float, temp: float, past_a: list,
              past_b: list) -> Iterator[list[Any]]:
        if not text.strip():
            yield [gr.skip()] * 6
            return
        try:
            specs = [root.source(a, names=(SANDBOX,)), root.source(b, names=(SANDBOX,))]
            chosen = _template_choice(root, template_choice)
        except (ValueError, OSError) as exc:
            yield [gr.skip(), gr.skip(), gr.skip(), gr.skip(), _failed(exc), gr.skip()]
            return
        sides = [Side(chats, spec, chosen, past, text, int(new_tokens), float(temp))
                 for spec, past in zip(specs, (past_a, past_b))]
        while True:
            finished = all(side.done for side in sides)
            notes_text = "\n".join(f"- {spec}: {n}" for spec, side in zip(specs, sides) for n in side.notes)
            yield [sides[0].shown(), sides[1].shown() if specs[1] else [], sides[0].turns if not sides[0].error else
                   sides[0].past, sides[1].turns if not sides[1].error else sides[1].past, notes_text, ""]
            if finished:
                return
            time.sleep(0.1)

    inputs = [message, spec_a, spec_b, template, max_new, temperature, turns_a, turns_b]
    outputs = [chat_a, chat_b, turns_a, turns_b, notes, message]
    app.load(lambda: [gr.update(choices=_models(root))] * 2, None, [spec_a, spec_b])
    send.click(reply, inputs, outputs)
    message.submit(reply, inputs, outputs)
    clear.click(lambda: [[], [], [], [], ""], None, [chat_a, chat_b, turns_a, turns_b, notes])
