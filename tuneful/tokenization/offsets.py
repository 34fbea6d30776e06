"""Character offsets of byte-level BPE tokens from their ids alone, instead of reading them out of the Rust encoding.

Knows only a fast tokenizer's backend, texts and token ids; nothing of templates or masks.

Why: reading ``Encoding.offsets`` builds a Python tuple per token, and turning those into an array
costs more than the mask built from them — on ~100-token conversations about a tenth of the whole
preparation (``bench/mask_speed.py``). For a byte-level BPE tokenizer (GPT-2, Llama-3, Qwen, Falcon,
StarCoder2, DeepSeek) every vocabulary token stands for as many bytes as its string has characters
and, where nothing trims offsets, tokens tile the text; an added token stands for its own characters.
On a text that is ASCII outside its added tokens (bytes are characters there), with a normaliser that
changes no ASCII character, a token's offsets are therefore the running sum of those lengths: one
table lookup and one ``cumsum`` per text.

Where that is not known to hold it is not used: another pre-tokeniser or normaliser, a post-processor
that trims offsets (the whole tokenizer); a text with non-ASCII characters outside added tokens, an added token that swallows whitespace
or is matched after normalisation, lengths that do not add up to the text (that text). And what it
rests on is checked as the data goes: the first ``verify_first`` texts and every ``check_every``-th
after are compared with the Rust offsets; a difference switches it off for good, with a warning.
"""

from __future__ import annotations

import logging
from itertools import chain
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

# normalisers that leave every ASCII character as it is
_ASCII_IDENTITY_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")
# table entries: length not read yet; a token whose offsets may not tile the text (so negative that a text holding
# one can never have lengths that add up to its own)
_UNKNOWN, _NOT_TILING = -1, -(1 << 40)


def _members(component: Any) -> list[Any]:
    """The parts of a ``Sequence`` pre-tokeniser / normaliser / post-processor, or the component alone."""
    if component is None:
        return []
    if type(component).__name__ == "Sequence":
        return list(component)
    return [component]


def byte_level_reason(backend: Any) -> str:
    """Why offsets cannot be computed from token lengths for this Rust tokenizer ("" when they can)."""
    if type(backend.model).__name__ != "BPE":
        return f"model {type(backend.model).__name__}, not BPE"
    if "ByteLevel" not in [type(m).__name__ for m in _members(backend.pre_tokenizer)]:
        return "no ByteLevel pre-tokenizer"
    odd = [type(m).__name__ for m in _members(backend.normalizer) if type(m).__name__ not in _ASCII_IDENTITY_NORMALIZERS]
    if odd:
        return f"normalizer {odd[0]} may change ASCII text"
    if any(getattr(m, "trim_offsets", False) for m in _members(backend.post_processor)):
        return "the post-processor trims offsets"
    return ""


class ByteLevelOffsets:
    """Offsets of the tokens of a text from their ids, where that is exact (see the module's docstring).

    ``not_tiling``: added-token ids whose offsets can differ from their text (they swallow whitespace or
    are matched in normalised text); a text holding one gets ``None``. ``counts``: texts done from token
    lengths, texts left to the Rust offsets, texts checked against them.
    """

    def __init__(self, backend: Any, *, not_tiling: Sequence[int] = (), verify_first: int = 32, check_every: int = 512):
        self.backend = backend
        self.why_not = byte_level_reason(backend)
        self.verify_first = verify_first
        self.check_every = check_every
        self.counts = {"computed": 0, "rust": 0, "checked": 0}
        self._not_tiling = list(not_tiling)
        self._lengths: np.ndarray | None = None
        self._seen = 0
        # added tokens printed in non-ASCII (DeepSeek's "<｜begin▁of▁sentence｜>"): their offsets are their characters,
        # so a text is fit when it is ASCII once they are taken out
        self._wide_added = sorted({str(t) for t in (backend.get_added_tokens_decoder() if self.enabled else {}).values()
                                   if not str(t).isascii()}, key=len, reverse=True)

    @property
    def enabled(self) -> bool:
        return not self.why_not

    def _table(self) -> np.ndarray:
        if self._lengths is None:  # built on first use: one entry per id, filled in as ids turn up
            size = max(self.backend.get_vocab_size(with_added_tokens=True), max(self._not_tiling, default=-1) + 1)
            self._lengths = np.full(size, _UNKNOWN, dtype=np.int64)
            self._lengths[self._not_tiling] = _NOT_TILING
        return self._lengths

    def _lengths_of(self, ids: np.ndarray) -> np.ndarray:
        table = self._table()
        try:
            lengths = table[ids]
        except IndexError:  # an id past the vocabulary: nothing is known of it
            return np.full(len(ids), _NOT_TILING, dtype=np.int64)
        if (lengths == _UNKNOWN).any():
            for token_id in np.unique(ids[lengths == _UNKNOWN]).tolist():
                token = self.backend.id_to_token(token_id)
                table[token_id] = _NOT_TILING if token is None else len(token)
            lengths = table[ids]
        return lengths

    def _ascii_outside_added(self, text: str) -> bool:
        if text.isascii():
            return True
        for content in self._wide_added:
            text = text.replace(content, "")
        return text.isascii()

    def wants_check(self) -> bool:
        """Whether the next text is one to compare with the Rust offsets (counts it)."""
        self._seen += 1
        return self._seen <= self.verify_first or self._seen % self.check_every == 0

    def offsets(self, text: str, ids: Sequence[int]) -> np.ndarray | None:
        """Offsets of shape (tokens, 2), or None where this text needs the Rust ones."""
        return self.offsets_many([text], [ids])[0]

    def offsets_many(self, texts: Sequence[str], ids_of: Sequence[Sequence[int]]) -> list[np.ndarray | None]:
        """:meth:`offsets` of many texts: one table lookup and one ``cumsum`` over all their tokens."""
        fit = [self.enabled and self._ascii_outside_added(text) for text in texts]
        counts = [len(ids) for ids in ids_of]
        if not any(fit) or not sum(counts):  # nothing to compute, or no tokens at all (empty texts)
            out = [np.zeros((0, 2), dtype=np.int64) if ok and not text else None for ok, text in zip(fit, texts)]
            self.counts["rust"] += sum(o is None for o in out)
            self.counts["computed"] += sum(o is not None for o in out)
            return out
        lengths = self._lengths_of(np.fromiter(chain.from_iterable(ids_of), dtype=np.int64, count=sum(counts)))
        ends = np.cumsum(lengths)
        pairs = np.stack([ends - lengths, ends], axis=1)
        through = np.concatenate([[0], ends])[np.cumsum(counts)].tolist()  # the lengths of all tokens up to each text's end
        out, at, before = [], 0, 0
        for text, n, ok, upto in zip(texts, counts, fit, through):
            if ok and upto - before == len(text):  # a token that does not tile makes the difference negative
                out.append(pairs[at:at + n] - before if before else pairs[at:at + n])
                self.counts["computed"] += 1
            else:
                out.append(None)
                self.counts["rust"] += 1
            at, before = at + n, upto
        return out

    def check(self, computed: np.ndarray, rust: np.ndarray) -> bool:
        """Compare computed offsets with the Rust ones; a difference switches the computation off for good."""
        self.counts["checked"] += 1
        if computed.shape == rust.shape and bool((computed == rust).all()):
            return True
        self.why_not = "offsets from token lengths differed from the tokenizer's"
        log.warning("tuneful: token offsets computed from token lengths differed from the tokenizer's own; "
                    "reading them from the tokenizer from now on (please report it with the tokenizer)")
        return False
