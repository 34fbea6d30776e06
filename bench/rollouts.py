#!/usr/bin/env python
"""GRPO's rollouts on the generation engine, against the path they took before: ``model.generate`` in static batches.

Before issue 43, ``tuneful.infer.generate`` (GRPO's and online DPO's sampling, evaluation, the demo, Self-Instruct's
local teacher) sorted prompts by length and called transformers' ``generate`` on batches of 16: a batch decodes
until its longest reply ends, and rows that ended early keep their place. It now runs the serving engine in the
caller's thread: rows that end leave the batch and the next prompt joins. Both are measured here in one run, each
twice, alternating, on the same prompts with the same settings:

- model: the sandbox base model (``tuneful/samples``), fp32, 2 threads;
- prompts: questions about the sandbox world's countries, rendered with its chat template; a group of 8 samples
  per prompt at temperature 1.0, up to 64 new tokens, 16 rows decoded together both ways;
- a rollout ends at the end of turn or at the first token holding a line break (the base model continues text and
  rarely ends its turn; its lines give replies of varied length, as a tuned policy's are).

The peer is the previous code path itself (reproduced below, as it was), with transformers' sampling defaults
(its generation config's top-k 50); the engine samples from the whole distribution, as GRPO's loss assumes.

    python bench/rollouts.py --quick   # 16 prompts x 8 samples, ~1 min on 2 cores; last line is JSON
    python bench/rollouts.py           # 64 prompts x 8 samples

With ``--vllm-python PATH`` (a python with vLLM, e.g. ``.vllm-venv/bin/python`` from ``scripts/setup-vllm``) the same
rollouts are also sampled on a vLLM server started on the same model folder (``grpo.rollouts=vllm``'s path:
``infer.vllm_server``, one request per row), twice, alternating with the others; the JSON gains
``vllm_tokens_per_s`` and ``vllm_vs_engine``. The server runs in its own process with the same 2 cores.
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

GROUP, MAX_NEW, BATCH, TEMPERATURE = 8, 64, 16, 1.0
QUESTIONS = ["What is the capital of {}?", "Tell me about {}.", "Which animal lives in {}?",
             "How many people live in {}?", "Describe the flag of {}."]


def static_batches(model, tokenizer, prompts: list[list[int]], stop_ids: list[int], pad: int, seed: int) -> list[int]:
    """The previous ``tuneful.infer.generate`` with do_sample: length-sorted static batches of ``BATCH``."""
    from tuneful.infer.batch_rows import left_padded

    torch.manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    lengths = [0] * len(prompts)
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        ids, mask = left_padded([prompts[i] for i in chunk], pad)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, eos_token_id=stop_ids,
                             pad_token_id=pad, do_sample=True, temperature=TEMPERATURE)
        for row, i in enumerate(chunk):
            new = out[row, ids.shape[1]:].tolist()
            lengths[i] = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
    return lengths


def engine(model, tokenizer, prompts: list[list[int]], stop_ids: list[int], seed: int) -> list[int]:
    from tuneful.infer.generate import generate

    out = generate(model, tokenizer, prompts, stop_ids=stop_ids, max_new_tokens=MAX_NEW, batch_size=BATCH,
                   do_sample=True, temperature=TEMPERATURE, seed=seed)
    return [len(g.token_ids) for g in out]


def vllm_rollouts(server, tokenizer, prompts: list[list[int]], stop_ids: list[int], seed: int) -> list[int]:
    out = server.generate(prompts, tokenizer=tokenizer, stop_ids=stop_ids, max_new_tokens=MAX_NEW, do_sample=True,
                          temperature=TEMPERATURE, seed=seed)
    return [len(g.token_ids) for g in out]


def start_vllm(python: str, folder: str):
    """A vLLM server on ``folder`` (2 threads, as the others), and its address once it answers."""
    import os
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host",
                             "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
                             "--max-num-seqs", str(BATCH)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise RuntimeError("the vLLM server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 prompts instead of 64")
    parser.add_argument("--vllm-python", default="", help="also sample on a vLLM server run by this python")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.sandbox.world import make_world

    chat = load_chat_model("sandbox", device="cpu")
    names = [c.name for c in make_world(0)]
    n = 16 if args.quick else 64
    messages = [[{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)].format(names[k % len(names)])}]
                for k in range(n)]
    prompts = [chat.prompt_ids(m) for m in messages for _ in range(GROUP)]
    line_ends = [i for t, i in chat.tokenizer.get_vocab().items() if "\n" in chat.tokenizer.convert_tokens_to_string([t])]
    stop_ids = list(chat.stop_ids) + line_ends
    runs: dict[str, list[tuple[float, int]]] = {"static": [], "engine": []}
    server = proc = None
    if args.vllm_python:
        import tempfile

        from tuneful.export.gguf import stage_model
        from tuneful.infer.vllm_server import VLLMServer

        folder = Path(tempfile.mkdtemp(prefix="rollouts-vllm-")) / "sandbox"
        stage_model("sandbox", folder, template=None, trust_remote_code=False)
        proc, url = start_vllm(args.vllm_python, str(folder))
        server = VLLMServer(url, max_concurrent=BATCH)
        vllm_rollouts(server, chat.tokenizer, prompts[:BATCH], stop_ids, seed=99)  # warm-up
        runs["vllm"] = []
    lengths: list[int] = []
    for round_ in range(2):
        for name in runs:
            started = time.perf_counter()
            if name == "static":
                got = static_batches(chat.model, chat.tokenizer, prompts, stop_ids, chat.pad_id, seed=round_)
            elif name == "vllm":
                got = vllm_rollouts(server, chat.tokenizer, prompts, stop_ids, seed=round_)
            else:
                got = engine(chat.model, chat.tokenizer, prompts, stop_ids, seed=round_)
                lengths += got
            seconds = time.perf_counter() - started
            runs[name].append((seconds, sum(got)))
            print(f"round {round_ + 1}: {name:<7} {sum(got) / seconds:8.1f} tokens/s  ({sum(got)} tokens, "
                  f"{seconds:.1f} s)", flush=True)
    if proc is not None:
        server.close()
        proc.terminate()
    rate = {name: statistics.median(tokens / seconds for seconds, tokens in values) for name, values in runs.items()}
    quantiles = statistics.quantiles(lengths, n=10)
    vllm = {"vllm_tokens_per_s": rate["vllm"], "vllm_vs_engine": rate["vllm"] / rate["engine"]} if "vllm" in rate else {}
    print(json.dumps({"rollouts": len(prompts), "group": GROUP, "max_new_tokens": MAX_NEW, "batch": BATCH,
                      "mean_length": statistics.mean(lengths), "length_p10": quantiles[0], "length_p90": quantiles[-1],
                      "static_tokens_per_s": rate["static"], "engine_tokens_per_s": rate["engine"], **vllm,
                      "ratio": rate["engine"] / rate["static"]}))


if __name__ == "__main__":
    main()
