"""An Ollama ``Modelfile`` for an exported GGUF: the chat template as Ollama's Go template, and stops.

Boundary: text only, no model is loaded. Ollama renders prompts with Go templates, not Jinja, so the
model's Jinja template cannot be handed over as it is. Instead the Jinja template is *rendered* (by the
same renderer as training) on probe conversations whose contents are sentinels; the text between the
sentinels is each role's wrapping, and the Go template prints exactly those pieces. The pieces are then
checked: the Go template's layout, replayed in Python on conversations of several shapes (with and
without a system message, one to three turns, ending with the user), must give the Jinja rendering
character for character. A template whose layout is not a fixed wrapping per role (one that merges the
system message into the first user turn, numbers turns, prints tools ...) fails that check, and the
Modelfile then carries no TEMPLATE, with a comment that says why (Ollama then falls back to the
template it detects from the GGUF's metadata, if it knows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..templates.render import render

_SENTINEL = "\x00{}\x00"


@dataclass(frozen=True)
class RoleLayout:
    """What a template prints around message contents; see :func:`derive_layout`."""
    head_with_system: str   # text before the first (system) message's content
    head_without_system: str  # text before the first user message's content when there is no system message
    after_system: str       # text between a system message's content and the first user message's content
    after_user: str         # text after a user message's content (ends with the assistant's opening)
    after_assistant: str    # text after an assistant reply (its end of turn)
    before_user: str        # text before a user message's content after an assistant reply

    def replay(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt these pieces give (the Go template's logic, in Python, for the self-check)."""
        out = []
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if role == "system":
                out.append(self.head_with_system + content + self.after_system)
            elif role == "user":
                if index == 0:
                    out.append(self.head_without_system)
                elif messages[index - 1]["role"] == "assistant":
                    out.append(self.before_user)
                out.append(content + self.after_user)
            else:
                out.append(content + self.after_assistant)
        return "".join(out)


def _split(text: str, count: int) -> list[str] | None:
    """``text`` cut at sentinels 0..count-1 (in order): the count+1 pieces around them, or None."""
    pieces, rest = [], text
    for index in range(count):
        marker = _SENTINEL.format(index)
        if rest.count(marker) != 1:
            return None
        before, rest = rest.split(marker)
        pieces.append(before)
    return pieces + [rest]


def _probe(roles: Sequence[str]) -> list[dict[str, str]]:
    return [{"role": role, "content": _SENTINEL.format(i)} for i, role in enumerate(roles)]


def derive_layout(template: str, special_tokens: Mapping[str, str]) -> RoleLayout | None:
    """Each role's wrapping, read off renderings of sentinel conversations; None when the template's
    layout is not a fixed wrapping (see the module docstring)."""
    def rendered(roles: Sequence[str], generation: bool) -> list[str] | None:
        try:
            text = render(_probe(roles), template, add_generation_prompt=generation, special_tokens=special_tokens)
        except Exception:  # noqa: BLE001 - a template that refuses a probe shape has no fixed layout
            return None
        return _split(text, len(roles))

    with_system = rendered(["system", "user", "assistant", "user"], True)
    without_system = rendered(["user", "assistant", "user"], True)
    closed = rendered(["user", "assistant"], False)
    if not (with_system and without_system and closed):
        return None
    end_of_reply = closed[2]
    between_turns = without_system[2]
    if not between_turns.startswith(end_of_reply):
        return None
    layout = RoleLayout(
        head_with_system=with_system[0], head_without_system=without_system[0], after_system=with_system[1],
        after_user=without_system[1], after_assistant=end_of_reply, before_user=between_turns[len(end_of_reply):])
    return layout if layout_matches(layout, template, special_tokens) else None


_CHECK_CONVERSATIONS = (
    ["user"], ["system", "user"], ["user", "assistant", "user"], ["system", "user", "assistant", "user"],
    ["user", "assistant", "user", "assistant", "user"], ["system", "user", "assistant", "user", "assistant", "user"],
)


def layout_matches(layout: RoleLayout, template: str, special_tokens: Mapping[str, str]) -> bool:
    """Whether the pieces give the Jinja rendering of every checked conversation shape (prompts that end
    with a user message and the generation prompt, as Ollama renders them)."""
    for roles in _CHECK_CONVERSATIONS:
        messages = [{"role": role, "content": f"{role} message {i}: Hello, world."} for i, role in enumerate(roles)]
        try:
            expected = render(messages, template, add_generation_prompt=True, special_tokens=special_tokens)
        except Exception:  # noqa: BLE001
            return False
        if layout.replay(messages) != expected:
            return False
    return True


def _go_text(text: str) -> str:
    """A literal for Go templates: printed through a quoted string so that no character is special."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    escaped = "".join(c if c.isprintable() or c in "\\" else f"\\u{ord(c):04x}" for c in escaped)
    return "{{ \"" + escaped + "\" }}" if text else ""


def go_template(layout: RoleLayout) -> str:
    """The layout as an Ollama TEMPLATE (Go text/template over ``.Messages``)."""
    return (
        "{{- $previous := \"\" }}{{- range $i, $m := .Messages }}"
        "{{- if eq $m.Role \"system\" }}" + _go_text(layout.head_with_system) + "{{ $m.Content }}"
        + _go_text(layout.after_system)
        + "{{- else if eq $m.Role \"user\" }}"
        "{{- if eq $i 0 }}" + _go_text(layout.head_without_system)
        + "{{- else if eq $previous \"assistant\" }}" + _go_text(layout.before_user)
        + "{{- end }}{{ $m.Content }}" + _go_text(layout.after_user)
        + "{{- else if eq $m.Role \"assistant\" }}{{ $m.Content }}" + _go_text(layout.after_assistant)
        + "{{- end }}{{- $previous = $m.Role }}{{- end }}"
    )


def modelfile(gguf_name: str, template: str, special_tokens: Mapping[str, str], stops: Sequence[str],
              temperature: float = 0.0) -> tuple[str, bool]:
    """The Modelfile text and whether it carries a TEMPLATE."""
    lines = ["# Written by tuneful export. Use: ollama create NAME -f Modelfile && ollama run NAME",
             f"FROM ./{gguf_name}"]
    layout = derive_layout(template, special_tokens)
    if layout is None:
        lines.append("# No TEMPLATE: this chat template is not a fixed wrapping per role, so it has no exact Go "
                     "form here; Ollama uses the template it recognises from the GGUF's metadata, if any.")
    else:
        lines.append('TEMPLATE """' + go_template(layout) + '"""')
    for stop in stops:
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n", layout is not None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def template_pieces(template: str, special_tokens: Mapping[str, str]) -> dict[str, Any] | None:
    """The derived layout as a plain dict (for reports and tests)."""
    layout = derive_layout(template, special_tokens)
    return None if layout is None else dict(layout.__dict__)
