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
import functools
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from .loader import LoadReport, LoadResult, load
from .sources import read_records
from .types import Conversation, Message, RecordError, make_conversation

TEMPLATE_TYPES = ("zero_shot", "few_shot", "cot")
# meta keys that name a loaded record's task / template type (FLAN rows keep both, with or without "_")
TASK_KEYS = ("task_name", "_task_name", "task", "family")
TEMPLATE_TYPE_KEYS = ("template_type", "_template_type")


@dataclass
class TaskTemplate:
    input: str = ""  # the user turn: a Python format string or Jinja over the record's fields
    target: str = ""  # the assistant turn (the answer), the same way


@dataclass
class SourceSpec:
    path: str = ""  # a file, dataset folder or Hugging Face id
    recipe: str = ""  # or another mixture recipe (YAML), mixed first
    name: str = ""  # the name in reports; default: path or recipe
    weight: float | None = None  # share of what counts leave of the total
    count: int | None = None  # exactly this many records
    format: str = "auto"  # data format of a loaded source
    split: str = "train"  # split of a dataset id
    task: str = ""  # one task name for every record of the source
    task_field: str = ""  # a record field naming its task (default: task_name, task, family in meta)
    templates: list[TaskTemplate] = field(default_factory=list)  # labelled data: how a record becomes a turn
    options_field: str = ""  # a field holding the answer options (a list), appended when the template lacks them
    options_rate: float = 0.5  # share of records whose options are shown (FLAN renders with and without)
    rationale_field: str = ""  # a field holding a rationale: the record can be a chain-of-thought example
    template_types: dict[str, float] | None = None  # this source's template-type proportions (default: recipe's)

    @property
    def label(self) -> str:
        return self.name or self.path or self.recipe


@dataclass
class MixRecipe:
    sources: list[SourceSpec] = field(default_factory=list)
    total: int | None = None  # records to write when weights are used (default: the weighted sources' records)
    seed: int = 0
    cap: int | None = None  # examples-proportional mixing cap per task (None: no cap)
    temperature: float = 1.0  # task shares ∝ min(n, cap) ** (1 / temperature): > 1 flattens towards uniform
    categories: str = ""  # CSV with a task column and a category column (FLAN's flan_collection_info.csv)
    category_column: str = "Generic Task Category"
    task_column: str = "Dataset"
    category_weights: dict[str, float] = field(default_factory=dict)  # category → weight (others 1.0)
    template_types: dict[str, float] = field(default_factory=lambda: {"zero_shot": 1.0})
    shots: int = 2  # exemplars in a few-shot prompt (fewer when the budget or the task is short)
    shot_budget: int = 512  # tokens a few-shot prompt may hold (words without a tokenizer)
    shot_separator: str = "\n\n"
    tokenizer: str = ""  # tokenizer folder/id to count tokens for the budget; empty: count words
    cot_trigger: str = "Think step by step, then give the answer."  # appended to a chain-of-thought prompt
    cot_target: str = "{rationale}\nSo the answer is {answer}."  # the chain-of-thought reply
    options_header: str = "OPTIONS:"
    on_error: str = "fail"  # fail on a bad record, or skip it (counted with its reason and location)


def _problems_of_source(spec: SourceSpec, where: str) -> list[str]:
    problems = []
    if bool(spec.path) == bool(spec.recipe):
        problems.append(f"{where}: give exactly one of path or recipe")
    if (spec.weight is None) == (spec.count is None):
        problems.append(f"{where}: give exactly one of weight or count")
    if spec.weight is not None and spec.weight <= 0:
        problems.append(f"{where}.weight: {spec.weight} must be > 0")
    if spec.count is not None and spec.count < 0:
        problems.append(f"{where}.count: {spec.count} must be >= 0")
    if spec.recipe and spec.templates:
        problems.append(f"{where}: templates apply to labelled records (path), not to a recipe's conversations")
    for i, t in enumerate(spec.templates):
        if not t.input or not t.target:
            problems.append(f"{where}.templates[{i}]: needs both input and target")
    if (spec.options_field or spec.rationale_field) and not spec.templates:
        problems.append(f"{where}: options_field/rationale_field need templates (labelled records)")
    if not 0 <= spec.options_rate <= 1:
        problems.append(f"{where}.options_rate: {spec.options_rate} must be in [0, 1]")
    if spec.template_types is not None:
        problems += _template_type_problems(spec.template_types, f"{where}.template_types")
    return problems


def _template_type_problems(proportions: dict, where: str) -> list[str]:
    problems = [f"{where}: {k!r} is not one of {', '.join(TEMPLATE_TYPES)}" for k in proportions
                if k not in TEMPLATE_TYPES]
    if any(not isinstance(v, (int, float)) or v < 0 for v in proportions.values()) or not sum(proportions.values()):
        problems.append(f"{where}: proportions must be numbers >= 0 with a positive sum")
    return problems


def _from_mapping(cls: type, data: Any, where: str, problems: list[str]) -> Any:
    """A dataclass from a YAML mapping: unknown keys and wrong shapes reported with where they are."""
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {data!r}")
        return cls()
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in names:
            problems.append(f"{where}.{key}: unknown key; known: {', '.join(names)}")
            continue
        if key == "sources":
            if not isinstance(value, list) or not value:
                problems.append(f"{where}.sources: a non-empty list of {{path|recipe, weight|count}}")
                continue
            value = [_from_mapping(SourceSpec, v, f"{where}.sources[{i}]", problems) for i, v in enumerate(value)]
        elif key == "templates":
            if isinstance(value, dict):
                value = [value]
            if not isinstance(value, list):
                problems.append(f"{where}.templates: a list of {{input, target}}")
                continue
            value = [_from_mapping(TaskTemplate, v, f"{where}.templates[{i}]", problems) for i, v in enumerate(value)]
        elif key in ("weight", "temperature", "options_rate") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{where}.{key}: expected a number, got {value!r}")
                continue
            value = float(value)
        elif key in ("count", "total", "cap", "seed", "shots", "shot_budget") and value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{where}.{key}: expected a whole number, got {value!r}")
                continue
        elif key in ("template_types", "category_weights") and not isinstance(value, dict):
            problems.append(f"{where}.{key}: expected a mapping, got {value!r}")
            continue
        elif names[key].type in ("str", str) and not isinstance(value, str):
            value = str(value)
        values[key] = value
    return cls(**values)


def recipe_problems(recipe: MixRecipe) -> list[str]:
    problems = []
    for i, spec in enumerate(recipe.sources):
        problems += _problems_of_source(spec, f"sources[{i}]")
    if not recipe.sources:
        problems.append("sources: at least one source is required")
    if recipe.total is not None and recipe.total < 0:
        problems.append(f"total: {recipe.total} must be >= 0")
    if recipe.total is not None and not any(s.weight is not None for s in recipe.sources):
        problems.append("total: only applies to sources with a weight; every source here has a count")
    if recipe.cap is not None and recipe.cap < 1:
        problems.append(f"cap: {recipe.cap} must be >= 1")
    if recipe.temperature <= 0:
        problems.append(f"temperature: {recipe.temperature} must be > 0")
    if recipe.shots < 1 or recipe.shot_budget < 1:
        problems.append("shots and shot_budget: must be >= 1")
    if recipe.on_error not in ("fail", "skip"):
        problems.append(f"on_error: {recipe.on_error!r} is not fail or skip")
    problems += _template_type_problems(recipe.template_types, "template_types")
    names = Counter(s.label for s in recipe.sources)
    problems += [f"sources: the name {n!r} is used {k} times; give each source its own name" for n, k in names.items()
                 if k > 1]
    return problems


def recipe_from_dict(data: Any, origin: str = "recipe") -> MixRecipe:
    """A checked recipe, or a ConfigError naming every problem at once."""
    problems: list[str] = []
    recipe = _from_mapping(MixRecipe, data, origin, problems)
    problems += [f"{origin}: {p}" for p in recipe_problems(recipe)]  # with the parse problems: all at once
    if problems:
        raise ConfigError(problems)
    return recipe


def read_recipe(path: str | Path) -> MixRecipe:
    import yaml

    path = Path(path)
    recipe = recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path))
    base = path.parent  # relative paths in a recipe are relative to the recipe
    for spec in recipe.sources:
        spec.name = spec.name or spec.path or spec.recipe  # a source is named by its path as the recipe writes it
        for attr in ("path", "recipe"):
            value = getattr(spec, attr)
            if value and not Path(value).is_absolute() and (base / value).exists():
                setattr(spec, attr, str(base / value))
    if recipe.categories and not Path(recipe.categories).is_absolute() and (base / recipe.categories).exists():
        recipe.categories = str(base / recipe.categories)
    return recipe


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
        raise ConfigError([f"total: {total} is less than the sources' counts ({fixed}); raise total or lower a count"])
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
        raise ConfigError([f"categories: {recipe.categories} has no rows with columns {recipe.task_column!r} "
                           f"and {recipe.category_column!r}"])
    unknown = sorted(set(recipe.category_weights) - set(category.values()))
    if unknown:
        raise ConfigError([f"category_weights: {unknown[:5]} are not categories in {recipe.categories} "
                           f"(column {recipe.category_column!r})"])
    return lambda task: float(recipe.category_weights.get(category.get(task, ""), 1.0))


# --- templates -------------------------------------------------------------------------------------


class _Fields(dict):
    def __init__(self, record: dict, where: str):
        super().__init__(record)
        self.where = where

    def __missing__(self, key: str) -> Any:
        raise RecordError("missing_field", f"the template uses {{{key}}}, which the record lacks "
                                           f"(it has: {', '.join(sorted(self)) or 'nothing'})", self.where)


@functools.lru_cache(maxsize=256)
def _jinja(template: str) -> Any:
    """A compiled Jinja template (sandboxed, undefined fields are errors), compiled once per template."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template)


def render_text(template: str, record: dict, where: str) -> str:
    """A template filled with a record's fields: Jinja when it uses ``{{``/``{%``, else ``str.format``."""
    if "{{" in template or "{%" in template:
        import jinja2

        try:
            return _jinja(template).render(**record)
        except jinja2.UndefinedError as exc:
            raise RecordError("missing_field", f"the template uses a field the record lacks ({exc.message})",
                              where) from None
    try:
        return template.format_map(_Fields(record, where))
    except RecordError:
        raise
    except (IndexError, ValueError) as exc:
        raise RecordError("bad_template", f"{template!r}: {exc}", where) from None


@dataclass
class _Task:
    """The records of one task of a labelled source: the pool its few-shot exemplars come from."""

    records: list[tuple[str, dict]] = field(default_factory=list)  # (where, record)


class TemplateRenderer:
    """Labelled records → conversations through a source's templates; records the template type of each."""

    def __init__(self, recipe: MixRecipe, spec: SourceSpec, rng: random.Random,
                 count_tokens: Callable[[str], int]):
        self.recipe, self.spec, self.rng, self.count_tokens = recipe, spec, rng, count_tokens
        self.proportions = spec.template_types or recipe.template_types
        self.notes: Counter = Counter()

    def _pick_type(self, record: dict, task: _Task) -> str:
        possible = {t: w for t, w in self.proportions.items() if w > 0}
        if "cot" in possible and not (self.spec.rationale_field and record.get(self.spec.rationale_field)):
            possible.pop("cot")
            self.notes["cot_without_rationale"] += 1
        if "few_shot" in possible and len(task.records) < 2:
            possible.pop("few_shot")
            self.notes["few_shot_single_record_task"] += 1
        if not possible:
            return "zero_shot"
        kinds = sorted(possible)
        return self.rng.choices(kinds, weights=[possible[k] for k in kinds])[0]

    def _with_options(self, text: str, template: str, record: dict) -> tuple[str, bool]:
        field_name = self.spec.options_field
        options = record.get(field_name) if field_name else None
        if not options or "{" + field_name in template or self.rng.random() >= self.spec.options_rate:
            return text, bool(options) and "{" + field_name in template
        lines = "\n".join(f"- {o}" for o in options)
        return f"{text}\n\n{self.recipe.options_header}\n{lines}", True

    def conversation(self, where: str, record: dict, index: int, task: _Task, task_name: str) -> Conversation:
        spec, recipe = self.spec, self.recipe
        kind = self._pick_type(record, task)
        t = self.rng.randrange(len(spec.templates))
        template = spec.templates[t]
        prompt, shown = self._with_options(render_text(template.input, record, where), template.input, record)
        answer = render_text(template.target, record, where)
        meta = {"source": spec.label, "task": task_name, "template_type": kind, "template": t, "where": where}
        if spec.options_field and record.get(spec.options_field):
            meta["options"] = shown
        if kind == "cot":
            prompt = f"{prompt}\n{recipe.cot_trigger}"
            answer = render_text(recipe.cot_target, {"rationale": record[spec.rationale_field], "answer": answer},
                                 where)
        elif kind == "few_shot":
            prompt, meta["shots"] = self._few_shot(prompt, index, task, template)
        return make_conversation([Message("user", prompt), Message("assistant", answer)], meta)

    def _few_shot(self, prompt: str, index: int, task: _Task, template: TaskTemplate) -> tuple[str, int]:
        """Exemplars of the same task (never the record itself) before the prompt, pruned to the budget."""
        n_others = len(task.records) - 1  # positions past the record shift by one: O(shots), not O(task)
        picked = [i + (i >= index) for i in self.rng.sample(range(n_others), min(self.recipe.shots, n_others))]
        shots = []
        for i in picked:
            where, rec = task.records[i]
            try:
                shots.append(f"{render_text(template.input, rec, where)}\n{render_text(template.target, rec, where)}")
            except RecordError:
                self.notes["exemplar_missing_field"] += 1
        sep = self.recipe.shot_separator
        while shots and self.count_tokens(sep.join(shots + [prompt])) > self.recipe.shot_budget:
            shots.pop()
            self.notes["exemplars_pruned_for_budget"] += 1
        return sep.join(shots + [prompt]), len(shots)


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
    tasks: dict[str, _Task] = field(default_factory=dict)  # labelled sources: records per task
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


def _merge_reports(into: LoadReport, report: LoadReport) -> None:
    into.records_in += report.records_in
    into.written += report.written
    into.skipped_by_reason.update(report.skipped_by_reason)
    into.skipped += report.skipped
    into.ignored_fields.update(report.ignored_fields)
    into.notes.update(report.notes)


def _read_source(recipe: MixRecipe, spec: SourceSpec, report: LoadReport, seen: tuple[str, ...]) -> _Pool:
    if spec.recipe:
        key = str(Path(spec.recipe).resolve())
        if key in seen:
            raise ConfigError([f"sources: {spec.recipe} includes itself (through {' → '.join(seen)})"])
        inner = mix(read_recipe(spec.recipe), _seen=seen + (key,))
        _merge_reports(report, inner.load_report)
        return _Pool([(item.meta.get("task", spec.label), item, item.meta.get("where", spec.recipe))
                      for item in inner.items])
    if spec.templates:
        pool = _Pool([])
        for raw in read_records(spec.path, split=spec.split):
            report.records_in += 1
            error = raw.error or (None if isinstance(raw.value, dict) else
                                  RecordError("not_an_object", "a labelled record must be an object", raw.where))
            if error is not None:
                _skip(recipe, report, error.at(raw.where) if not error.where else error)
                continue
            task = _task_of(spec, raw.value)
            entry = pool.tasks.setdefault(task, _Task())
            pool.positions.append(len(entry.records))
            entry.records.append((raw.where, raw.value))
            pool.entries.append((task, raw.value, raw.where))
        return pool
    result = load(spec.path, format=spec.format, on_error=recipe.on_error, split=spec.split)
    _merge_reports(report, result.report)
    return _Pool([(_task_of(spec, item.meta), item, where) for item, where in zip(result.items, result.where)])


def _skip(recipe: MixRecipe, report: LoadReport, error: RecordError) -> None:
    if recipe.on_error == "fail":
        raise error
    report.skipped_by_reason[error.rule] += 1
    report.skipped.append((error.where, str(error)))


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
                    _skip(recipe, load_report, exc if exc.where else exc.at(where))
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
              "skipped_by_reason": dict(load_report.skipped_by_reason), "notes": dict(load_report.notes)}
    return MixResult(items, report, load_report)


def _source_dicts(sources: list, format: str) -> list:
    """A trainer's list entries: a plain path is ``{path, weight: 1}``; the trainer's data.format is the default."""
    return [{"format": format, **s} if isinstance(s, dict) else {"path": s, "weight": 1.0, "format": format}
            if isinstance(s, str) else s for s in sources]


def training_sources_problems(sources: list, format: str = "auto") -> list[str]:
    """The shape of a trainer's ``data.train`` list, checked with the rest of the settings."""
    try:
        recipe_from_dict({"sources": _source_dicts(sources, format)}, "train")
    except ConfigError as exc:
        return exc.problems
    return []


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
