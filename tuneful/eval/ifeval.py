"""Verifiable instruction following: checks for IFEval's instruction types (Zhou et al. 2023,
"Instruction-Following Evaluation for Large Language Models", arXiv:2311.07911).

Each check is written here from the paper's description of the instruction type; a record is
``{"prompt", "instruction_id_list", "kwargs"}`` as in IFEval's ``input_data.jsonl``. *Strict*
accuracy checks the response as written; *loose* accuracy passes an instruction if any of the
paper's lenient variants passes (markdown ``*`` removed, first and/or last line removed), which
forgives "Sure, here it is:" preambles and sign-offs. Reported at prompt level (every instruction
of a prompt followed) and instruction level.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

Check = Callable[[str, dict], bool]
_WORD = re.compile(r"\w+")


def _compare(count: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return count < target
    if relation == "at least":
        return count >= target
    raise ValueError(f"unknown relation {relation!r}; IFEval uses 'less than' and 'at least'")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def count_sentences(text: str) -> int:
    """Sentences end with . ! or ? followed by space or the end; common abbreviations do not end one."""
    text = re.sub(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|e\.g|i\.e|U\.S)\.", "<abbr>", text)
    text = re.sub(r"(\d)\.(\d)", r"\1<dot>\2", text)
    pieces = [p for p in re.split(r"[.!?]+(?:[\"')\]]*)(?:\s+|$)|\n\s*\n", text) if p.strip()]
    return len(pieces)


def _paragraphs_by_divider(text: str) -> list[str] | None:
    parts = [p.strip() for p in re.split(r"\s*\*\*\*\s*", text.strip())]
    if parts and not parts[0]:
        parts = parts[1:]
    if parts and not parts[-1]:
        parts = parts[:-1]
    return None if any(not p for p in parts) else parts


def _detect_language(text: str) -> str | None:
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:  # pragma: no cover - langdetect is a dependency
        return None
    DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes its answer repeatable
    try:
        return detect(text)
    except LangDetectException:
        return None


def _is_english(text: str) -> bool:
    return _detect_language(text) == "en"


# --- one check per instruction type -------------------------------------------------------------

def no_comma(r: str, kw: dict) -> bool:
    return "," not in r


def highlighted_sections(r: str, kw: dict) -> bool:
    found = [h for h in re.findall(r"\*\*([^\n*]+)\*\*|\*([^\n*]+)\*", r) if (h[0] or h[1]).strip()]
    return len(found) >= kw["num_highlights"]


def number_words(r: str, kw: dict) -> bool:
    return _compare(len(_words(r)), kw["relation"], kw["num_words"])


def placeholders(r: str, kw: dict) -> bool:
    return len(re.findall(r"\[[^\[\]\n]+\]", r)) >= kw["num_placeholders"]


def repeat_prompt(r: str, kw: dict) -> bool:
    return r.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def two_responses(r: str, kw: dict) -> bool:
    parts = [p.strip() for p in r.split("******")]
    if parts and not parts[0]:
        parts = parts[1:]
    if parts and not parts[-1]:
        parts = parts[:-1]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def postscript(r: str, kw: dict) -> bool:
    marker = kw["postscript_marker"].strip().lower()
    if marker == "p.s.":
        pattern = r"\s*p\.\s?s\..*$"
    elif marker == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return re.search(pattern, r.lower(), flags=re.MULTILINE) is not None


def constrained_response(r: str, kw: dict) -> bool:
    return any(option in r for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def json_format(r: str, kw: dict) -> bool:
    text = r.strip()
    text = re.sub(r"^```(?:json|JSON|Json)?\s*", "", text)
    text = re.sub(r"\s*```$", "", text)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def multiple_sections(r: str, kw: dict) -> bool:
    sections = re.split(r"\s?" + re.escape(kw["section_spliter"]) + r"\s?\d+\s?", r)
    return len(sections) - 1 >= kw["num_sections"]


def bullet_lists(r: str, kw: dict) -> bool:
    bullets = re.findall(r"^\s*[*-][^\S\n]+\S", r, flags=re.MULTILINE)
    return len(bullets) == kw["num_bullets"]


def title(r: str, kw: dict) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", r))


def keywords_exist(r: str, kw: dict) -> bool:
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in kw["keywords"])


def forbidden_words(r: str, kw: dict) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in kw["forbidden_words"])


def keyword_frequency(r: str, kw: dict) -> bool:
    count = len(re.findall(r"\b" + re.escape(kw["keyword"]) + r"\b", r, flags=re.IGNORECASE))
    return _compare(count, kw["relation"], kw["frequency"])


def letter_frequency(r: str, kw: dict) -> bool:
    return _compare(r.lower().count(kw["letter"].lower()), kw["let_relation"], kw["let_frequency"])


def response_language(r: str, kw: dict) -> bool:
    return _detect_language(r) == kw["language"]


def nth_paragraph_first_word(r: str, kw: dict) -> bool:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", r.strip()) if p.strip()]
    if len(paragraphs) != kw["num_paragraphs"] or kw["nth_paragraph"] > len(paragraphs):
        return False
    words = paragraphs[kw["nth_paragraph"] - 1].split()
    first = re.sub(r"^[^\w]+|[^\w]+$", "", words[0]).lower() if words else ""
    return first == kw["first_word"].strip().lower()


def number_paragraphs(r: str, kw: dict) -> bool:
    parts = _paragraphs_by_divider(r)
    return parts is not None and len(parts) == kw["num_paragraphs"]


def number_sentences(r: str, kw: dict) -> bool:
    return _compare(count_sentences(r), kw["relation"], kw["num_sentences"])


def all_lowercase(r: str, kw: dict) -> bool:
    return r == r.lower() and any(c.isalpha() for c in r) and _is_english(r)


def all_capitals(r: str, kw: dict) -> bool:
    return r == r.upper() and any(c.isalpha() for c in r) and _is_english(r)


def capital_word_frequency(r: str, kw: dict) -> bool:
    capitals = [w for w in _words(r) if w.isupper()]
    return _compare(len(capitals), kw["capital_relation"], kw["capital_frequency"])


def end_phrase(r: str, kw: dict) -> bool:
    return r.strip().lower().endswith(kw["end_phrase"].strip().lower())


def quotation(r: str, kw: dict) -> bool:
    text = r.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


CHECKS: dict[str, Check] = {
    "punctuation:no_comma": no_comma,
    "detectable_format:number_highlighted_sections": highlighted_sections,
    "length_constraints:number_words": number_words,
    "detectable_content:number_placeholders": placeholders,
    "combination:repeat_prompt": repeat_prompt,
    "combination:two_responses": two_responses,
    "detectable_content:postscript": postscript,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:json_format": json_format,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:number_bullet_lists": bullet_lists,
    "detectable_format:title": title,
    "keywords:existence": keywords_exist,
    "keywords:forbidden_words": forbidden_words,
    "keywords:frequency": keyword_frequency,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_sentences": number_sentences,
    "change_case:english_lowercase": all_lowercase,
    "change_case:english_capital": all_capitals,
    "change_case:capital_word_frequency": capital_word_frequency,
    "startend:end_checker": end_phrase,
    "startend:quotation": quotation,
}


def loose_variants(response: str) -> list[str]:
    """The response and the lenient rewrites the paper's loose accuracy allows."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [v.replace("*", "") for v in cut]


def _kwargs(raw: dict) -> dict:
    return {k: v for k, v in (raw or {}).items() if v is not None}


@dataclass(frozen=True)
class IfevalResult:
    instruction_ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    unsupported: tuple[str, ...] = ()


def check_record(record: dict, response: str) -> IfevalResult:
    """Strict and loose verdict of each instruction in one IFEval-style record."""
    ids, strict, loose, unsupported = [], [], [], []
    for instruction, raw in zip(record["instruction_id_list"], record.get("kwargs") or [{}] * len(record["instruction_id_list"])):
        check = CHECKS.get(instruction)
        if check is None:
            unsupported.append(instruction)
            continue
        kwargs = _kwargs(raw)
        if instruction == "combination:repeat_prompt" and "prompt_to_repeat" not in kwargs:
            kwargs["prompt_to_repeat"] = record.get("prompt", "")
        ids.append(instruction)
        strict.append(bool(response.strip()) and check(response, kwargs))
        loose.append(any(v.strip() and check(v, kwargs) for v in loose_variants(response)))
    return IfevalResult(tuple(ids), tuple(strict), tuple(loose), tuple(unsupported))


def summarize(results: list[IfevalResult]) -> dict[str, Any]:
    """Prompt- and instruction-level accuracy, strict and loose, plus accuracy per instruction type."""
    scored = [r for r in results if r.instruction_ids]
    if not scored:
        return {}
    instructions = [(i, s, lo) for r in scored for i, s, lo in zip(r.instruction_ids, r.strict, r.loose)]
    by_type: dict[str, list[bool]] = {}
    for instruction, strict, _ in instructions:
        by_type.setdefault(instruction, []).append(strict)
    unsupported = sorted({u for r in results for u in r.unsupported})
    return {
        "prompts": len(scored),
        "prompt_strict": sum(all(r.strict) for r in scored) / len(scored),
        "prompt_loose": sum(all(r.loose) for r in scored) / len(scored),
        "instruction_strict": sum(s for _, s, _ in instructions) / len(instructions),
        "instruction_loose": sum(lo for _, _, lo in instructions) / len(instructions),
        "by_instruction_strict": {k: sum(v) / len(v) for k, v in sorted(by_type.items())},
        "unsupported_instructions": unsupported,
    }
