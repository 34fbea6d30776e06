"""The DPO recipe: model, preference data, LoRA, the preference objective and training settings.

Model, LoRA and most training settings are the shared ones (:mod:`tuneful.train.config`: same meaning,
same checks as SFT's); preference data and the objective have their own sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import setting
from ..train.config import LoraSettings, ModelSettings, TrainSettings, after_sft_problems, source_problems
from .objective import OBJECTIVES

REFERENCES = ("auto", "frozen", "adapters-off", "precomputed", "none")


@dataclass
class PreferenceDataSettings:
    train: str | list[dict] = setting("", "Preference pairs: file, dataset folder or Hugging Face id (prompt/chosen/"
                                          "rejected, hh-rlhf, ShareGPT with chosen/rejected); or a list of sources "
                                          "{path, weight | count} mixed as tuneful data mix does.")
    eval: str = setting("", "Held-out pairs for eval loss and reward accuracy; empty = split eval_fraction off train.")
    eval_fraction: float = setting(0.0, "Share of the training records held out (seeded) when data.eval is empty.")
    format: str = setting("auto", "Data format (auto-detected by default).")
    on_error: str = setting("fail", "fail on a bad record, or skip it (skips are counted and reported).")
    template: str = setting("tokenizer", "Chat template: 'tokenizer' (its own), a built-in name, or a .jinja file. "
                                         "Use the SFT model's: it is saved inside the SFT output folder.")
    allow_template_change: bool = setting(False, "Confirm a template that differs from the tokenizer's own.")
    tokenizer: str = setting("", "Tokenizer folder/id; empty = the model's.")
    max_length: int = setting(1024, "Longest prompt + response in tokens (the longer response counts).")
    overlong: str = setting("drop", "Pairs over max_length: drop (counted and reported) or fail.")
    num_proc: int = setting(0, "Processes that prepare (render, tokenize, check) the records; 0 = one per CPU core "
                               "(up to 8) from 20,000 records on, else 1.")
    cache_dir: str = setting("", "Where prepared records are cached (prepared/<fingerprint>); empty = "
                                 "$TUNEFUL_CACHE_DIR or ~/.cache/tuneful. Later runs and other ranks read it.")

    def check(self) -> list[str]:
        problems = source_problems(self)
        if self.num_proc < 0:
            problems.append(f"num_proc: {self.num_proc} must be >= 0 (0 = automatic)")
        if self.overlong not in ("drop", "fail"):
            problems.append(f"overlong: {self.overlong!r} is not drop or fail (a cut reply would teach a cut reply)")
        return problems


@dataclass
class ObjectiveSettings:
    loss: str = setting("sigmoid", "sigmoid (DPO), robust, ipo, hinge, simpo or orpo; see tuneful.dpo.losses.")
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


PAIR_LAYOUTS = ("auto", "shared-prompt", "two-rows")


@dataclass
class DPOTrainSettings(TrainSettings):
    output_dir: str = setting("runs/dpo", "Where checkpoints, logs, cached reference log-probs and the model go.")
    micro_batch_size: int = setting(4, "Preference pairs per forward pass.")
    pair_layout: str = setting("auto", "How a pair meets the model: shared-prompt (one row prompt|chosen|rejected, "
                               "the prompt encoded once, the replies masked from each other), two-rows (the prompt "
                               "repeated in front of each reply), or auto = shared-prompt, two-rows under "
                               "flash-attention (it takes no custom mask).")
    lr: float = setting(5e-6, "Peak learning rate (preference tuning wants far lower rates than SFT).")
    warmup_ratio: float = setting(0.1, "Share of steps with linear warm-up.")
    loss_chunk_size: int = setting(0, "Response tokens per chunk for the vocabulary projection; 0 = all at once.")


@dataclass
class DPOConfig:
    """A preference-tuning run; ``check`` collects every problem at once."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: PreferenceDataSettings = field(default_factory=PreferenceDataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    dpo: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    train: DPOTrainSettings = field(default_factory=DPOTrainSettings)

    def check(self) -> list[str]:
        """Cross-section checks (each section checks itself first)."""
        problems = after_sft_problems("preference tuning", self.model, self.lora, self.train,
                                      reference=("dpo.reference", self.dpo.reference),
                                      shared_layout=("train.pair_layout", self.train.pair_layout == "shared-prompt"))
        if self.train.pair_layout not in PAIR_LAYOUTS:
            problems.append(f"train.pair_layout: {self.train.pair_layout!r} is not one of {', '.join(PAIR_LAYOUTS)}")
        if self.dpo.reference == "adapters-off" and self.dpo.reference_model:
            problems.append("dpo.reference_model: with reference=adapters-off the reference is the policy's own base; "
                            "remove reference_model or use reference=frozen/precomputed")
        return problems
