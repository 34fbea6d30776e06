"""The KTO recipe: model, labelled replies (thumbs-up / thumbs-down), LoRA, the objective, training.

Model, LoRA and training settings are the shared ones; the reference policy options are the preference
trainers' (:mod:`tuneful.preference.config`: frozen, adapters-off, precomputed), with the same meaning and checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import setting
from ..preference.config import REFERENCES, PairTrainSettings, PreferenceDataSettings
from ..train.config import AfterSFTConfig, TrainSettings

KTO_LOSSES = ("kto", "apo_zero_unpaired")


@dataclass
class LabeledDataSettings(PreferenceDataSettings):
    train: str | list[dict] = setting("", "Labelled replies: file, dataset folder or Hugging Face id; each record a "
                                          "conversation whose last assistant reply carries label true (desirable) or "
                                          "false (undesirable); or a list of sources {path, weight | count}.")
    eval: str = setting("", "Held-out labelled replies for eval loss and rewards; empty = split eval_fraction off train.")
    max_length: int = setting(1024, "Longest prompt + reply in tokens.")
    overlong: str = setting("drop", "Replies over max_length: drop (counted and reported) or fail.")


@dataclass
class KTOSettings:
    loss: str = setting("kto", "kto (Ethayarajh et al. 2024) or apo_zero_unpaired (no KL reference point).")
    beta: float = setting(0.1, "How far the policy may move from the reference (larger = closer).")
    desirable_weight: float = setting(1.0, "λ_D, weight of desirable replies' losses.")
    undesirable_weight: float = setting(1.0, "λ_U, weight of undesirable replies' losses. The paper advises "
                                              "λ_D·n_D / (λ_U·n_U) in [1, 4/3]; the run reports the ratio.")
    reference: str = setting("auto", "Reference policy: frozen, adapters-off (LoRA), precomputed (one pass before "
                                     "training, cached on disk), or auto (adapters-off with LoRA, else precomputed).")
    reference_model: str = setting("", "Reference model folder/id; empty = the starting policy (model.name_or_path).")
    precompute_batch_size: int = setting(0, "Replies per batch while precomputing reference log-probs; 0 = "
                                            "2 x micro_batch_size.")

    def check(self) -> list[str]:
        problems = []
        if self.loss not in KTO_LOSSES:
            problems.append(f"loss: {self.loss!r} is not one of {', '.join(KTO_LOSSES)}")
        if self.reference not in REFERENCES or self.reference == "none":
            problems.append(f"reference: {self.reference!r}; KTO measures the policy against a reference: use auto, "
                            "frozen, adapters-off or precomputed")
        if self.beta <= 0:
            problems.append(f"beta: {self.beta} must be positive")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            problems.append("desirable_weight and undesirable_weight must be positive")
        if self.precompute_batch_size < 0:
            problems.append("precompute_batch_size: must be >= 0")
        return problems


@dataclass
class KTOTrainSettings(PairTrainSettings, TrainSettings):
    output_dir: str = setting("runs/kto", "Where checkpoints, logs, cached reference log-probs and the model go.")
    micro_batch_size: int = setting(8, "Labelled replies per forward pass (>= 2: KTO's reference point is "
                                       "estimated within the micro-batch).")


@dataclass
class KTOConfig(AfterSFTConfig):
    """A KTO run; ``check`` collects every problem at once."""

    data: LabeledDataSettings = field(default_factory=LabeledDataSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)
    train: KTOTrainSettings = field(default_factory=KTOTrainSettings)
    method: ClassVar[str] = "KTO"
    reference_section: ClassVar[str | None] = "kto"

    def check(self) -> list[str]:
        problems = super().check()
        if self.kto.loss == "kto" and self.train.micro_batch_size < 2:
            problems.append(f"train.micro_batch_size: {self.train.micro_batch_size}; KTO estimates its reference "
                            "point from the other replies of the micro-batch, so it needs >= 2 (4 or more is better)")
        return problems
