"""The SFT recipe: model, data, LoRA and training settings, each documented and cross-checked."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import setting
from ..data.mixture import source_problems
from ..train.config import TrainSettings, fsdp_problems
from ..models.settings import LoraSettings, ModelSettings


@dataclass
class DataSettings:
    train: str | list[dict] = setting("", "Training data: file, dataset folder or Hugging Face id (any supported "
                                          "format); or a list of sources {path, weight | count} mixed by the code "
                                          "of tuneful data mix (weights share the sources' total; seeded by "
                                          "train.seed).")
    eval: str = setting("", "Held-out data for eval loss; empty = split eval_fraction off the training data.")
    eval_fraction: float = setting(0.0, "Share of the training records held out (seeded) when data.eval is empty.")
    format: str = setting("auto", "Data format (auto-detected by default).")
    on_error: str = setting("fail", "fail on a bad record, or skip it (skips are counted and reported).")
    template: str = setting("tokenizer", "Chat template: 'tokenizer' (its own), a built-in name, or a .jinja file.")
    allow_template_change: bool = setting(False, "Confirm a template that differs from the tokenizer's own.")
    add_template_tokens: bool = setting(False, "Make the template's role markers and end-of-turn (e.g. <|im_start|>, "
                                               "<|im_end|>) special tokens of a base model's tokenizer that lacks "
                                               "them; the embeddings grow (new rows start at the mean) and the "
                                               "new rows train, with LoRA too.")
    tokenizer: str = setting("", "Tokenizer folder/id; empty = the model's.")
    max_length: int = setting(1024, "Longest sequence in tokens.")
    overlong: str = setting("drop", "Examples over max_length: drop, truncate, or fail.")
    last_turn_only: bool = setting(False, "Train only the final assistant turn of each conversation.")
    reasoning: str = setting("keep", "Turns a template prints differently once a later turn follows (Qwen3, "
                                     "DeepSeek-R1 drop earlier reasoning): keep = train each in an example of its "
                                     "own, in its inference context (more tokens); drop_earlier = do not train them.")
    num_proc: int = setting(0, "Processes that prepare (render, tokenize, mask, check) the data; 0 = one per CPU "
                               "core (up to 8) from 20,000 conversations on, else 1.")
    cache_dir: str = setting("", "Where prepared data is cached (under prepared/<fingerprint of data, tokenizer, "
                                 "template and settings>); empty = $TUNEFUL_CACHE_DIR or ~/.cache/tuneful. A second "
                                 "run with the same inputs, and every other rank, reads it instead of preparing.")
    streaming: bool = setting(False, "Read data.train as a stream (data larger than memory or disk): tokenized and "
                                     "checked as training needs it, packed in a bounded buffer, its position saved "
                                     "in checkpoints. Needs train.max_steps and one source; no eval_fraction.")
    stream_buffer: int = setting(2048, "Streaming: examples held at once, packed and shuffled together.")
    stream_preflight: int = setting(1000, "Streaming: conversations checked by the whole preflight before training "
                                          "(later ones are checked as they stream; an error stops the run).")
    packing: bool = setting(True, "Pack examples into max_length rows (block-diagonal attention, no cross-talk).")
    replay: str = setting("", "Plain-text documents (JSONL with a 'text' field) trained on every token beside the "
                              "conversations, so SFT does not erase what pretraining taught.")
    replay_ratio: float = setting(0.0, "Replay documents per training conversation (0 = none).")

    def check(self) -> list[str]:
        problems = source_problems(self)
        if self.overlong not in ("drop", "truncate", "fail"):
            problems.append(f"overlong: {self.overlong!r} is not drop, truncate or fail")
        if self.reasoning not in ("keep", "drop_earlier"):
            problems.append(f"reasoning: {self.reasoning!r} is not keep or drop_earlier")
        if self.num_proc < 0:
            problems.append(f"num_proc: {self.num_proc} must be >= 0 (0 = automatic)")
        if self.replay_ratio < 0 or (self.replay_ratio > 0 and not self.replay):
            problems.append("replay_ratio: needs data.replay=<documents.jsonl> and a value >= 0")
        return problems


@dataclass
class SFTConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def check(self) -> list[str]:
        problems = fsdp_problems(self.lora, self.train)
        if self.data.streaming:
            if self.train.max_steps <= 0:
                problems.append("data.streaming: a stream has no known length; set train.max_steps")
            if isinstance(self.data.train, list) or self.data.eval_fraction:
                problems.append("data.streaming: streams one source (data.train a file or dataset id) and holds "
                                "nothing out; use data.eval for held-out data")
            if self.data.stream_buffer < 1 or self.data.stream_preflight < 0:
                problems.append("data.stream_buffer must be >= 1 and data.stream_preflight >= 0")
        return problems
