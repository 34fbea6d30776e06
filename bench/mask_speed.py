#!/usr/bin/env python
"""Conversations → token ids + train masks: tuneful's ConversationTokenizer vs transformers'
``apply_chat_template(tokenize=True)`` (ids only, no mask) on the same conversations, same process,
alternating rounds.

The peer builds no mask; the ratio says what exact assistant-only masks (every turn located as
generated, tool calls and reasoning included) cost over plain tokenization. Data: the shared
ShareGPT sample (``--data``) with the Qwen2.5 tokenizer and its own template (``--tokenizer``).

    TUNEFUL_FIXTURES=../shared/fixtures python bench/mask_speed.py          # last line JSON
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
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tuneful.data.loader import load
    from tuneful.masking import ConversationTokenizer
    from tuneful.templates.registry import resolve

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    conversations = [c.to_dicts() for c in load(args.data).conversations]
    ctok = ConversationTokenizer(tok, resolve(None, tok))
    best = {"tuneful": 0.0, "apply_chat_template": 0.0}
    for round_ in range(args.rounds):
        for name, run in (("tuneful", ctok), ("apply_chat_template",
                                                lambda m: tok.apply_chat_template(m, tokenize=True))):
            started = time.perf_counter()
            for messages in conversations:
                run(messages)
            rate = len(conversations) / (time.perf_counter() - started)
            best[name] = max(best[name], rate)
            print(f"round {round_ + 1}: {name:20s} {rate:8,.0f} conversations/s", file=sys.stderr)
    turns = sum(sum(m["role"] == "assistant" for m in c) for c in conversations) / len(conversations)
    print(f"{'framework':22s} {'conv/s':>10s}\n{'tuneful (ids + masks)':22s} {best['tuneful']:10,.0f}\n"
          f"{'apply_chat_template':22s} {best['apply_chat_template']:10,.0f}   ({turns:.2f} assistant turns/conv)")
    print(json.dumps({"conversations": len(conversations), "tuneful_conv_per_s": best["tuneful"],
                      "apply_chat_template_conv_per_s": best["apply_chat_template"],
                      "ratio": best["tuneful"] / best["apply_chat_template"]}))


if __name__ == "__main__":
    main()
