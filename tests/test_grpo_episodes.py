"""GRPO over multi-turn episodes with executed tool calls (issue 43).

A scripted policy (its replies chosen from what its context shows) checks the episode logic and, token by token,
what is trained: each policy turn's own ids, in the context the template rendered for it, with the tool result
in that context and never among the trained tokens. Then a tiny model overfitted on agent traces runs GRPO with
a Python tool: its calls are executed, episodes take more than one turn, and the step reports ``signal_share``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneful.data.tool_parsers import PARSERS
from tuneful.infer.chat_model import prompt_renderer
from tuneful.infer.generate import Generation
from tuneful.rl.data import PromptRecord
from tuneful.rl.rollout import SamplingSettings, completion_inputs, sample_episode_groups, with_signal
from tuneful.templates.registry import builtin

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ASKED: list[str] = []


def get_weather(city: str) -> str:
    """Weather in a city.

    Args:
        city: The city name.
    """
    ASKED.append(city)
    return "four degrees"


@pytest.fixture()
def scripted(monkeypatch, starter_tok):
    """The policy: a call while its context holds no tool result, then an answer (odd samples answer wrongly)."""
    import tuneful.infer.episodes as episodes

    seen: list[list[int]] = []

    def policy(model, tokenizer, contexts, *, stop_ids, do_sample, seed, **_):
        out = []
        for k, context in enumerate(contexts):
            seen.append(context)
            text = tokenizer.decode(context)
            reply = CALL if "four degrees" not in text else ("It is four degrees." if k % 2 == 0 else "Sunny.")
            ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
            out.append(Generation(reply, ids, True, stop_ids[0]))
        return out

    monkeypatch.setattr(episodes, "generate", policy)
    ASKED.clear()
    return seen


def correct(prompt, completion, record):
    return float("four" in completion)


def test_each_turn_is_trained_in_its_own_context_and_tool_results_never(scripted, starter_tok):
    renderer = prompt_renderer(starter_tok, builtin("chatml"), "policy")
    records = [PromptRecord([{"role": "user", "content": "Weather in Oslo?"}])]
    settings = SamplingSettings(group_size=2, max_new_tokens=40, temperature=1.0, batch_size=4, scale_rewards="group")

    def reward(prompts, completions, fields):
        assert all(any(m["role"] == "tool" for m in p) for p in prompts)  # the reward sees the whole transcript
        return [correct(p, c, f) for p, c, f in zip(prompts, completions, fields)]

    [batch] = sample_episode_groups(None, starter_tok, renderer, [[0]], records, reward, {"get_weather": get_weather},
                                    PARSERS["hermes"], settings, max_turns=3, seed=0)
    assert ASKED == ["Oslo", "Oslo"]  # each episode's call was run
    turns = batch.completions
    assert [c.turn for c in turns] == [0, 0, 1, 1]  # first turns together (they share the prompt), then the answers
    assert [c.reward for c in turns] == [1.0, 0.0, 1.0, 0.0] and batch.groups_with_signal == 1
    assert turns[0].advantage == turns[2].advantage > 0 > turns[3].advantage  # an episode's turns share its advantage
    eot = renderer.stop_ids[0]
    second = turns[2]
    context = starter_tok.decode(second.prompt_ids)
    assert context.endswith("<|im_start|>assistant\n") and "four degrees" in context  # the tool result: context only
    assert CALL in context  # the first turn, as the template re-renders it
    for shared in (False, True):
        inputs = completion_inputs(turns, 0, shared_prompt=shared)
        if not shared:  # a row per turn: each target is the token after the position that predicts it
            assert torch.equal(inputs.input_ids.reshape(-1)[inputs.sources + 1], inputs.targets)
        for k, c in enumerate(turns):  # token by token: what is trained is exactly what the policy wrote
            assert inputs.targets[inputs.sequence == k].tolist() == c.ids and c.ids[-1] == eot
        trained = starter_tok.decode(inputs.targets.tolist())
        assert trained.count("four degrees") == 1  # the right answer's words; the tool's copy is context only
    assert len(scripted) == 4  # two rounds of two contexts: one engine call per round


def test_the_turn_cap_ends_an_episode_unanswered(scripted, starter_tok):
    from tuneful.infer.episodes import run_episodes

    renderer = prompt_renderer(starter_tok, builtin("chatml"), "policy")
    records = [PromptRecord([{"role": "user", "content": "Weather in Oslo?"}])]
    [episode] = run_episodes(None, starter_tok, renderer, records, [0], {"get_weather": get_weather},
                             PARSERS["hermes"], max_turns=1, max_new_tokens=40, batch_size=1)
    assert episode.done and not episode.answered and episode.calls == 0 and len(episode.turns) == 1
    assert ASKED == []  # at the cap the call is not run


def test_signal_counts_groups_whose_rewards_differ():
    assert with_signal([1, 1, 0, 1, 2, 2], 2) == 1
    assert with_signal([0.5] * 8, 4) == 0


TOOLS_FILE = '''
CALLS = []


def get_weather(city: str):
    """Weather in a city.

    Args:
        city: The city name.
    """
    CALLS.append(city)
    with open(__file__ + ".calls", "a") as out:
        out.write(city + "\\n")
    return "4C"
'''


@pytest.mark.slow
def test_grpo_runs_episodes_whose_calls_are_executed(agent_model: Path, tmp_path: Path):
    """The agent model (tests/conftest.py) calls the tool during GRPO's rollouts: the file's function runs,
    episodes take more than one turn, and the steps report ``signal_share``."""
    from tuneful.config import build
    from tuneful.rl.config import GRPOConfig
    from tuneful.rl.trainer import run_grpo

    (tmp_path / "tools.py").write_text(TOOLS_FILE)
    (tmp_path / "rewards.py").write_text("def says_4c(prompt, completion, record):\n"
                                         "    return float('4C' in completion)\n")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Weather in Oslo?"}) + "\n"
                                            + json.dumps({"prompt": "Say hi."}) + "\n")
    result = run_grpo(build(GRPOConfig, None, [
        f"model.name_or_path={agent_model}", f"data.train={tmp_path / 'prompts.jsonl'}",
        f"train.output_dir={tmp_path / 'grpo'}", "train.progress=false", "train.max_steps=2",
        f"grpo.rewards=python:{tmp_path / 'rewards.py'}:says_4c", f"grpo.tools={tmp_path / 'tools.py'}",
        "grpo.group_size=2", "grpo.max_new_tokens=40", "grpo.max_turns=3", "train.micro_batch_size=2",
        "train.lr=1e-5"]))
    calls = (tmp_path / "tools.py.calls").read_text().split()
    assert calls and set(calls) <= {"Oslo", "Rome"}  # the policy's calls ran the file's function
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "signal_share" in r]
    assert len(steps) == 2 and all(0.0 <= r["signal_share"] <= 1.0 for r in steps)
    assert max(r["turns_per_episode"] for r in steps) > 1.0  # episodes went on after a call


def test_eval_with_tools_runs_episodes_and_scores_them(agent_model: Path, tmp_path: Path):
    """``tuneful eval --tools``: the same episodes, scored end to end (BFCL-style numbers)."""
    from tuneful.eval.runner import EvalSettings, run_eval

    (tmp_path / "tools.py").write_text(TOOLS_FILE)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Weather in Oslo?", "answer": "4C"}) + "\n"
                                            + json.dumps({"prompt": "Say hi.", "answer": "Hi"}) + "\n")
    report = run_eval(EvalSettings(models=[str(agent_model)], prompts=str(tmp_path / "prompts.jsonl"),
                                   out=tmp_path / "eval", tools=tmp_path / "tools.py", progress=False, max_new_tokens=40))
    episodes = report["models"][str(agent_model)]["episodes"]
    assert episodes["task_success"] == 1.0 and episodes["valid_call_rate"] == 1.0
    assert episodes["calls_per_task"] == 0.5 and episodes["turns_per_task"] == 1.5  # Oslo: call, answer; hi: answer
    assert (tmp_path / "tools.py.calls").read_text().split() == ["Oslo"]
    assert "Episodes with tools" in (tmp_path / "eval" / "report.md").read_text()


def test_a_turn_reuses_its_episodes_earlier_context_and_writes_the_same(agent_model: Path, monkeypatch):
    """Each policy turn prefills only what its episode's previous turn did not hold (``infer.prefix_cache``), and the
    episodes are those of a run that prefills every context whole (greedy, the agent model calling its tool)."""
    import tuneful.infer.episodes as episodes
    from tuneful.infer.chat_model import load_chat_model
    from tuneful.infer.prefix_cache import PrefixCache

    def get_weather(city: str):  # the schema the agent model was trained with (tests/test_serve_tools.py)
        """Weather in a city.

        Args:
            city: The city name.
        """
        return "4C"

    chat = load_chat_model(str(agent_model), device="cpu")
    records = [PromptRecord([{"role": "user", "content": q}]) for q in ("Weather in Oslo?", "Weather in Rome?", "Say hi.")]
    made: list[PrefixCache] = []

    def run(max_bytes: int) -> list:
        monkeypatch.setattr(episodes, "PrefixCache", lambda: made.append(PrefixCache(max_bytes)) or made[-1])
        return episodes.run_episodes(chat.model, chat.tokenizer, chat, records, [0, 1, 2, 0], {"get_weather": get_weather},
                                     PARSERS[chat.tool_parser], max_turns=3, max_new_tokens=40, batch_size=2, do_sample=False)

    kept, whole = run(1 << 30), run(0)
    assert [e.messages for e in kept] == [e.messages for e in whole]
    assert [[t.ids for t in e.turns] for e in kept] == [[t.ids for t in e.turns] for e in whole]
    assert max(len(e.turns) for e in kept) > 1  # a call, then an answer after its result
    later_turns = sum(len(t.context) for e in kept for t in e.turns[1:])
    assert made[0].reused_tokens >= 0.5 * later_turns and made[1].reused_tokens == 0
