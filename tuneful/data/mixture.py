"""Task mixtures in the FLAN spirit: labelled task data through templates, and weighted mixing of sources.

Boundary: records in (files, dataset ids, other recipes), canonical items out, each carrying in its
``meta`` the ``source``, ``task`` and ``template_type`` it came from. Nothing here knows a model; a
tokenizer is only used, when the recipe names one, to count the tokens of few-shot prompts.

How many records a source gives (FLAN, Chung et al. 2022; Longpre et al. 2023, "The Flan Collection"):

- ``count: N`` takes exactly N records (every record once per pass, then a seeded sample of the rest).
- ``weight: W`` takes the share W / sum(W) of what the counts leave of ``total`` (default ``total``:
  all records of the weighted sources, so weights re-balance a mixture of the same size).
- Within a source, its tasks (a record's task field, FLAN's ``task_name``, or the source's name) are
  mixed examples-proportionally with a cap: task t gets a share of ``min(n_t, cap) ** (1 / temperature)``,
  optionally times a category weight (``categories`` CSV, e.g. the FLAN Collection's task list).

Labelled task data (any table with named fields) becomes conversations through ``templates``: each
record picks a template type (``zero_shot``, ``few_shot``, ``cot`` where the record has a rationale) by
the recipe's proportions and one of the source's templates; few-shot exemplars come from the same task,
never the record itself, and are dropped from the end until the prompt fits ``shot_budget`` tokens.

One view: ``tuneful data mix RECIPE.yaml --out OUT.jsonl`` writes the mixture, ``OUT.mixture.json``
(per source, task and template type: available, taken, share) and prints the summary.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .loader import LoadReport, LoadResult, SkipPolicy, load
from .mix_recipe import TASK_KEYS, TEMPLATE_TYPE_KEYS, MixRecipe, RecipeError, SourceSpec, read_recipe, recipe_from_dict
from .sources import read_records
from .task_templates import TemplateRenderer, TaskRecords, used_fields
from .types import RecordError


# --- allocation ------------------------------------------------------------------------------------


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` into whole numbers that add up exactly."""
    if total <= 0 or not weights or sum(weights) <= 0:
        return [0] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def source_counts(recipe: MixRecipe, available: list[int]) -> list[int]:
    """Records each source gives: its count, or its weight's share of what the counts leave of the total."""
    fixed = sum(s.count for s in recipe.sources if s.count is not None)
    weighted = [i for i, s in enumerate(recipe.sources) if s.weight is not None]
    total = recipe.total if recipe.total is not None else fixed + sum(available[i] for i in weighted)
    if weighted and total < fixed:
        raise RecipeError([f"total: {total} is less than the sources' counts ({fixed}); raise total or lower a count"])
    shares = largest_remainder(total - fixed, [recipe.sources[i].weight for i in weighted])
    out = [s.count if s.count is not None else 0 for s in recipe.sources]
    for i, n in zip(weighted, shares):
        out[i] = n
    return out


def task_counts(n: int, task_sizes: dict[str, int], cap: int | None, temperature: float,
                task_weight: Callable[[str], float] = lambda task: 1.0) -> dict[str, int]:
    """``n`` records spread over tasks examples-proportionally with a cap and a temperature (FLAN)."""
    tasks = sorted(task_sizes)
    rates = [task_weight(t) * (min(task_sizes[t], cap) if cap else task_sizes[t]) ** (1.0 / temperature)
             for t in tasks]
    return dict(zip(tasks, largest_remainder(n, rates)))


def take(pool: list[int], n: int, rng: random.Random) -> list[int]:
    """``n`` of ``pool``: whole shuffled passes while n exceeds it, then a sample without replacement."""
    out: list[int] = []
    while len(out) + len(pool) <= n and pool:
        out += rng.sample(pool, len(pool))
    return out + rng.sample(pool, n - len(out)) if pool else out


def category_weights(recipe: MixRecipe) -> Callable[[str], float]:
    """Task → weight of its category, from the recipe's categories CSV (first row per task wins)."""
    if not recipe.categories:
        return lambda task: 1.0
    category: dict[str, str] = {}
    with open(recipe.categories, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            task = (row.get(recipe.task_column) or "").strip()
            if task and task not in category:
                category[task] = (row.get(recipe.category_column) or "").strip()
    if not category:
        raise RecipeError([f"categories: {recipe.categories} has no rows with columns {recipe.task_column!r} "
                           f"and {recipe.category_column!r}"])
    unknown = sorted(set(recipe.category_weights) - set(category.values()))
    if unknown:
        raise RecipeError([f"category_weights: {unknown[:5]} are not categories in {recipe.categories} "
                           f"(column {recipe.category_column!r})"])
    return lambda task: float(recipe.category_weights.get(category.get(task, ""), 1.0))


# --- templates -------------------------------------------------------------------------------------
# --- mixing ----------------------------------------------------------------------------------------


@dataclass
class MixResult:
    items: list[Any]
    report: dict
    load_report: LoadReport  # what reading the sources did (records in, skips with their reasons)


@dataclass
class _Pool:
    """One source read: its candidates (task, item or labelled record, where) before sampling."""

    entries: list[tuple[str, Any, str]]
    tasks: dict[str, TaskRecords] = field(default_factory=dict)  # labelled sources: records per task
    positions: list[int] = field(default_factory=list)  # labelled sources: index within its task


def _task_of(spec: SourceSpec, meta_or_record: dict) -> str:
    if spec.task:
        return spec.task
    keys = (spec.task_field,) if spec.task_field else TASK_KEYS
    for key in keys:
        value = meta_or_record.get(key)
        if isinstance(value, (str, int)) and str(value):
            return str(value)
    return spec.label


def _read_source(recipe: MixRecipe, spec: SourceSpec, report: LoadReport, seen: tuple[str, ...]) -> _Pool:
    if spec.recipe:
        key = str(Path(spec.recipe).resolve())
        if key in seen:
            raise RecipeError([f"sources: {spec.recipe} includes itself (through {' → '.join(seen)})"])
        inner = mix(read_recipe(spec.recipe), _seen=seen + (key,))
        report.merge(inner.load_report)
        return _Pool([(item.meta.get("task", spec.label), item, item.meta.get("where", spec.recipe))
                      for item in inner.items])
    if spec.templates:
        pool = _Pool([])
        used = used_fields(spec) | (set() if spec.task or spec.task_field else set(TASK_KEYS))
        for raw in read_records(spec.path, split=spec.split):
            report.records_in += 1
            error = raw.error or (None if isinstance(raw.value, dict) else
                                  RecordError("not_an_object", "a labelled record must be an object", raw.where))
            if error is not None:
                SkipPolicy(report, recipe.on_error)(raw.where, error)
                continue
            report.ignored_fields.update(k for k in raw.value if k not in used)  # counted by name, never silent
            task = _task_of(spec, raw.value)
            entry = pool.tasks.setdefault(task, TaskRecords())
            pool.positions.append(len(entry.records))
            entry.records.append((raw.where, raw.value))
            pool.entries.append((task, raw.value, raw.where))
        return pool
    result = load(spec.path, format=spec.format, on_error=recipe.on_error, split=spec.split)
    report.merge(result.report)
    return _Pool([(_task_of(spec, item.meta), item, where) for item, where in zip(result.items, result.where)])


def _tagged(item: Any, spec: SourceSpec, task: str, where: str) -> Any:
    """A loaded item with source, task and template type in its meta (a recipe's items keep theirs)."""
    meta = dict(item.meta)
    if not spec.recipe:
        template_type = next((str(meta[k]) for k in TEMPLATE_TYPE_KEYS if meta.get(k)), "conversation")
        meta.update(source=spec.label, task=task, template_type=template_type)
    meta.setdefault("where", where)
    return dataclasses.replace(item, meta=meta)


def _token_counter(recipe: MixRecipe) -> Callable[[str], int]:
    if not recipe.tokenizer:
        return lambda text: len(text.split())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def mix(recipe: MixRecipe, *, _seen: tuple[str, ...] = ()) -> MixResult:
    """The mixture a recipe describes, shuffled with its seed, and the report of what each part gave."""
    load_report = LoadReport()
    pools = [_read_source(recipe, spec, load_report, _seen) for spec in recipe.sources]
    counts = source_counts(recipe, [len(p.entries) for p in pools])
    weight_of = category_weights(recipe)
    needs_counter = any(s.templates and (s.template_types or recipe.template_types).get("few_shot")
                        for s in recipe.sources)
    count_tokens = _token_counter(recipe) if needs_counter else len  # len: never called without few-shot
    rng = random.Random(recipe.seed)
    items: list[Any] = []
    sources_report, tasks_report = {}, {}
    taken_types: Counter = Counter()
    for spec, pool, n in zip(recipe.sources, pools, counts):
        by_task: dict[str, list[int]] = defaultdict(list)
        for i, (task, _, _) in enumerate(pool.entries):
            by_task[task].append(i)
        per_task = task_counts(n, {t: len(ix) for t, ix in by_task.items()}, recipe.cap, recipe.temperature, weight_of)
        renderer = TemplateRenderer(recipe, spec, random.Random(rng.random()), count_tokens) if spec.templates else None
        skip = SkipPolicy(load_report, recipe.on_error)
        source_items = []
        for task in sorted(by_task):
            picked = take(by_task[task], per_task[task], rng)
            kept = 0
            for i in picked:
                _, value, where = pool.entries[i]
                if renderer is None:
                    source_items.append(_tagged(value, spec, task, where))
                    kept += 1
                    continue
                try:
                    source_items.append(renderer.conversation(where, value, pool.positions[i], pool.tasks[task], task))
                    kept += 1
                except RecordError as exc:
                    skip(where, exc)
            tasks_report[f"{spec.label}/{task}"] = {"source": spec.label, "task": task, "available": len(by_task[task]),
                                                    "taken": kept, "repeated": max(0, len(picked) - len(by_task[task]))}
        if renderer is not None:
            load_report.notes.update(renderer.notes)
            load_report.written += len(source_items)
        types = Counter(item.meta.get("template_type", "conversation") for item in source_items)
        taken_types.update(types)
        sources_report[spec.label] = {"available": len(pool.entries), "taken": len(source_items),
                                      **({"weight": spec.weight} if spec.weight is not None else {"count": spec.count}),
                                      "repeated": max(0, n - len(pool.entries)), "by_template_type": dict(types)}
        items += source_items
    rng.shuffle(items)
    written = len(items)
    for part in (*sources_report.values(), *tasks_report.values()):
        part["share"] = part["taken"] / written if written else 0.0
    report = {"written": written, "by_source": {k: v["taken"] for k, v in sources_report.items()},
              "by_template_type": dict(sorted(taken_types.items())), "sources": sources_report, "tasks": tasks_report,
              "settings": {"seed": recipe.seed, "total": recipe.total, "cap": recipe.cap,
                           "temperature": recipe.temperature, "template_types": recipe.template_types},
              "skipped_by_reason": dict(load_report.skipped_by_reason), "notes": dict(load_report.notes),
              "ignored_fields": dict(sorted(load_report.ignored_fields.items()))}
    return MixResult(items, report, load_report)


def _source_dicts(sources: list, format: str) -> list:
    """A trainer's list entries: a plain path is ``{path, weight: 1}``; the trainer's data.format is the default."""
    return [{"format": format, **s} if isinstance(s, dict) else {"path": s, "weight": 1.0, "format": format}
            if isinstance(s, str) else s for s in sources]


def training_sources_problems(sources: list, format: str = "auto") -> list[str]:
    """The shape of a trainer's ``data.train`` list, checked with the rest of the settings."""
    try:
        recipe_from_dict({"sources": _source_dicts(sources, format)}, "train")
    except RecipeError as exc:
        return exc.problems
    return []


def source_problems(data: Any) -> list[str]:
    """Checks every data section shares (SFT conversations, DPO pairs, prompts): source, held-out split, errors,
    and the length limit where the section has ``max_length``."""
    problems = []
    if not data.train:
        problems.append("train: required; set data.train=<file or dataset id>")
    elif isinstance(data.train, list):
        problems += training_sources_problems(data.train, getattr(data, "format", "auto"))
    if not 0.0 <= data.eval_fraction < 1.0:
        problems.append(f"eval_fraction: {data.eval_fraction} must be in [0, 1)")
    if data.eval and data.eval_fraction:
        problems.append("eval_fraction: set either data.eval or data.eval_fraction, not both")
    if data.on_error not in ("fail", "skip"):
        problems.append(f"on_error: {data.on_error!r} is not fail or skip")
    if hasattr(data, "max_length") and data.max_length < 8:
        problems.append(f"max_length: {data.max_length} is too small (>= 8)")
    return problems


def load_training(source: str | list, *, format: str = "auto", on_error: str = "fail", seed: int = 0) -> LoadResult:
    """A trainer's ``data.train``: one source (file, folder, dataset id), or a list of ``{path, weight | count}``
    mixed by the same code as ``tuneful data mix`` (seeded with the training seed)."""
    if not isinstance(source, list):
        return load(source, format=format, on_error=on_error)
    recipe = recipe_from_dict({"sources": _source_dicts(source, format), "seed": seed, "on_error": on_error},
                              "data.train")
    result = mix(recipe)
    result.load_report.format = "mixture"
    return LoadResult(result.items, result.load_report, [item.meta.get("where", "") for item in result.items])


def render_report(report: dict) -> str:
    """The mixture report as a readable table: per source and task, available, taken, share."""
    lines = [f"# Mixture: {report['written']:,} records", "", "| source | available | taken | share | repeated |",
             "|---|---:|---:|---:|---:|"]
    for name, s in report["sources"].items():
        lines.append(f"| {name} | {s['available']:,} | {s['taken']:,} | {s['share']:.1%} | {s['repeated']:,} |")
    lines += ["", "| task | source | available | taken | share |", "|---|---|---:|---:|---:|"]
    for t in report["tasks"].values():
        lines.append(f"| {t['task']} | {t['source']} | {t['available']:,} | {t['taken']:,} | {t['share']:.1%} |")
    lines += ["", "| template type | records |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in report["by_template_type"].items()]
    return "\n".join(lines) + "\n"
