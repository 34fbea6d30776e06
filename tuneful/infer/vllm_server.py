"""Completions from a running vLLM server, by token ids: GRPO's rollouts with ``grpo.rollouts=vllm``.

Boundary: token ids in, :class:`~tuneful.infer.generate.Generation` out, over vLLM's own HTTP API — the server
TRL calls "server mode", started by the user (``vllm serve BASE --enable-lora --max-lora-rank R`` with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). A prompt is sent as token ids to ``/v1/completions`` and the reply's
ids come back (vLLM's ``return_token_ids``), so the server never renders or re-tokenizes anything: the ids GRPO
trains are the ids that were sampled. The policy reaches the server as a LoRA adapter folder loaded by path
(``/v1/load_lora_adapter``; only adapters move over HTTP — full weights need vLLM's NCCL or CUDA-IPC weight
transfer). Nothing about training or templates.

Each row is its own request with its own seed: the prompts of one request share its seed, so the copies of a
GRPO group would all sample the same tokens. The requests run concurrently and vLLM batches them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from .generate import Generation, row_seed


class VLLMServer:
    def __init__(self, url: str, *, timeout_s: float = 600.0, max_concurrent: int = 64, transport: Any = None):
        """``url``: the server's base address (``http://127.0.0.1:8000``; a trailing ``/v1`` is accepted);
        ``transport``: an ``httpx`` transport (tests)."""
        import httpx

        self.url = url.rstrip("/").removesuffix("/v1")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
        self.max_concurrent = max_concurrent
        self.base = self.served_model()
        self.model = self.base  # what requests name: the base until an adapter is loaded

    def served_model(self) -> str:
        """The base model the server was started with (the first of ``/v1/models``)."""
        reply = self._call("GET", "/v1/models")
        models = [m["id"] for m in reply.get("data", []) if not m.get("parent")]
        if not models:
            raise RuntimeError(f"the vLLM server at {self.url} lists no model in /v1/models: {reply}")
        return models[0]

    def load_adapter(self, name: str, folder: str) -> None:
        """Load the LoRA adapter saved in ``folder`` (peft's ``save_pretrained``) as ``name``; later requests use it."""
        self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)},
                   fix="start the server with --enable-lora, --max-lora-rank at least lora.r, and "
                       "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment")
        previous, self.model = self.model, name
        if previous not in (name, self.base):
            self._call("POST", "/v1/unload_lora_adapter", {"lora_name": previous})

    def generate(self, prompts: Sequence[list[int]], *, tokenizer: Any, stop_ids: Sequence[int],
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 seed: int = 0) -> list[Generation]:
        """What :func:`tuneful.infer.generate.generate` returns for the same arguments, sampled by the server (row
        ``i`` seeded ``row_seed(seed, i)``; greedy when not ``do_sample``); ``text`` decoded here by ``tokenizer``, as
        ``generate`` decodes."""
        stops = list(stop_ids)

        def one(index: int) -> Generation:
            body = {"model": self.model, "prompt": list(prompts[index]), "max_tokens": max_new_tokens,
                    "temperature": temperature if do_sample else 0.0, "top_p": 1.0, "top_k": -1,
                    "stop_token_ids": stops, "ignore_eos": True,  # it stops where the engine would: at stop_ids only
                    "return_token_ids": True, "skip_special_tokens": True}
            if do_sample:
                body["seed"] = row_seed(seed, index)
            [choice] = self._call("POST", "/v1/completions", body)["choices"]
            ids, stopped, stop_token = reply_ids(choice, stops)
            return Generation(tokenizer.decode(ids, skip_special_tokens=True), ids, stopped, stop_token)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrent, len(prompts)))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, body: dict | None = None, fix: str = "") -> Any:
        import httpx

        try:
            reply = self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"the vLLM server at {self.url} did not answer {method} {path}: {exc}. Fix: start it "
                               f"(vllm serve BASE ...) or set the trainer's vllm_url (grpo.vllm_url, online_dpo.vllm_url) to where "
                               f"it listens") from exc
        if reply.status_code != 200:
            raise RuntimeError(f"the vLLM server at {self.url} refused {method} {path} ({reply.status_code}): "
                               f"{reply.text[:500]}" + (f". Fix: {fix}" if fix else ""))
        return reply.json() if reply.content and reply.headers.get("content-type", "").startswith("application/json") \
            else {}


def reply_ids(choice: dict, stop_ids: list[int]) -> tuple[list[int], bool, int | None]:
    """(the reply's ids, whether it stopped, the stop id) from a completion choice: vLLM lists the stop token among
    the ids when the reply ended on one (the end of turn, or the model's end of sequence); it is taken off."""
    if "token_ids" not in choice:
        raise RuntimeError("the server's completion holds no token_ids: it is not vLLM, or a vLLM without "
                           "return_token_ids (needs vLLM >= 0.10.2)")
    ids = list(choice["token_ids"] or [])
    stopped = choice.get("finish_reason") == "stop" and bool(ids) and ids[-1] in stop_ids
    return ids[:-1] if stopped else ids, stopped, ids[-1] if stopped else None
