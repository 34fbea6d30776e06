"""Rendering conversations with a Jinja chat template, exactly as transformers does.

We call transformers' own renderer (``render_jinja_template``) rather than re-implementing Jinja
semantics, so the text we train on is the text ``apply_chat_template`` gives at inference.
The one thing it lacks is a way to fix the clock that templates read through ``strftime_now``
(Llama-3.2, Granite print today's date); a callable cannot be passed as a template variable (they
are sanitised to plain data), so :func:`frozen_clock` swaps the ``datetime`` that transformers'
``strftime_now`` reads, under a lock.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator, Mapping, Sequence

_CLOCK_LOCK = threading.RLock()


@contextmanager
def frozen_clock(now: datetime | None) -> Iterator[None]:
    """Make ``strftime_now`` in chat templates read ``now`` (no-op when ``now`` is None)."""
    if now is None:
        yield
        return
    import transformers.utils.chat_template_utils as ctu

    if not hasattr(ctu, "datetime"):
        raise RuntimeError(
            "this transformers version has no module-level datetime in chat_template_utils; "
            "tuneful cannot freeze strftime_now (report this with your transformers version)"
        )

    class _Frozen(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: D401 - mimics datetime.now
            return now if tz is None else now.astimezone(tz)

    with _CLOCK_LOCK:
        original = ctu.datetime
        ctu.datetime = _Frozen
        try:
            yield
        finally:
            ctu.datetime = original


def render(
    messages: Sequence[Mapping[str, Any]],
    template: str,
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    now: datetime | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Render one conversation (OpenAI-style message dicts) with a template source string.

    As ``apply_chat_template`` does: keys whose value is None are dropped from messages (an assistant
    message with tool calls and ``content: null`` has no content key), ``tools`` are passed as the
    template's ``tools``, and the special-token strings (``bos_token``, ``eos_token`` ...) and
    ``template_kwargs`` (e.g. ``enable_thinking``) become template variables, the kwargs winning.
    Template errors propagate unchanged (e.g. ``TemplateError: Conversation roles must alternate``).
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    variables = {**dict(special_tokens or {}), **dict(template_kwargs or {})}
    with frozen_clock(now):
        rendered = render_jinja_template(
            conversations=[conversation],
            tools=list(tools) if tools else None,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    # transformers returns (rendered_list, generation_indices)
    texts = rendered[0] if isinstance(rendered, tuple) else rendered
    return texts[0]


def error_json(exc: BaseException) -> dict[str, str]:
    """The ``{"type", "message"}`` form of a rendering error used by ``--json`` outputs."""
    return {"type": type(exc).__name__, "message": str(exc)}
