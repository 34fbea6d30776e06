#!/usr/bin/env python
"""Self-Instruct's ROUGE-L novelty filter: tuneful's RougeFilter vs rouge_score, same stream.

The reference is the original algorithm at its fastest single-process form: every kept
instruction tokenised once by rouge_score, then ``rouge_scorer._score_lcs(candidate, kept)`` for
each kept one (pure Python LCS, Θ(N²) pairs), reject if any F1 > 0.7. tuneful must make exactly
the same accept/reject decisions.

    python bench/rouge_filter.py --n 5000                    # both; last line JSON
    python bench/rouge_filter.py --n 50000 --skip-reference  # tuneful alone
    python bench/rouge_filter.py --quick                     # 1,000 candidates, both

``--ablations`` also times tuneful with blocking turned off (one candidate per native call), to
show what blocking saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from instruction_stream import stream  # noqa: E402

from tuneful.selfinstruct.rouge import THRESHOLD, RougeFilter  # noqa: E402


def reference(seeds: list[str], candidates: list[str]) -> list[bool]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    tokenize = scorer._tokenizer.tokenize
    kept = [tokenize(s) for s in seeds]
    decisions = []
    for text in candidates:
        tokens = tokenize(text)
        keep = all(rouge_scorer._score_lcs(tokens, other).fmeasure <= THRESHOLD for other in kept)
        if keep:
            kept.append(tokens)
        decisions.append(keep)
    return decisions


def run_tuneful(seeds: list[str], candidates: list[str], **options) -> list[bool]:
    rouge = RougeFilter(**options)
    rouge.add(seeds)
    return rouge.filter(candidates)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1,000 candidates (about a minute), unless --n is given")
    args = parser.parse_args()
    if args.quick and "--n" not in sys.argv:
        args.n = 1000

    seeds, candidates = stream(args.n)
    ours, ours_s = timed(run_tuneful, seeds, candidates)
    print(f"tuneful: {args.n} candidates in {ours_s:.2f} s, kept {sum(ours)}")
    result = {"n": args.n, "kept": sum(ours), "tuneful_seconds": ours_s}
    if args.ablations:
        _, one_block = timed(run_tuneful, seeds, candidates, block=1)
        print(f"  without blocking (block=1): {one_block:.2f} s")
        result.update(tuneful_block1_seconds=one_block)
    if not args.skip_reference:
        ref, ref_s = timed(reference, seeds, candidates)
        identical = ref == ours
        print(f"rouge_score: {ref_s:.1f} s, kept {sum(ref)}; identical decisions: {identical}; "
              f"speedup {ref_s / ours_s:.0f}x")
        result.update(identical=identical, speedup=ref_s / ours_s, rouge_score_seconds=ref_s)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
