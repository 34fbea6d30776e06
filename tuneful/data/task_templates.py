"""Labelled records → conversations through a source's templates (FLAN's zero-shot, few-shot and
chain-of-thought template types), each conversation recording how it was written.

Boundary: one source's records and its :class:`SourceSpec` in, conversations out; which records are
drawn, and how many, is :mod:`.mixture`'s. A template is a Python format string or Jinja (sandboxed,
undefined fields are errors) over the record's fields; the fields no template, option, rationale or task
setting reads are counted by name (``ignored_fields``), as every loader counts what it does not use.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .mix_recipe import MixRecipe, SourceSpec, TaskTemplate
from .types import Conversation, Message, RecordError, make_conversation


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
class TaskRecords:
    """The records of one task of a labelled source: the pool its few-shot exemplars come from."""

    records: list[tuple[str, dict]] = field(default_factory=list)  # (where, record)


class TemplateRenderer:
    """Labelled records → conversations through a source's templates; records the template type of each."""

    def __init__(self, recipe: MixRecipe, spec: SourceSpec, rng: random.Random,
                 count_tokens: Callable[[str], int]):
        self.recipe, self.spec, self.rng, self.count_tokens = recipe, spec, rng, count_tokens
        self.proportions = spec.template_types or recipe.template_types
        self.notes: Counter = Counter()

    def _pick_type(self, record: dict, task: TaskRecords) -> str:
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

    def conversation(self, where: str, record: dict, index: int, task: TaskRecords, task_name: str) -> Conversation:
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

    def _few_shot(self, prompt: str, index: int, task: TaskRecords, template: TaskTemplate) -> tuple[str, int]:
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


def template_fields(template: str) -> set[str]:
    """The record fields a template reads (the root name of ``{a.b}`` / ``{a[0]}``; Jinja's undeclared names)."""
    if "{{" in template or "{%" in template:
        from jinja2 import meta

        environment = _jinja(template).environment
        return set(meta.find_undeclared_variables(environment.parse(template)))
    return {re.split(r"[.\[!:]", name)[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def used_fields(spec: SourceSpec) -> set[str]:
    """Every field of a labelled record the source's settings read: its templates, options, rationale, task."""
    fields = {f for t in spec.templates for text in (t.input, t.target) for f in template_fields(text)}
    return fields | {name for name in (spec.options_field, spec.rationale_field, spec.task_field) if name}
