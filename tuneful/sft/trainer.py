"""SFT on the shared training core: the data (conversations → masked examples, packed or padded
rows), the loss (summed NLL over trained tokens, divided once by the step's trained tokens on every
process) and the metrics. Everything else — loop, accumulation, checkpoints, resume, output — is
:mod:`tuneful.train.loop`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import to_dict
from ..data.loader import LoadReport
from ..models.head import probe_head
from ..models.layouts import BLOCK_MASK, probe_layouts
from ..models.seq2seq import Seq2SeqTokenLoss, is_encoder_decoder, load_seq2seq_model
from ..templates.registry import run_template
from ..tokenization.batching import Example, collate_packed, collate_padded, plan_rows
from ..tokenization.masking import ConversationTokenizer, add_template_tokens, labels_from_mask
from ..tokenization.preflight import PreflightReport, finish_report, preflight
from ..tokenization.prepared import main_processes_first
from ..tokenization.seq2seq import collate_seq2seq
from ..train.loop import RunResult, Trainer, run
from .config import SFTConfig
from .data import PreparedData, _load_conversations, prepare_data, sft_summary
from .losses import SelectedTokenLoss
from .seq2seq import prepare_seq2seq
from .streaming import StreamedRows, stream_conversations


class SFTTrainer(Trainer):
    """Supervised fine-tuning: ``micro_batches`` yield (batch, real-token count) pairs."""

    name = "sft"
    supports_fsdp = True

    def __init__(self, cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.packing = cfg.data.packing

    # --- data -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.cfg.data.add_template_tokens:
            self.new_token_ids = add_template_tokens(self.tokenizer, run_template(self.cfg.data, self.tokenizer))
        self.data: PreparedData = prepare_data(self.cfg.data, self.tokenizer, self.cfg.train.seed,
                                               main_process_first=main_processes_first(self.acc))
        if not self.data.train:
            raise ValueError(f"data.train={self.cfg.data.train}: no usable training examples after preflight")

    def fit_model(self, model: Any) -> None:
        """The head (:func:`tuneful.models.head.probe_head`) and how packed rows meet this model: with restarted
        position ids only (its own mask builder keeps each layer's rule), with tuneful's block mask, or — where
        packed examples would read each other (recurrent layers) — not at all: rows are padded and the reason
        printed and recorded (``packing`` in the summary)."""
        self.head = probe_head(model)
        self.packing_mode, self.packing_note = None, "off (data.packing=false)"
        if self.cfg.data.packing:
            support = probe_layouts(model)
            self.packing_mode = support.packing
            self.packing_note = support.packing or f"off for this model: {support.packing_reason}"
            if support.packing is None:
                self.acc.print(f"data.packing: {self.packing_note}; training on padded rows, one example each "
                               "(set data.packing=false to say so)")
        self.packing = self.packing_mode is not None

    def item_lengths(self) -> list[int]:
        lengths = self.data.train.lengths.tolist()
        self.rows = plan_rows(lengths, packing=self.packing, max_length=self.cfg.data.max_length)
        self.row_lengths = [sum(lengths[i] for i in row) for row in self.rows]
        return self.row_lengths

    def micro_batch(self, items: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        return self.collate_rows([[self.data.train[i] for i in self.rows[r]] for r in items])

    def collate_rows(self, rows: list[list[Example]]) -> tuple[dict[str, torch.Tensor], int]:
        """A micro-batch of rows (each one example, or several packed) and its token count."""
        if self.packing:
            batch = collate_packed(rows, self.pad_token_id, block_mask=self.packing_mode == BLOCK_MASK)
        else:
            batch = collate_padded([row[0] for row in rows], self.pad_token_id)
        return batch, sum(len(e) for row in rows for e in row)

    # --- loss and metrics -------------------------------------------------------------------------
    def loss_module(self, model: Any) -> torch.nn.Module:
        return SelectedTokenLoss(model, self.cfg.train.loss_chunk_size, head=self.head)

    def step_counts(self, micro: Sequence[tuple[dict[str, torch.Tensor], int]]) -> torch.Tensor:
        trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b, _ in micro)
        return torch.tensor([trained, sum(n for _, n in micro)], device=self.acc.device)

    def micro_loss(self, batch: tuple[dict[str, torch.Tensor], int], counts: torch.Tensor):
        inputs = {name: t.to(self.acc.device) for name, t in batch[0].items()}
        with self.acc.autocast():
            total, _ = self.module(**inputs)
        return total * (1.0 / max(1, int(counts[0]))), {"nll_sum": total.detach().float()}

    def aux_weight(self, batch: tuple[dict[str, torch.Tensor], int], counts: torch.Tensor, micro_batches: int) -> float:
        """The micro-batch's share of the step's trained tokens: with one micro-batch the loss is the model's own
        (mean NLL + coefficient x aux); with accumulation each micro-batch's MoE loss weighs as its tokens do."""
        return int((batch[0]["labels"][:, 1:] != -100).sum()) / max(1, int(counts[0]))

    def step_metrics(self, sums: dict[str, float], counts: torch.Tensor, grad_norm: float) -> dict:
        trained, tokens = int(counts[0]), int(counts[1])
        return {"loss": sums["nll_sum"] / max(1, trained), "grad_norm": grad_norm, "trained_tokens": trained,
                "tokens": tokens}

    @torch.no_grad()
    def evaluate(self, examples: list[Example] | None = None) -> float:
        """Token-weighted mean NLL of the held-out examples (padded batches, this process's share)."""
        examples = self.data.eval if examples is None else examples
        self.module.eval()
        mine = examples[self.acc.process_index :: self.world]
        size = self.cfg.train.micro_batch_size
        batches = [mine[start : start + size] for start in range(0, len(mine), size)]
        if self.sharded:  # every forward is a collective: all processes run as many batches, extras count for nothing
            most = -(-len(examples[:: self.world]) // size)
            batches += [None] * (most - len(batches))
        total = torch.zeros(2, device=self.acc.device)
        for chunk in batches:
            batch = self.eval_batch(chunk if chunk is not None else examples[:1])
            with self.acc.autocast():
                loss, count = self.module(**{k: v.to(self.acc.device) for k, v in batch.items()})
            if chunk is not None:
                total += torch.stack([loss.float(), count.float()])
        total = self.acc.reduce(total, reduction="sum")
        self.module.train()
        return float(total[0] / total[1].clamp(min=1))

    def eval_batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return collate_padded(examples, self.pad_token_id)

    def eval_metrics(self) -> dict:
        return {"eval_loss": self.evaluate()}

    # --- output ---------------------------------------------------------------------------------
    def summary(self) -> dict:
        return {**sft_summary(self.data, to_dict(self.cfg)), "packing": getattr(self, "packing_note", None),
                "head": self.head.describe() if getattr(self, "head", None) else None}

class Seq2SeqSFTTrainer(SFTTrainer):
    """SFT of an encoder-decoder model (T5, BART): the history is the encoder's input, the reply + EOS the
    decoder's target (:mod:`tuneful.sft.seq2seq`, :mod:`tuneful.tokenization.seq2seq`). The same loop, normalisation, checkpoints and output;
    its own data, batches (padded, never packed) and loss."""

    lora_task_type = "SEQ_2_SEQ_LM"
    supports_fsdp = False

    def __init__(self, cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None):
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.packing = False

    def prepare_data(self) -> None:
        if self.cfg.data.add_template_tokens:
            raise ValueError("data.add_template_tokens: an encoder-decoder model's targets end with EOS, not with "
                             "template tokens; set it to false")
        self.data = prepare_seq2seq(self.cfg.data, self.tokenizer, self.cfg.train.seed)
        if not self.data.train:
            raise ValueError(f"data.train={self.cfg.data.train}: no usable training examples")
        self.row_lengths = [len(e) for e in self.data.train]

    def fit_model(self, model: Any) -> None:
        """Encoder-decoder models run their own forward (:class:`tuneful.models.seq2seq.Seq2SeqTokenLoss`): no probe."""
        self.head, self.packing_mode, self.packing_note = None, None, "off (encoder-decoder)"

    def item_lengths(self) -> list[int]:
        return self.row_lengths

    def load_base_model(self) -> Any:
        if self.cfg.lora.qlora:
            raise ValueError("lora.qlora: 4-bit loading is wired for causal LMs only; set lora.qlora=false")
        return load_seq2seq_model(self.cfg.model)

    def micro_batch(self, items: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        return collate_seq2seq([self.data.train[i] for i in items], self.pad_token_id), \
            sum(self.row_lengths[i] for i in items)

    def loss_module(self, model: Any) -> torch.nn.Module:
        return Seq2SeqTokenLoss(model)

    def step_counts(self, micro: Sequence[tuple[dict[str, torch.Tensor], int]]) -> torch.Tensor:
        trained = sum(int((b["labels"] != -100).sum()) for b, _ in micro)  # no shift: every target token counts
        return torch.tensor([trained, sum(n for _, n in micro)], device=self.acc.device)

    def eval_batch(self, examples: list) -> dict[str, torch.Tensor]:
        return collate_seq2seq(examples, self.pad_token_id)

    def summary(self) -> dict:
        return self.data.summary(to_dict(self.cfg))


class StreamingSFTTrainer(SFTTrainer):
    """SFT over a stream (:mod:`tuneful.sft.streaming`): the same loss, normalisation and outputs; rows come from
    a bounded buffer in stream order instead of an epoch plan, and checkpoints hold the stream's position."""

    def prepare_data(self) -> None:
        from itertools import islice

        settings = self.cfg.data
        template = run_template(settings, self.tokenizer)
        if settings.add_template_tokens:
            self.new_token_ids = add_template_tokens(self.tokenizer, template)
        ctok = ConversationTokenizer(self.tokenizer, template, last_turn_only=settings.last_turn_only,
                                     reasoning=settings.reasoning)
        head_report = LoadReport()  # the first stream_preflight conversations, read as the stream reads them
        head = [c for _, c in islice(stream_conversations(settings, head_report), settings.stream_preflight)]
        report = preflight(self.tokenizer, ctok, head, max_length=settings.max_length, overlong=settings.overlong,
                           allow_template_change=settings.allow_template_change)
        report.raise_on_errors()
        held = []
        if settings.eval:
            held_report = preflight(self.tokenizer, ctok, _load_conversations(settings.eval, settings)[0],
                                    max_length=settings.max_length, overlong="drop", allow_template_change=True)
            held = [Example(e.input_ids, labels_from_mask(e.input_ids, e.train_mask))
                    for e in held_report.training_examples]
        self.data = PreparedData([], held, template, ctok, head_report, report, report.end_of_turn_ids(self.tokenizer))
        self.stream, self._stream_state = None, None

    def item_lengths(self) -> list[int]:
        return []  # no epoch plan: train.max_steps says how long to train

    def restore_data_state(self, state: dict | None) -> None:
        self._stream_state = state

    def data_state(self) -> dict | None:
        return self.stream.state() if self.stream is not None else self._stream_state

    def micro_batches(self, step: int) -> list[Any]:
        """The step's rows, next in the stream: every process reads the same stream and takes its share."""
        if self.stream is None:
            self.stream = StreamedRows(self.cfg.data, self.data.conversation_tokenizer, seed=self.cfg.train.seed,
                                       packing=self.packing, state=self._stream_state)
        size, per_step = self.cfg.train.micro_batch_size, self.cfg.train.grad_accum * self.world
        micro = [[self.stream.next_row() for _ in range(size)] for _ in range(per_step)]
        return [self.collate_rows(rows) for rows in micro[self.acc.process_index :: self.world]]

    def summary(self) -> dict:
        streamed = finish_report(PreflightReport(), self.stream.tally, self.tokenizer, self.data.conversation_tokenizer,
                                 max_length=self.cfg.data.max_length, overlong=self.cfg.data.overlong,
                                 allow_template_change=True) if self.stream is not None else None
        tally = self.stream.tally if self.stream is not None else None
        return {**super().summary(), "train_examples": None,
                "stream": {"state": self.data_state(), "conversations_kept": tally.kept if tally else 0,
                           "findings": [str(f) for f in streamed.findings] if streamed else []}}


def trainer_for(cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None) -> SFTTrainer:
    """The SFT trainer for the model's architecture: encoder-decoder (detected from its config) or causal, and
    for streamed data."""

    seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) if model is not None \
        else is_encoder_decoder(cfg.model.name_or_path, cfg.model.trust_remote_code)
    if seq2seq:
        if cfg.data.streaming:
            raise ValueError("data.streaming: streams are wired for causal LMs; set data.streaming=false for an "
                             "encoder-decoder model")
        return Seq2SeqSFTTrainer(cfg, model=model, tokenizer=tokenizer)
    return (StreamingSFTTrainer if cfg.data.streaming else SFTTrainer)(cfg, model=model, tokenizer=tokenizer)


def run_sft(cfg: SFTConfig, *, model: Any = None, tokenizer: Any = None) -> RunResult:
    """setup → train → save."""
    return run(trainer_for(cfg, model=model, tokenizer=tokenizer))
