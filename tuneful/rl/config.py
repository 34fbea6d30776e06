"""The GRPO recipe: the policy, prompt records, reward sources, the online objective and training.

Model, LoRA and training settings are the shared ones. ``train.micro_batch_size`` counts *prompts*
per forward pass (each with its ``grpo.group_size`` completions), so one optimizer step samples
micro_batch_size x grad_accum x processes prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..config import setting
from ..data.mixture import source_problems
from ..train.config import AfterSFTConfig, TrainSettings

GRPO_LOSSES = ("grpo", "dapo", "dr_grpo")
REWARD_SCALES = ("group", "none")
GRPO_REFERENCES = ("auto", "frozen", "adapters-off")
LAYOUTS = ("auto", "shared-prompt", "rows")
ROLLOUTS = ("engine", "vllm")


@dataclass
class PromptDataSettings:
    train: str = setting("", "Prompt records: file or Hugging Face id; 'messages' or 'prompt', optional 'tools', "
                             "other fields go to the reward functions.")
    eval: str = setting("", "Held-out prompts: mean reward of greedy replies; empty = split eval_fraction off train.")
    eval_fraction: float = setting(0.0, "Share of prompts held out when data.eval is empty.")
    on_error: str = setting("fail", "fail on a bad record, or skip it (skips are counted and reported).")
    template: str = setting("tokenizer", "Chat template: 'tokenizer' (its own: the SFT model's), a built-in name, "
                                         "or a .jinja file.")
    allow_template_change: bool = setting(False, "Confirm a template that differs from the tokenizer's own.")
    tokenizer: str = setting("", "Tokenizer folder/id; empty = the model's.")
    max_prompt_length: int = setting(512, "Prompts longer than this (in tokens) are dropped and counted.")

    def check(self) -> list[str]:
        problems = source_problems(self)
        if self.max_prompt_length < 1:
            problems.append(f"max_prompt_length: {self.max_prompt_length} must be >= 1")
        return problems


@dataclass
class PromptSelectionSettings:
    """Which prompts an online step samples (:mod:`tuneful.rl.selection`); shared by GRPO and online DPO."""

    dynamic_sampling: bool = setting(False, "Swap a planned prompt whose last group's rewards were all equal (all "
                                            "passed or all failed: no gradient) for one whose recent groups differed, "
                                            "drawn by that signal rate (DAPO's dynamic sampling, without extra "
                                            "generation).")
    signal_key: str = setting("", "With dynamic_sampling: a prompt-record field whose value groups prompts (e.g. a "
                                  "task family); the group's recent signal steers, so a run shorter than an epoch "
                                  "(no prompt met twice) still steers. Empty = each prompt on its own history.")
    revisit: float = setting(0.1, "With dynamic_sampling: the least chance a prompt is kept or drawn, however rarely its "
                                  "groups had signal (the policy moves).")

    def selection_problems(self) -> list[str]:
        problems = [] if 0 <= self.revisit <= 1 else [f"revisit: {self.revisit} must be in [0, 1]"]
        if self.signal_key and not self.dynamic_sampling:
            problems.append(f"signal_key={self.signal_key} is read only with dynamic_sampling=true: set both, or "
                            "neither")
        return problems


@dataclass
class RolloutSettings:
    """What samples an online step's completions (:mod:`tuneful.infer.vllm_server`); shared by GRPO and online DPO."""

    rollouts: str = setting("engine", "What samples the completions: engine (tuneful's, on the policy itself) or vllm "
                                      "(a running vLLM server at vllm_url, handed the policy's LoRA adapter before each "
                                      "sampling; needs lora.enabled).")
    vllm_url: str = setting("", "With rollouts=vllm: the server's address, e.g. http://127.0.0.1:8000 (started with "
                                "vllm serve BASE --enable-lora --max-lora-rank R and "
                                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")

    def rollout_problems(self) -> list[str]:
        problems = [] if self.rollouts in ROLLOUTS else [f"rollouts: {self.rollouts!r} is not one of {', '.join(ROLLOUTS)}"]
        if self.rollouts == "vllm" and not self.vllm_url:
            problems.append("vllm_url: rollouts=vllm needs the server's address, e.g. vllm_url=http://127.0.0.1:8000")
        return problems


def vllm_lora_problems(section: str, rollouts: str, lora: Any) -> list[str]:
    """Rollouts on a vLLM server take the policy as a plain LoRA adapter on the unmodified base."""
    if rollouts != "vllm":
        return []
    if not lora.enabled:
        return [f"{section}.rollouts=vllm: the policy reaches the server as a LoRA adapter (vLLM's HTTP API loads "
                f"adapters; full weights need its NCCL/CUDA-IPC transfer). Fix: lora.enabled=true, or "
                f"{section}.rollouts=engine"]
    if lora.qlora or lora.dora or lora.init in ("pissa", "olora"):
        return [f"{section}.rollouts=vllm: the server applies a plain LoRA adapter to the unmodified base, which "
                f"lora.qlora, lora.dora and lora.init=pissa/olora are not. Fix: plain LoRA, or {section}.rollouts=engine"]
    return []


@dataclass
class GRPOSettings(PromptSelectionSettings, RolloutSettings):
    rewards: list[str] = setting([], "Reward sources: python:MODULE:FUNCTION (or FILE.py:FUNCTION), rm:FOLDER "
                                     "(tuneful rm train), judge:MODEL@BASE_URL (OpenAI-compatible).")
    reward_weights: list[float] = setting([], "One weight per reward source; empty = 1 each.")
    group_size: int = setting(8, "Completions sampled per prompt; advantages are relative within the group.")
    max_new_tokens: int = setting(128, "Cap on each completion's length (a capped completion has no end-of-turn).")
    temperature: float = setting(1.0, "Sampling temperature of the completions.")
    loss: str = setting("dapo", "Token-loss aggregation: grpo (mean per completion, then over completions), dapo "
                                "(sum over the step's completion tokens / their count), dr_grpo (/ completions x "
                                "max_new_tokens).")
    scale_rewards: str = setting("group", "Divide advantages by the group's std (group) or not (none, Dr. GRPO).")
    epsilon: float = setting(0.2, "Clip range below 1 of the ratio π/π_old.")
    epsilon_high: float = setting(0.0, "Clip range above 1; 0 = epsilon (DAPO's clip-higher uses 0.28).")
    beta: float = setting(0.0, "Weight of the KL to the reference policy; 0 = no reference (no extra forward).")
    kl_ratio_correction: bool = setting(True, "Weight the KL term by π/π_old (DeepSeek-V3.2): the unbiased reverse-KL "
                                              "gradient for tokens drawn from π_old.")
    reference: str = setting("auto", "Reference for beta > 0: frozen (a copy of the start), adapters-off (LoRA), "
                                     "auto (adapters-off with LoRA, else frozen).")
    iterations: int = setting(1, "Optimizer steps per sampled batch (μ); above 1 the clip starts to act. A resume "
                                 "inside a μ-cycle samples that cycle afresh.")
    generation_batch_size: int = setting(64, "Sequences generated together (KV cache, left-padded batches).")
    layout: str = setting("auto", "How a group meets the model in training: shared-prompt (one row, the prompt "
                                  "encoded once), rows (a row per completion), auto (shared-prompt unless "
                                  "flash-attention, which takes no block mask).")
    tools: str = setting("", "A Python file whose public functions are tools (the chat --tools convention): each "
                             "sample is then a multi-turn episode — the calls the policy makes are run and their "
                             "results handed back until it answers — rewarded on its final answer.")
    max_turns: int = setting(4, "Policy turns in an episode (with tools); a turn that still calls a tool at the cap "
                                "ends the episode unanswered.")

    def check(self) -> list[str]:
        problems = self.selection_problems()
        if not self.rewards:
            problems.append("rewards: required; e.g. grpo.rewards=python:my_rewards.py:correct")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            problems.append(f"reward_weights: {len(self.reward_weights)} weight(s) for {len(self.rewards)} reward(s)")
        if self.group_size < 2:
            problems.append(f"group_size: {self.group_size}; advantages compare completions of one prompt, so >= 2")
        if self.max_new_tokens < 1 or self.generation_batch_size < 1 or self.iterations < 1:
            problems.append("max_new_tokens, generation_batch_size and iterations must be >= 1")
        if self.temperature <= 0:
            problems.append(f"temperature: {self.temperature}; online methods sample, so > 0")
        if self.loss not in GRPO_LOSSES:
            problems.append(f"loss: {self.loss!r} is not one of {', '.join(GRPO_LOSSES)}")
        if self.scale_rewards not in REWARD_SCALES:
            problems.append(f"scale_rewards: {self.scale_rewards!r} is not one of {', '.join(REWARD_SCALES)}")
        if not 0 < self.epsilon < 1 or self.epsilon_high < 0:
            problems.append("epsilon must be in (0, 1) and epsilon_high >= 0")
        if self.beta < 0:
            problems.append(f"beta: {self.beta} must be >= 0")
        if self.layout not in LAYOUTS:
            problems.append(f"layout: {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.max_turns < 1:
            problems.append(f"max_turns: {self.max_turns} must be >= 1")
        if self.tools and not Path(self.tools).is_file():
            problems.append(f"tools: {self.tools} is not a file; give a Python file defining the tools")
        if self.reference not in GRPO_REFERENCES:
            problems.append(f"reference: {self.reference!r} is not one of {', '.join(GRPO_REFERENCES)}")
        return problems + self.rollout_problems()


@dataclass
class GRPOTrainSettings(TrainSettings):
    output_dir: str = setting("runs/grpo", "Where checkpoints, logs and the model go.")
    micro_batch_size: int = setting(2, "Prompts per forward pass, each with its group of completions.")
    lr: float = setting(1e-6, "Peak learning rate (online RL wants low rates).")
    warmup_ratio: float = setting(0.0, "Share of steps with linear warm-up.")
    schedule: str = setting("constant", "Learning-rate schedule after warm-up: cosine, linear or constant.")


@dataclass
class GRPOConfig(AfterSFTConfig):
    """A GRPO run; ``check`` collects every problem at once."""

    data: PromptDataSettings = field(default_factory=PromptDataSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    train: GRPOTrainSettings = field(default_factory=GRPOTrainSettings)
    method: ClassVar[str] = "GRPO"
    reference_section: ClassVar[str | None] = "grpo"
    layout_setting: ClassVar[str] = "grpo.layout"

    def check(self) -> list[str]:
        return super().check() + vllm_lora_problems("grpo", self.grpo.rollouts, self.lora)
