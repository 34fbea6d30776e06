"""GRPO's rollouts on a vLLM server (``grpo.rollouts=vllm``, :mod:`tuneful.infer.vllm_server`).

Against a fake server (httpx's mock transport): what the client sends (token ids, one seed per row, the stop ids,
the adapter loaded last), what it reads back (the stop token taken off), its errors, and a GRPO run that samples
there and hands the server its adapter every step. Against a real vLLM (the CPU build in its own environment,
``TUNEFUL_VLLM_PYTHON``: ``scripts/setup-vllm``): greedy ids equal tuneful's engine's, an adapter loaded by path
gives the local LoRA model's greedy ids, a GRPO run samples on it, and its chat endpoint serving a saved folder
replies as tuneful does.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

from tiny import free_port, save_tiny_model
from tuneful.config import ConfigError, build
from tuneful.infer import vllm_server
from tuneful.infer.vllm_server import VLLMServer
from tuneful.rl.config import GRPOConfig
from tuneful.rl.trainer import run_grpo


class FakeVLLM:
    """vLLM's endpoints as GRPO uses them: a reply of fixed ids per request (``reply``), adapters by name."""

    def __init__(self, reply: list[int], finish: str = "stop"):
        self.reply, self.finish = reply, finish
        self.completions: list[dict] = []
        self.loaded: list[tuple[str, list[str]]] = []  # (name, the files in its folder when loaded)
        self.unloaded: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base-model", "parent": None}]})
        body = json.loads(request.content)
        if path == "/v1/load_lora_adapter":
            self.loaded.append((body["lora_name"], sorted(p.name for p in Path(body["lora_path"]).iterdir())))
            return httpx.Response(200, text="Success: LoRA adapter loaded")
        if path == "/v1/unload_lora_adapter":
            self.unloaded.append(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/v1/completions":
            self.completions.append(body)
            return httpx.Response(200, json={"choices": [{"index": 0, "text": "?", "finish_reason": self.finish,
                                                          "token_ids": list(self.reply)}]})
        return httpx.Response(404, text="no such route")


def test_the_client_sends_token_ids_with_a_seed_per_row_and_reads_the_ids_back():
    tokenizer = type("Tok", (), {"decode": staticmethod(lambda ids, skip_special_tokens: " ".join(map(str, ids)))})()
    fake = FakeVLLM([5, 6, 2])  # 2: a stop id, listed by vLLM as the last id
    server = VLLMServer("http://vllm.test/v1", transport=httpx.MockTransport(fake))
    assert server.model == "base-model"
    out = server.generate([[1, 2, 3], [1, 2, 3], [4]], tokenizer=tokenizer, stop_ids=[2, 9], max_new_tokens=7,
                          do_sample=True, temperature=0.7, seed=3)
    assert [(g.token_ids, g.stopped, g.stop_token, g.text) for g in out] == [([5, 6], True, 2, "5 6")] * 3
    sent = sorted(fake.completions, key=lambda b: b["seed"])
    assert [b["prompt"] for b in fake.completions].count([1, 2, 3]) == 2
    assert len({b["seed"] for b in sent}) == 3  # a group's copies must not share a seed: they would sample alike
    assert all(b["model"] == "base-model" and b["stop_token_ids"] == [2, 9] and b["ignore_eos"] and
               b["return_token_ids"] and b["max_tokens"] == 7 and b["temperature"] == 0.7 for b in sent)
    greedy = server.generate([[4]], tokenizer=tokenizer, stop_ids=[2], max_new_tokens=3)
    assert fake.completions[-1]["temperature"] == 0.0 and "seed" not in fake.completions[-1] and greedy[0].stopped

    fake.finish = "length"  # cut at max_tokens: no stop token is taken off, even one that looks like it
    [cut] = server.generate([[4]], tokenizer=tokenizer, stop_ids=[2], max_new_tokens=3)
    assert (cut.token_ids, cut.stopped, cut.stop_token) == ([5, 6, 2], False, None)

    server.load_adapter("policy-0", str(Path(__file__).parent))
    server.load_adapter("policy-1", str(Path(__file__).parent))
    assert [n for n, _ in fake.loaded] == ["policy-0", "policy-1"] and fake.unloaded == ["policy-0"]
    server.generate([[4]], tokenizer=tokenizer, stop_ids=[2])
    assert fake.completions[-1]["model"] == "policy-1"


def test_the_client_names_what_went_wrong():
    refuse = httpx.MockTransport(lambda r: httpx.Response(200, json={"data": [{"id": "m"}]}) if r.url.path == "/v1/models"
                                 else httpx.Response(400, text="LoRA is not enabled"))
    server = VLLMServer("http://vllm.test", transport=refuse)
    with pytest.raises(RuntimeError, match="--enable-lora"):
        server.load_adapter("a", "/tmp")
    plain = httpx.MockTransport(lambda r: httpx.Response(200, json={"data": [{"id": "m"}]}) if r.url.path == "/v1/models"
                                else httpx.Response(200, json={"choices": [{"text": "hi", "finish_reason": "stop"}]}))
    with pytest.raises(RuntimeError, match="return_token_ids"):
        VLLMServer("http://x", transport=plain).generate([[1]], tokenizer=None, stop_ids=[2])

    def down(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(RuntimeError, match="grpo.vllm_url"):
        VLLMServer("http://127.0.0.1:9", transport=httpx.MockTransport(down))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm-grpo")
    save_tiny_model(root / "model")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n"
                                                for w in ("cats", "rivers", "taxes", "poems")))
    (root / "rewards.py").write_text("def short(prompt, completion, record):\n    return 1.0 - len(completion) / 40\n")
    return root


def settings(workdir: Path, out: str, *extra: str) -> list[str]:
    return [f"model.name_or_path={workdir / 'model'}", f"data.train={workdir / 'prompts.jsonl'}",
            "data.template=chatml", "data.allow_template_change=true", f"train.output_dir={workdir / out}",
            "train.progress=false", f"grpo.rewards=python:{workdir / 'rewards.py'}:short", "grpo.group_size=2",
            "grpo.max_new_tokens=6", "train.micro_batch_size=2", "train.resume=false", *extra]


def test_vllm_rollouts_need_an_address_and_a_plain_lora_adapter(workdir: Path):
    with pytest.raises(ConfigError) as err:
        build(GRPOConfig, None, settings(workdir, "x", "grpo.rollouts=vllm"))
    assert "vllm_url" in str(err.value) and "lora.enabled=true" in str(err.value)
    with pytest.raises(ConfigError, match="plain LoRA"):
        build(GRPOConfig, None, settings(workdir, "x", "grpo.rollouts=vllm", "grpo.vllm_url=http://h:1",
                                         "lora.enabled=true", "lora.dora=true"))
    with pytest.raises(ConfigError, match="rollouts"):
        build(GRPOConfig, None, settings(workdir, "x", "grpo.rollouts=sglang"))


def test_grpo_samples_on_the_server_and_hands_it_the_policy_every_step(workdir: Path, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    tokenizer.chat_template = None
    words = tokenizer.encode(" yes no", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    fake = FakeVLLM(words + [end])
    monkeypatch.setattr(vllm_server, "VLLMServer", functools.partial(VLLMServer, transport=httpx.MockTransport(fake)))
    result = run_grpo(build(GRPOConfig, None, settings(workdir, "run", "grpo.rollouts=vllm", "grpo.vllm_url=http://h:1",
                                                       "lora.enabled=true", "lora.r=4", "train.max_steps=2")))
    assert result.steps == 2
    # one adapter a step, each a saved peft adapter; the one before unloaded and its folder removed
    names = [name for name, _ in fake.loaded]
    assert len(names) == 2 and names[0].startswith("tuneful-policy-") and names[0].endswith("-0") and \
        names[1] == names[0][:-1] + "1"  # a tag of this run, then the cycle
    assert all("adapter_config.json" in files and "adapter_model.safetensors" in files for _, files in fake.loaded)
    assert fake.unloaded == names[:1]
    assert [p.name for p in (workdir / "run" / "vllm-adapters").iterdir()] == ["cycle-1"]
    # 2 steps x 2 prompts x 2 samples, each its own request, sampled by the adapter loaded just before
    assert len(fake.completions) == 8 and len({b["seed"] for b in fake.completions}) == 8
    assert [b["model"] for b in fake.completions] == names[:1] * 4 + names[1:] * 4
    rows = [r for r in result.history if "completion_length" in r]
    assert rows and all(r["completion_length"] == len(words) + 1 and r["stop_rate"] == 1.0 for r in rows)


def test_online_dpo_samples_on_the_server_too(workdir: Path, monkeypatch):
    from transformers import AutoTokenizer

    from tuneful.rl.online_dpo import OnlineDPOConfig, run_online_dpo

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    fake = FakeVLLM(tokenizer.encode(" yes", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    monkeypatch.setattr(vllm_server, "VLLMServer", functools.partial(VLLMServer, transport=httpx.MockTransport(fake)))
    lines = [s.replace("grpo.", "online_dpo.") for s in settings(workdir, "odpo", "train.max_steps=1",
                                                                  "lora.enabled=true", "lora.r=4")]
    with pytest.raises(ConfigError, match="online_dpo.rollouts=vllm"):
        build(OnlineDPOConfig, None, lines + ["online_dpo.rollouts=vllm", "online_dpo.vllm_url=http://h:1",
                                              "lora.enabled=false"])
    result = run_online_dpo(build(OnlineDPOConfig, None, lines + ["online_dpo.rollouts=vllm",
                                                                  "online_dpo.vllm_url=http://h:1"]))
    assert result.steps == 1 and len(fake.loaded) == 1 and len(fake.completions) == 4
    assert {b["model"] for b in fake.completions} == {fake.loaded[0][0]}


# --- against a real vLLM (its CPU build, in its own environment) ---------------------------------------------

VLLM_PYTHON = os.environ.get("TUNEFUL_VLLM_PYTHON", "")
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="no vLLM: set TUNEFUL_VLLM_PYTHON to a python with vLLM "
                                                        "(bash scripts/setup-vllm makes .vllm-venv)")


@pytest.fixture(scope="module")
def real_vllm(tmp_path_factory):
    """The sandbox base (its chat template in the tokenizer) served by vLLM on the CPU, adapters allowed."""
    from tuneful.export.gguf import stage_model

    folder = tmp_path_factory.mktemp("vllm-model") / "sandbox"
    stage_model("sandbox", folder, template=None, trust_remote_code=False)
    port = free_port()
    log = folder.parent / "vllm.log"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                                 "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                                 "--max-model-len", "1024", "--enable-lora", "--max-lora-rank", "8"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not start: {log.read_text()[-3000:]}")
            time.sleep(2)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _prompts(chat) -> list[list[int]]:
    questions = ["What is the capital of Noudriland?", "Name a colour.", "Reverse the list: a, b, c.",
                 "Which animal lives in Didraiova?"]
    return [chat.prompt_ids([{"role": "user", "content": q}]) for q in questions]


@pytest.mark.slow
@needs_vllm
def test_a_real_vllm_gives_the_engines_greedy_ids_and_the_adapter_it_was_handed(real_vllm, tmp_path: Path):
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.infer.generate import generate
    from tuneful.models.loading import apply_lora
    from tuneful.models.settings import LoraSettings

    url, folder = real_vllm
    chat = load_chat_model(str(folder), device="cpu")
    prompts = _prompts(chat)
    server = VLLMServer(url)
    ours = generate(chat.model, chat.tokenizer, prompts, stop_ids=chat.stop_ids, max_new_tokens=24)
    theirs = server.generate(prompts, tokenizer=chat.tokenizer, stop_ids=chat.stop_ids, max_new_tokens=24)
    assert [(g.token_ids, g.stopped, g.stop_token) for g in theirs] == [(g.token_ids, g.stopped, g.stop_token)
                                                                        for g in ours]
    # an adapter that changes the replies: random B (A is random already), saved and loaded by path
    policy = apply_lora(chat.model, LoraSettings(enabled=True, r=8, alpha=16))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    policy.save_pretrained(str(tmp_path / "adapter"), safe_serialization=True)
    server.load_adapter("random-adapter", str(tmp_path / "adapter"))
    tuned = generate(policy, chat.tokenizer, prompts, stop_ids=chat.stop_ids, max_new_tokens=24)
    assert [g.token_ids for g in tuned] != [g.token_ids for g in ours]  # the adapter matters
    served = server.generate(prompts, tokenizer=chat.tokenizer, stop_ids=chat.stop_ids, max_new_tokens=24)
    assert [g.token_ids for g in served] == [g.token_ids for g in tuned]
    sampled = server.generate(prompts[:1] * 4, tokenizer=chat.tokenizer, stop_ids=chat.stop_ids, max_new_tokens=24,
                              do_sample=True, temperature=1.0, seed=1)
    assert len({tuple(g.token_ids) for g in sampled}) > 1  # one prompt's copies sample apart


@pytest.mark.slow
@needs_vllm
def test_grpo_with_rollouts_on_a_real_vllm(real_vllm, tmp_path: Path):
    url, folder = real_vllm
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is the capital of {c}?"}) + "\n"
                               for c in ("Noudriland", "Didraiova", "Velailand", "Kruistan")))
    (tmp_path / "rewards.py").write_text("def short(prompt, completion, record):\n    return 1.0 - len(completion) / 60\n")
    result = run_grpo(build(GRPOConfig, None, [
        f"model.name_or_path={folder}", f"data.train={prompts}", f"train.output_dir={tmp_path / 'run'}",
        "train.progress=false", f"grpo.rewards=python:{tmp_path / 'rewards.py'}:short", "grpo.group_size=4",
        "grpo.max_new_tokens=16", "train.micro_batch_size=2", "train.max_steps=2", "train.lr=1e-3",
        "lora.enabled=true", "lora.r=8", "grpo.rollouts=vllm", f"grpo.vllm_url={url}"]))
    assert result.steps == 2
    rows = [r for r in result.history if "completion_length" in r]
    assert len(rows) == 2 and all(r["completions"] == 8 and r["completion_length"] > 0 for r in rows)
    served = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"] if m["id"].startswith("tuneful-policy-")]
    assert len(served) == 1 and served[0].endswith("-1")  # the last step's adapter; the first one unloaded


@pytest.mark.slow
@needs_vllm
def test_vllm_serves_a_saved_folder_as_tuneful_does(real_vllm):
    """Serving with vLLM instead (``vllm serve FOLDER``): the folder's chat template and stop tokens (the
    generation config tuneful writes) give vLLM's chat endpoint tuneful's greedy replies, to the token."""
    import openai

    from tuneful.infer.chat_model import load_chat_model
    from tuneful.infer.generate import generate

    url, folder = real_vllm
    chat = load_chat_model(str(folder), device="cpu")
    conversations = [[{"role": "user", "content": q}] for q in ("What is the capital of Noudriland?", "Name a colour.")]
    conversations.append([{"role": "system", "content": "Answer briefly."}, *conversations[0],
                          {"role": "assistant", "content": "Sezouvik."}, {"role": "user", "content": "And its animal?"}])
    ours = generate(chat.model, chat.tokenizer, [chat.prompt_ids(c) for c in conversations], stop_ids=chat.stop_ids,
                    max_new_tokens=24)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    for messages, mine in zip(conversations, ours):
        reply = client.chat.completions.create(model=str(folder), messages=messages, max_tokens=24, temperature=0)
        assert reply.choices[0].message.content == mine.text
        assert reply.choices[0].finish_reason == ("stop" if mine.stopped else "length")
