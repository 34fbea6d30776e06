"""Preference pairs → token ids: one shared prompt, two continuations, masks on response tokens only.

Both full conversations (prompt + chosen, prompt + rejected; a reply may be text, tool calls or
both, and the prompt may hold earlier calls and their results, with the pair's tools) are rendered with the chat template and
tokenized exactly as SFT does (character spans → token mask, last assistant turn only). The prompt
is the token prefix before the first trained token; it must be identical for both responses, so it
is stored once and each response is its continuation — and, in the default batch layout
(``collate_shared_prompt``), encoded once by the model too. The trained tokens of a continuation are the
reply and its end-of-turn token — never system or user text. Problems that other tools let through
silently are errors here, named per record: a response that repeats the prompt or the whole
conversation, a response with no trained tokens, identical chosen and rejected, prompts that
tokenize differently in front of the two responses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..data.types import Conversation, Message, PreferencePair
from ..tokenization.masking import ConversationTokenizer


@dataclass(frozen=True)
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_mask: list[int]  # 1 = response token (reply + end-of-turn), aligned with chosen_ids
    rejected_ids: list[int]
    rejected_mask: list[int]
    margin: float = 0.0  # the record's "margin" (how much better chosen is); only reward models read it


class PreferenceDataError(ValueError):
    pass


def reply_tokens(encoded: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, reply ids, reply mask) of a conversation whose last assistant turn is the one trained."""
    mask = encoded.train_mask
    if 1 not in mask:
        raise PreferenceDataError("the response has no trained tokens (empty reply, or cut off by the template)")
    first = mask.index(1)
    last = len(mask) - mask[::-1].index(1)  # tokens after the reply (template trailer) are not needed
    return list(encoded.input_ids[:first]), list(encoded.input_ids[first:last]), list(mask[first:last])


def _repeats_prompt(response: str, pair: PreferencePair) -> bool:
    last_user = next((m.content or "" for m in reversed(pair.prompt) if m.role == "user"), "").strip()
    return bool(last_user) and len(last_user) > 20 and last_user in response


def _same_reply(a: Message, b: Message) -> bool:
    """Identical replies, ignoring whitespace around the text (which teaches nothing either)."""
    return replace(a, content=(a.content or "").strip()) == replace(b, content=(b.content or "").strip())


def preference_tokenizer(tokenizer: Any, template: Any) -> ConversationTokenizer:
    """The conversation tokenizer for pairs: only the final assistant turn is a response."""
    return ConversationTokenizer(tokenizer, template, last_turn_only=True)


def tokenize_pair(ctok: ConversationTokenizer, pair: PreferencePair) -> PreferenceExample:
    if not ctok.last_turn_only:  # earlier assistant turns belong to the prompt
        raise ValueError("tokenize_pair needs a ConversationTokenizer with last_turn_only=True "
                         "(use preference_tokenizer)")
    if _same_reply(pair.chosen, pair.rejected):
        raise PreferenceDataError("chosen and rejected are the same text: the pair teaches nothing")
    for name, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not (response.content or "").strip() and not response.tool_calls:
            raise PreferenceDataError(f"{name} is empty")
        if _repeats_prompt(response.content or "", pair):
            raise PreferenceDataError(f"{name} contains the prompt's user message: pass only the final assistant "
                                      "reply as chosen/rejected, the prompt separately")
    encoded = [ctok(Conversation((*pair.prompt, reply), inputs=pair.inputs)) for reply in (pair.chosen, pair.rejected)]
    for enc in encoded:
        if enc.rendered.turns and not enc.rendered.turns[-1].prompt_matches_inference:
            raise PreferenceDataError("the template renders the prompt differently at inference than in front "
                                      "of the reply; the model would be trained on a prompt it never sees")
    (p_c, chosen, m_c), (p_r, rejected, m_r) = (reply_tokens(e) for e in encoded)
    if p_c != p_r:
        raise PreferenceDataError("the prompt tokenizes differently in front of chosen and rejected (a BPE merge "
                                  "across the boundary); the shared prompt would not be shared")
    margin = (pair.meta or {}).get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise PreferenceDataError(f"margin: {margin!r} is not a number")
    return PreferenceExample(p_c, chosen, m_c, rejected, m_r, float(margin))


def tokenize_pairs(ctok: ConversationTokenizer, pairs: Sequence[PreferencePair]) -> list[PreferenceExample]:
    """All pairs, or one PreferenceDataError listing every bad record."""
    out, errors = [], []
    for index, pair in enumerate(pairs):
        try:
            out.append(tokenize_pair(ctok, pair))
        except PreferenceDataError as exc:
            where = pair.meta.get("where", f"record {index}") if pair.meta else f"record {index}"
            errors.append(f"{where}: {exc}")
    if errors:
        raise PreferenceDataError(f"{len(errors)} bad preference pair(s):\n  " + "\n  ".join(errors[:20]))
    return out


@dataclass(frozen=True)
class PairBatch:
    """Model inputs for a micro-batch of pairs, and where each response token's log-prob is read.

    The hidden state at flat position ``sources[i]`` (row * width + column) predicts response token
    ``targets[i]``, which joins score ``scores[i]``: pair b's chosen reply is score b, its rejected
    reply score ``pairs + b``. ``tokens`` counts prompt + reply for each reply (2P + C + R per pair),
    the work a pair stands for whichever layout computed it; ``computed`` the real positions the model
    runs over (2P + C + R in two rows, P + C + R with a shared prompt).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # [rows, width] padding mask, or [rows, 1, width, width] boolean (True = attend)
    position_ids: torch.Tensor
    sources: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    pairs: int
    tokens: int
    computed: int

    def to(self, device: torch.device | str) -> "PairBatch":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("input_ids", "attention_mask", "position_ids", "sources", "targets", "scores")})

    def inputs(self) -> dict[str, Any]:
        """Keyword arguments of ResponseLogps."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids,
                "sources": self.sources, "targets": self.targets, "scores": self.scores, "pairs": self.pairs}


def _long(*lists: list[int]) -> list[torch.Tensor]:
    return [torch.tensor(x, dtype=torch.long) for x in lists]


def _logical_tokens(examples: Sequence[PreferenceExample]) -> int:
    return sum(2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)


def collate_two_rows(examples: Sequence[PreferenceExample], pad_id: int) -> PairBatch:
    """Two rows per pair, every chosen row then every rejected row, right-padded: the prompt runs twice.

    The layout for attention kernels that take no custom mask (flash-attention).
    """
    rows = [(e.prompt_ids, e.chosen_ids, e.chosen_mask) for e in examples]
    rows += [(e.prompt_ids, e.rejected_ids, e.rejected_mask) for e in examples]
    width = max(len(p) + len(r) for p, r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    sources, targets, scores = [], [], []
    for row, (prompt, reply, mask) in enumerate(rows):
        full = prompt + reply
        ids[row, : len(full)] = torch.tensor(full)
        attention[row, : len(full)] = 1
        for k, trained in enumerate(mask):
            at = len(prompt) + k
            if trained and at > 0:  # position at - 1 predicts token at
                sources.append(row * width + at - 1)
                targets.append(full[at])
                scores.append(row)
    positions = torch.arange(width).expand(len(rows), width).clone()
    return PairBatch(ids, attention, positions, *_long(sources, targets, scores),
                     len(examples), _logical_tokens(examples), int(attention.sum()))


_PROMPT, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, -1


def collate_shared_prompt(examples: Sequence[PreferenceExample], pad_id: int) -> PairBatch:
    """One row per pair, ``prompt | chosen | rejected``: the shared prompt is encoded once.

    Rejected tokens attend to the prompt and to themselves but not to the chosen reply, and their
    positions continue from the prompt as if chosen were not there, so each reply sees exactly what
    it would see in its own row (same attention, same rotary positions). The last prompt token
    predicts the first token of both replies. Cost per pair: P + C + R positions instead of 2(P + max).
    """
    width = max(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.full((n, width), -1, dtype=torch.long)
    segment = torch.full((n, width), _PAD, dtype=torch.long)
    sources, targets, scores = [], [], []
    for b, e in enumerate(examples):
        p, c, r = len(e.prompt_ids), len(e.chosen_ids), len(e.rejected_ids)
        ids[b, : p + c + r] = torch.tensor(e.prompt_ids + e.chosen_ids + e.rejected_ids)
        positions[b, : p + c] = torch.arange(p + c)
        positions[b, p + c : p + c + r] = torch.arange(p, p + r)
        segment[b, :p], segment[b, p : p + c], segment[b, p + c : p + c + r] = _PROMPT, _CHOSEN, _REJECTED
        for k, trained in enumerate(e.chosen_mask):
            if trained and p + k > 0:
                sources.append(b * width + p + k - 1)
                targets.append(e.chosen_ids[k])
                scores.append(b)
        for k, trained in enumerate(e.rejected_mask):
            before = p - 1 if k == 0 else p + c + k - 1  # the first rejected token follows the prompt
            if trained and before >= 0:
                sources.append(b * width + before)
                targets.append(e.rejected_ids[k])
                scores.append(n + b)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    real = segment != _PAD
    sees_other_reply = (segment[:, :, None] == _REJECTED) & (segment[:, None, :] == _CHOSEN)
    mask = causal & real[:, :, None] & real[:, None, :] & ~sees_other_reply
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself, so no softmax row is empty
    return PairBatch(ids, mask[:, None], positions.clamp(min=0), *_long(sources, targets, scores), n,
                     _logical_tokens(examples), int(real.sum()))


COLLATORS = {"shared-prompt": collate_shared_prompt, "two-rows": collate_two_rows}
