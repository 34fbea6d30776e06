#!/usr/bin/env python
"""Conversations → token ids + train masks: tuneful's ConversationTokenizer (batched as prepared data runs
it, and one call per conversation as the inspection commands do) vs transformers'
``apply_chat_template(tokenize=True)`` (ids only, no mask) on the same conversations, same process,
alternating rounds, one core (``TOKENIZERS_PARALLELISM=false``).

The peer builds no mask; the ratio says what exact assistant-only masks (every turn located as
generated, tool calls and reasoning included) cost over plain tokenization. Data: the shared
ShareGPT sample (``--data``, repeated ``--repeat`` times per round) with the Qwen2.5 tokenizer and its own
template (``--tokenizer``); each arm's best round counts.

    TUNEFUL_FIXTURES=../shared/fixtures python bench/mask_speed.py          # last line JSON
    TUNEFUL_FIXTURES=../shared/fixtures python bench/mask_speed.py --quick  # 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIXTURES = Path(os.environ.get("TUNEFUL_FIXTURES", REPO.parent / "shared" / "fixtures"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(FIXTURES / "data" / "sharegpt" / "dummy_conversation.json"))
    parser.add_argument("--tokenizer", default=str(FIXTURES / "tokenizers" / "qwen2.5"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=8,
                        help="times the sample is repeated per round (a round of 500 is ~0.1 s: too short to time)")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)

    from transformers import AutoTokenizer

    from tuneful.data.loader import load
    from tuneful.tokenization.masking import ConversationTokenizer
    from tuneful.templates.registry import resolve

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # rates per core
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    items = load(args.data).conversations * args.repeat
    conversations = [c.to_dicts() for c in items]
    ctok = ConversationTokenizer(tok, resolve(None, tok))

    def batched(_: object) -> None:  # what prepared data runs: batches of 256, one tokenizer call each
        for start in range(0, len(items), 256):
            ctok.tokenize_many(items[start : start + 256])

    arms = {"tuneful, batched": (batched, [None]), "tuneful, one call each": (ctok, conversations),
            "apply_chat_template": (lambda m: tok.apply_chat_template(m, tokenize=True), conversations)}
    best = dict.fromkeys(arms, 0.0)
    for round_ in range(args.rounds):
        for name, (run, inputs) in arms.items():
            started = time.perf_counter()
            for x in inputs:
                run(x)
            rate = len(conversations) / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
            print(f"round {round_ + 1}: {name:24s} {rate:8,.0f} conversations/s", file=sys.stderr)
    turns = sum(sum(m["role"] == "assistant" for m in c) for c in conversations) / len(conversations)
    print(f"{'arm':26s} {'conv/s':>10s}   ({turns:.2f} assistant turns/conv)")
    for name, rate in best.items():
        print(f"{name:26s} {rate:10,.0f}")
    print(json.dumps({"conversations": len(conversations), "tuneful_conv_per_s": best["tuneful, batched"],
                      "tuneful_one_call_conv_per_s": best["tuneful, one call each"],
                      "apply_chat_template_conv_per_s": best["apply_chat_template"],
                      "ratio": best["tuneful, batched"] / best["apply_chat_template"]}))


if __name__ == "__main__":
    main()
