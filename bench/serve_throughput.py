#!/usr/bin/env python
"""`tuneful serve` under load: requests/s and tokens/s at 1, 4 and 16 concurrent clients, against
sequential generation (the same prompts answered one after another by ``model.generate``, no HTTP).

The server is the real ``tuneful serve sandbox`` in its own process (so client threads do not
compete with it for this interpreter's lock); clients are threads here using the real ``openai``
package. Every request asks for the same number of tokens from the sandbox base model (which rarely
ends its turn early, so answers have near-equal lengths and tokens/s compares like with like).

    python bench/serve_throughput.py --quick   # ~1 min on 2 cores; last line is JSON
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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def sequential(chat, prompts: list[list[dict]], max_tokens: int) -> tuple[float, int]:
    from tuneful.infer.generate import generate

    started, tokens = time.perf_counter(), 0
    for messages in prompts:
        [out] = generate(chat.model, chat.tokenizer, [chat.prompt_ids(messages)], stop_ids=chat.stop_ids,
                         max_new_tokens=max_tokens, batch_size=1)
        tokens += len(out.token_ids)
    return time.perf_counter() - started, tokens


def concurrent(url: str, prompts: list[list[dict]], clients: int, max_tokens: int) -> tuple[float, int]:
    import openai

    tokens = [0] * len(prompts)
    next_index = iter(range(len(prompts)))
    lock = threading.Lock()

    def worker() -> None:
        with openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600) as api:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                reply = api.chat.completions.create(model="sandbox", messages=prompts[i], max_tokens=max_tokens,
                                                    temperature=0)
                tokens[i] = reply.usage.completion_tokens

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, sum(tokens)


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tuneful.cli.main", "serve", "sandbox", "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=env)
    for line in proc.stdout:
        if "Serving on" in line:
            return proc, f"http://127.0.0.1:{port}"
    raise RuntimeError(f"tuneful serve exited with {proc.wait()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 requests per level instead of 48")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.eval.prompts import load_prompts

    n = 16 if args.quick else 48
    prompts = [p.messages for p in load_prompts("sandbox")][:n]
    chat = load_chat_model("sandbox", device="cpu")
    seq_s, seq_tokens = sequential(chat, prompts, args.max_tokens)
    rows = [{"mode": "sequential generate()", "clients": 1, "seconds": seq_s, "requests": n, "tokens": seq_tokens}]
    server, url = start_server()
    try:
        concurrent(url, prompts[:2], 1, 4)  # warm-up
        for clients in (1, 4, 16):
            seconds, tokens = concurrent(url, prompts, clients, args.max_tokens)
            rows.append({"mode": "tuneful serve", "clients": clients, "seconds": seconds, "requests": n,
                         "tokens": tokens})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    for row in rows:
        row["requests_per_s"] = row["requests"] / row["seconds"]
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["speedup_vs_sequential"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"{'mode':<24}{'clients':>8}{'req/s':>9}{'tok/s':>9}{'× seq':>8}")
    for row in rows:
        print(f"{row['mode']:<24}{row['clients']:>8}{row['requests_per_s']:>9.2f}{row['tokens_per_s']:>9.0f}"
              f"{row['speedup_vs_sequential']:>8.2f}")
    print(json.dumps({"max_tokens": args.max_tokens, "requests_per_level": n,
                      "sequential_tokens_per_s": rows[0]["tokens_per_s"],
                      "levels": {str(r["clients"]): {"requests_per_s": r["requests_per_s"], "tokens_per_s": r["tokens_per_s"],
                                                     "speedup_vs_sequential": r["speedup_vs_sequential"]}
                                 for r in rows[1:]}}))


if __name__ == "__main__":
    main()
