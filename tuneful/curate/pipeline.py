"""``tuneful curate``: load → quality → exact → near → semantic → IFD → judge → reward → select, nothing lost.

Every record that does not reach the output is written to the rejected file with the stage that
removed it and why (a duplicate names the record it duplicates), so kept + rejected = input.
Cheap stages run first so expensive ones (embeddings, the judge) see fewer records; dedup keeps
the first occurrence, and runs after the quality filter so a bad first copy cannot take a good
duplicate down with it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..data.loader import load
from ..data.types import Conversation
from .config import CurateSettings
from .dedup import embed, exact_duplicates, near_duplicates, semantic_duplicates
from .quality import quality_problem
from .select import cluster_balanced, default_clusters, k_center, kmeans

STAGES = ("load", "quality", "exact", "near", "semantic", "ifd", "judge", "reward", "select")


@dataclass
class Record:
    index: int  # position among the loaded records
    conversation: Conversation
    instruction: str  # the user turns (and system prompt), joined
    response: str  # the assistant turns, joined

    @property
    def text(self) -> str:
        return self.instruction + "\n" + self.response

    @property
    def where(self) -> str:
        return str(self.conversation.meta.get("where", f"record {self.index}"))


def to_record(index: int, conv: Conversation) -> Record:
    instruction = "\n".join(m.content for m in conv.messages if m.role != "assistant")
    response = "\n".join(m.content for m in conv.messages if m.role == "assistant")
    return Record(index, conv, instruction, response)


@dataclass
class Rejection:
    record: dict  # the canonical record (or, for a record that failed to load, where it was)
    stage: str
    reason: str


@dataclass
class CurationResult:
    records_in: int
    kept: list[Record]
    rejected: list[Rejection]
    seconds_by_stage: dict[str, float] = field(default_factory=dict)
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # record index -> {"judge":, "ifd":, "reward":}
    embeddings: np.ndarray | None = None  # rows aligned with ``embedded``
    embedded: list[int] = field(default_factory=list)  # record indices with an embedding row
    judge_unrated: int = 0

    def rejected_by_stage(self) -> dict[str, int]:
        counts = {s: 0 for s in STAGES}
        for r in self.rejected:
            counts[r.stage] += 1
        return {s: n for s, n in counts.items() if n}


class Curator:
    def __init__(self, settings: CurateSettings, *, judge: Any = None, embedder: Callable[..., np.ndarray] = embed):
        self.s, self.judge, self.embedder = settings, judge, embedder

    def run(self, source: str, *, format: str = "auto", on_error: str = "fail") -> CurationResult:
        started = time.perf_counter()
        loaded = load(source, format=format, on_error=on_error)
        if loaded.preferences:
            raise ValueError(f"{source} holds preference pairs; tuneful curate works on conversations")
        records = [to_record(i, c) for i, c in enumerate(loaded.conversations)]
        result = CurationResult(len(records) + loaded.report.skipped_count, [], [])
        result.rejected += [Rejection({"where": where}, "load", message) for where, message in loaded.report.skipped]
        result.seconds_by_stage["load"] = time.perf_counter() - started
        for stage in (self._quality, self._exact, self._near, self._semantic, self._ifd, self._judge, self._reward,
                      self._select):
            started = time.perf_counter()
            records = stage(records, result)
            result.seconds_by_stage[stage.__name__.strip("_")] = time.perf_counter() - started
        result.kept = records
        return result

    def _drop(self, result: CurationResult, records: list[Record], reasons: dict[int, str], stage: str) -> list[Record]:
        """Move records at the given positions to the rejected list; return the rest in order."""
        for pos, reason in reasons.items():
            result.rejected.append(Rejection(records[pos].conversation.to_json(), stage, reason))
        return [r for pos, r in enumerate(records) if pos not in reasons]

    def _duplicate_reasons(self, records: list[Record], dups: dict[int, int], kind: str) -> dict[int, str]:
        return {pos: f"{kind} of {records[orig].where}" for pos, orig in dups.items()}

    # --- stages ---------------------------------------------------------------------------------
    def _quality(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.quality:
            return records
        reasons = {}
        for pos, r in enumerate(records):
            problem = quality_problem(r.instruction, r.response, min_chars=self.s.min_response_chars,
                                      max_chars=self.s.max_response_chars)
            if problem:
                reasons[pos] = problem
        return self._drop(result, records, reasons, "quality")

    def _exact(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.exact:
            return records
        dups = exact_duplicates([r.text for r in records])
        return self._drop(result, records, self._duplicate_reasons(records, dups, "exact duplicate"), "exact")

    def _near(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.near or not records:
            return records
        dups = near_duplicates([r.text for r in records], self.s.near_threshold)
        return self._drop(result, records, self._duplicate_reasons(records, dups, "near duplicate"), "near")

    def _embeddings(self, records: list[Record], result: CurationResult) -> np.ndarray:
        """Rows for ``records``, computing only the ones not embedded yet."""
        have = {idx: row for row, idx in enumerate(result.embedded)}
        missing = [r for r in records if r.index not in have]
        if missing:
            vectors = self.embedder([r.text for r in missing], self.s.embedding_model, self.s.batch_size,
                                    self.s.embedding_max_tokens, self.s.embedding_dtype)
            base = 0 if result.embeddings is None else result.embeddings.shape[0]
            result.embeddings = vectors if result.embeddings is None else np.vstack([result.embeddings, vectors])
            result.embedded += [r.index for r in missing]
            have.update({r.index: base + k for k, r in enumerate(missing)})
        assert result.embeddings is not None
        return result.embeddings[[have[r.index] for r in records]]

    def _semantic(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.semantic or not records:
            return records
        dups = semantic_duplicates(self._embeddings(records, result), self.s.semantic_threshold)
        reasons = self._duplicate_reasons(records, dups, f"semantic duplicate (cosine >= {self.s.semantic_threshold})")
        return self._drop(result, records, reasons, "semantic")

    def _ifd(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.ifd_model or not records:
            return records
        from .scores import ifd_scores

        scores = ifd_scores(self.s.ifd_model, [(r.instruction, r.response) for r in records], self.s.batch_size)
        reasons = {}
        for pos, (r, score) in enumerate(zip(records, scores)):
            result.scores.setdefault(r.index, {})["ifd"] = score
            if score >= self.s.ifd_max:
                reasons[pos] = f"IFD {score:.3f} >= {self.s.ifd_max}: the instruction does not help predict the answer"
        return self._drop(result, records, reasons, "ifd")

    def _reward(self, records: list[Record], result: CurationResult) -> list[Record]:
        """A reward model's score of each record's last reply (``tuneful rm train``); below ``min_reward`` dropped."""
        if not self.s.reward_model or not records:
            return records
        from ..reward.score import RewardScorer

        scorer = RewardScorer(self.s.reward_model, batch_size=self.s.batch_size)
        scorable = [pos for pos, r in enumerate(records)
                    if r.conversation.messages and r.conversation.messages[-1].role == "assistant"]
        scores = scorer.score([records[pos].conversation for pos in scorable])
        reasons = {}
        for pos, score in zip(scorable, scores):
            result.scores.setdefault(records[pos].index, {})["reward"] = score
            if self.s.min_reward is not None and score < self.s.min_reward:
                reasons[pos] = f"reward {score:.3f} < {self.s.min_reward:g}"
        return self._drop(result, records, reasons, "reward")

    def _judge(self, records: list[Record], result: CurationResult) -> list[Record]:
        if self.judge is None or not records:
            return records
        from .scores import judge_scores

        ratings = judge_scores(self.judge, [(r.instruction, r.response) for r in records])
        reasons = {}
        for pos, (r, rating) in enumerate(zip(records, ratings)):
            if rating is None:
                result.judge_unrated += 1  # kept and counted: a failed request is not a verdict
                continue
            result.scores.setdefault(r.index, {})["judge"] = rating
            if rating < self.s.min_judge_score:
                reasons[pos] = f"judge rated {rating:g} < {self.s.min_judge_score:g}"
        return self._drop(result, records, reasons, "judge")

    def _weights(self, records: list[Record], result: CurationResult) -> np.ndarray:
        """Selection weight: the judge rating scaled to (0, 1] when there is one, else 1."""
        return np.array([result.scores.get(r.index, {}).get("judge", 5.0) / 5.0 for r in records], dtype=np.float32)

    def _select(self, records: list[Record], result: CurationResult) -> list[Record]:
        budget = self.s.budget
        if not budget or len(records) <= budget:
            return records
        how = self.s.selection
        if how == "first":
            picked = list(range(budget))
        elif how == "random":
            picked = sorted(np.random.default_rng(self.s.seed).choice(len(records), budget, replace=False).tolist())
        elif how == "k-center":
            picked = k_center(self._embeddings(records, result), budget, self._weights(records, result))
        else:
            vectors = self._embeddings(records, result)
            labels = kmeans(vectors, self.s.clusters or default_clusters(len(records)), self.s.seed)
            picked = cluster_balanced(labels, budget, self._weights(records, result))
        chosen = set(picked)
        reasons = {pos: f"not selected by {how} within budget {budget}" for pos in range(len(records))
                   if pos not in chosen}
        return self._drop(result, records, reasons, "select")


def tokens(text: str) -> int:
    """Words and symbols: a tokenizer-free length for reports."""
    return len(re.findall(r"\w+|[^\w\s]", text))
