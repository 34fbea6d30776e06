"""The settings every trainer of preference-shaped data shares (DPO, KTO, reward models): the data section, the
reference policies, and the pair layout a train section names."""

from __future__ import annotations

from dataclasses import dataclass
from ..config import setting
from ..data.mixture import source_problems

REFERENCES = ("auto", "frozen", "adapters-off", "precomputed", "none")
PAIR_LAYOUTS = ("auto", "shared-prompt", "two-rows")


@dataclass
class PairTrainSettings:
    """The train-section settings of every trainer over pairs. A trainer's train section derives from this and
    :class:`tuneful.train.config.TrainSettings` (this package does not import the loop's): these come first in
    the order of bases, so their defaults win."""

    pair_layout: str = setting("auto", "How a pair meets the model: shared-prompt (one row prompt|chosen|rejected, "
                                       "the prompt encoded once, the replies masked from each other), two-rows (the "
                                       "prompt repeated in front of each reply), or auto = shared-prompt, two-rows "
                                       "under flash-attention (it takes no custom mask).")
    lr: float = setting(5e-6, "Peak learning rate (preference tuning wants far lower rates than SFT).")
    warmup_ratio: float = setting(0.1, "Share of steps with linear warm-up.")
    loss_chunk_size: int = setting(0, "Reply tokens per chunk for the vocabulary projection; 0 = all at once.")

    def check(self) -> list[str]:
        problems = super().check() if hasattr(super(), "check") else []  # type: ignore[misc]
        if self.pair_layout not in PAIR_LAYOUTS:
            problems.append(f"pair_layout: {self.pair_layout!r} is not one of {', '.join(PAIR_LAYOUTS)}")
        return problems


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
