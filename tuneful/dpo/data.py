"""Preference pairs → token ids: one shared prompt, two continuations, masks on response tokens only.

Both full conversations (prompt + chosen, prompt + rejected) are rendered with the chat template and
tokenized exactly as SFT does (character spans → token mask, last assistant turn only). The prompt
is the token prefix before the first trained token; it must be identical for both responses, so it
is stored once and each response is its continuation. The trained tokens of a continuation are the
reply and its end-of-turn token — never system or user text. Problems that other tools let through
silently are errors here, named per record: a response that repeats the prompt or the whole
conversation, a response with no trained tokens, identical chosen and rejected, prompts that
tokenize differently in front of the two responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data.types import PreferencePair
from ..masking import ConversationTokenizer, labels_from_mask
from ..losses import selected_logps
from ..sft.batching import Example, collate_padded


@dataclass(frozen=True)
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    chosen_mask: list[int]  # 1 = response token (reply + end-of-turn), aligned with chosen_ids
    rejected_ids: list[int]
    rejected_mask: list[int]


class PreferenceDataError(ValueError):
    pass


def _split(encoded: Any) -> tuple[list[int], list[int], list[int]]:
    mask = encoded.train_mask
    if 1 not in mask:
        raise PreferenceDataError("the response has no trained tokens (empty reply, or cut off by the template)")
    first = mask.index(1)
    last = len(mask) - mask[::-1].index(1)  # tokens after the reply (template trailer) are not needed
    return list(encoded.input_ids[:first]), list(encoded.input_ids[first:last]), list(mask[first:last])


def _repeats_prompt(response: str, pair: PreferencePair) -> bool:
    last_user = next((m.content for m in reversed(pair.prompt) if m.role == "user"), "").strip()
    return bool(last_user) and len(last_user) > 20 and last_user in response


def preference_tokenizer(tokenizer: Any, template: Any) -> ConversationTokenizer:
    """The conversation tokenizer for pairs: only the final assistant turn is a response."""
    return ConversationTokenizer(tokenizer, template, last_turn_only=True)


def tokenize_pair(ctok: ConversationTokenizer, pair: PreferencePair) -> PreferenceExample:
    if not ctok.last_turn_only:  # earlier assistant turns belong to the prompt
        raise ValueError("tokenize_pair needs a ConversationTokenizer with last_turn_only=True "
                         "(use preference_tokenizer)")
    if pair.chosen.strip() == pair.rejected.strip():
        raise PreferenceDataError("chosen and rejected are the same text: the pair teaches nothing")
    for name, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not response.strip():
            raise PreferenceDataError(f"{name} is empty")
        if _repeats_prompt(response, pair):
            raise PreferenceDataError(f"{name} contains the prompt's user message: pass only the final assistant "
                                      "reply as chosen/rejected, the prompt separately")
    prompt = [m.to_dict() for m in pair.prompt]
    encoded = [ctok([*prompt, {"role": "assistant", "content": r}]) for r in (pair.chosen, pair.rejected)]
    for enc in encoded:
        if enc.rendered.turns and not enc.rendered.turns[-1].prompt_matches_inference:
            raise PreferenceDataError("the template renders the prompt differently at inference than in front "
                                      "of the reply; the model would be trained on a prompt it never sees")
    (p_c, chosen, m_c), (p_r, rejected, m_r) = (_split(e) for e in encoded)
    if p_c != p_r:
        raise PreferenceDataError("the prompt tokenizes differently in front of chosen and rejected (a BPE merge "
                                  "across the boundary); the shared prompt would not be shared")
    return PreferenceExample(p_c, chosen, m_c, rejected, m_r)


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


def collate_pairs(examples: Sequence[PreferenceExample], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch holding every chosen row, then every rejected row (one forward pass for both).

    ``labels`` carry the token id at response positions and IGNORE_INDEX elsewhere; right padding.
    """
    def row(e: PreferenceExample, ids: list[int], mask: list[int]) -> Example:
        full = e.prompt_ids + ids
        return Example(full, labels_from_mask(full, [0] * len(e.prompt_ids) + mask))

    rows = [row(e, e.chosen_ids, e.chosen_mask) for e in examples]
    rows += [row(e, e.rejected_ids, e.rejected_mask) for e in examples]
    return collate_padded(rows, pad_id)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log p(response token) and the number of response tokens, from full logits."""
    return selected_logps(logits, labels, lambda x: x)
