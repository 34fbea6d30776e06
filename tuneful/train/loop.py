"""The one training loop every trainer runs on (SFT, DPO, KTO, reward models, GRPO, online DPO).

A trainer is its data preparation, its loss over a micro-batch and its metrics; this module owns the
rest: accelerator and precision, model + LoRA set-up, optimizer and schedule, the step loop
(micro-batches → loss → normalised accumulation → clip → step → log / eval / save cadence),
checkpoints and exact resume, and the output folder. Plain PyTorch + transformers + peft +
accelerate; no ``transformers.Trainer``.

Normalisation is the trainer's to state and the loop's to apply uniformly: before any backward, the
loop sums the trainer's step counts (trained tokens, pairs, ...) over every micro-batch of the step
on every process, and each micro-batch's loss is divided by those global counts. Accumulation and
data parallelism therefore give the gradient of one big batch.

Under DeepSpeed ZeRO (stages 1–2, ``zero.py``) the same rules hold: the loop marks the accumulation
boundary and DeepSpeed's engine does the clip and the step.

A run reads top to bottom: ``run(trainer)`` is setup → train → save.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import to_dict
from ..models.loading import add_neftune, add_token_rows, apply_lora, load_model, save_initial_adapter
from ..tokenization.masking import load_tokenizer, pad_id
from ..tokenization.plan import plan_epoch
from .checkpoint import OptimizerPartitions, data_state_of, latest_checkpoint, save_checkpoint
from .components import lr_scheduler, make_accelerator, make_optimizer, resume_step, step_counts
from .metrics import MetricsLog, Progress
from .output import save_final
from .sharding import as_float, full_model_state, shard
from .trackers import open_trackers
from .zero import configure_zero, uses_deepspeed, zero_step


@dataclass
class RunResult:
    """What every run returns: its steps, last and held-out metrics, where it wrote, and what the trainer adds
    (``details``: e.g. the reference policy a preference run used)."""

    steps: int
    final_loss: float | None
    eval_metrics: dict | None
    output_dir: Path
    train_seconds: float = 0.0
    model_dir: Path | None = None
    history: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def eval_loss(self) -> float | None:
        return (self.eval_metrics or {}).get("eval_loss")


class Trainer(ABC):
    """One run's state. ``model``/``tokenizer`` may be passed in (tests, notebooks).

    A subclass sets ``name`` and ``packing`` and implements the hooks below; ``self.data`` (set by
    :meth:`prepare_data`) must carry ``template`` and ``end_of_turn_ids`` for the output folder.
    """

    name = "train"
    packing = False  # whether the epoch plan packs items (rows of several examples) or groups them by length
    new_token_ids: list[int] = []  # tokens the trainer added to the tokenizer (the model grows to match)
    lora_task_type = "CAUSAL_LM"  # peft's task type: SEQ_CLS also trains the new score head in full
    updates_per_batch = 1  # optimizer steps taken on each planned batch (GRPO's μ reuses a sampled batch)
    supports_fsdp = False  # whether the trainer's model set-up, batches and evaluation are wired for train.fsdp
    sharded = False  # train.fsdp in effect (several processes)
    zero_stage = 0  # DeepSpeed ZeRO's stage when launched with DeepSpeed (1 or 2), else 0
    fillers = 0  # trailing micro-batches of this process's step that only keep the processes' collectives in step
    # Shared pieces a trainer holds (a reference policy, ...): the loop calls each one's fit_model(trainer, model),
    # before_lora(trainer, model) and after_prepare(trainer) right after the trainer's own hook of that name.
    parts: Sequence[Any] = ()

    def __init__(self, cfg: Any, *, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg
        self._model_in, self._tokenizer_in = model, tokenizer
        self.out = Path(cfg.train.output_dir)

    # --- what a trainer supplies ----------------------------------------------------------------
    @abstractmethod
    def prepare_data(self) -> None:
        """Load, check and tokenize the data into ``self.data`` (everything before the model)."""

    def load_base_model(self) -> Any:
        """The starting weights (a causal LM; a reward model loads a sequence-classification head instead)."""
        return load_model(self.cfg.model, quantize_4bit=self.cfg.lora.qlora)

    def fit_model(self, model: Any) -> None:
        """Choose what depends on the architecture (batch layouts, the head) from the loaded model, before any
        batch is built: probes in :mod:`tuneful.models`."""

    def before_lora(self, model: Any) -> None:
        """Work on the starting weights, before adapters are added (e.g. a precomputed reference)."""

    @abstractmethod
    def loss_module(self, model: Any) -> torch.nn.Module:
        """The module whose forward computes this trainer's per-micro-batch quantities (wraps ``model``)."""

    def after_prepare(self) -> None:
        """Set-up that needs the prepared (wrapped, placed) module."""

    def data_state(self) -> dict | None:
        """What a checkpoint must hold besides the step to resume the data exactly (a stream's position)."""
        return None

    def restore_data_state(self, state: dict | None) -> None:
        """Continue the data from a checkpoint's :meth:`data_state`."""

    @abstractmethod
    def item_lengths(self) -> list[int]:
        """One length per planned item (a row of examples, a pair): what batching balances."""

    def micro_batch(self, items: list[int]) -> Any:
        """What :meth:`step_counts` and :meth:`micro_loss` receive for a micro-batch of item indices (by default
        the indices themselves: the preference trainers collate inside their loss)."""
        return items

    @abstractmethod
    def step_counts(self, micro: Sequence[Any]) -> torch.Tensor:
        """This process's normalisers for the step (e.g. trained tokens); the loop sums them over processes."""

    @abstractmethod
    def micro_loss(self, batch: Any, counts: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the micro-batch's loss normalised by the step's global ``counts``, named sums — scalar tensors — that
        the loop adds up over the step's micro-batches and processes for :meth:`step_metrics`). The loop scales
        the loss by the world size (DDP averages gradients over processes; the step's loss is their sum)."""

    def aux_weight(self, batch: Any, counts: torch.Tensor, micro_batches: int) -> float:
        """This micro-batch's share of the step, for the model's own MoE load-balancing loss (added as the model's
        forward adds it, once per micro-batch): by default each of the step's ``micro_batches`` (all processes)
        counts alike; SFT weighs by trained tokens, as it normalises its main loss."""
        return 1.0 / max(1, micro_batches)

    @abstractmethod
    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        """The step's metrics from :meth:`micro_loss`'s sums over every micro-batch and process; needs "loss" and
        "tokens"."""

    @abstractmethod
    def eval_metrics(self) -> dict:
        """Held-out metrics ("eval_loss", ...); called only when ``self.data.eval`` is non-empty."""

    @abstractmethod
    def summary(self) -> dict:
        """What ``tuneful.json`` in the output folder records besides the history."""

    def result_details(self) -> dict:
        """What the run's :class:`RunResult` records besides what every run has."""
        return {}

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        cfg = self.cfg
        self.acc = make_accelerator(cfg.model.dtype, cfg.train.seed, cfg.train.threads)
        self.tokenizer = self._tokenizer_in or load_tokenizer(cfg.data.tokenizer or cfg.model.name_or_path,
                                                              trust_remote_code=cfg.model.trust_remote_code)
        self.prepare_data()
        model = self._model_in if self._model_in is not None else self.load_base_model()
        if self.new_token_ids:
            add_token_rows(model, len(self.tokenizer), self.new_token_ids)
        self.fit_model(model)
        for part in self.parts:
            part.fit_model(self, model)
        self.before_lora(model)
        for part in self.parts:
            part.before_lora(self, model)
        self.initial_adapter: Path | None = None
        if cfg.lora.enabled:
            model = apply_lora(model, cfg.lora, self.new_token_ids, task_type=self.lora_task_type)
            if cfg.lora.init in ("pissa", "olora"):  # they rewrite the base: keep the start to convert against
                self.initial_adapter = self.out / "initial_adapter"
                save_initial_adapter(model, self.initial_adapter, is_main=self.acc.is_main_process)
        if cfg.train.neftune_alpha:
            add_neftune(model, cfg.train.neftune_alpha)
        self.world = self.acc.num_processes
        self.zero_stage = configure_zero(self.acc, cfg.train, self.world) if uses_deepspeed(self.acc) else 0
        self.sharded = self._sharding(cfg.train.fsdp)
        self.model = model
        module = self.loss_module(model)
        if self.sharded:
            shard(module, self.acc.device)  # before the optimizer: it must hold the sharded parameters
        optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay,
                                   cfg.lora.plus_lr_ratio if cfg.lora.enabled else 1.0,
                                   fused=not (self.sharded or self.zero_stage))

        self.lengths = self.item_lengths()
        self._plan: tuple[int, list[list[int]]] | None = None
        self.steps_per_epoch, self.total_steps = step_counts(len(self.lengths), cfg.train, self.world,
                                                             self.updates_per_batch)
        if self.sharded:  # already distributed: accelerate must not wrap it in DDP as well
            self.module, self.optimizer = module, self.acc.prepare(optimizer)
        else:  # DDP, or under DeepSpeed its engine (self.module) and ZeRO optimizer
            self.module, self.optimizer = self.acc.prepare(module, optimizer)
        # after prepare: DeepSpeed drops empty parameter groups (LoRA leaves the no-decay one empty) from the
        # optimizer, and the schedule must cover the groups that remain
        self.scheduler = lr_scheduler(optimizer, warmup_ratio=cfg.train.warmup_ratio, total=self.total_steps,
                                      kind=cfg.train.schedule)
        self.after_prepare()
        for part in self.parts:
            part.after_prepare(self)
        self.start_step = resume_step(self.acc, self.out, cfg.train.resume, self.model, self.optimizer, self.scheduler,
                                      sharded=self.sharded, partitions=self._partitions(), recipe=to_dict(cfg),
                                      force=cfg.train.resume_force)
        if self.start_step:
            self.restore_data_state(data_state_of(latest_checkpoint(self.out / "checkpoints")))
        return self

    def _sharding(self, fsdp: bool) -> bool:
        """Whether to shard (train.fsdp with several processes); a trainer not wired for it is refused by name."""
        if not fsdp:
            return False
        if not self.supports_fsdp:
            raise ValueError(f"train.fsdp: the {self.name} trainer is not wired for FSDP yet (SFT of causal LMs is); "
                             "set train.fsdp=false and use DDP (accelerate launch without FSDP)")
        if self.world == 1:
            self.acc.print("train.fsdp: one process, nothing to shard; training unsharded")
        return self.world > 1

    def _partitions(self) -> OptimizerPartitions | None:
        """How a ZeRO optimizer's state is split over the processes (None: it is whole, or gathered whole)."""
        if not self.zero_stage:
            return None
        return OptimizerPartitions(self.acc.process_index, self.world, self.acc.wait_for_everyone)

    @property
    def pad_token_id(self) -> int:
        """The padding id of every batch (the one padding rule: :func:`tuneful.tokenization.masking.pad_id`)."""
        return pad_id(self.tokenizer)

    # --- batches --------------------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[Any]:
        """This process's micro-batches for optimizer step ``step``: a pure function of it."""
        cfg = self.cfg.train
        epoch, within = divmod(step // self.updates_per_batch, self.steps_per_epoch // self.updates_per_batch)
        if self._plan is None or self._plan[0] != epoch:  # the plan depends on the epoch only
            self._plan = (epoch, plan_epoch(self.lengths, cfg.micro_batch_size, cfg.seed, epoch, self.packing))
        per_step = cfg.grad_accum * self.world
        chosen = self._plan[1][within * per_step : (within + 1) * per_step]
        mine = chosen[self.acc.process_index :: self.world]
        # Sharded (and under ZeRO-2, whose backward reduces gradients), every forward or backward is a collective:
        # every process must run as many as the busiest one, so the short ones repeat a micro-batch that counts
        # for nothing (its loss is multiplied by 0).
        lockstep = self.sharded or self.zero_stage
        self.fillers = -(-len(chosen) // self.world) - len(mine) if lockstep else 0
        return [self.micro_batch(items) for items in mine + chosen[:1] * self.fillers]

    # --- loop -----------------------------------------------------------------------------------
    def train(self) -> Any:
        cfg = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        trackers = open_trackers(cfg.report_to, self.out, self.out.name, to_dict(self.cfg)) \
            if self.acc.is_main_process else []
        log = self.metrics_log = MetricsLog(self.out / "metrics.jsonl", self.start_step,
                                            enabled=self.acc.is_main_process, trackers=trackers)
        bar = Progress(self.total_steps, self.start_step, enabled=cfg.progress and self.acc.is_main_process,
                       desc=self.name)
        self.module.train()
        last_loss, eval_metrics, train_seconds = None, None, 0.0
        for step in range(self.start_step, self.total_steps):
            started = time.perf_counter()
            batches = self.micro_batches(step)
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
            last_loss, metrics = self._optimizer_step(batches)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            row = {"step": step + 1, **metrics, "lr": lr, "tok_s": metrics["tokens"] / seconds}
            if "trained_tokens" in metrics:
                row["trained_tok_s"] = metrics["trained_tokens"] / seconds
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
                log.write(row)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and self.data.eval:
                eval_metrics = self.eval_metrics()
                log.write({"step": step + 1, **eval_metrics})
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < self.total_steps:
                self.acc.wait_for_everyone()
                # sharded: every process joins the gathering; ZeRO: every process writes its optimizer partition
                if self.sharded or self.zero_stage or self.acc.is_main_process:
                    save_checkpoint(self.out / "checkpoints", step + 1, self.model, self.optimizer, self.scheduler,
                                    sharded=self.sharded, write=self.acc.is_main_process,
                                    data_state=self.data_state(), partitions=self._partitions(),
                                    recipe=to_dict(self.cfg))
                self.acc.wait_for_everyone()
            bar.update(last_loss, row["tok_s"])
        bar.close()
        if self.data.eval and (not cfg.eval_every or self.total_steps % cfg.eval_every):
            eval_metrics = self.eval_metrics()
            log.write({"step": self.total_steps, **eval_metrics})
        return RunResult(self.total_steps, last_loss, eval_metrics, self.out, train_seconds, history=log.rows,
                         details=self.result_details())

    def _optimizer_step(self, micro: Sequence[Any]) -> tuple[float, dict]:
        """One optimizer step over this process's micro-batches: (the step's loss, its metrics)."""
        real = len(micro) - self.fillers
        counts = self.acc.reduce(self.step_counts(micro[:real]), reduction="sum")
        micro_batches = int(self.acc.reduce(torch.tensor(real, device=self.acc.device), reduction="sum"))
        tally, aux_sum = None, torch.zeros(2, device=self.acc.device)  # the MoE loss's sum and micro-batches
        core = self.acc.unwrap_model(self.module)
        for k, batch in enumerate(micro):
            sync = k == len(micro) - 1
            if self.zero_stage:  # DeepSpeed's engine: the boundary is ours, the loss already normalised
                self.module.set_gradient_accumulation_boundary(sync)
                loss, parts = self._with_aux(core, batch, counts, micro_batches, aux_sum if k < real else None)
                self.module.backward(loss if k < real else loss * 0.0, scale_wrt_gas=False)
            else:
                with self.acc.no_sync(self.module) if not sync else nullcontext():
                    loss, parts = self._with_aux(core, batch, counts, micro_batches, aux_sum if k < real else None)
                    self.acc.backward(loss if k < real else loss * 0.0)
            if k < real:
                parts = {name: value.detach().float().to(self.acc.device) for name, value in parts.items()}
                tally = parts if tally is None else {name: tally[name] + value for name, value in parts.items()}
        if tally is None:  # a process with only fillers: its share of the sums is zero
            tally = {name: torch.zeros((), device=self.acc.device) for name in parts}
        max_norm = self.cfg.train.max_grad_norm
        if self.zero_stage:
            grad_norm = zero_step(self.module, max_norm)  # clip, step, zero the gradients
        else:
            grad_norm = 0.0
            if max_norm > 0:
                grad_norm = as_float(self.acc.clip_grad_norm_(self.model.parameters(), max_norm))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        names = sorted(tally)  # one reduction for every sum, in the same order on every process
        summed = self.acc.reduce(torch.stack([tally[name] for name in names]), reduction="sum")
        metrics = self.step_metrics(dict(zip(names, summed.tolist())), counts, grad_norm)
        aux_sum = self.acc.reduce(aux_sum, reduction="sum")
        if float(aux_sum[1]):
            metrics["aux_loss"] = float(aux_sum[0] / aux_sum[1])  # coefficient x the model's aux, per micro-batch
        return metrics["loss"], metrics

    def _with_aux(self, core: Any, batch: Any, counts: torch.Tensor, micro_batches: int, aux_sum: torch.Tensor | None):
        """The trainer's micro-batch loss plus the model's own MoE load-balancing loss of that forward (if any),
        weighted by :meth:`aux_weight`; scaled by the world size, once for every trainer: DDP averages gradients
        over processes, and the step's loss is their sum."""
        loss, parts = self.micro_loss(batch, counts)
        aux = core.pop_aux() if hasattr(core, "pop_aux") else None
        if aux is not None:
            loss = loss + aux * self.aux_weight(batch, counts, micro_batches)
            if aux_sum is not None:  # a filler's forward only keeps the collectives in step
                aux_sum += torch.stack([aux.detach().float(), torch.ones((), device=aux.device)])
        return loss * self.world, parts

    # --- output ---------------------------------------------------------------------------------
    def final_model(self) -> tuple[Any, bool]:
        """(what the output folder holds, whether it is a LoRA adapter)."""
        return self.acc.unwrap_model(self.module).model, self.cfg.lora.enabled

    def save(self, result: Any) -> Path:
        """The final model folder (model or adapter, tokenizer with the template, stop tokens, tuneful.json)."""
        self.acc.wait_for_everyone()
        target = self.out / "model"
        full_state = None
        if self.sharded:  # gathered to full tensors by every process, written by the main one
            full_state = full_model_state(self.final_model()[0])
        if self.acc.is_main_process:
            model, lora = self.final_model()
            save_final(target, model, self.tokenizer,
                       template_source=self.data.template.source, end_of_turn_ids=self.data.end_of_turn_ids,
                       summary={**self.summary(), "distributed": self._distributed()},
                       history=result.history, lora=lora,
                       initial_adapter=self.initial_adapter if lora else None, state_dict=full_state)
            self.metrics_log.finish([target / "tuneful.json", self.out / "loss.png"])
        self.acc.wait_for_everyone()  # no process finishes while the main one is still writing
        result.model_dir = target
        return target


    def _distributed(self) -> dict:
        shown = {"processes": self.world, "fsdp": self.sharded}
        return {**shown, "deepspeed_zero_stage": self.zero_stage} if self.zero_stage else shown


def run(trainer: Trainer) -> Any:
    """setup → train → save."""
    trainer.setup()
    try:
        result = trainer.train()
        trainer.save(result)
    finally:
        # Exiting with a live gloo/NCCL process group can abort a process at interpreter shutdown
        # ("terminate called without an active exception") after a successful run.
        trainer.acc.end_training()
    return result
