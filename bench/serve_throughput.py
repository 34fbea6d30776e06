#!/usr/bin/env python
"""`tuneful serve` under load against a real peer, `transformers serve`, on the same model folder.

Both servers run in their own process (2 CPU threads each, one server at a time) on one folder: the
sandbox base model with its chat template written into the tokenizer, so both render the same prompts.
Clients are threads here using the real ``openai`` package, each sending its next request when the
previous answer arrives; every request asks for the same number of tokens from a base model that rarely
ends its turn early, so tokens/s compares like with like. Measured in one run:

- sequential ``model.generate`` in-process (no HTTP), for scale;
- ``tuneful serve`` at 1, 4 and 16 clients (``--prefix-cache-mb 0``: the levels repeat the same prompts);
- ``transformers serve`` at 1 and 16 clients, as it starts by default (``ratio_vs_transformers_serve``)
  and with its ``--continuous-batching`` option (``ratio_vs_transformers_serve_cb``);
- tool requests: ``tuneful serve`` at 16 clients, the same prompts with three tools offered (the sandbox
  template lists them in the prompt); tokens/s and prompt length against the plain requests, and against
  a control of the same length: no tools, the same definitions pasted into a system message.

    python bench/serve_throughput.py --quick   # ~2 min on 2 cores; last line is JSON
    python bench/serve_throughput.py           # more requests per level
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOOLS = [{"type": "function", "function": {"name": name, "description": text, "parameters": {
    "type": "object", "properties": {arg: {"type": kind} for arg, kind in args.items()}, "required": list(args)}}}
    for name, text, args in (("lookup_country", "Facts about a country.", {"name": "string"}),
                             ("add", "Add two numbers.", {"a": "number", "b": "number"}),
                             ("compare", "Which of two numbers is larger.", {"a": "number", "b": "number"}))]


def sequential(chat, prompts: list[list[dict]], max_tokens: int) -> tuple[float, int, int]:
    from tuneful.infer.generate import generate

    started, tokens = time.perf_counter(), 0
    for messages in prompts:
        [out] = generate(chat.model, chat.tokenizer, [chat.prompt_ids(messages)], stop_ids=chat.stop_ids,
                         max_new_tokens=max_tokens, batch_size=1)
        tokens += len(out.token_ids)
    return time.perf_counter() - started, tokens, 0


def concurrent(url: str, model: str, prompts: list[list[dict]], clients: int, max_tokens: int,
               tools: list[dict] | None = None) -> tuple[float, int, int]:
    """(seconds, completion tokens, prompt tokens) for all prompts answered by ``clients`` threads. Each thread's
    client is made before the clock starts: an ``openai.OpenAI`` costs ~23 ms of CPU to make (its TLS context), which
    at 16 clients and ~10 tokens a reply took more of the two cores than either server did."""
    import openai

    completion, prompt_tokens = [0] * len(prompts), [0] * len(prompts)
    next_index = iter(range(len(prompts)))
    lock = threading.Lock()
    extra = {"tools": tools} if tools else {}
    apis = [openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600) for _ in range(clients)]

    def worker(api: "openai.OpenAI") -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            reply = api.chat.completions.create(model=model, messages=prompts[i], max_tokens=max_tokens,
                                                temperature=0, **extra)
            completion[i], prompt_tokens[i] = reply.usage.completion_tokens, reply.usage.prompt_tokens

    threads = [threading.Thread(target=worker, args=(api,)) for api in apis]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    for api in apis:
        api.close()
    return seconds, sum(completion), sum(prompt_tokens)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], ready: str, port: int, env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    for line in proc.stdout:
        if ready in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
            return proc, f"http://127.0.0.1:{port}"
    raise RuntimeError(f"{' '.join(command[:4])} exited with {proc.wait()}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def tuneful_server(folder: Path, env: dict, *extra: str) -> tuple[subprocess.Popen, str]:
    """Its prefix cache off: every level sends the same prompts, which the cache would answer from the level before
    (the peer keeps nothing between requests)."""
    port = _free_port()
    return start([sys.executable, "-m", "tuneful.cli.main", "serve", str(folder), "--port", str(port), "--device", "cpu",
                  "--prefix-cache-mb", "0", *extra], "Serving on", port, env)


def transformers_server(folder: Path, env: dict, cache: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    return start([str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), *extra],
                 "Uvicorn running", port, {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})


def measure(rows: list[dict], mode: str, server: tuple[subprocess.Popen, str], folder: Path, prompts, levels,
            max_tokens: int, tools=None) -> None:
    proc, url = server
    try:
        concurrent(url, str(folder), prompts[:2], 1, 4, tools)  # warm-up
        for clients in levels:
            seconds, tokens, prompt_tokens = concurrent(url, str(folder), prompts, clients, max_tokens, tools)
            rows.append({"mode": mode, "clients": clients, "seconds": seconds, "requests": len(prompts),
                         "tokens": tokens, "prompt_tokens": prompt_tokens})
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 requests per level instead of 48")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from tuneful.sandbox.evaluation import SandboxTasks
    from tuneful.export.gguf import stage_model
    from tuneful.infer.chat_model import load_chat_model

    n = 16 if args.quick else 48
    prompts = [p.messages for p in SandboxTasks().held_out()][:n]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        folder = Path(scratch) / "sandbox"  # the sandbox base with its template in the tokenizer: one folder for both
        stage_model("sandbox", folder, template=None, trust_remote_code=False)
        chat = load_chat_model(str(folder), device="cpu")
        seconds, tokens, _ = sequential(chat, prompts, args.max_tokens)
        del chat
        rows = [{"mode": "sequential generate()", "clients": 1, "seconds": seconds, "requests": n, "tokens": tokens,
                 "prompt_tokens": 0}]
        measure(rows, "tuneful serve", tuneful_server(folder, env), folder, prompts, (1, 4, 16), args.max_tokens)
        cache = Path(scratch) / "hub"
        cache.mkdir()
        measure(rows, "transformers serve", transformers_server(folder, env, cache), folder, prompts, (1, 16),
                args.max_tokens)
        measure(rows, "transformers serve --cb", transformers_server(folder, env, cache, "--continuous-batching"),
                folder, prompts, (1, 16), args.max_tokens)
        measure(rows, "tuneful serve, tools", tuneful_server(folder, env), folder, prompts, (16,), args.max_tokens,
                TOOLS)
        # the control: no tools, the same definitions pasted into a system message (about the same prompt length)
        listed = "Tools:\n" + "".join(json.dumps(tool) + "\n" for tool in TOOLS)
        long_plain = [[{"role": "system", "content": listed}, *messages] for messages in prompts]
        measure(rows, "tuneful serve, long plain", tuneful_server(folder, env), folder, long_plain, (16,),
                args.max_tokens)
    for row in rows:
        row["requests_per_s"] = row["requests"] / row["seconds"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["speedup_vs_sequential"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"{'mode':<32}{'clients':>8}{'req/s':>9}{'tok/s':>9}{'× seq':>8}{'prompt tok/req':>16}")
    for row in rows:
        print(f"{row['mode']:<32}{row['clients']:>8}{row['requests_per_s']:>9.2f}{row['tokens_per_s']:>9.0f}"
              f"{row['speedup_vs_sequential']:>8.2f}{row['prompt_tokens'] / row['requests']:>16.0f}")

    def rate(mode: str, clients: int) -> float:
        return next(r["tokens_per_s"] for r in rows if r["mode"] == mode and r["clients"] == clients)

    plain = next(r for r in rows if r["mode"] == "tuneful serve" and r["clients"] == 16)
    with_tools = next(r for r in rows if r["mode"].endswith("tools"))
    long_plain = next(r for r in rows if r["mode"].endswith("long plain"))
    summary = {
        "max_tokens": args.max_tokens, "requests_per_level": n, "sequential_tokens_per_s": rows[0]["tokens_per_s"],
        "tuneful_tokens_per_s_16": rate("tuneful serve", 16),
        "transformers_serve_tokens_per_s_16": rate("transformers serve", 16),
        "transformers_serve_cb_tokens_per_s_16": rate("transformers serve --cb", 16),
        # transformers serve as it starts (static, one request at a time), and with its continuous batching
        "ratio_vs_transformers_serve": rate("tuneful serve", 16) / rate("transformers serve", 16),
        "ratio_vs_transformers_serve_cb": rate("tuneful serve", 16) / rate("transformers serve --cb", 16),
        "ratio_vs_transformers_serve_1_client": rate("tuneful serve", 1) / rate("transformers serve", 1),
        "tools_vs_plain_tokens_per_s": with_tools["tokens_per_s"] / plain["tokens_per_s"],
        "tools_vs_plain_same_prompt_length": with_tools["tokens_per_s"] / long_plain["tokens_per_s"],
        "prompt_tokens_per_request": {"plain": plain["prompt_tokens"] / n, "tools": with_tools["prompt_tokens"] / n,
                                      "long_plain": long_plain["prompt_tokens"] / n},
        "levels": {str(r["clients"]): {"requests_per_s": r["requests_per_s"], "tokens_per_s": r["tokens_per_s"],
                                       "speedup_vs_sequential": r["speedup_vs_sequential"]}
                   for r in rows if r["mode"] == "tuneful serve"},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
