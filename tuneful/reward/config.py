"""The reward-model recipe: a base or SFT model with a scalar score head, trained on preference pairs.

Data settings are the preference trainers' (:mod:`tuneful.preference.config`: same loaders, templates, masks and checks); model, LoRA and training are the
shared ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..config import setting
from ..preference.config import PairTrainSettings, PreferenceDataSettings
from ..train.config import AfterSFTConfig, TrainSettings


@dataclass
class RewardSettings:
    center_coefficient: float = setting(0.0, "Weight of (r_chosen + r_rejected)^2, which keeps rewards centred on "
                                             "zero (0.01 is common); 0 = off.")
    use_margins: bool = setting(True, "Subtract each pair's 'margin' field (when the data has one) inside the "
                                      "loss: -log σ(r_c - r_r - margin).")

    def check(self) -> list[str]:
        return [] if self.center_coefficient >= 0 else [f"center_coefficient: {self.center_coefficient} must be >= 0"]


@dataclass
class RewardTrainSettings(PairTrainSettings, TrainSettings):
    output_dir: str = setting("runs/rm", "Where checkpoints, logs and the reward model go.")
    micro_batch_size: int = setting(4, "Preference pairs per forward pass.")
    lr: float = setting(1e-5, "Peak learning rate (the new score head trains at the same rate).")


@dataclass
class RewardConfig(AfterSFTConfig):
    """A reward-model run; ``check`` collects every problem at once."""

    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    train: RewardTrainSettings = field(default_factory=RewardTrainSettings)
    method: ClassVar[str] = "a reward model"

    def check(self) -> list[str]:
        problems = super().check()
        if self.lora.qlora:
            problems.append("lora.qlora: the reward model is saved merged (it must load in transformers without "
                            "peft); train it in full or with plain LoRA")
        return problems
