"""Turns located from a shape's renderings (contents filled in) equal turns located from the conversation's own."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import FIXTURES, FROZEN_NOW, needs_fixtures
from tuneful.templates.skeleton import SkeletonRenderer, prints_contents_verbatim
from tuneful.templates.spans import render_with_spans

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
STOPS = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>", "<｜end▁of▁sentence｜>"]
TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "Name a colour?"}, {"role": "assistant", "content": "Blue."}]


def _with_contents(messages: list[dict], new: str) -> list[dict]:
    return [{**m, "content": new if m.get("content") else m.get("content")} for m in messages]


@pytest.mark.parametrize("template, verbatim", [
    (CHATML, True),
    ("{% for m in messages %}{% if m.content %}{{ m.role + ': ' + m['content'] }}{% endif %}"
     "{% if m.content is string %}.{% endif %}{% endfor %}", True),
    ("{% for m in messages %}{% set c = m.content %}{{ c }}{% endfor %}", True),
    ("{% for m in messages %}{% if 'x' in m.content %}x{% endif %}{{ m.content }}{% endfor %}", False),
    ("{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}", False),
    ("{% for m in messages %}{{ m.get('content') }}{% endfor %}", False),
    ("{% for m in messages %}{{ m | tojson }}{% endfor %}", False),
    ("{% set rest = messages[1:] %}{% for m in rest %}{% for k, v in m.items() %}{{ v }}{% endfor %}{% endfor %}", False),
    ("{% for m in messages %}{% set c = m.content %}{% if c.startswith('a') %}a{% endif %}{% endfor %}", False),
    ("{% set ns = namespace(c='') %}{% for m in messages %}{% set ns.c = m.content %}{% endfor %}{{ ns.c }}", False),
    ("{% for m in messages %}{{ m.content | length }}{% endfor %}", False),
    ("{% if add_generation_prompt and messages[-1].content.endswith('?') %}Q{% endif %}", False),
])
def test_a_template_is_read_for_what_it_does_with_contents(template: str, verbatim: bool):
    assert prints_contents_verbatim(template).verbatim is verbatim


def test_a_trimming_template_locates_padded_contents_the_slow_way():
    template = CHATML.replace("{{ m.content }}", "{{ m.content | trim }}")
    assert prints_contents_verbatim(template).trims
    skeletons = SkeletonRenderer(template, stop_strings=STOPS, verify_first=0)
    padded = _with_contents(TWO_TURNS, "  padded  ")
    assert skeletons.render_with_spans(padded) == render_with_spans(padded, template, stop_strings=STOPS)
    assert skeletons.counts["slow"] == 1 and skeletons.counts["fast"] == 0
    assert skeletons.render_with_spans(TWO_TURNS) == render_with_spans(TWO_TURNS, template, stop_strings=STOPS)
    assert skeletons.counts["fast"] == 1


def test_conversations_of_one_shape_share_its_renderings():
    skeletons = SkeletonRenderer(CHATML, stop_strings=STOPS, verify_first=1)
    other = _with_contents(TWO_TURNS, "something else entirely")
    for messages in (TWO_TURNS, other, TWO_TURNS):
        assert skeletons.render_with_spans(messages) == render_with_spans(messages, CHATML, stop_strings=STOPS)
    assert skeletons.counts == {"fast": 3, "slow": 0, "checked": 1, "shapes_differed": 0}
    assert len(skeletons._shapes) == 1
    empty_reply = [*TWO_TURNS[:3], {"role": "assistant", "content": ""}]  # emptiness is part of the shape
    assert skeletons.render_with_spans(empty_reply) == render_with_spans(empty_reply, CHATML, stop_strings=STOPS)
    assert len(skeletons._shapes) == 2


def test_a_template_that_tests_contents_is_located_the_slow_way():
    """Its generation prompt depends on the last message's text: a shape cannot stand for it."""
    template = CHATML.replace("<|im_start|>assistant\n{% endif %}",
                              "<|im_start|>assistant\n{% if messages[-1].content.endswith('?') %}Answer: {% endif %}{% endif %}")
    skeletons = SkeletonRenderer(template, stop_strings=STOPS)
    assert not skeletons.eligible
    slow = render_with_spans(TWO_TURNS, template, stop_strings=STOPS)
    assert skeletons.render_with_spans(TWO_TURNS) == slow and skeletons.counts["slow"] == 1
    assert slow.turns[1].generated.startswith("Blue.")  # "Answer: " is the generation prompt's, never trained


def test_verification_catches_a_misjudged_template(caplog):
    """Were the reading wrong, the first conversations of each shape, located both ways, would say so."""
    template = CHATML.replace("<|im_start|>assistant\n{% endif %}",
                              "<|im_start|>assistant\n{% if messages[-1].content.endswith('?') %}Answer: {% endif %}{% endif %}")
    skeletons = SkeletonRenderer(template, stop_strings=STOPS, verify_first=8)
    skeletons.eligible = True  # as if the reading had missed the test of the content
    plain = _with_contents(TWO_TURNS, "No question")
    assert skeletons.render_with_spans(plain) == render_with_spans(plain, template, stop_strings=STOPS)
    with caplog.at_level(logging.WARNING):
        got = skeletons.render_with_spans(TWO_TURNS)
    assert got == render_with_spans(TWO_TURNS, template, stop_strings=STOPS)
    assert skeletons.counts["shapes_differed"] == 1 and "misjudged" in caplog.text
    skeletons.render_with_spans(plain)
    assert skeletons.counts["slow"] == 1  # the shape goes the slow way from then on


def test_the_checks_render_conversations_from_themselves_first_and_then_every_so_often():
    template = CHATML.replace("{{ m.content }}", "{{ m.content | trim }}")
    skeletons = SkeletonRenderer(template, stop_strings=STOPS, verify_first=2, check_every=3)
    skeletons.reading = prints_contents_verbatim(CHATML)  # as if trim had gone unnoticed
    for _ in range(5):
        assert skeletons.render_with_spans(TWO_TURNS) == render_with_spans(TWO_TURNS, template, stop_strings=STOPS)
    assert skeletons.counts["checked"] == 3  # the 1st, 2nd, then the 3rd of every 3
    padded = _with_contents(TWO_TURNS, " padded ")  # the 6th: checked, and the check finds the trim
    assert skeletons.render_with_spans(padded) == render_with_spans(padded, template, stop_strings=STOPS)
    assert skeletons.counts["shapes_differed"] == 1


@needs_fixtures
def test_every_fixture_template_locates_turns_as_its_own_renderings_do(fixture_conversations):
    """34 real templates x the fixture conversations (whitespace edges, template-like strings, reasoning,
    empty replies): each conversation located after another of its shape built the renderings, never
    verified, equals the slow way; the templates that print contents verbatim take the fast way."""
    eligible = set()
    for golden in sorted((FIXTURES / "chat_templates" / "goldens").glob("*.json")):
        family = golden.stem
        template = (FIXTURES / "chat_templates" / f"{family}.jinja").read_text()
        special = json.loads(golden.read_text())["special_tokens_map"]
        stops = sorted(set(STOPS) | {v for v in special.values() if isinstance(v, str)})
        skeletons = SkeletonRenderer(template, stop_strings=stops, special_tokens=special, now=FROZEN_NOW, verify_first=0)
        for conv in fixture_conversations:
            messages = conv["messages"]
            try:
                slow = render_with_spans(messages, template, stop_strings=stops, special_tokens=special, now=FROZEN_NOW)
            except Exception as exc:
                with pytest.raises(type(exc)):
                    skeletons.render_with_spans(messages)
                continue
            try:  # another conversation of the same shape goes first and builds the shape's renderings
                skeletons.render_with_spans(_with_contents(messages, "other words"))
            except Exception:
                pass
            assert skeletons.render_with_spans(messages) == slow, (family, conv["id"])
        if skeletons.counts["fast"]:
            eligible.add(family)
    assert {"qwen2.5-instruct", "llama-3-instruct", "phi-3-mini-instruct", "gemma-2-it", "zephyr-7b-beta",
            "mistral-7b-instruct-v0.1"} <= eligible
    assert not eligible & {"qwen3", "deepseek-r1", "llama-3.1-instruct"}
    assert len(eligible) >= 20
