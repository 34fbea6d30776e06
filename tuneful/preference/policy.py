"""The policy and its reference π_ref over pair-shaped items, for every trainer that compares the two (DPO, KTO).

An item is a prompt and two replies in one forward pass (DPO: chosen and rejected; KTO: the labelled reply and a
reply written for another prompt). :class:`PairedPolicy` is the part such a trainer holds: the batch layout chosen
for the model, the reference policy (frozen, adapters-off or precomputed: :mod:`tuneful.preference.reference`) and
the response log-probs of a micro-batch. It knows the trainer only through what the shared loop gives every
trainer (``acc``, ``out``, ``data`` with ``train``/``eval``, the padding id), so it imports nothing from
:mod:`tuneful.train`; the loop calls its ``fit_model``/``before_lora``/``after_prepare`` hooks as a part.
"""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Any, Sequence

import torch

from ..models.head import probe_head
from ..models.layouts import LayoutSupport, probe_layouts
from ..models.loading import load_model
from ..models.settings import ModelSettings
from .pairs import COLLATORS, PreferenceExample
from .prepare import pair_length
from .reference import (ModelReference, PrecomputedReference, ResponseLogps, cached_reference, model_fingerprint,
                        pairs_fingerprint, reference_logps)


def resolve_pair_layout(cfg: Any, support: LayoutSupport | None = None, *, aux_loss: bool = False) -> str:
    """``train.pair_layout``, with ``auto`` resolved for the model: shared-prompt where one row keeps the two replies
    apart in it (:mod:`tuneful.models.layouts`), else two-rows. An explicit shared-prompt the model cannot keep is
    refused by name."""
    problem = support.shared_prompt_problem(cfg.data.max_length, aux_loss=aux_loss) if support is not None else None
    if cfg.train.pair_layout == "shared-prompt" and problem:
        raise ValueError(f"train.pair_layout=shared-prompt: wrong for this model: {problem}. Fix: "
                         "train.pair_layout=two-rows (or auto, which picks it)")
    if cfg.train.pair_layout != "auto":
        return cfg.train.pair_layout
    if cfg.model.attn_implementation.startswith("flash") or problem:
        return "two-rows"
    return "shared-prompt"


def pair_cost(example: PreferenceExample, layout: str) -> int:
    """Positions a pair occupies in a batch of ``layout`` (what length-grouping should balance)."""
    if layout == "shared-prompt":
        return len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)
    return pair_length(example)


class PairLayout:
    """The batch layout of a run's pairs: ``train.pair_layout`` resolved for the model when the loop fits it
    (``fit_model``, before any batch is planned). A loop part of every pair trainer — DPO and KTO hold it in
    :class:`PairedPolicy`, the reward model alone — so the choice is made once, in one place."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.name: str | None = None  # shared-prompt or two-rows, once fitted

    def fit_model(self, trainer: Any, model: Any, *, aux_loss: bool = False) -> None:
        self.name = resolve_pair_layout(self.cfg, probe_layouts(model), aux_loss=aux_loss)

    def before_lora(self, trainer: Any, model: Any) -> None:  # the loop's other part hooks: nothing to do
        pass

    def after_prepare(self, trainer: Any) -> None:
        pass

    def collate(self, examples: Sequence[PreferenceExample], pad_id: int) -> Any:
        return COLLATORS[self.name](examples, pad_id)

    def costs(self, examples: Sequence[PreferenceExample]) -> list[int]:
        return [pair_cost(e, self.name) for e in examples]


def resolve_reference(settings: Any, *, needs_reference: bool, lora: bool) -> str:
    """The reference policy a run uses: ``settings`` is the objective section (reference, reference_model)."""
    if settings.reference != "auto":
        return settings.reference
    if not needs_reference:
        return "none"
    return "adapters-off" if lora and not settings.reference_model else "precomputed"


class PairedPolicy:
    """The policy's and the reference's response log-probs over pair-shaped items of one run.

    ``settings``: the objective section (``reference``, ``reference_model``, ``precompute_batch_size``);
    ``reference_model``: a reference passed in (tests, notebooks) instead of loaded.
    """

    def __init__(self, cfg: Any, settings: Any, *, needs_reference: bool, reference_model: Any = None):
        self.cfg, self.settings = cfg, settings
        self.kind = resolve_reference(settings, needs_reference=needs_reference, lora=cfg.lora.enabled)
        self.pairs = PairLayout(cfg)
        self.head: Any = None
        self.reference: Any = None
        self.cached, self.precompute_seconds = False, 0.0
        self._reference_in = reference_model

    # --- the loop's part hooks ----------------------------------------------------------------------
    def fit_model(self, trainer: Any, model: Any) -> None:
        self.head = probe_head(model)
        self.pairs.fit_model(trainer, model, aux_loss=self.head.aux_coefficient is not None)

    @property
    def layout(self) -> str | None:
        return self.pairs.name

    def before_lora(self, trainer: Any, model: Any) -> None:
        if self.kind == "precomputed":  # from the starting weights, before LoRA and before any resume
            self.reference = self._precompute(trainer, model)
        elif self.kind == "frozen":
            ref_model = self._reference_model() or copy.deepcopy(model)
            ref_model.requires_grad_(False)
            ref_module = ResponseLogps(ref_model, self.cfg.train.loss_chunk_size).to(trainer.acc.device)
            self.reference = ModelReference(ref_module, adapters_off=False, autocast=trainer.acc.autocast)

    def after_prepare(self, trainer: Any) -> None:
        if self.kind == "adapters-off":
            self.reference = ModelReference(trainer.acc.unwrap_model(trainer.module), adapters_off=True,
                                            autocast=trainer.acc.autocast)

    # --- what the trainer asks ----------------------------------------------------------------------
    def loss_module(self, model: Any) -> torch.nn.Module:
        return ResponseLogps(model, self.cfg.train.loss_chunk_size, head=self.head)

    def item_lengths(self, examples: Sequence[PreferenceExample]) -> list[int]:
        return self.pairs.costs(examples)

    def response_logps(self, trainer: Any, split: str, examples: Sequence[PreferenceExample],
                       indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Policy log-prob sums and token counts of both replies of ``indices`` (first replies, then second
        replies: [2B]), the reference's sums (None without a reference), and the tokens the batch stands for."""
        batch = self.pairs.collate([examples[i] for i in indices], trainer.pad_token_id).to(trainer.acc.device)
        ref = self.reference(split, indices, batch) if self.reference is not None else None
        with trainer.acc.autocast():
            sums, counts = trainer.module(**batch.inputs())
        return sums.float(), counts, ref, batch.tokens

    def details(self) -> dict:
        """What a run's result records about the reference."""
        return {"reference": self.kind, "reference_cached": self.cached, "precompute_seconds": self.precompute_seconds}

    # --- the reference --------------------------------------------------------------------------------
    def _reference_model(self) -> Any:
        if self._reference_in is not None:
            return self._reference_in
        if not self.settings.reference_model:
            return None
        model = self.cfg.model
        return load_model(ModelSettings(name_or_path=self.settings.reference_model, dtype=model.dtype,
                                        trust_remote_code=model.trust_remote_code,
                                        attn_implementation=model.attn_implementation))

    def _precompute(self, trainer: Any, policy: Any) -> PrecomputedReference:
        """Reference log-probs of every train and eval item: read from the cache, or one pass and written to it."""
        started = time.perf_counter()
        acc = trainer.acc
        ref_model = self._reference_model() or policy
        module = ResponseLogps(ref_model, self.cfg.train.loss_chunk_size).to(acc.device)
        splits = {"train": trainer.data.train, "eval": trainer.data.eval}
        identity = model_fingerprint(ref_model) + "".join(pairs_fingerprint(v) for v in splits.values())
        key = hashlib.sha256(identity.encode()).hexdigest()
        size = self.settings.precompute_batch_size or 2 * self.cfg.train.micro_batch_size

        def compute() -> dict[str, torch.Tensor]:
            out = {}
            for split, examples in splits.items():
                out[f"{split}.chosen"], out[f"{split}.rejected"] = reference_logps(
                    module, examples, batch_size=size, pad_id=trainer.pad_token_id, device=acc.device,
                    layout=self.layout, autocast=acc.autocast)
            return out

        tensors, self.cached = cached_reference(trainer.out / "reference_logps", key, compute,
                                                barrier=acc.wait_for_everyone, is_main=acc.is_main_process)
        self.precompute_seconds = time.perf_counter() - started
        return PrecomputedReference(tensors)
