#!/usr/bin/env python
"""Data preparation at scale: tuneful (tokens + exact assistant masks + preflight, Arrow-cached) at 1 and 2
processes vs TRL's SFT dataset preparation of the same conversations, in the same run.

Conversations are made from the real samples in the shared fixtures — ShareGPT, Alpaca, Glaive tool calls
(with tool schemas and results), OpenAssistant trees — one or two samples per conversation so lengths vary,
written once as JSONL. Each arm runs in its own process (peak RSS is per arm) from that file to prepared data:

- tuneful: ``prepare_conversations`` (stream → Arrow → batched render/tokenize/mask/check) into a fresh cache,
  at ``num_proc`` 1 and 2; then the same call again, which opens the cache (``cache_hit_s``).
- TRL: ``datasets.load_dataset("json")`` and ``SFTTrainer._prepare_dataset`` (ChatML → ``apply_chat_template``
  tokenization → labels → truncation) on a trainer built beforehand on 8 rows, so only preparation is timed.
  TRL builds no assistant mask with this template (``assistant_only_loss`` needs ``{% generation %}``).

Peak RSS is the largest resident set of an arm's processes, the pages of memory-mapped Arrow files included;
peak anonymous memory (RssAnon) is what the arm's main process allocated itself.

Both use the Qwen2.5 tokenizer and its own template, ``max_length`` 1024, one process per arm unless stated,
``TOKENIZERS_PARALLELISM=false`` (rates are per core).

    TUNEFUL_FIXTURES=../shared/fixtures python bench/data_prep.py            # 1,000,000 conversations
    TUNEFUL_FIXTURES=../shared/fixtures python bench/data_prep.py --quick    # 50,000; last line JSON
    TUNEFUL_FIXTURES=../shared/fixtures python bench/data_prep.py --quick --repeat 3   # medians of 3 runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FIXTURES = Path(os.environ.get("TUNEFUL_FIXTURES", REPO.parent / "shared" / "fixtures"))
SAMPLES = ["data/sharegpt/dummy_conversation.json", "data/llamafactory/alpaca_en_demo.json",
           "data/llamafactory/glaive_toolcall_en_demo.json", "data/oasst/en_100_tree.jsonl"]
MAX_LENGTH = 1024


def _peak_rss_mb() -> float:
    """The largest resident set of this process or any worker it waited for (file pages mapped in included)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


class AnonymousMemory:
    """Peak anonymous memory (RssAnon: what the process allocated, not file pages it maps) of this process,
    sampled every 0.1 s."""

    def __init__(self) -> None:
        import threading

        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def write_data(n: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The same ``n`` conversations twice: tuneful's canonical JSONL, and TRL's (arguments and tools as JSON
    strings, as OpenAI sends them, so Arrow does not merge every schema into one struct)."""
    from tuneful.data.loader import load

    pool = [c.to_json() for sample in SAMPLES for c in load(FIXTURES / sample, on_error="skip").conversations]
    plain = [c for c in pool if "tools" not in c and c["messages"][0]["role"] == "user"]
    rng = random.Random(seed)
    ours, theirs = folder / "tuneful.jsonl", folder / "trl.jsonl"
    with ours.open("w") as fa, theirs.open("w") as fb:
        for i in range(n):
            conv = dict(rng.choice(pool))
            conv.pop("meta", None)
            if "tools" not in conv and rng.random() < 0.3:  # a longer one: two plain conversations in a row
                conv = {"messages": conv["messages"] + rng.choice(plain)["messages"]}
            fa.write(json.dumps(conv, ensure_ascii=False) + "\n")
            messages = []
            for m in conv["messages"]:
                m = dict(m)
                if m.get("tool_calls"):
                    m["tool_calls"] = [{"type": "function", "function": {
                        "name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}}
                        for c in m["tool_calls"]]
                messages.append(m)
            fb.write(json.dumps({"messages": messages, "tools": json.dumps(conv["tools"]) if "tools" in conv
                                 else None}, ensure_ascii=False) + "\n")
    return ours, theirs


def arm_tuneful(data: Path, tokenizer: str, procs: int, cache: Path) -> dict:
    from transformers import AutoTokenizer

    from tuneful.tokenization.masking import ConversationTokenizer
    from tuneful.sft.config import DataSettings
    from tuneful.sft.prepared import prepare_conversations, preflight_report
    from tuneful.templates.registry import resolve

    tok = AutoTokenizer.from_pretrained(tokenizer)
    settings = DataSettings(train=str(data), max_length=MAX_LENGTH, num_proc=procs, cache_dir=str(cache))
    ctok = ConversationTokenizer(tok, resolve(None, tok))
    memory = AnonymousMemory()
    started = time.perf_counter()
    prepared = prepare_conversations(settings, ctok, seed=0)
    report = preflight_report(prepared.train, tok, ctok, settings)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": len(prepared.train.rows), "cache_hit": prepared.cache_hit,
            "conversations": prepared.load_report.written, "findings": [f.check for f in report.findings],
            "peak_rss_mb": _peak_rss_mb(), "peak_anon_mb": memory.stop_mb()}


def arm_trl(data: Path, tokenizer: str, cache: Path) -> dict:
    import torch
    from datasets import Dataset, load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    args = SFTConfig(output_dir=str(cache / "out"), max_length=MAX_LENGTH, packing=False, report_to=[], bf16=False,
                     gradient_checkpointing=False, use_cpu=True, dataset_num_proc=None)
    small = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}] * 8)
    trainer = SFTTrainer(model=model, args=args, train_dataset=small, processing_class=tok)
    torch.manual_seed(0)
    memory = AnonymousMemory()
    started = time.perf_counter()
    dataset = load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache / "hf"))
    prepared = trainer._prepare_dataset(dataset, tok, args, False, None, "train")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": len(prepared), "conversations": len(dataset),
            "peak_rss_mb": _peak_rss_mb(), "peak_anon_mb": memory.stop_mb()}


def run_arm(*argv: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"arm {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 conversations")
    parser.add_argument("--tokenizer", default=str(FIXTURES / "tokenizers" / "qwen2.5"))
    parser.add_argument("--work", default="", help="folder for the data and caches (default: a temporary one)")
    parser.add_argument("--arms", default="one,two,hit,trl",
                        help="arms to run: one (tuneful, 1 process), two (2 processes), hit (cache hit), trl")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each arm this many times, interleaved, and report the median (the cache hit once)")
    parser.add_argument("--arm", choices=["tuneful", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # one arm, in its own process
        arm = arm_tuneful(Path(args.data), args.tokenizer, args.procs, Path(args.cache)) if args.arm == "tuneful" \
            else arm_trl(Path(args.data), args.tokenizer, Path(args.cache))
        print(json.dumps(arm))
        return

    n = 50_000 if args.quick else args.conversations
    work = Path(args.work or tempfile.mkdtemp(prefix="tuneful-data-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ours, theirs = write_data(n, work)
    print(f"wrote {n:,} conversations ({ours.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    arms = {"one": ("tuneful, 1 process", ["--arm", "tuneful", "--procs", "1", "--cache", str(work / "c1")]),
            "two": ("tuneful, 2 processes", ["--arm", "tuneful", "--procs", "2", "--cache", str(work / "c2")]),
            "hit": ("tuneful, cache hit", ["--arm", "tuneful", "--procs", "1", "--cache", str(work / "c1")]),
            "trl": ("TRL SFTTrainer", ["--arm", "trl", "--cache", str(work / "trl")])}
    runs: dict[str, list[dict]] = {key: [] for key in args.arms.split(",")}
    for _ in range(args.repeat):  # arms interleaved, so a slow spell of the machine touches each of them
        for key in runs:
            if key == "hit" and runs[key]:  # once: it opens what the first 1-process run prepared
                continue
            name, argv = arms[key]
            if key != "hit":  # each run prepares from scratch (TRL's load_dataset caches too)
                shutil.rmtree(work / {"one": "c1", "two": "c2", "trl": "trl"}[key], ignore_errors=True)
            data = theirs if key == "trl" else ours
            runs[key].append(run_arm(*argv, "--data", str(data), "--tokenizer", args.tokenizer))
            print(f"{name}: {runs[key][-1]['seconds']:.1f} s", file=sys.stderr)
    results = {key: sorted(r, key=lambda arm: arm["seconds"])[len(r) // 2] for key, r in runs.items()}  # medians
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'arm':24s} {'seconds':>9s} {'conv/s':>9s} {'examples':>9s} {'peak RSS MB':>12s} {'peak anon MB':>13s}")
    for key, r in results.items():
        print(f"{arms[key][0]:24s} {r['seconds']:9.1f} {n / r['seconds']:9,.0f} {r['examples']:9,d} "
              f"{r['peak_rss_mb']:12,.0f} {r['peak_anon_mb']:13,.0f}")
    if args.repeat > 1:
        print("runs (s): " + "; ".join(f"{key} " + ", ".join(f"{r['seconds']:.1f}" for r in arm_runs)
                                      for key, arm_runs in runs.items()) + " (the table: medians)")
    one, two, hit, trl = (results.get(k, {}) for k in ("one", "two", "hit", "trl"))
    if hit:
        assert hit["cache_hit"] and hit["examples"] == one.get("examples", hit["examples"])
    if one:
        print(f"tuneful findings: {', '.join(one['findings']) or 'none'}")
    out = {"conversations": n, "arms": sorted(results), "repeat": args.repeat}
    if one:
        out.update(tuneful_conv_per_s=n / one["seconds"], peak_rss_mb=one["peak_rss_mb"],
                   peak_anon_mb=one["peak_anon_mb"])
    if two:
        out.update(tuneful_2_procs_conv_per_s=n / two["seconds"], peak_rss_mb_2_procs=two["peak_rss_mb"])
    if trl:
        out.update(trl_conv_per_s=n / trl["seconds"], trl_peak_rss_mb=trl["peak_rss_mb"])
    if one and trl:
        out["ratio"] = trl["seconds"] / one["seconds"]
    if one and two:
        out["speedup_2_procs"] = one["seconds"] / two["seconds"]
    if hit:
        out["cache_hit_s"] = hit["seconds"]
    print(json.dumps(out))

if __name__ == "__main__":
    main()
