#!/usr/bin/env python
"""Multi-turn episodes on the generation engine: each turn re-prefilled whole, against a turn that starts from the
keys and values of the turn before (``tuneful.infer.prefix_cache``, what ``run_episodes``, the sandbox agent's
evaluation, ``tuneful serve`` and ``tuneful chat`` use).

An agent's turn is its whole conversation: the tools' schemas, the question, every earlier reply and tool
result. Before issue 43's KV reuse every turn prefilled all of it again. Both paths are measured here in one
run, each twice, alternating, on the same episodes with the same seeds:

- model: the sandbox base model (``tuneful/samples``), fp32, 2 threads;
- episodes: a question about a sandbox country with the sandbox agent's two tools offered (``TOOLS``); each
  round every episode gets one sampled turn (temperature 1.0, up to 40 new tokens, ending at the end of turn or at
  a line break, as ``bench/rollouts.py``), then a tool message with ``lookup_country``'s real answer for its
  country, for 4 rounds — the shape of the demo's agent episodes, written by a script so that every episode has
  every turn (the base model makes no calls of its own); 16 rows decoded together both ways.

The peer is the same engine with nothing kept (``prefix_cache=None``): the path before this change.

    python bench/episodes.py --quick   # 24 episodes, ~1 min on 2 cores; last line is JSON
    python bench/episodes.py           # 96 episodes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ROUNDS, MAX_NEW, BATCH, TEMPERATURE = 4, 40, 16, 1.0
QUESTIONS = ["What is the capital of {}?", "Which animal lives in {}?", "How many people live in {}?",
             "Add the population of {} to that of its neighbour."]


def play(chat, conversations: list[list[dict]], tools: list[dict], lookups: list[str], stop_ids: list[int],
         seed: int, keep: bool) -> tuple[int, int, int]:
    """``ROUNDS`` turns of every conversation (each a turn, then its tool result); returns (generated tokens,
    prompt tokens of all turns, tokens the prefix cache held)."""
    from tuneful.infer.generate import generate
    from tuneful.infer.prefix_cache import PrefixCache

    kept = PrefixCache() if keep else None
    conversations = [list(c) for c in conversations]
    generated = prompted = 0
    for round_ in range(ROUNDS):
        prompts = [chat.prompt_ids(c, tools) for c in conversations]
        prompted += sum(map(len, prompts))
        replies = generate(chat.model, chat.tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=MAX_NEW,
                           batch_size=BATCH, do_sample=True, temperature=TEMPERATURE, seed=seed * 1000 + round_,
                           prefix_cache=kept)
        generated += sum(len(g.token_ids) for g in replies)
        for conversation, reply, result in zip(conversations, replies, lookups):
            call = {"id": f"call_{round_}", "type": "function",
                    "function": {"name": "lookup_country", "arguments": {"name": "x"}}}
            conversation += [{"role": "assistant", "content": reply.text, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": call["id"], "name": "lookup_country", "content": result}]
    return generated, prompted, kept.reused_tokens if kept else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="24 episodes instead of 96")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.sandbox.agent import TOOLS, run_tool
    from tuneful.sandbox.world import make_world

    chat = load_chat_model("sandbox", device="cpu")
    world = make_world(0)
    n = 24 if args.quick else 96
    countries = [world[k % len(world)] for k in range(n)]
    conversations = [[{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)].format(c.name)}]
                     for k, c in enumerate(countries)]
    lookups = [run_tool(world, "lookup_country", {"name": c.name}) for c in countries]
    line_ends = [i for t, i in chat.tokenizer.get_vocab().items() if "\n" in chat.tokenizer.convert_tokens_to_string([t])]
    stop_ids = list(chat.stop_ids) + line_ends
    runs: dict[str, list[tuple[float, int]]] = {"whole": [], "kept": []}
    counts = {}
    for round_ in range(2):
        for name in ("whole", "kept"):
            started = time.perf_counter()
            generated, prompted, reused = play(chat, conversations, TOOLS, lookups, stop_ids, seed=round_,
                                               keep=name == "kept")
            seconds = time.perf_counter() - started
            runs[name].append((seconds, generated))
            counts[name] = (prompted, reused)
            print(f"round {round_ + 1}: {name:<6} {generated / seconds:8.1f} tokens/s  ({generated} tokens, "
                  f"{seconds:.1f} s; prompts {prompted} tokens, {reused} of them reused)", flush=True)
    rate = {name: statistics.median(tokens / seconds for seconds, tokens in values) for name, values in runs.items()}
    prompted, reused = counts["kept"]
    print(json.dumps({"episodes": n, "rounds": ROUNDS, "max_new_tokens": MAX_NEW, "batch": BATCH,
                      "prompt_tokens": prompted, "reused_share": reused / prompted,
                      "whole_tokens_per_s": rate["whole"], "kept_tokens_per_s": rate["kept"],
                      "ratio": rate["kept"] / rate["whole"]}))


if __name__ == "__main__":
    main()
