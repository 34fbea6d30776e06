"""Render many conversations and locate their turns with the template run once per *shape*, not 2·turns times each.

Knows only message dicts, a template and the tokenizer's stop strings; no token ids.

:func:`~tuneful.templates.spans.render_with_spans` renders every prefix of a conversation the way it
is produced at inference (the prompt before each assistant turn, the conversation up to it): 2·turns
template runs, most of the cost of building exact masks. Most conversations of a dataset share a few
*shapes* — the same roles, the same other fields, contents empty or not. A shape is rendered once with
a placeholder for each content (private-use code points no text emits); a conversation of that shape
gets its prefixes by putting its contents in place of the placeholders, which is string joining.

That is exact when the template prints contents as they are and tests nothing of them but whether
they are there, empty, or strings — which the shape holds. :func:`prints_contents_verbatim` checks
that on the template's syntax tree, before any conversation: a content read anywhere else (``in``,
``split``, ``startswith``, a filter other than ``trim``, an argument, an item set on a namespace)
and the template is never located this way (``eligible`` False; Qwen3, DeepSeek-R1, Llama-3.1 do
that; Qwen2.5, Llama-3, Phi-3, Gemma-2, Mistral v0.1/v0.2, Zephyr do not). ``trim`` is allowed: a
conversation with a content that starts or ends with whitespace is then located the slow way.
Then the full rendering, the text trained on, is the shape's filled in too. What the reading
rests on is checked as the data goes: the first ``verify_first`` conversations of each shape, and
every ``check_every``-th after, are also rendered from themselves and located the slow way; a
difference (a template this module misjudged) sends the shape to the slow way for good, with a
warning.
A template that reads the clock (``strftime_now``) is eligible only with a fixed ``now``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

from .render import render
from .spans import RenderedConversation, TemplateRewriteError, locate_by_rendering, locate_turns, render_with_spans

log = logging.getLogger(__name__)

# The fields whose strings a shape leaves open; any other field is part of the shape, value and all.
CONTENT_FIELDS = ("content", "reasoning_content", "thinking", "reasoning")
_FILLED, _EMPTY = "\ue000filled", ""  # a content field in a shape: filled in per conversation, or empty
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
# tests of a value that a placeholder passes exactly when a (non-empty) string content does
_TYPE_TESTS = ("defined", "undefined", "none", "string", "mapping", "sequence", "iterable")
_WHOLE_MESSAGE_READS = ("items", "values", "keys", "get", "dictsort", "tojson", "list", "string", "pprint")


@dataclass(frozen=True)
class TemplateReading:
    """What :func:`prints_contents_verbatim` found: whether contents are only printed and tested for
    presence, and whether they are printed trimmed."""

    verbatim: bool
    trims: bool
    why_not: str = ""


@lru_cache(maxsize=64)
def prints_contents_verbatim(template: str) -> TemplateReading:
    """Read the template's syntax tree: every read of a message's content (``m.content``, ``m['content']``,
    the reasoning fields, names set from them) must be printed (alone, joined with ``+``/``~``, or
    through ``trim``), tested in an ``if`` for truth or type, or set to a name that obeys the same; no
    field name may appear as a value (``m.get('content')``, ``'content' in m``) and no message may be
    read whole (``m.items()``, ``m | tojson``)."""
    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        tree = ImmutableSandboxedEnvironment(extensions=[loopcontrols]).parse(template)
    except TemplateSyntaxError as exc:  # e.g. a {% generation %} tag this plain environment lacks
        return TemplateReading(False, False, f"not parsed here: {exc}")

    aliases: set[str] = set()

    def is_read(node: Any) -> bool:
        if isinstance(node, nodes.Getattr):
            return node.attr in CONTENT_FIELDS
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and node.arg.value in CONTENT_FIELDS
        return isinstance(node, nodes.Name) and node.ctx == "load" and node.name in aliases

    def unwrap_trim(node: Any) -> Any:
        while isinstance(node, nodes.Filter) and node.name == "trim":
            node = node.node
        return node

    while True:  # names set from contents (or from such names), to a fixed point
        found = {a.target.name for a in tree.find_all(nodes.Assign)
                 if isinstance(a.target, nodes.Name) and is_read(unwrap_trim(a.node))}
        if found <= aliases:
            break
        aliases |= found

    def names_in(node: Any) -> set[str]:  # find_all looks below a node, not at it
        return {n.name for n in (node, *node.find_all(nodes.Name)) if isinstance(n, nodes.Name)}

    lists = {"messages"}  # and names set from it (loop_messages = messages[1:])
    while True:
        found = {a.target.name for a in tree.find_all(nodes.Assign)
                 if isinstance(a.target, nodes.Name) and names_in(a.node) & lists}
        if found <= lists:
            break
        lists |= found
    message_names = lists | {name for f in tree.find_all(nodes.For) if names_in(f.iter) & lists for name in names_in(f.target)}
    trims = False

    def in_test(node: Any, parents: list) -> bool:
        parent = parents[-1]
        if isinstance(parent, (nodes.If, nodes.CondExpr)) and parent.test is node:
            return True
        return isinstance(parent, (nodes.Not, nodes.And, nodes.Or)) and in_test(parent, parents[:-1])

    def allowed(node: Any, parents: list) -> bool:
        nonlocal trims
        parent = parents[-1]
        if isinstance(parent, nodes.Output):
            return True
        if isinstance(parent, (nodes.Add, nodes.Concat)):
            return allowed(parent, parents[:-1])
        if isinstance(parent, nodes.Filter) and parent.name == "trim" and parent.node is node:
            trims = True
            return allowed(parent, parents[:-1])
        if isinstance(parent, nodes.Test) and parent.node is node and parent.name in _TYPE_TESTS:
            return True
        if isinstance(parent, nodes.Assign) and isinstance(parent.target, nodes.Name):
            return True  # the name becomes an alias, held to the same rules
        return in_test(node, parents)

    problems: list[str] = []

    def visit(node: Any, parents: list) -> None:
        parent = parents[-1]
        if is_read(node) and not allowed(node, parents):
            problems.append(f"line {node.lineno}: a content read inside {type(parent).__name__}")
        elif isinstance(node, nodes.Const) and node.value in CONTENT_FIELDS and not (
                isinstance(parent, nodes.Getitem) and parent.arg is node):
            problems.append(f"line {node.lineno}: {node.value!r} as a value")
        elif isinstance(node, nodes.Name) and node.name in message_names and (
                isinstance(parent, (nodes.Filter, nodes.Test)) and parent.name in _WHOLE_MESSAGE_READS
                or isinstance(parent, nodes.Getattr) and parent.attr in _WHOLE_MESSAGE_READS):
            problems.append(f"line {node.lineno}: a message read whole ({parent.__class__.__name__} {getattr(parent, 'name', getattr(parent, 'attr', ''))})")
        for child in node.iter_child_nodes():
            visit(child, [*parents, node])

    visit(tree, [None])
    return TemplateReading(not problems, trims, "; ".join(problems[:3]))


def _placeholder(slot: int) -> str:
    return f"\ue000{slot}\ue001"


def _shape_of(messages: Sequence[Mapping[str, Any]], *, trims: bool) -> tuple | None:
    """What a conversation's renderings depend on besides its contents; None when a field holds structure
    (tool calls, content parts) that a placeholder cannot stand for, or (for a template that trims
    contents) a content starts or ends with whitespace, which a placeholder would keep."""
    shape = []
    for message in messages:
        fields = []
        for name, value in message.items():
            if value is None:
                continue
            if name in CONTENT_FIELDS and isinstance(value, str):
                if trims and value != value.strip():
                    return None
                fields.append((name, _EMPTY if value == "" else _FILLED))
            elif isinstance(value, (str, int, float, bool)):
                fields.append((name, value))
            else:
                return None
        shape.append(tuple(fields))
    return tuple(shape)


@dataclass(frozen=True)
class _Rendering:
    """A rendering of placeholders, ready to fill: a ``%`` format of its literal text and the slot of each ``%s``."""

    form: str
    slots: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> "_Rendering":
        parts = _PLACEHOLDER.split(text)  # literal text at even positions, slot numbers at odd ones
        return cls("%s".join(p.replace("%", "%%") for p in parts[::2]), tuple(int(p) for p in parts[1::2]))

    def fill(self, contents: Sequence[str]) -> str:
        """The rendering with ``contents`` in place of the placeholders: one C-level format, no Python loop."""
        return self.form % tuple([contents[i] for i in self.slots])


@dataclass
class _Shape:
    messages: list[dict]  # the shape's conversation, placeholders for contents
    slots: list[tuple[int, str]]  # (message index, field) of each placeholder, by number
    full: _Rendering
    prefixes: dict[tuple[int, bool], _Rendering] = field(default_factory=dict)
    seen: int = 0  # conversations of this shape so far

    def contents(self, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        return [messages[i][name] for i, name in self.slots]


class SkeletonRenderer:
    """:func:`render_with_spans` for one template, fast where the template prints contents verbatim.

    ``counts``: conversations located the fast way (``checked`` of them also the slow way), the slow
    way (the template not eligible, a field with structure, a shape found different, the cache full),
    and shapes found different when checked.
    """

    def __init__(
        self,
        template: str,
        *,
        stop_strings: Sequence[str],
        special_tokens: Mapping[str, str] | None = None,
        now: datetime | None = None,
        verify_first: int = 8,
        check_every: int = 64,
        max_shapes: int = 4096,
    ):
        self.template = template
        self.stop_strings = list(stop_strings)
        self.special_tokens = dict(special_tokens or {})
        self.now = now if "strftime_now" in template else None
        self.verify_first = verify_first
        self.check_every = check_every
        self.max_shapes = max_shapes
        self._shapes: dict[tuple, _Shape | None] = {}
        self.counts = {"fast": 0, "slow": 0, "checked": 0, "shapes_differed": 0}
        self.reading = prints_contents_verbatim(template)
        self.eligible = self.reading.verbatim and ("strftime_now" not in template or now is not None)

    def render_with_spans(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None,
                          template_kwargs: Mapping[str, Any] | None = None) -> RenderedConversation:
        """The same :class:`RenderedConversation` as :func:`render_with_spans` gives."""
        messages = list(messages)
        kw = dict(special_tokens=self.special_tokens, now=self.now, tools=tools, template_kwargs=template_kwargs)
        shape = self._shape(messages, kw) if self.eligible else None
        if shape is None:
            self.counts["slow"] += 1
            return render_with_spans(messages, self.template, stop_strings=self.stop_strings, **kw)
        contents = shape.contents(messages)
        full = shape.full.fill(contents)
        try:
            fast = self._fast(shape, contents, messages, full, kw)
        except TemplateRewriteError:  # the shape's prefixes fail to render: let the real ones say why, or succeed
            self.counts["slow"] += 1
            return render_with_spans(messages, self.template, stop_strings=self.stop_strings, **kw)
        shape.seen += 1
        if shape.seen <= self.verify_first or shape.seen % self.check_every == 0:
            real = render(messages, self.template, **kw)
            slow = locate_by_rendering(messages, real, self.template, kw, stop_strings=self.stop_strings)
            self.counts["checked"] += 1
            if slow != fast:
                self._shapes[self._key(messages, kw)] = None
                self.counts["shapes_differed"] += 1
                log.warning("tuneful misjudged this chat template: a conversation rendered from its shape differs from "
                            "its own rendering; conversations of that shape are rendered the slow way from now on "
                            "(please report it with the template)")
                return slow
        self.counts["fast"] += 1
        return fast

    def _fast(self, shape: _Shape, contents: list[str], messages: list[dict], full: str, kw: dict) -> RenderedConversation:
        """The turns located in prefixes made of the shape's, ``contents`` filled in."""
        return locate_turns(messages, full, lambda k, generation: self._prefix(shape, k, generation, kw).fill(contents),
                            stop_strings=self.stop_strings, render_other=lambda other: render(other, self.template, **kw))

    def _key(self, messages: Sequence[Mapping[str, Any]], kw: dict) -> tuple | None:
        shape = _shape_of(messages, trims=self.reading.trims)
        if shape is None:
            return None
        try:
            return (shape, *(json.dumps(kw[name], sort_keys=True) if kw[name] else None
                             for name in ("tools", "template_kwargs")))
        except TypeError:  # a tool given as a function, a value JSON cannot write: no shape
            return None

    def _shape(self, messages: list[dict], kw: dict) -> _Shape | None:
        """The shape of ``messages`` rendered with ``kw`` (:func:`render`'s keywords), built on first sight."""
        key = self._key(messages, kw)
        if key is None:
            return None
        if key in self._shapes:
            return self._shapes[key]
        if len(self._shapes) >= self.max_shapes:
            return None
        skeleton, slots = [], []
        for i, message in enumerate(messages):
            filled = dict(message)
            for name in CONTENT_FIELDS:
                if isinstance(filled.get(name), str) and filled[name]:
                    filled[name] = _placeholder(len(slots))
                    slots.append((i, name))
            skeleton.append(filled)
        try:
            shape = _Shape(skeleton, slots, _Rendering.of(render(skeleton, self.template, **kw)))
        except Exception:  # the template refuses placeholders where it takes the real contents: no shape
            shape = None
        self._shapes[key] = shape
        return shape

    def _prefix(self, shape: _Shape, k: int, generation: bool, kw: dict) -> _Rendering:
        if (k, generation) not in shape.prefixes:
            shape.prefixes[(k, generation)] = _Rendering.of(render(shape.messages[:k], self.template,
                                                            add_generation_prompt=generation, **kw))
        return shape.prefixes[(k, generation)]
