"""``tuneful demo --rl``: what each method after SFT buys, measured on the sandbox.

From the same SFT model: offline DPO (the demo's), GRPO with the task verifiers as reward, online
DPO with verifier-ranked pairs of the policy's own replies, a reward model trained on the sandbox
preference pairs (its held-out pair accuracy reported), GRPO with that reward model instead of
the verifier, and (with the agent) GRPO over agent episodes whose tool calls are run. Every online
method samples prompts of *training* phrasings of *training* families (the agent's: about training
countries) only, fresh instances; held-out phrasings, families and countries are only ever evaluated.
The settings below are fixed in advance and were not tuned on held-out prompts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import build
from ..data.types import Message, PreferencePair
from ..preference.reward_score import RewardScorer
from ..reward.config import RewardConfig
from ..reward.trainer import run_reward
from ..rl.config import GRPOConfig
from ..rl.online_dpo import OnlineDPOConfig, run_online_dpo
from ..rl.trainer import run_grpo
from .agent import rl_prompts, sandbox_tools
from .tasks import sft_instances


VERIFIER = "python:tuneful.sandbox.tasks:verifier_reward"
AGENT_REWARD = "python:tuneful.sandbox.agent:agent_reward"


@dataclass
class OnlineSettings:
    prompts: int = 512  # training-phrasing instances the online methods sample from
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 40
    grpo_lr: float = 2e-5
    online_dpo_lr: float = 5e-5
    online_dpo_group: int = 4
    rm_lr: float = 1e-4
    rm_epochs: float = 2.0
    # agentic GRPO (with the agent's tools: issue 43): episodes whose calls run, rewarded on the final answer
    agent_prompts: int = 512
    agent_steps: int = 20
    agent_prompts_per_step: int = 4
    agent_group_size: int = 8
    agent_max_new_tokens: int = 128  # per turn (the agent evaluation's cap)
    agent_max_turns: int = 5  # the agent evaluation's rounds
    agent_lr: float = 2e-5
    # prompts steered towards families whose recent groups had signal (tuneful.rl.selection), every online method
    dynamic_sampling: bool = True


def write_prompts(folder: Path, world: list, n: int, seed: int) -> Path:
    """Prompt records of training phrasings (fresh instances: another seed than the SFT data's)."""
    path = folder / "rl_prompts.jsonl"
    instances = sft_instances(world, max(1, n // 16), seed + 1_000)
    path.write_text("".join(json.dumps({"messages": i.messages, "family": i.family, "check": i.check,
                                        "reference": i.answer}) + "\n" for i in instances))
    return path


def _common(settings: Any, online: OnlineSettings, model: Path, prompts: Path, out: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={prompts}", f"train.output_dir={out}",
            f"train.max_steps={online.steps}", f"train.micro_batch_size={online.prompts_per_step}",
            "train.resume=false", f"train.seed={settings.seed}", f"train.progress={settings.progress}",
            "train.log_every=5", f"lora.enabled={settings.lora}", "lora.r=32", "lora.alpha=64"]


def _selection(online: OnlineSettings, section: str) -> list[str]:
    """Dynamic sampling keyed by the task family every prompt record carries."""
    return [f"{section}.dynamic_sampling=true", f"{section}.signal_key=family"] if online.dynamic_sampling else []


def run_grpo_arm(settings: Any, online: OnlineSettings, model: Path, prompts: Path, out: Path, reward: str) -> Any:
    return run_grpo(build(GRPOConfig, None, _common(settings, online, model, prompts, out) +
                          _selection(online, "grpo") + [
        f"grpo.rewards={reward}", f"grpo.group_size={online.group_size}",
        f"grpo.max_new_tokens={online.max_new_tokens}", f"train.lr={online.grpo_lr}", "grpo.loss=dapo"]))


def run_agent_grpo_arm(settings: Any, online: OnlineSettings, model: Path, tool_world: list, out: Path) -> Any:
    """GRPO over agent episodes: training phrasings about the tool world's training countries, the sandbox's
    tools run on every call, the verifier's word check on the final answer as the reward."""
    prompts = out.parent / "data" / "agent_rl_prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rl_prompts(tool_world, online.agent_prompts,
                                                                           settings.seed)))
    steps = replace(online, steps=online.agent_steps, prompts_per_step=online.agent_prompts_per_step)
    return run_grpo(build(GRPOConfig, None, _common(settings, steps, model, prompts, out) +
                          _selection(online, "grpo") + [
        f"grpo.rewards={AGENT_REWARD}", f"grpo.group_size={online.agent_group_size}",
        f"grpo.max_new_tokens={online.agent_max_new_tokens}", f"grpo.max_turns={online.agent_max_turns}",
        f"train.lr={online.agent_lr}", "grpo.loss=dapo", "data.max_prompt_length=448"]),
        tools=sandbox_tools(tool_world))


def run_online_dpo_arm(settings: Any, online: OnlineSettings, model: Path, prompts: Path, out: Path) -> Any:
    return run_online_dpo(build(OnlineDPOConfig, None, _common(settings, online, model, prompts, out) +
                                _selection(online, "online_dpo") + [
        f"online_dpo.rewards={VERIFIER}", f"online_dpo.group_size={online.online_dpo_group}",
        f"online_dpo.max_new_tokens={online.max_new_tokens}", f"train.lr={online.online_dpo_lr}"]))


def run_reward_model(settings: Any, online: OnlineSettings, model: Path, pairs: Path, out: Path) -> Any:
    return run_reward(build(RewardConfig, None, [
        f"model.name_or_path={model}", f"data.train={pairs}", "data.max_length=256", "data.eval_fraction=0.1",
        f"train.output_dir={out}", f"train.epochs={online.rm_epochs}", f"train.lr={online.rm_lr}",
        "train.micro_batch_size=16", "train.resume=false", f"train.seed={settings.seed}",
        f"train.progress={settings.progress}", "train.log_every=5"]))


def rm_pair_accuracy(model_dir: Path, pairs: list[dict]) -> float:
    """Share of held-out-phrasing pairs whose chosen reply the reward model scores higher."""
    scorer = RewardScorer(model_dir)
    chosen, rejected = scorer.score_pairs([PreferencePair(tuple(Message(**m) for m in p["prompt"]), p["chosen"],
                                                          p["rejected"]) for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def after_sft(settings: Any, sft_model: Path, world: list, heldout_pairs: list[dict], evaluate: Any,
              report: dict, online: OnlineSettings | None = None, agent: tuple[list, Any] | None = None) -> dict:
    """Train every arm from ``sft_model`` and evaluate it with ``evaluate(model_dir) -> summary``; ``report``
    already holds the SFT ("tuned") and offline DPO ("tuned+dpo") summaries. ``agent``: (the tool world,
    ``evaluate_agent(model_dir) -> summary``) adds agentic GRPO, its summary under ``agent``."""
    online = online or OnlineSettings()
    data = settings.out / "data"
    prompts = write_prompts(data, world, online.prompts, settings.seed)
    arms: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        started = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - started
        return result

    grpo = timed("grpo", lambda: run_grpo_arm(settings, online, sft_model, prompts, settings.out / "grpo", VERIFIER))
    arms["grpo"] = evaluate(grpo.model_dir)
    online_dpo = timed("online_dpo", lambda: run_online_dpo_arm(settings, online, sft_model, prompts,
                                                                settings.out / "online_dpo"))
    arms["online_dpo"] = evaluate(online_dpo.model_dir)
    rm = timed("rm", lambda: run_reward_model(settings, online, sft_model, data / "pairs.jsonl", settings.out / "rm"))
    rm_accuracy = rm_pair_accuracy(rm.model_dir, heldout_pairs)
    grpo_rm = timed("grpo_rm", lambda: run_grpo_arm(settings, online, sft_model, prompts, settings.out / "grpo_rm",
                                                    f"rm:{rm.model_dir}"))
    arms["grpo_rm"] = evaluate(grpo_rm.model_dir)
    agent_grpo = None
    if agent is not None:
        tool_world, evaluate_agent = agent
        agent_grpo = timed("agent_grpo", lambda: run_agent_grpo_arm(settings, online, sft_model, tool_world,
                                                                    settings.out / "agent_grpo"))
    keys = ("heldout_phrasing_accuracy", "heldout_family_accuracy", "stop_rate")
    out = {"sft": {k: report["tuned"][k] for k in keys}}
    if "tuned+dpo" in report:
        out["dpo"] = {k: report["tuned+dpo"][k] for k in keys}
    for name, summary in arms.items():
        out[name] = {k: summary[k] for k in keys} | {"by_family": summary["by_family"]}
    last = lambda result: next((r for r in reversed(result.history) if "reward_mean" in r), {})  # noqa: E731
    out["rm_heldout_pair_accuracy"] = rm_accuracy
    out["training"] = {"grpo_reward_last": last(grpo).get("reward_mean"),
                       "online_dpo_reward_last": last(online_dpo).get("reward_mean"),
                       "grpo_rm_reward_last": last(grpo_rm).get("reward_mean"), "rm_eval": rm.eval_metrics,
                       "seconds": timings}
    runs = {"grpo": grpo, "grpo_rm": grpo_rm} | ({"agent_grpo": agent_grpo} if agent_grpo is not None else {})
    out["signal_share"] = {name: _mean_of(result.history, "signal_share") for name, result in runs.items()}
    out["swapped_share"] = {name: _mean_of(result.history, "swapped_share")
                            for name, result in (runs | {"online_dpo": online_dpo}).items()}
    if agent_grpo is not None:
        out["agent"] = evaluate_agent(agent_grpo.model_dir) | {
            "reward_last": last(agent_grpo).get("reward_mean"),
            "turns_per_episode": _mean_of(agent_grpo.history, "turns_per_episode")}
    out["settings"] = {k: getattr(online, k) for k in online.__dataclass_fields__}
    return out


def _mean_of(history: list[dict], key: str) -> float | None:
    values = [row[key] for row in history if key in row]
    return sum(values) / len(values) if values else None
