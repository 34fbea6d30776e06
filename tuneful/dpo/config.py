"""The DPO recipe: model, preference data, LoRA, the preference objective and training settings.

Model, LoRA and most training settings are the shared ones (:mod:`tuneful.train.config`: same meaning,
same checks as SFT's); preference data and the objective have their own sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import setting
from ..preference.config import REFERENCES, PairTrainSettings, PreferenceDataSettings
from ..train.config import AfterSFTConfig, TrainSettings
from .losses import OBJECTIVES

@dataclass
class ObjectiveSettings:
    loss: str = setting("sigmoid", "sigmoid (DPO), robust, ipo, hinge, simpo or orpo; see tuneful.preference.losses.")
    beta: float = setting(0.1, "Strength of the pull towards the reference (DPO/IPO/hinge), or SimPO's reward scale.")
    label_smoothing: float = setting(0.0, "Assumed share of flipped labels (sigmoid: conservative DPO; robust: < 0.5).")
    simpo_gamma: float = setting(0.5, "SimPO target reward margin.")
    orpo_lambda: float = setting(0.1, "Weight of ORPO's odds-ratio term beside the chosen responses' NLL.")
    reference: str = setting("auto", "Reference policy: frozen (a second copy), adapters-off (LoRA: the same model "
                                     "with adapters disabled), precomputed (one pass before training, cached on "
                                     "disk), none (SimPO/ORPO), auto (none for reference-free losses, adapters-off "
                                     "with LoRA, else precomputed).")
    reference_model: str = setting("", "Reference model folder/id; empty = the starting policy (model.name_or_path).")
    precompute_batch_size: int = setting(0, "Pairs per batch while precomputing reference log-probs; 0 = "
                                            "2 x micro_batch_size.")

    def check(self) -> list[str]:
        problems = []
        if self.loss not in OBJECTIVES:
            problems.append(f"loss: {self.loss!r} is not one of {', '.join(OBJECTIVES)}")
            return problems
        if self.reference not in REFERENCES:
            problems.append(f"reference: {self.reference!r} is not one of {', '.join(REFERENCES)}")
        needs_reference = OBJECTIVES[self.loss].needs_reference
        if needs_reference and self.reference == "none":
            problems.append(f"reference: loss={self.loss} compares against a reference policy; set reference=auto, "
                            "frozen, adapters-off or precomputed (or a reference-free loss: simpo, orpo)")
        if not needs_reference and self.reference not in ("auto", "none"):
            problems.append(f"reference: loss={self.loss} is reference-free; reference={self.reference} would cost "
                            "memory and time for nothing. Set reference=none (or auto)")
        if not needs_reference and self.reference_model:
            problems.append(f"reference_model: loss={self.loss} is reference-free; remove reference_model")
        if self.beta <= 0:
            problems.append(f"beta: {self.beta} must be positive")
        if self.loss == "robust" and not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing: robust DPO needs 0 <= label_smoothing < 0.5, got {self.label_smoothing}")
        if self.loss not in ("sigmoid", "robust") and self.label_smoothing:
            problems.append(f"label_smoothing: only used by loss=sigmoid or robust, not {self.loss}; remove it")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing: {self.label_smoothing} must be in [0, 1)")
        if self.precompute_batch_size < 0:
            problems.append("precompute_batch_size: must be >= 0")
        return problems


@dataclass
class DPOTrainSettings(PairTrainSettings, TrainSettings):
    output_dir: str = setting("runs/dpo", "Where checkpoints, logs, cached reference log-probs and the model go.")
    micro_batch_size: int = setting(4, "Preference pairs per forward pass.")


@dataclass
class DPOConfig(AfterSFTConfig):
    """A preference-tuning run; ``check`` collects every problem at once."""

    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)
    dpo: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    train: DPOTrainSettings = field(default_factory=DPOTrainSettings)
    method: ClassVar[str] = "preference tuning"
    reference_section: ClassVar[str | None] = "dpo"
