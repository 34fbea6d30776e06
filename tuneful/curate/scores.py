"""Model-based scores: an LLM judge's 1-5 rating (AlpaGasus, Chen et al. 2023, arXiv:2307.08701) and
IFD, instruction-following difficulty (Li et al. 2023, arXiv:2308.12032; computed with a small model
as in Superfiltering, arXiv:2402.00530): IFD = loss(answer | instruction) / loss(answer).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

JUDGE_SYSTEM = ("You grade training data for an instruction-following assistant. Rate how helpful, correct and "
                "complete the response is for the instruction, from 1 (useless or wrong) to 5 (excellent). "
                "Reply with the number first.")


def judge_prompt(instruction: str, response: str) -> list[dict]:
    user = f"Instruction:\n{instruction}\n\nResponse:\n{response}\n\nRating (1-5):"
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_rating(reply: str | None) -> float | None:
    """The first number 1-5 in the reply (e.g. '4', 'Rating: 4.5/5'), or None."""
    if not reply:
        return None
    match = re.search(r"(?<![\d.])([1-5](?:\.\d+)?)(?![\d])", reply)
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 5 else None


def judge_scores(judge: Any, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
    """One rating per (instruction, response); None where the judge failed or gave no number."""
    replies = judge.complete([judge_prompt(i, r) for i, r in pairs], max_tokens=8, temperature=0.0, seed=0)
    return [parse_rating(reply) for reply in replies]


def ifd_scores(model_spec: str, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """IFD per pair with a local causal LM: mean NLL of the answer tokens after the instruction, divided
    by their mean NLL with no instruction (both without a chat template, as the papers do)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..train.losses import token_nll_sum
    from ..masking import IGNORE_INDEX, pad_id
    from ..sft.batching import Example, collate_padded

    tokenizer = AutoTokenizer.from_pretrained(model_spec)
    model = AutoModelForCausalLM.from_pretrained(model_spec, dtype=torch.float32).eval()
    pad = pad_id(tokenizer)

    first_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def example(prefix: str, answer: str) -> Example:
        # With no instruction the answer still needs a first position to be predicted from: BOS (or EOS).
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [first_id]
        body = tokenizer(answer, add_special_tokens=False)["input_ids"]
        return Example(head + body, [IGNORE_INDEX] * len(head) + body)

    def mean_nll(examples: list[Example]) -> list[float]:
        out = []
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate_padded(examples[start : start + batch_size], pad)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                for row in range(logits.shape[0]):
                    total, count = token_nll_sum(logits[row : row + 1], batch["labels"][row : row + 1])
                    out.append(float(total) / max(1, count))
        return out

    conditioned = mean_nll([example(instruction + "\n", answer) for instruction, answer in pairs])
    alone = mean_nll([example("", answer) for _, answer in pairs])
    return [c / a if a > 0 else float("inf") for c, a in zip(conditioned, alone)]
