"""Heuristic quality filters: each returns a reason string for a bad record, or None.

Cheap checks that catch what every noisy instruction set contains: replies that are empty,
cut off, canned refusals of a chat model, copies of the instruction, broken code blocks, or in
another language than the question.
"""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Sequence

from ..data.workers import die_with_parent

BOILERPLATE = re.compile(
    r"as an ai(?: language)? model|as a (?:large )?language model|i(?:'m| am) (?:just )?an ai\b|"
    r"i cannot (?:fulfil|fulfill|comply)|i(?:'m| am) sorry,? but (?:i|as an)|my knowledge cutoff|"
    r"i do not have (?:personal )?(?:opinions|feelings|access to real-time)",
    re.IGNORECASE,
)
# A reply ending on one of these words (or on a comma/colon/open bracket) stops mid-sentence.
DANGLING = {"a", "an", "the", "of", "to", "and", "or", "but", "in", "on", "at", "for", "with", "is", "are", "was",
            "were", "be", "that", "which", "by", "from", "as", "its", "their", "my", "your", "this", "these"}


def truncated(response: str) -> bool:
    text = response.rstrip()
    if not text:
        return False
    if text[-1] in ",:;([{-" or text.count("(") > text.count(")"):
        return True
    last = re.findall(r"[A-Za-z']+$", text)
    return bool(last) and last[0].lower() in DANGLING


def repeats_instruction(instruction: str, response: str) -> bool:
    ins, res = instruction.strip().casefold(), response.strip().casefold()
    return bool(ins) and (res == ins or (len(ins) > 20 and ins in res))


def language_mismatch(instruction: str, response: str, min_chars: int = 40) -> bool:
    """Both long enough to tell, and langdetect (seeded) names different languages.

    An instruction that asks for a translation or names a language is allowed another language.
    """
    if len(instruction) < min_chars or len(response) < min_chars:
        return False
    if re.search(r"translat|in (?:english|french|german|spanish|italian|chinese|japanese|russian)", instruction,
                 re.IGNORECASE):
        return False
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(instruction) != detect(response)
    except LangDetectException:
        return False


def quality_problem(instruction: str, response: str, *, min_chars: int, max_chars: int) -> str | None:
    """The first heuristic the record fails, as a reason, or None."""
    if not response.strip():
        return "empty response"
    if len(response.strip()) < min_chars:
        return f"response shorter than {min_chars} characters"
    if len(response) > max_chars:
        return f"response longer than {max_chars} characters"
    if response.count("```") % 2:
        return "unbalanced code fence"
    if truncated(response):
        return "truncated ending"
    if BOILERPLATE.search(response):
        return "boilerplate ('as an AI language model' and the like)"
    if repeats_instruction(instruction, response):
        return "response repeats the instruction"
    if language_mismatch(instruction, response):
        return "response in another language than the instruction"
    return None


def quality_problems(pairs: Sequence[tuple[str, str]], *, min_chars: int, max_chars: int,
                     processes: int = 0) -> list[str | None]:
    """``quality_problem`` of each (instruction, response), in order. The checks are pure Python (langdetect
    takes ~5 ms a text), so a large input is split over ``processes`` worker processes (0 = one per CPU core);
    the decisions are the same as one process's."""
    check = partial(_problem_of_pair, min_chars=min_chars, max_chars=max_chars)
    processes = processes or os.cpu_count() or 1
    if processes < 2 or len(pairs) < 2_000:
        return [check(pair) for pair in pairs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        return list(pool.map(check, pairs, chunksize=max(1, min(500, len(pairs) // (4 * processes)))))


def _problem_of_pair(pair: tuple[str, str], *, min_chars: int, max_chars: int) -> str | None:
    return quality_problem(pair[0], pair[1], min_chars=min_chars, max_chars=max_chars)
