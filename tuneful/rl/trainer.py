"""GRPO on the shared training core (Shao et al. 2024, arXiv:2402.03300).

Each optimizer step's prompts come from the core's epoch plan; for them the current policy samples a
group of completions (batched generation with the KV cache, the template's stop tokens, a cap on new
tokens), the reward sources score them, and advantages are relative within each group. The loss is
the clipped surrogate (with an optional KL to a reference), aggregated with the normaliser the loss
type names over the *whole step* on every process — never per micro-batch. With ``iterations`` μ > 1
a sampled batch serves μ optimizer steps, the sampling policy's log-probs kept for the ratio. With
tools (``grpo.tools``) a sample is a multi-turn episode whose calls are run (:mod:`tuneful.infer.episodes`),
rewarded on its final answer, every policy turn trained in its own context. ``signal_share`` reports
the share of groups whose rewards differ (an all-equal group has zero advantage: it teaches nothing);
``dynamic_sampling`` steers the planned prompts towards those whose recent groups had signal
(:mod:`tuneful.rl.selection`).
The loop, checkpoints, resume and output are :mod:`tuneful.train.loop`'s.
"""

from __future__ import annotations

import copy
import random
import shutil
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import gather_object

from ..config import to_dict
from ..data.tool_parsers import PARSERS, parser_for_template
from ..infer.episodes import run_episodes
from ..infer.generate import generate
from ..infer.tools import Tools, load_tools
from ..models.head import probe_head
from ..models.layouts import probe_layouts
from ..train.loop import RunResult, Trainer, run
from .config import GRPOConfig
from .losses import clipped_policy_gradient
from .data import PreparedPrompts, prepare_prompts
from .rewards import CombinedReward
from .selection import SignalHistory
from .rollout import (CompletionInputs, CompletionLogps, RolloutBatch, SamplingSettings, completion_inputs,
                      sample_episode_groups, sample_groups, with_signal)


def aggregate_token_losses(token_losses: torch.Tensor, sequence: torch.Tensor, lengths: torch.Tensor, *, loss: str,
                           step_completions: int, step_tokens: int, max_new_tokens: int) -> torch.Tensor:
    """This micro-batch's share of the step loss: grpo = mean per completion, averaged over the step's
    completions; dapo = sum over tokens / the step's completion tokens (DAPO, Yu et al. 2025); dr_grpo =
    sum / (the step's completions x max_new_tokens) (Dr. GRPO, Liu et al. 2025)."""
    if loss == "grpo":
        per_completion = torch.zeros(len(lengths), dtype=token_losses.dtype, device=token_losses.device)
        per_completion = per_completion.index_add(0, sequence, token_losses) / lengths.clamp(min=1)
        return per_completion.sum() / max(1, step_completions)
    if loss == "dapo":
        return token_losses.sum() / max(1, step_tokens)
    if loss == "dr_grpo":
        return token_losses.sum() / max(1, step_completions * max_new_tokens)
    raise ValueError(f"unknown GRPO loss {loss!r}")


class GRPOTrainer(Trainer):
    """GRPO: ``micro_batches`` sample and return RolloutBatches (one per micro-batch of prompts)."""

    name = "grpo"

    def __init__(self, cfg: GRPOConfig, *, model: Any = None, tokenizer: Any = None, reward: Any = None,
                 tools: Tools | None = None):
        """``tools``: Python functions by name for multi-turn episodes (instead of ``grpo.tools``' file)."""
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.settings = self.section()
        self.updates_per_batch = self.settings.iterations
        self._reward_in = reward
        self._tools_in = tools
        self._rollout: tuple[int, list[RolloutBatch]] | None = None
        self.server: Any = None  # a VLLMServer with grpo.rollouts=vllm
        self._adapter: Path | None = None  # the adapter folder the server last loaded
        self.reference_module: Any = None
        self.reference_kind = self._reference_kind()

    def section(self) -> Any:
        """The objective's settings (sampling, rewards, reference, loss)."""
        return self.cfg.grpo

    def _reference_kind(self) -> str:
        if not self.settings.beta:
            return "none"
        chosen = self.settings.reference
        return chosen if chosen != "auto" else ("adapters-off" if self.cfg.lora.enabled else "frozen")

    # --- data, rewards, reference ---------------------------------------------------------------
    def prepare_data(self) -> None:
        self.data: PreparedPrompts = prepare_prompts(self.cfg.data, self.tokenizer, self.cfg.train.seed)
        self.reward = self._reward_in or CombinedReward(self.settings.rewards, self.settings.reward_weights,
                                                        device=str(self.acc.device))
        self.sampling = SamplingSettings(self.settings.group_size, self.settings.max_new_tokens,
                                         self.settings.temperature, self.settings.generation_batch_size,
                                         self.settings.scale_rewards)
        self.history = SignalHistory(self._signal_keys(), self.settings.revisit)
        self.tools: Tools = dict(self._tools_in or {})
        if getattr(self.settings, "tools", ""):
            self.tools.update(load_tools(Path(self.settings.tools)))
        self.parser = None
        if self.tools:
            syntax = parser_for_template(self.data.template.source)
            if syntax is None:
                raise ValueError(f"{self.name}.tools: the template {self.data.template.origin} prints no tool calls "
                                 "tuneful can parse, so the policy's calls could not be run. Fix: a tool-capable "
                                 "template (data.template=chatml, a model's own with tool calls) or no tools")
            self.parser = PARSERS[syntax]
        if self.settings.rollouts == "vllm":
            if self.acc.num_processes > 1:
                section = self.name.replace("-", "_")
                raise ValueError(f"{section}.rollouts=vllm runs in one process (every process would load its own "
                                 f"adapter into the one server). Fix: launch a single process, or "
                                 f"{section}.rollouts=engine")
            from ..infer.vllm_server import VLLMServer

            self.server = VLLMServer(self.settings.vllm_url)
            self._run_tag = uuid.uuid4().hex[:8]  # adapter names of an earlier (or resumed) run on the same server differ

    def _signal_keys(self) -> list[str]:
        """Each training prompt's key for dynamic sampling: its index, or the value of ``signal_key`` in its record."""
        name = self.settings.signal_key
        if not name:
            return [f"#{i}" for i in range(len(self.data.train))]
        missing = [i for i, record in enumerate(self.data.train) if name not in record.fields]
        if missing:
            raise ValueError(f"{self.name.replace('-', '_')}.signal_key={name}: {len(missing)} of "
                             f"{len(self.data.train)} prompt records have no field {name!r} (the first: record "
                             f"{missing[0]}). Fix: add it to every record, or signal_key= (each prompt on its own)")
        return [str(record.fields[name]) for record in self.data.train]

    def before_lora(self, model: Any) -> None:
        if self.reference_kind == "frozen":
            reference = copy.deepcopy(model).requires_grad_(False).eval()
            self.reference_module = CompletionLogps(reference, self.cfg.train.loss_chunk_size,
                                                    self.settings.temperature, head=self.head).to(self.acc.device)

    def fit_model(self, model: Any) -> None:
        """One row per group (the prompt encoded once) where the model keeps the completions apart in it
        (:mod:`tuneful.models.layouts`); else a row per completion. An explicit shared-prompt it cannot keep is
        refused by name."""
        self.head = probe_head(model)
        longest = self.cfg.data.max_prompt_length + self.settings.max_new_tokens
        problem = probe_layouts(model).shared_prompt_problem(longest, aux_loss=self.head.aux_coefficient is not None)
        if self.cfg.model.attn_implementation.startswith("flash"):
            problem = problem or f"attention '{self.cfg.model.attn_implementation}' takes no custom 4-D mask"
        layout, name = self.settings.layout, f"{self.name.replace('-', '_')}.layout"
        if layout == "shared-prompt" and problem:
            raise ValueError(f"{name}=shared-prompt: wrong for this model: {problem}. Fix: {name}=rows (or auto)")
        self.shared_prompt = layout == "shared-prompt" or (layout == "auto" and problem is None)

    def loss_module(self, model: Any) -> torch.nn.Module:
        return CompletionLogps(model, self.cfg.train.loss_chunk_size, self.settings.temperature, head=self.head)

    def item_lengths(self) -> list[int]:
        return [len(ids) for ids in self.data.train_ids]

    def micro_batch(self, items: list[int]) -> list[int]:
        return items

    def data_state(self) -> dict | None:
        """Each prompt key's recent signal (``dynamic_sampling``), so a resumed run chooses as the straight one."""
        return {"signal": self.history.state()} if self.settings.dynamic_sampling else None

    def restore_data_state(self, state: dict | None) -> None:
        self.history.restore((state or {}).get("signal"))

    # --- sampling ---------------------------------------------------------------------------------
    def _policy(self) -> Any:
        return self.acc.unwrap_model(self.module).model

    def _sync_server(self, cycle: int) -> None:
        """The server gets the policy as it is now: its LoRA adapter saved and loaded by path (the previous one
        unloaded and its folder removed)."""
        folder = Path(self.cfg.train.output_dir) / "vllm-adapters" / f"cycle-{cycle}"
        self._policy().save_pretrained(str(folder), safe_serialization=True)
        self.server.load_adapter(f"tuneful-policy-{self._run_tag}-{cycle}", str(folder))
        if self._adapter is not None and self._adapter != folder:
            shutil.rmtree(self._adapter, ignore_errors=True)
        self._adapter = folder

    def micro_batches(self, step: int) -> list[RolloutBatch]:
        cycle = step // self.updates_per_batch
        if self._rollout is None or self._rollout[0] != cycle:
            prompt_groups = super().micro_batches(step)
            seed = (self.cfg.train.seed * 1_000_003 + cycle) * 101 + self.acc.process_index
            swapped = [0] * len(prompt_groups)
            if self.settings.dynamic_sampling:
                prompt_groups, swapped = self.history.choose(prompt_groups, random.Random(seed))
            if self.server is not None:
                self._sync_server(cycle)
            with self.acc.autocast():
                if self.tools:
                    batches = sample_episode_groups(self._policy(), self.tokenizer, self.data.renderer, prompt_groups,
                                                    self.data.train, self.reward, self.tools, self.parser,
                                                    self.sampling, self.settings.max_turns, seed, server=self.server)
                else:
                    groups = sample_groups(self._policy(), self.tokenizer, prompt_groups, self.data.train_ids,
                                           self.data.train, self.reward, self.data.stop_ids, self.sampling, seed,
                                           server=self.server)
                    batches = [RolloutBatch(g, groups=len(p), groups_with_signal=with_signal(
                        [c.reward for c in g], self.sampling.group_size)) for g, p in zip(groups, prompt_groups)]
            self.module.train()  # generation switched the model to eval mode
            for batch, count in zip(batches, swapped):
                batch.swapped = count
            if self.settings.dynamic_sampling:  # every process remembers every process's groups
                self.history.record(gather_object([group for batch in batches for group in batch.group_rewards()]))
            if self.updates_per_batch > 1:  # the ratio's denominator: the sampling policy's log-probs
                for batch in batches:
                    batch.old_logps = self._logps(batch, self.module)
            self._rollout = (cycle, batches)
        return self._rollout[1]

    def inputs(self, batch: RolloutBatch) -> CompletionInputs:
        """The micro-batch laid out for the model: one row per group (the prompt encoded once) unless the
        attention kernel takes no block mask (flash-attention) or ``layout=rows``."""
        return completion_inputs(batch.completions, self.pad_token_id,
                                 shared_prompt=self.shared_prompt).to(self.acc.device)

    @torch.no_grad()
    def _logps(self, batch: RolloutBatch, module: Any, *, adapters_off: bool = False) -> torch.Tensor:
        """Per-token log-probs without a gradient: the sampling policy's (μ > 1) or the reference's."""
        inputs = self.inputs(batch)
        with self._policy().disable_adapter() if adapters_off else nullcontext(), self.acc.autocast():
            return module(**inputs.model_args()).float()

    # --- loss and metrics -------------------------------------------------------------------------
    def step_counts(self, micro: Sequence[RolloutBatch]) -> torch.Tensor:
        return torch.tensor([sum(len(b.completions) for b in micro), sum(b.tokens for b in micro)],
                            device=self.acc.device)

    def micro_loss(self, batch: RolloutBatch, counts: torch.Tensor):
        inputs = self.inputs(batch)
        with self.acc.autocast():
            logps = self.module(**inputs.model_args()).float()
        reference = None
        if self.reference_kind == "frozen":
            reference = self._logps(batch, self.reference_module)
        elif self.reference_kind == "adapters-off":
            reference = self._logps(batch, self.module, adapters_off=True)
        old = batch.old_logps if batch.old_logps is not None else logps.detach()
        terms = clipped_policy_gradient(logps, old, inputs.advantages[inputs.sequence],
                                        epsilon_low=self.settings.epsilon,
                                        epsilon_high=self.settings.epsilon_high or self.settings.epsilon,
                                        reference_logps=reference, beta=self.settings.beta,
                                        kl_ratio_correction=self.settings.kl_ratio_correction)
        loss = aggregate_token_losses(terms.token_losses, inputs.sequence, inputs.lengths, loss=self.settings.loss,
                                      step_completions=int(counts[0]), step_tokens=int(counts[1]),
                                      max_new_tokens=self.settings.max_new_tokens)
        # rewards once per sample: an episode's later turns carry the reward of its first
        rewards = torch.tensor([c.reward for c in batch.completions if c.turn == 0], device=self.acc.device)
        return loss, {"loss": loss.detach(), "reward": rewards.sum(), "reward_squared": (rewards ** 2).sum(),
                      "samples": torch.tensor(float(len(rewards))),
                      "stopped": torch.tensor(float(sum(c.stopped for c in batch.completions))),
                      "kl": terms.kl.sum(), "clipped": terms.clipped.float().sum(),
                      "groups": torch.tensor(float(batch.groups)),
                      "groups_with_signal": torch.tensor(float(batch.groups_with_signal)),
                      "swapped": torch.tensor(float(batch.swapped)),
                      "positions": torch.tensor(float(inputs.attention_mask.sum()))}

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        n, tokens, samples = max(1, int(counts[0])), max(1, int(counts[1])), max(1.0, sums["samples"])
        mean = sums["reward"] / samples
        metrics = {"loss": sums["loss"], "reward_mean": mean,
                   "reward_std": max(0.0, sums["reward_squared"] / samples - mean ** 2) ** 0.5,
                   "completion_length": tokens / n, "stop_rate": sums["stopped"] / n, "kl": sums["kl"] / tokens,
                   "clip_fraction": sums["clipped"] / tokens, "signal_share": sums["groups_with_signal"] /
                   max(1.0, sums["groups"]), "swapped_share": sums["swapped"] / max(1.0, sums["groups"]),
                   "grad_norm": grad_norm, "completions": int(counts[0]), "tokens": int(sums["positions"])}
        if self.tools:
            metrics["turns_per_episode"] = n / samples
        return metrics

    @torch.no_grad()
    def eval_metrics(self) -> dict:
        """Greedy replies to the held-out prompts: mean reward and stop rate (this process's share, reduced)."""
        mine = list(range(len(self.data.eval)))[self.acc.process_index :: self.world]
        total = torch.zeros(3, device=self.acc.device)
        if mine:
            with self.acc.autocast():
                if self.tools:
                    episodes = run_episodes(self._policy(), self.tokenizer, self.data.renderer, self.data.eval, mine,
                                            self.tools, self.parser, max_turns=self.settings.max_turns,
                                            max_new_tokens=self.settings.max_new_tokens,
                                            batch_size=self.settings.generation_batch_size, do_sample=False)
                    rewards = self.reward([e.transcript() for e in episodes], [e.final for e in episodes],
                                          [self.data.eval[i].fields for i in mine])
                    ended = [e.answered for e in episodes]
                else:
                    replies = generate(self._policy(), self.tokenizer, [self.data.eval_ids[i] for i in mine],
                                       stop_ids=self.data.stop_ids, max_new_tokens=self.settings.max_new_tokens,
                                       batch_size=self.settings.generation_batch_size)
                    rewards = self.reward([self.data.eval[i].messages for i in mine], [r.text for r in replies],
                                          [self.data.eval[i].fields for i in mine])
                    ended = [r.stopped for r in replies]
            total += torch.tensor([sum(rewards), sum(ended), len(mine)], device=self.acc.device)
        self.module.train()
        total = self.acc.reduce(total, reduction="sum")
        prompts = max(1.0, float(total[2]))
        return {"eval_reward": float(total[0]) / prompts, "eval_stop_rate": float(total[1]) / prompts}

    # --- output ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {"recipe": to_dict(self.cfg), "rewards": [s.name for s in getattr(self.reward, "sources", [])],
                "reference": self.reference_kind, **self.data.summary()}

def run_grpo(cfg: GRPOConfig, *, model: Any = None, tokenizer: Any = None, reward: Any = None,
             tools: Tools | None = None) -> RunResult:
    """setup → train → save."""
    return run(GRPOTrainer(cfg, model=model, tokenizer=tokenizer, reward=reward, tools=tools))
