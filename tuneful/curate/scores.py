"""Record scores, each a named signal that curation can use alone or combined (``combine.py``):

- ``judge``: an LLM judge's 1-5 rating (AlpaGasus, Chen et al. 2023, arXiv:2307.08701);
- ``ifd``: instruction-following difficulty, loss(reply | instruction) / loss(reply) (Li et al. 2023,
  arXiv:2308.12032), computed with a small model as in Superfiltering (arXiv:2402.00530);
- ``likelihood``: the reply's (and its end's) log-likelihood given the instruction under a reference model;
- ``agreement``: self-consistency across replies to the same or near-same instruction (no model at all).

None of them reads a task's answer key: they estimate correctness from the data and a reference model only.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from ..models.losses import token_nll_sum
from ..tokenization.batching import Example, collate_padded
from ..tokenization.masking import IGNORE_INDEX, pad_id
from .dedup import normalise

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


class ReferenceLM:
    """A local causal LM that scores replies by their token log-likelihood, without a chat template (as the IFD
    papers do): the instruction, a newline, the reply. Loaded once and shared by the IFD and likelihood scores."""

    def __init__(self, model_spec: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_spec)
        self.model = AutoModelForCausalLM.from_pretrained(model_spec, dtype=torch.float32).eval()
        self.pad, self.batch_size = pad_id(self.tokenizer), batch_size
        tok = self.tokenizer
        # With no instruction the reply still needs a first position to be predicted from: BOS (or EOS).
        self.first_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def mean_nll(self, pairs: Sequence[tuple[str, str]], *, with_end: bool = False) -> list[float]:
        """Mean next-token NLL of each reply's tokens (and, ``with_end``, of the end-of-text token after it)
        given its prefix; an empty prefix conditions on BOS alone."""
        import torch

        end = [self.tokenizer.eos_token_id] if with_end and self.tokenizer.eos_token_id is not None else []
        examples = []
        for prefix, answer in pairs:
            head = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [self.first_id]
            body = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + end
            examples.append(Example(head + body, [IGNORE_INDEX] * len(head) + body))
        out = []
        with torch.no_grad():
            for start in range(0, len(examples), self.batch_size):
                batch = collate_padded(examples[start : start + self.batch_size], self.pad)
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                for row in range(logits.shape[0]):
                    total, count = token_nll_sum(logits[row : row + 1], batch["labels"][row : row + 1])
                    out.append(float(total) / max(1, count))
        return out


def ifd_scores(reference: ReferenceLM, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """IFD per (instruction, reply): mean NLL of the reply after the instruction over its mean NLL alone.
    Near or above 1: the instruction does not help predict the reply (a mismatched pair, or a generic reply
    such as a refusal, which is why tuneful weighs IFD instead of filtering on it by default)."""
    conditioned = reference.mean_nll([(instruction + "\n", answer) for instruction, answer in pairs])
    alone = reference.mean_nll([("", answer) for _, answer in pairs])
    return [c / a if a > 0 else float("inf") for c, a in zip(conditioned, alone)]


def likelihood_scores(reference: ReferenceLM, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Mean log-likelihood per token of each reply *and its end* given the instruction, under a reference model
    that knows the domain (a base model): a wrong fact is less likely than the right one, and a reply cut off
    mid-sentence is unlikely to end where it does. Higher is better."""
    return [-nll for nll in reference.mean_nll([(instruction + "\n", answer) for instruction, answer in pairs],
                                               with_end=True)]


def agreement_scores(instructions: Sequence[str], replies: Sequence[str], *, min_group: int = 3,
                     reply_match: float = 0.9) -> list[float | None]:
    """Self-consistency (Wang et al. 2023, arXiv:2203.11171, used here on a dataset instead of samples): the
    answer most replies to an instruction agree with is taken as right. Each record's score is its share of the
    *other* replies to the same or near-same instruction that agree with its reply, over the highest such share
    in its group: 1 for the plurality answer, less for a reply the others outvote. (Raw shares would rank the
    plurality answer of a split group below a minority answer of a unanimous one, and a wrong reply that
    recurs, such as "I am not sure.", scores a share of its own.)

    Instructions are the same when their normalised text is equal, near-same when one's word set contains the
    other's and their lengths differ by at most a quarter ("Please: what is X?" and "What is X?"). Replies agree
    when their normalised texts match at ``reply_match`` or more (rapidfuzz ratio / 100). None (no signal) where
    the group has fewer than ``min_group`` records or no two of its replies agree.
    """
    from rapidfuzz import fuzz

    groups = instruction_groups(instructions)
    norm = [normalise(r) for r in replies]
    out: list[float | None] = [None] * len(replies)
    for members in groups:
        if len(members) < min_group:
            continue
        agree = {i: 0 for i in members}
        for a_pos, a in enumerate(members):
            for b in members[a_pos + 1 :]:
                if norm[a] == norm[b] or fuzz.ratio(norm[a], norm[b]) >= reply_match * 100:
                    agree[a] += 1
                    agree[b] += 1
        top = max(agree.values())
        if not top:
            continue
        for i in members:
            out[i] = agree[i] / top
    return out


def instruction_groups(instructions: Sequence[str]) -> list[list[int]]:
    """Positions grouped by same or near-same instruction (see ``agreement_scores``). Candidate pairs of distinct
    normalised instructions come from MinHash LSH over their word sets (datasketch), confirmed by containment."""
    from datasketch import MinHash, MinHashLSH

    by_key: dict[str, list[int]] = {}
    for i, text in enumerate(instructions):
        by_key.setdefault(normalise(text), []).append(i)
    keys = list(by_key)
    words = [frozenset(k.split()) for k in keys]
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    signatures = MinHash.bulk([[w.encode() for w in ws] or [b""] for ws in words], num_perm=64, seed=3)
    lsh = MinHashLSH(threshold=0.6, num_perm=64)
    for k, sig in enumerate(signatures):
        for other in lsh.query(sig):
            j = int(other)
            small, large = sorted((words[k], words[j]), key=len)
            if small <= large and len(small) >= 0.75 * len(large):
                parent[root(k)] = root(j)
        lsh.insert(str(k), sig)
    grouped: dict[int, list[int]] = {}
    for k, key in enumerate(keys):
        grouped.setdefault(root(k), []).extend(by_key[key])
    return [sorted(members) for members in grouped.values()]
