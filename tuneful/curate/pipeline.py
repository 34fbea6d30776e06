"""``tuneful curate``: load → quality → agreement → exact → scores → near → semantic → select, nothing lost.

Every record that does not reach the output is written to the rejected file with the stage that
removed it and why (a duplicate names the record kept in its place), so kept + rejected = input.

Quality first: the scores (agreement among replies to the same instruction, a reference model's
likelihood, IFD, judge, reward; ``scores.py``) are combined into one quality score per record,
ranked within groups of similar records (``combine.py``). Near and semantic duplicate clusters keep
their *best* member by that score, and selection takes the best records within per-group quotas,
skipping ones too similar to those already taken (``select.quality_diverse``). Agreement is counted
before exact dedup, so identical replies still vote. ``dedup_keep=first`` with ``selection=k-center``
and ``ifd_max=1`` is tuneful's v1 pipeline (dedup keeps the first occurrence and runs before the
model scores, so they see fewer records).

This package never reads a task's answer key (e.g. the sandbox's verifiers): it estimates quality from
the data and the models it is given.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..data.loader import load
from ..data.types import Conversation
from ..preference.reward_score import RewardScorer
from .combine import HIGHER_IS_BETTER, combined_scores
from .config import CurateSettings
from .dedup import embed, exact_duplicates, near_duplicates, semantic_duplicates
from .quality import quality_problems
from .scores import ReferenceLM, agreement_scores, ifd_scores, judge_scores, likelihood_scores
from .select import cluster_balanced, default_clusters, k_center, kmeans, quality_diverse


STAGES = ("load", "quality", "exact", "near", "semantic", "ifd", "judge", "reward", "select")  # stages that remove


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
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # record index -> {signal name: raw value}
    embeddings: np.ndarray | None = None  # rows aligned with ``embedded``
    embedded: list[int] = field(default_factory=list)  # record indices with an embedding row
    groups: dict[int, int] = field(default_factory=dict)  # record index -> its score/quota group
    group_names: list[str] = field(default_factory=list)  # group id -> name (a task from meta, or "cluster N")
    judge_unrated: int = 0
    # duplicates selection took back for a group short of distinct records: {"near/semantic": n, "exact copies": n}
    taken_back: dict[str, int] = field(default_factory=dict)

    def rejected_by_stage(self) -> dict[str, int]:
        counts = {s: 0 for s in STAGES}
        for r in self.rejected:
            counts[r.stage] += 1
        return {s: n for s, n in counts.items() if n}


class Curator:
    def __init__(self, settings: CurateSettings, *, judge: Any = None, embedder: Callable[..., np.ndarray] = embed):
        self.s, self.judge, self.embedder = settings, judge, embedder
        self._references: dict[str, Any] = {}  # model spec -> scores.ReferenceLM, loaded once
        self._duplicates: list[tuple[Record, Rejection]] = []  # near/semantic duplicates a small group may take back
        # record index -> its exact copies removed: its group's claim counts them, and a group short of distinct
        # records may repeat it with them (``repeat_to_quota``)
        self._copies: dict[int, list[tuple[Record, Rejection]]] = {}

    def run(self, source: str, *, format: str = "auto", on_error: str = "fail") -> CurationResult:
        started = time.perf_counter()
        loaded = load(source, format=format, on_error=on_error)
        if loaded.preferences:
            raise ValueError(f"{source} holds preference pairs; tuneful curate works on conversations")
        records = [to_record(i, c) for i, c in enumerate(loaded.conversations)]
        result = CurationResult(len(records) + loaded.report.skipped_count, [], [])
        self._duplicates, self._copies = [], {}
        result.rejected += [Rejection({"where": where}, "load", message) for where, message in loaded.report.skipped]
        result.seconds_by_stage["load"] = time.perf_counter() - started
        scoring = [self._ifd, self._likelihood, self._judge, self._reward]
        dedup = [self._near, self._semantic]
        # best-member dedup needs the scores first; first-occurrence dedup lets the scores see fewer records
        middle = scoring + dedup if self.s.dedup_keep == "best" else dedup + scoring
        for stage in [self._quality, self._agreement, self._exact] + middle + [self._select]:
            started = time.perf_counter()
            records = stage(records, result)
            result.seconds_by_stage[stage.__name__.strip("_")] = time.perf_counter() - started
        result.kept = records
        return result

    def _drop(self, result: CurationResult, records: list[Record], reasons: dict[int, str], stage: str) -> list[Record]:
        """Move records at the given positions to the rejected list; return the rest in order. Near and
        semantic duplicates are also remembered: selection may take them back for a group too small to fill
        its quota with distinct records."""
        for pos, reason in reasons.items():
            rejection = Rejection(records[pos].conversation.to_json(), stage, reason)
            result.rejected.append(rejection)
            if stage in ("near", "semantic"):
                self._duplicates.append((records[pos], rejection))
        return [r for pos, r in enumerate(records) if pos not in reasons]

    def _duplicate_reasons(self, records: list[Record], dups: dict[int, int], kind: str,
                           result: CurationResult) -> dict[int, str]:
        """Reasons for the members to remove: with ``dedup_keep=first`` the duplicates as found (each names the
        earlier record it repeats); with ``best`` every cluster (a kept record and its duplicates) keeps its
        highest-quality member and the reasons name it."""
        if self.s.dedup_keep == "first" or not dups:
            return {pos: f"{kind} of {records[orig].where}" for pos, orig in dups.items()}
        clusters: dict[int, list[int]] = {}
        for pos, orig in dups.items():
            clusters.setdefault(orig, [orig]).append(pos)
        quality = self._quality_of(records, result)
        reasons = {}
        for members in clusters.values():
            best = max(sorted(members), key=lambda m: quality[m])  # ties: the earliest
            for m in members:
                if m != best:
                    reasons[m] = (f"{kind} of {records[best].where} (cluster of {len(members)}; kept the best, "
                                  f"quality {quality[best]:.2f} vs {quality[m]:.2f})")
        return reasons

    # --- stages ---------------------------------------------------------------------------------
    def _quality(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.quality:
            return records
        problems = quality_problems([(r.instruction, r.response) for r in records], min_chars=self.s.min_response_chars,
                                    max_chars=self.s.max_response_chars, processes=self.s.num_proc)
        reasons = {pos: problem for pos, problem in enumerate(problems) if problem}
        return self._drop(result, records, reasons, "quality")

    def _exact(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.exact:
            return records
        # the same text (up to case, spacing and punctuation): any member is as good as the best; the first stays
        dups = exact_duplicates([r.text for r in records])
        reasons = {pos: f"exact duplicate of {records[orig].where}" for pos, orig in dups.items()}
        kept = self._drop(result, records, reasons, "exact")
        # _drop appended one rejection per reason, in the order of ``reasons`` (that of ``dups``)
        for (pos, orig), rejection in zip(dups.items(), result.rejected[len(result.rejected) - len(dups):]):
            self._copies.setdefault(records[orig].index, []).append((records[pos], rejection))
        return kept

    def _near(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.near or not records:
            return records
        dups = near_duplicates([r.text for r in records], self.s.near_threshold)
        return self._drop(result, records, self._duplicate_reasons(records, dups, "near duplicate", result), "near")

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
        reasons = self._duplicate_reasons(records, dups, f"semantic duplicate (cosine >= {self.s.semantic_threshold})",
                                          result)
        return self._drop(result, records, reasons, "semantic")

    def _reference(self, spec: str) -> Any:
        if spec not in self._references:
            self._references[spec] = ReferenceLM(spec, self.s.batch_size)
        return self._references[spec]

    def _agreement(self, records: list[Record], result: CurationResult) -> list[Record]:
        """Self-consistency among replies to the same or near-same instruction (a score; removes nothing)."""
        if not self.s.agreement or not records:
            return records

        values = agreement_scores([r.instruction for r in records], [r.response for r in records],
                                  min_group=self.s.agreement_min_group, reply_match=self.s.reply_match)
        for r, value in zip(records, values):
            if value is not None:
                result.scores.setdefault(r.index, {})["agreement"] = value
        return records

    def _likelihood(self, records: list[Record], result: CurationResult) -> list[Record]:
        """The reference model's log-likelihood of each reply and its end (a score; removes nothing)."""
        if not self.s.reference_model or not records:
            return records

        values = likelihood_scores(self._reference(self.s.reference_model), [(r.instruction, r.response) for r in records])
        for r, value in zip(records, values):
            result.scores.setdefault(r.index, {})["likelihood"] = value
        return records

    def _ifd(self, records: list[Record], result: CurationResult) -> list[Record]:
        if not self.s.ifd_model or not records:
            return records

        scores = ifd_scores(self._reference(self.s.ifd_model), [(r.instruction, r.response) for r in records])
        reasons = {}
        for pos, (r, score) in enumerate(zip(records, scores)):
            result.scores.setdefault(r.index, {})["ifd"] = score
            if self.s.ifd_max is not None and score >= self.s.ifd_max:
                reasons[pos] = f"IFD {score:.3f} >= {self.s.ifd_max}: the instruction does not help predict the answer"
        return self._drop(result, records, reasons, "ifd")

    def _reward(self, records: list[Record], result: CurationResult) -> list[Record]:
        """A reward model's score of each record's last reply (``tuneful rm train``); below ``min_reward`` dropped."""
        if not self.s.reward_model or not records:
            return records

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

    def _groups_of(self, records: list[Record], result: CurationResult) -> np.ndarray:
        """Each record's group: the task its meta names (``group_by``), else its embedding cluster. Fitted once,
        on the records present the first time groups are needed, and kept for the later stages."""
        missing = [r for r in records if r.index not in result.groups]
        if missing and self.s.group_by:
            for r in missing:
                name = str(r.conversation.meta.get(self.s.group_by, "(none)"))
                if name not in result.group_names:
                    result.group_names.append(name)
                result.groups[r.index] = result.group_names.index(name)
        elif missing and not self.s.embedding_model:  # nothing to cluster with: one group
            result.group_names = result.group_names or ["all"]
            result.groups.update({r.index: 0 for r in missing})
        elif missing:
            vectors = self._embeddings(missing, result)
            k = self.s.clusters or default_clusters(len(missing))
            offset = len(result.group_names)
            labels = kmeans(vectors, k, self.s.seed) if len(missing) > 1 else np.zeros(len(missing), dtype=np.int64)
            result.group_names += [f"cluster {offset + c}" for c in range(k)]
            result.groups.update({r.index: offset + int(c) for r, c in zip(missing, labels)})
        return np.array([result.groups[r.index] for r in records], dtype=np.int64)

    def _quality_of(self, records: list[Record], result: CurationResult) -> np.ndarray:
        """The combined quality score of each record (``combine.combined_scores``), ranked within its group."""
        names = [n for n in HIGHER_IS_BETTER if any(n in result.scores.get(r.index, {}) for r in records)]
        if not names:
            return np.full(len(records), 0.5)
        signals = {n: [result.scores.get(r.index, {}).get(n) for r in records] for n in names}
        weights = {n: getattr(self.s, f"{n}_weight") for n in names}
        quality = combined_scores(signals, self._groups_of(records, result).tolist(), weights)
        for r, q in zip(records, quality):
            result.scores.setdefault(r.index, {})["quality"] = float(q)
        return quality

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
        elif how == "quality-diverse":
            return self._quality_diverse(records, result)
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


    def _quality_diverse(self, records: list[Record], result: CurationResult) -> list[Record]:
        """Quality-first, diversity-aware selection (``select.quality_diverse``). Quotas are claimed by each
        group's size before dedup (its records and their exact copies). A group whose distinct records cannot
        fill its quota takes back, after every distinct record, its best near/semantic duplicates, then
        (``repeat_to_quota``) exact copies of its records, one copy of each before a second of any: in a
        templated pool (one refusal, one clarifying question asked in many places) repetition is the weight the
        input gave that kind of reply, and deduplication alone would take it away. A reply the other replies to
        its instruction outvote (agreement below ``min_agreement``) is neither picked within a quota nor
        repeated."""
        best = self.s.dedup_keep == "best"
        spare = list(self._duplicates) if best else []
        distinct = records + [record for record, _ in spare]
        groups = self._groups_of(distinct, result)
        claims: dict[int, int] = {}
        for record, group in zip(distinct, groups.tolist()):
            claims[group] = claims.get(group, 0) + 1 + len(self._copies.get(record.index, []))
        embeddings, quality = self._embeddings(distinct, result), self._quality_of(distinct, result)
        tier = [0] * len(records) + [1] * len(spare)
        source = list(range(len(distinct)))  # the position in ``distinct`` whose group, score and row a record uses
        taken_back_from = [None] * len(records) + [rejection for _, rejection in spare]
        extra: list[Record] = []
        if best and self.s.repeat_to_quota:
            for pos, record in enumerate(distinct):
                for k, (copy, rejection) in enumerate(self._copies.get(record.index, []), start=1):
                    extra.append(copy)
                    tier.append(1 + k)
                    source.append(pos)
                    taken_back_from.append(rejection)
        pool = distinct + extra
        outvoted = np.array([result.scores.get(r.index, {}).get("agreement", 1.0) < self.s.min_agreement
                             for r in distinct], dtype=bool)
        picked = quality_diverse(embeddings[source], quality[source], groups[source], self.s.budget,
                                 max_similarity=self.s.max_similarity, power=self.s.quota_power,
                                 min_score=self.s.min_quality, group_sizes=claims, tier=np.array(tier),
                                 excluded=outvoted[source])
        chosen = set(picked)
        for pos in chosen:
            if pos >= len(distinct):  # a copy is scored as the record it repeats
                result.scores[pool[pos].index] = dict(result.scores.get(distinct[source[pos]].index, {}))
                result.groups[pool[pos].index] = int(groups[source[pos]])
        taken_back = {id(taken_back_from[pos]) for pos in chosen if pos >= len(records)}
        result.taken_back = {"near/semantic": sum(len(records) <= pos < len(distinct) for pos in chosen),
                             "exact copies": sum(pos >= len(distinct) for pos in chosen)}
        result.rejected = [r for r in result.rejected if id(r) not in taken_back]
        reasons = {pos: f"not selected by quality-diverse within budget {self.s.budget}"
                   for pos in range(len(records)) if pos not in chosen}
        kept = self._drop(result, records, reasons, "select")
        return sorted(kept + [pool[pos] for pos in chosen if pos >= len(records)], key=lambda r: r.index)


def tokens(text: str) -> int:
    """Words and symbols: a tokenizer-free length for reports."""
    return len(re.findall(r"\w+|[^\w\s]", text))
