"""The Train page of ``tuneful ui``: a trainer's typed settings as a form (:mod:`.forms`), checked by the
command's own validation, saved as a recipe, launched as a ``tuneful <trainer>`` process (:mod:`.runs`) and
watched: status, log and loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..config import to_yaml
from ..registry import TRAINERS
from ..samples import sandbox_base_dir
from ..sandbox.demo import DemoSettings, quick_sizes, write_sft_recipe
from . import runs
from .forms import check_form, fields, load_recipe, unknown_settings
from .page_parts import failed, latest_run
from .paths import RootFolder


FIELDS_PER_ROW = 3


def recipe_yaml(settings: Any) -> str:
    return to_yaml(settings) if settings is not None else ""


def field_id(key: str) -> str:
    return "setting-" + key.replace(".", "-").replace("_", "-")


def path_problems(root: RootFolder, settings: Any) -> dict[str, list[str]]:
    """Paths a run would read or write must lie inside the root (the shipped sandbox model excepted); a missing
    file is the trainer's to report when it runs."""
    problems: dict[str, list[str]] = {}
    checks = [("train.output_dir", settings.train.output_dir, "write")]
    for name in ("train", "eval", "replay"):
        value = getattr(settings.data, name, None)
        sources = [s.get("path") for s in value if isinstance(s, dict)] if isinstance(value, list) else [value]
        checks += [(f"data.{name}", source, "read") for source in sources]
    checks.append(("model.name_or_path", settings.model.name_or_path, "read"))
    checks += [(f"data.{name}", getattr(settings.data, name, None), "read") for name in ("tokenizer",)]
    template = getattr(settings.data, "template", "")
    if isinstance(template, str) and template.endswith(".jinja"):
        checks.append(("data.template", template, "read"))
    if getattr(settings.data, "cache_dir", ""):
        checks.append(("data.cache_dir", settings.data.cache_dir, "write"))
    for section in ("dpo", "kto", "grpo", "online_dpo"):
        reference = getattr(getattr(settings, section, None), "reference_model", "")
        checks.append((f"{section}.reference_model", reference, "read"))
        # Python files a run executes: its tools, and its reward functions given as FILE.py:FUNCTION
        checks.append((f"{section}.tools", getattr(getattr(settings, section, None), "tools", ""), "read"))
        for spec in getattr(getattr(settings, section, None), "rewards", None) or []:
            target = spec.partition(":")[2].rpartition(":")[0] if spec.startswith("python:") else ""
            if target.endswith(".py"):
                checks.append((f"{section}.rewards", target, "read"))
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
        return [failed(exc), "", _curve([])]
    trained = [r for r in rows if "loss" in r]
    state = runs.status(folder)
    line = f"**{root.relative(folder)}** — {info.kind} — **{state}**"
    if trained:
        line += f" — step {trained[-1]['step']}, loss {trained[-1]['loss']:.4f}"
    line += f"\n\n`{info.command}`"
    return [line, runs.log_tail(folder), _curve(rows)]


def train_page(app: gr.Blocks, root: RootFolder) -> None:
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
                                                         interactive=True, elem_id=field_id(f.key)))
                            else:
                                boxes.append(gr.Textbox(value=f.text, label=f.key, info=f.help, max_lines=1,
                                                        interactive=True, elem_id=field_id(f.key)))

        def checked(shown: tuple) -> tuple[Any, str]:
            result = check_form(settings_class, form_fields, list(shown))
            if result.ok:
                result.problems = path_problems(root, result.settings)
                if result.problems:
                    result.settings = None
            return result, result.markdown()

        def beside_fields(result: Any) -> list[Any]:
            """Each field's problems under its name, in place of its help (the help again once it is fixed)."""
            return [gr.update(info="❌ " + "; ".join(result.problems[f.key]) if f.key in result.problems else f.help)
                    for f in form_fields]

        def on_check(*shown: Any) -> list[Any]:
            result, text = checked(shown)
            return [text, recipe_yaml(result.settings), *beside_fields(result)]

        def on_save(*shown: Any) -> list[Any]:
            *shown, target = shown
            result, text = checked(tuple(shown))
            if not result.ok:
                return [text, "", *beside_fields(result)]
            try:
                path = root.path(target or Path(result.settings.train.output_dir) / "recipe.yaml")
            except ValueError as exc:
                return [failed(exc), "", *beside_fields(result)]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(recipe_yaml(result.settings))
            return [f"✅ saved {root.relative(path)}", recipe_yaml(result.settings), *beside_fields(result)]

        def on_launch(*shown: Any) -> list[Any]:
            result, text = checked(shown)
            if not result.ok:
                return [text, "", gr.skip(), *beside_fields(result)]
            out = root.path(result.settings.train.output_dir)
            recipe_file = out / "recipe.yaml"
            out.mkdir(parents=True, exist_ok=True)
            recipe_file.write_text(recipe_yaml(result.settings))
            try:
                info = runs.launch(out, [*TRAINERS[trainer_name].command, root.relative(recipe_file)], trainer_name,
                                   cwd=root.root)
            except RuntimeError as exc:
                return [failed(exc), "", gr.skip(), *beside_fields(result)]
            return [f"✅ started `{info.command}`", recipe_yaml(result.settings), root.relative(out),
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
            return [gr.skip(), failed(exc), gr.skip()]
        unknown = unknown_settings(TRAINERS[trainer_name].settings_class(), values)
        text = f"✅ loaded {root.relative(path)}"
        if unknown:  # not silently dropped: a recipe for another trainer, or a misspelt key
            text = (f"⚠️ loaded {root.relative(path)}, but {trainer_name} has no setting "
                    + ", ".join(f"`{k}`" for k in unknown) + ": those are not in the form (another trainer's recipe?)")
        return [values, text, trainer_name]

    def sandbox_recipe() -> list[Any]:
        settings = quick_sizes(DemoSettings(out=root.path("sandbox-sft"), progress=False), agent=True)
        try:
            path = write_sft_recipe(settings)
        except (OSError, ValueError) as exc:  # e.g. a rebuilt base model missing
            return [gr.skip(), failed(exc), gr.skip(), gr.skip()]
        return [load_recipe(path.read_text()), f"✅ wrote the sandbox demo's SFT data and recipe (the demo's --quick "
                f"sizes, about a minute on a CPU): {root.relative(path)}", "sft", root.relative(path)]

    def on_stop(folder_text: str) -> str:
        try:
            stopped = runs.stop(root.path(folder_text, must_exist=True))
        except (ValueError, OSError) as exc:
            return failed(exc)
        return "stopping…" if stopped else "that run is not running"

    def on_resume(folder_text: str) -> str:
        try:
            info = runs.resume(root.path(folder_text, must_exist=True), cwd=root.root)
        except (ValueError, OSError, RuntimeError) as exc:
            return failed(exc)
        return f"✅ resumed: `{info.command}`"

    load.click(from_recipe, [trainer, recipe_path], [recipe, loaded, trainer])
    starter.click(sandbox_recipe, None, [recipe, loaded, trainer, recipe_path])
    stop.click(on_stop, watched, state)
    resume.click(on_resume, watched, state)
    gr.Timer(2.0).tick(lambda folder: _watch(root, folder), watched, [state, log, curve])
    app.load(lambda: latest_run(root, kinds=tuple(TRAINERS)), None, watched)
