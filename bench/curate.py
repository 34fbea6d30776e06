#!/usr/bin/env python
"""Curation throughput on 50k real-looking records, each dedup stage against a peer on the same input.

The records are the real instruction data under ``../shared/fixtures/data`` (Alpaca, ShareGPT,
OpenAssistant, Self-Instruct and KTO samples: ~2,600 conversations) multiplied with seeded
perturbations, in the proportions a scraped pool might have:

- 8 % cosmetic copies (case, spacing, punctuation changed): exact duplicates after normalisation
- 8 % light edits (one word changed per ~80): near duplicates
- 84 % heavy rewrites (a quarter of the words replaced from the pool's vocabulary): new records,
  still on the same topics — what semantic dedup has to sort out

Stages are tuneful's own functions (``tuneful.curate``), run in the pipeline's order: each sees only
what the previous one kept, as in ``tuneful curate`` (exact on all N, near on what exact kept, the
embedding and semantic search on what near kept). Peers get the same input, in the same run:

- near: datasketch as its documentation shows it — a ``MinHash`` per record fed shingle by shingle,
  every record inserted into ``MinHashLSH`` and queried — vs tuneful's bulk signatures + greedy
  query-then-insert
- semantic search: sentence-transformers' ``util.community_detection`` (threshold clustering on the
  same embeddings) vs tuneful's blocked greedy; embedding time is shared and reported once

- the embedding: sentence-transformers' ``encode`` with its defaults (float32, the model's own 256 word
  pieces) vs tuneful's ``embed`` (bfloat16 where the CPU computes it natively, 128 word pieces)

Targets: issue 7, exact + MinHash + semantic dedup of 50k records in < 5 min on 2 cores; issue 19, every
stage here (heuristics, exact, near, embedding, semantic search) at >= 1.5x the same stages done the obvious
way with the same libraries (the heuristics: tuneful's checks in one loop vs over worker processes).

The embedding is compute-bound, so the bench also prints its floor: the multiply-adds of the model's
Linear layers for the word pieces actually embedded, divided by the best matrix-product rate this
machine reaches in the same run with the model's own shapes and number type. No implementation of
this model can embed those word pieces faster than that floor on this machine.

    python bench/curate.py --quick      # 10k records, ~4 min; last stdout line is JSON
    python bench/curate.py              # 50k records, ~15 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCES = ("llamafactory/alpaca_en_demo.json", "sharegpt/dummy_conversation.json", "oasst/en_100_tree.jsonl",
           "self_instruct/seed_tasks.jsonl", "llamafactory/kto_en_demo.json")
SEED = 0
WORD = re.compile(r"\w+")


def fixtures() -> Path:
    folder = Path(os.environ.get("TUNEFUL_FIXTURES", REPO.parent / "shared" / "fixtures"))
    if not (folder / "data").is_dir():
        sys.exit(f"bench/curate.py needs the real samples under {folder}/data (set TUNEFUL_FIXTURES)")
    return folder / "data"


def base_texts() -> list[str]:
    """instruction + response text of every sample conversation (the pipeline's record text)."""
    from tuneful.curate.pipeline import to_record
    from tuneful.data.loader import load

    texts = []
    for name in SOURCES:
        loaded = load(fixtures() / name, on_error="skip")
        texts += [to_record(i, c).text for i, c in enumerate(loaded.conversations)]
    return texts


def cosmetic(text: str, rng: random.Random) -> str:
    text = text.upper() if rng.random() < 0.3 else text.lower() if rng.random() < 0.5 else text
    text = text.replace(" ", "  ", 2).replace(".", " .", 1)
    return text + rng.choice(["", "!", " ", "\n"])


def edit_words(text: str, share: float, vocabulary: list[str], rng: random.Random) -> str:
    """Replace about ``share`` of the words (at least one) with words drawn from the pool's vocabulary."""
    words = text.split(" ")
    for _ in range(max(1, round(len(words) * share))):
        words[rng.randrange(len(words))] = rng.choice(vocabulary)
    return " ".join(words)


def make_pool(n: int, seed: int = SEED) -> tuple[list[str], dict[str, int]]:
    bases = base_texts()
    vocabulary = sorted({w for t in bases for w in WORD.findall(t) if len(w) > 3})
    rng = random.Random(seed)
    texts, kinds = [], {"cosmetic": 0, "light": 0, "heavy": 0}
    for _ in range(n):
        base, roll = rng.choice(bases), rng.random()
        if roll < 0.08:
            texts.append(cosmetic(base, rng))
            kinds["cosmetic"] += 1
        elif roll < 0.16:
            texts.append(edit_words(base, 1 / 80, vocabulary, rng))
            kinds["light"] += 1
        else:
            texts.append(edit_words(base, 0.25, vocabulary, rng))
            kinds["heavy"] += 1
    return texts, kinds


# --- peers ----------------------------------------------------------------------------------------


def near_textbook(texts: list[str], threshold: float, num_perm: int = 128) -> int:
    """datasketch's documented usage: update a MinHash shingle by shingle, insert all, query each."""
    from datasketch import MinHash, MinHashLSH

    from tuneful.curate.dedup import shingles

    lsh, signatures = MinHashLSH(threshold=threshold, num_perm=num_perm), []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=num_perm)
        for s in shingles(text):
            m.update(s)
        signatures.append(m)
        lsh.insert(str(i), m)
    # a record is a duplicate when an earlier record is among its candidates (first copy kept)
    return sum(1 for i, m in enumerate(signatures) if any(int(k) < i for k in lsh.query(m)))


def semantic_peer(embeddings, threshold: float) -> int:
    """sentence-transformers' threshold clustering; every community member but one is a duplicate."""
    import torch
    from sentence_transformers.util import community_detection

    communities = community_detection(torch.from_numpy(embeddings), threshold=threshold, min_community_size=2,
                                      batch_size=1024, show_progress_bar=False)
    return sum(len(c) - 1 for c in communities)


def embed_obvious(texts: list[str], model_name: str) -> int:
    """sentence-transformers as its documentation shows it: load the model, ``encode`` with its defaults (float32,
    the model's own max_seq_length, batch size 32), normalised for cosine similarity. Returns the rows made."""
    from sentence_transformers import SentenceTransformer

    from tuneful.curate.dedup import model_location

    model = SentenceTransformer(model_location(model_name), device="cpu")
    return len(model.encode(texts, normalize_embeddings=True, show_progress_bar=False))


def linear_floor(texts: list[str], model_name: str, max_tokens: int, dtype: str) -> dict:
    """Linear-layer FLOPs of embedding ``texts`` and the fastest this machine multiplies those shapes."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from tuneful.curate.dedup import _cuda, model_location

    model_name = model_location(model_name)
    config, tokenizer = AutoConfig.from_pretrained(model_name), AutoTokenizer.from_pretrained(model_name)
    limit = max_tokens or tokenizer.model_max_length
    pieces = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"])
    d, ff = config.hidden_size, config.intermediate_size
    shapes = [(d, 3 * d), (d, d), (d, ff), (ff, d)]  # fused-QKV-sized, attention output, MLP up, MLP down
    flops = pieces * config.num_hidden_layers * 2 * (4 * d * d + 2 * d * ff)
    device = "cuda" if _cuda() else "cpu"
    rates = []
    for n_in, n_out in shapes:
        x = torch.randn(8192, n_in, dtype=getattr(torch, dtype), device=device)
        w = torch.randn(n_out, n_in, dtype=x.dtype, device=device)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        if device == "cuda":
            torch.cuda.synchronize()
        started, repeats = time.perf_counter(), 30
        for _ in range(repeats):
            torch.nn.functional.linear(x, w)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * 8192 * n_in * n_out * repeats / (time.perf_counter() - started))
    peak = max(rates)
    return {"word_pieces": pieces, "linear_tflop": flops / 1e12, "matmul_peak_gflops": peak / 1e9,
            "floor_s": flops / peak}


def float32_check(texts: list[str], settings, dtype: str, threshold: float) -> dict:
    """The chosen dtype against float32 on a sample: speed ratio and how alike the duplicate decisions are."""
    from tuneful.curate.dedup import embed, semantic_duplicates

    runs = {}
    for kind in ("float32", dtype):
        vectors, seconds = timed(embed, texts, settings.embedding_model, 64, settings.embedding_max_tokens, kind)
        runs[kind] = (set(semantic_duplicates(vectors, threshold)), seconds, vectors)
    (ref, t_ref, v_ref), (got, t_got, v_got) = runs["float32"], runs[dtype]
    alike = len(ref & got) / len(ref | got) if ref | got else 1.0  # no duplicates on either side: alike
    return {"sample": len(texts), "speedup": t_ref / t_got, "mean_cosine": float((v_ref * v_got).sum(1).mean()),
            "decision_jaccard": alike, "duplicates_float32": len(ref), "duplicates": len(got)}


# --- the run --------------------------------------------------------------------------------------


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k records instead of 50k")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--near-threshold", type=float, default=0.8)
    parser.add_argument("--semantic-threshold", type=float, default=0.95)
    parser.add_argument("--embedding-dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--embedding-max-tokens", type=int, default=None,
                        help="word pieces per record (default: the curate setting's default)")
    parser.add_argument("--tuneful-only", action="store_true",
                        help="skip the obvious-way arms (for the linearity runs at 100k, where they alone take an hour)")
    args = parser.parse_args()
    n = args.records or (10_000 if args.quick else 50_000)

    import torch

    from tuneful.curate.config import CurateSettings
    from tuneful.curate.dedup import embed, embedding_dtype, exact_duplicates, near_duplicates, semantic_duplicates
    from tuneful.curate.quality import quality_problem, quality_problems

    torch.set_num_threads(os.cpu_count() or 2)
    texts, kinds = make_pool(n)
    chars = sum(len(t) for t in texts)
    print(f"{n:,} records ({kinds}), {chars / n:,.0f} characters each on average", flush=True)

    exact, t_exact = timed(exact_duplicates, texts)
    after_exact = [t for i, t in enumerate(texts) if i not in exact]
    near, t_near = timed(near_duplicates, after_exact, args.near_threshold)
    skip = (None, None)
    near_peer, t_near_peer = skip if args.tuneful_only else timed(near_textbook, after_exact, args.near_threshold)
    after_near = [t for i, t in enumerate(after_exact) if i not in near]
    settings = CurateSettings() if args.embedding_max_tokens is None else CurateSettings(
        embedding_max_tokens=args.embedding_max_tokens)
    dtype = embedding_dtype(args.embedding_dtype)
    vectors, t_embed = timed(embed, after_near, settings.embedding_model, 64, settings.embedding_max_tokens, dtype)
    semantic, t_search = timed(semantic_duplicates, vectors, args.semantic_threshold)
    semantic_other, t_search_peer = skip if args.tuneful_only else timed(semantic_peer, vectors, args.semantic_threshold)
    _, t_embed_obvious = skip if args.tuneful_only else timed(embed_obvious, after_near, settings.embedding_model)
    floor = linear_floor(after_near, settings.embedding_model, settings.embedding_max_tokens, dtype)
    check = float32_check(after_near[:3_000], settings, dtype, args.semantic_threshold)
    sample = [(t[: len(t) // 2], t[len(t) // 2 :]) for t in texts[: min(n, 10_000)]]  # scaled to n
    # the heuristics (langdetect ~5 ms a text): one loop (the obvious way) and tuneful's worker processes
    split, t_quality = timed(quality_problems, sample, min_chars=1, max_chars=20_000)
    t_quality *= n / len(sample)
    t_quality_loop = None
    if not args.tuneful_only:
        one, t_quality_loop = timed(lambda: [quality_problem(i, r, min_chars=1, max_chars=20_000) for i, r in sample])
        assert one == split, "the heuristics' decisions changed with the processes"
        t_quality_loop *= n / len(sample)
    dedup_seconds = t_exact + t_near + t_embed + t_search
    # every stage of the run, and the same stages done the obvious way with the same libraries: the heuristics in
    # one loop, datasketch and sentence-transformers as documented
    pipeline_seconds = t_quality + dedup_seconds
    obvious_seconds = None if args.tuneful_only else t_quality_loop + t_exact + t_near_peer + t_embed_obvious + t_search_peer

    rows = [(f"quality heuristics (scaled from {len(sample) // 1000}k)", n, t_quality, t_quality_loop, None, None),
            ("exact (normalised text)", n, t_exact, None, len(exact), None),
            ("near: MinHash LSH", len(after_exact), t_near, t_near_peer, len(near), near_peer),
            (f"semantic: embedding (MiniLM-L6, {settings.embedding_max_tokens}, {dtype})", len(after_near), t_embed,
             None, None, None),
            ("semantic: search", len(after_near), t_search, t_search_peer, len(semantic), semantic_other),
            ("all of the above", n, pipeline_seconds, obvious_seconds, None, None)]
    print(f"\n{'stage':<46}{'records':>8}{'seconds':>9}{'records/s':>11}{'peer s':>9}{'vs peer':>9}{'dups':>8}"
          f"{'peer dups':>11}")
    for name, records, seconds, peer, dups, peer_dups in rows:
        ratio = f"{peer / seconds:>8.2f}x" if peer else f"{'':>9}"
        print(f"{name:<46}{records:>8,}{seconds:>9.1f}{records / seconds:>11,.0f}{(f'{peer:.1f}' if peer else ''):>9}"
              f"{ratio}{(dups if dups is not None else ''):>8}{(peer_dups if peer_dups is not None else ''):>11}")
    print(f"embedding floor: {floor['word_pieces']:,} word pieces, {floor['linear_tflop']:.1f} TFLOP in Linear "
          f"layers; at this machine's best {dtype} matrix product ({floor['matmul_peak_gflops']:.0f} GFLOP/s) those "
          f"alone take {floor['floor_s']:.0f} s; the embedding took {t_embed:.0f} s ({floor['floor_s'] / t_embed:.0%} "
          f"of that peak)")
    print(f"{dtype} vs float32 on {check['sample']:,} records: {check['speedup']:.2f}x faster, mean cosine "
          f"{check['mean_cosine']:.5f}, duplicate decisions alike (Jaccard) {check['decision_jaccard']:.3f} "
          f"({check['duplicates']} vs {check['duplicates_float32']})")
    if not args.tuneful_only:
        print(f"the embedding done the obvious way (sentence-transformers encode, its defaults: float32, "
              f"max_seq_length of the model): {t_embed_obvious:.1f} s, {t_embed_obvious / t_embed:.2f}x tuneful's")
    print(f"exact + near + semantic dedup of {n:,} in pipeline order: {dedup_seconds:.1f} s (target < 300 s for 50k)")
    print(f"every stage (heuristics, exact, near, embedding, semantic search): {pipeline_seconds:.1f} s = "
          f"{n / pipeline_seconds:,.0f} records/s" + ("" if args.tuneful_only else
          f"; the obvious way {obvious_seconds:.1f} s: {obvious_seconds / pipeline_seconds:.2f}x (issue 19's goal >= 1.5x)"))

    def ratio(peer: float | None, ours: float) -> float | None:
        return None if peer is None else peer / ours

    print(json.dumps({"records": n, "dedup_seconds": dedup_seconds, "exact_s": t_exact, "near_s": t_near,
                      "near_peer_s": t_near_peer, "near_ratio": ratio(t_near_peer, t_near), "embed_s": t_embed,
                      "embed_dtype": dtype, "embedding_max_tokens": settings.embedding_max_tokens,
                      "embedded_records": len(after_near), "embedding_floor": floor, "float32_check": check,
                      "semantic_search_s": t_search, "semantic_peer_s": t_search_peer,
                      "semantic_ratio": ratio(t_search_peer, t_search), "quality_s": t_quality,
                      "quality_loop_s": t_quality_loop, "embed_obvious_s": t_embed_obvious, "pipeline_s": pipeline_seconds,
                      "obvious_pipeline_s": obvious_seconds, "pipeline_ratio": ratio(obvious_seconds, pipeline_seconds),
                      "duplicates": {"exact": len(exact), "near": len(near), "near_peer": near_peer,
                                     "semantic": len(semantic), "semantic_peer": semantic_other}}))


if __name__ == "__main__":
    main()
