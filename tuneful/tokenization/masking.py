"""Stage two of the data pipeline: a validated conversation -> ``input_ids`` + train mask(s).

Tokens and mask are built together from one rendering: the rendered text is tokenized once with
character offsets, and a token is trained when its characters overlap a trained span from
:mod:`tuneful.templates.spans`. A token that straddles a boundary (e.g. "▁The" covering the space the
template put before a reply) is trained, because the model has to emit it; a token entirely inside
template text never is. Labels are built from this mask in exactly one place: :func:`labels_from_mask`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..data.types import Conversation, IGNORE_INDEX
from ..samples import starter_path, train_tokenizer
from ..templates.registry import ChatTemplate, builtin
from ..templates.render import render
from ..templates.skeleton import SkeletonRenderer
from ..templates.spans import RenderedConversation, TurnSpan
from .offsets import ByteLevelOffsets


_NOWHERE = np.iinfo(np.int64).min
COMPUTED_OFFSETS_FROM = 8  # texts per tokenizer call from which offsets are computed from token lengths (.offsets)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def load_tokenizer(source: str | None, *, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer from a folder or hub id (remote code only if allowed); ``None`` or ``"starter"``
    gives the tiny tokenizer trained on the sample shipped with tuneful."""
    if source in (None, "starter"):
        return starter_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=trust_remote_code)


def starter_tokenizer() -> Any:
    """A tiny ChatML tokenizer trained on the starter sample shipped with tuneful (with the built-in chatml
    template)."""
    import json

    texts = []
    for line in starter_path().read_text(encoding="utf-8").splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    tokenizer = train_tokenizer(texts)
    tokenizer.chat_template = builtin("chatml").source
    return tokenizer


def stop_token_ids(tokenizer: Any, end_of_turn_ids: list[int]) -> list[int]:
    """The ids that end a reply at inference: the template's end-of-turn tokens and the tokenizer's EOS."""
    ids = set(end_of_turn_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def pad_id(tokenizer: Any, stop_ids: Sequence[int] = ()) -> int:
    """The one padding rule: the tokenizer's pad token, else its EOS, else the first stop id, else 0.

    tuneful masks padding by position everywhere (attention, labels), so the id never reaches a loss
    or an attention score; for generation it is also what finished rows are filled with, which is
    why a stop token is preferred over an arbitrary id.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, *stop_ids):
        if candidate is not None:
            return candidate
    return 0


# Role and turn markers as templates print them: <|im_start|>, <|eot_id|>, <|assistant|>, <start_of_turn> ...
_MARKER = re.compile(r"<\|[^<>|\s]+\|>|<[a-z]+(?:_[a-z]+)+>")
_MARKER_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                 {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]


def template_markers(tokenizer: Any, template: ChatTemplate) -> list[str]:
    """Markers the template prints around turns that the tokenizer does not have as tokens of their own."""
    text = render(_MARKER_PROBE, template.source, add_generation_prompt=True, special_tokens=special_tokens_of(tokenizer))
    vocab = tokenizer.get_vocab()
    return sorted({m for m in _MARKER.findall(text) if m not in vocab})


def add_template_tokens(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Make the template's missing markers special tokens of ``tokenizer`` (in place); their new ids.

    A base model's tokenizer (GPT-2, Mistral, ...) splits ``<|im_end|>`` into pieces, so the end of a turn
    is no single token the model can learn to stop on; as special tokens they are one id each, never
    split inside text, and generation can stop on them. The model's embeddings must grow to match.
    """
    markers = template_markers(tokenizer, template)
    if markers:
        tokenizer.add_tokens(markers, special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(m) for m in markers]


def special_tokens_of(tokenizer: Any) -> dict[str, str]:
    """The special-token strings a template sees as variables, as ``apply_chat_template`` passes them."""
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = getattr(tokenizer, key, None)
        if isinstance(value, str):
            out[key] = value
    return out


def stop_strings_of(tokenizer: Any) -> list[str]:
    """Strings that can end a turn: the tokenizer's special tokens (EOS and added special tokens)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            strings.add(str(token))
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        strings.add(eos)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and bos != eos:
        # BOS opens sequences; it never closes a turn (matters for templates that emit "</s><s>[INST]").
        strings.discard(bos)
    return sorted(s for s in strings if s)


def end_of_turn_ids(tokenizer: Any, turns: Iterable[TurnSpan]) -> list[int]:
    """Token ids of the end-of-turn strings that close ``turns`` (they become the model's stop tokens)."""
    return token_ids_of(tokenizer, {t.end_of_turn.strip() for t in turns if t.end_of_turn.strip()})


def token_ids_of(tokenizer: Any, strings: Iterable[str]) -> list[int]:
    """The ids of the strings that are single tokens of ``tokenizer`` (end-of-turn strings → stop ids)."""
    ids = {tokenizer.convert_tokens_to_ids(s) for s in strings if s}
    return sorted(ids - {None, getattr(tokenizer, "unk_token_id", None)})


@dataclass(frozen=True)
class TrainingExample:
    """One sequence a trainer learns from: token ids and the train mask (1 = trained)."""

    input_ids: list[int]
    train_mask: list[int]


@dataclass(frozen=True)
class TokenizedConversation:
    """A conversation's full rendering with every assistant turn marked as printed there, and the
    training examples made of it: usually the full rendering itself; for a template that rewrites
    history, also one example per turn that the full rendering shows differently from how the model
    writes it (policy ``keep``), or those turns left untrained (``drop_earlier``). A turn whose message
    has ``weight: 0`` is context only: in the rendering, never trained.
    """

    input_ids: list[int]
    train_mask: list[int]
    rendered: RenderedConversation
    offsets: np.ndarray | tuple = ()  # each token's characters in rendered.text, shape (tokens, 2)
    boundary_merges: int = 0  # trained tokens that also cover non-whitespace template text
    examples: tuple[TrainingExample, ...] = ()
    trained_turns: tuple[TurnSpan, ...] = ()  # the turns the settings and the messages' weights train

    @property
    def trained_tokens(self) -> int:
        """Tokens trained over all training examples of the conversation."""
        return sum(sum(e.train_mask) for e in self.examples)

    @property
    def all_turns_end(self) -> bool:
        """Every assistant turn has an end-of-turn string inside its trained span."""
        return all(t.end_of_turn for t in self.rendered.turns)

    @property
    def turns_out_of_context(self) -> list[TurnSpan]:
        """Turns the full rendering shows differently than the model writes them."""
        return [t for t in self.rendered.turns if not t.in_context]


def offsets_array(offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Token offsets as an int64 array of shape (tokens, 2)."""
    if isinstance(offsets, np.ndarray):
        return offsets
    return np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)


def special_token_offsets(
    text: str, input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], added: Mapping[int, str]
) -> np.ndarray:
    """Offsets (an array of shape (tokens, 2)) with added tokens narrowed to their own text.

    Added tokens with ``rstrip``/``lstrip`` (Phi-3's ``<|assistant|>``, ``<|end|>``) report offsets that
    include the whitespace they swallow, which may be the first characters of a reply; that must not
    make the role marker look like part of the reply.
    """
    bounds = offsets_array(offsets)
    hits = [k for k, token in enumerate(input_ids) if token in added] if added else ()  # a dict lookup beats np.isin here
    if hits:
        bounds = bounds.copy()
    for k in hits:
        content = added[int(input_ids[k])]
        start, end = int(bounds[k, 0]), int(bounds[k, 1])
        if end - start > len(content):
            found = text.find(content, start, end)
            if found >= 0:
                bounds[k] = (found, found + len(content))
    return bounds


def mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap a span. Zero-width tokens take the mask of their position.

    Vectorised (numpy), O((tokens + spans) log spans): a token overlaps some span [a, b) exactly when,
    among the spans with a < its end (a < its position, for a zero-width token), the furthest-reaching
    b lies beyond its start — so spans are sorted by start once, with a running maximum of their ends,
    and each token looks up its prefix by bisection. Any spans (overlapping or not), any number of
    texts at once (:func:`masks_from_offsets`).
    """
    if not len(offsets):
        return []
    bounds = offsets_array(offsets)
    if not len(spans):
        return [0] * len(bounds)
    edges = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    edges = edges[np.argsort(edges[:, 0], kind="stable")]
    # reach[j]: the furthest end among the first j spans by start (reach[0]: no span, reaches nothing)
    reach = np.concatenate([[_NOWHERE], np.maximum.accumulate(edges[:, 1])])
    start, end = bounds[:, 0], bounds[:, 1]
    before = np.searchsorted(edges[:, 0], np.where(end > start, end, start), side="left")  # spans with a < end (or < start)
    return (reach[before] > start).astype(np.int8).tolist()


def _laid_end_to_end(offsets: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]],
                     lengths: Sequence[int]) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """Many texts' token offsets and spans in the coordinates of the texts laid end to end (one character apart)."""
    if len(offsets) == 1:  # already in its own coordinates
        return offsets_array(offsets[0]), list(spans[0]), [len(offsets[0])]
    bases = np.cumsum([0, *(n + 1 for n in lengths[:-1])], dtype=np.int64)
    counts = [len(o) for o in offsets]
    flat = np.concatenate([offsets_array(o) for o in offsets]) + np.repeat(bases, counts)[:, None]
    shifted = [(a + base, b + base) for base, own in zip(bases.tolist(), spans) for a, b in own]
    return flat, shifted, counts


def _per_text(values: list, counts: Sequence[int]) -> list[list]:
    out, at = [], 0
    for n in counts:
        out.append(values[at:at + n])
        at += n
    return out


def masks_from_offsets(offsets: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]],
                       lengths: Sequence[int]) -> list[list[int]]:
    """:func:`mask_from_offsets` of many texts (``lengths``: their lengths in characters) in one vectorised call."""
    if not offsets:
        return []
    flat, shifted, counts = _laid_end_to_end(offsets, spans, lengths)
    return _per_text(mask_from_offsets(flat, shifted), counts)


def may_straddle(offsets: Sequence[np.ndarray], spans: Sequence[Sequence[tuple[int, int]]],
                 lengths: Sequence[int]) -> list[bool]:
    """For each text: whether a token has a span's edge strictly inside it — the texts :func:`count_boundary_merges`
    can find a merge in (most have none). One vectorised call for all."""
    if not offsets:
        return []
    flat, shifted, counts = _laid_end_to_end(offsets, spans, lengths)
    edges = np.unique(np.asarray(shifted, dtype=np.int64).ravel())
    if not len(edges) or not len(flat):
        return [False] * len(offsets)
    after = np.searchsorted(edges, flat[:, 0], side="right")  # the first edge past each token's start
    inside = (after < len(edges)) & (edges[np.minimum(after, len(edges) - 1)] < flat[:, 1])
    hits = np.bincount(np.repeat(np.arange(len(counts)), counts)[inside], minlength=len(counts))
    return (hits > 0).tolist()


def count_boundary_merges(
    text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> int:
    """Tokens that straddle a trained span's edge and carry non-whitespace template text with them.

    BPE can merge the end of the prompt with the start of a reply (e.g. "]" + "<think>" -> "]<").
    Such a token is trained because the model must emit it, but at inference the prompt is tokenized
    without the reply, so the model sees a different split there. Counted for preflight to report.
    Only the tokens that contain a span's edge can straddle it: found by bisection on token starts.
    """
    bounds = offsets_array(offsets)
    if not may_straddle([bounds], [spans], [len(text)])[0]:
        return 0  # no token has an edge strictly inside it: none can straddle one (most conversations)
    merges = 0
    for a, b in spans:
        candidates = set()
        for edge in (a, b):
            at = int(np.searchsorted(bounds[:, 0], edge, side="right")) - 1  # last token starting at/before it
            while at >= 0:
                start, end = int(bounds[at, 0]), int(bounds[at, 1])
                if end > edge:
                    candidates.add(at)
                elif end > start:
                    break  # tokens further back end before the edge (zero-width ones are stepped over)
                at -= 1
        for k in candidates:
            start, end = int(bounds[k, 0]), int(bounds[k, 1])
            outside = (text[start:a] if start < a < end else "") + (text[b:end] if start < b < end else "")
            if outside.strip():
                merges += 1
    return merges


def labels_from_mask(input_ids: Sequence[int], train_mask: Sequence[int]) -> list[int]:
    """Causal-LM labels: the token id where trained, IGNORE_INDEX elsewhere (the model shifts them)."""
    if len(input_ids) != len(train_mask):
        raise ValueError(f"input_ids ({len(input_ids)}) and train_mask ({len(train_mask)}) differ in length")
    return [t if m else IGNORE_INDEX for t, m in zip(input_ids, train_mask)]


REASONING_POLICIES = ("keep", "drop_earlier")


class ConversationTokenizer:
    """Tokenize conversations with one template and tokenizer; the same object serves training and checks.

    ``reasoning``: what to do with a turn the template later shows differently (earlier reasoning
    dropped, context moved): "keep" trains it in an example of its own, in exactly its inference
    context; "drop_earlier" leaves it untrained (one example per conversation, fewer tokens).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate,
        *,
        last_turn_only: bool = False,
        now: datetime | None = None,
        reasoning: str = "keep",
    ):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "tuneful needs a fast (Rust) tokenizer for character offsets; load it with "
                "AutoTokenizer.from_pretrained(..., use_fast=True) or convert it with tokenizers"
            )
        if reasoning not in REASONING_POLICIES:
            raise ValueError(f"reasoning must be one of {REASONING_POLICIES}, got {reasoning!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.last_turn_only = last_turn_only
        self.now = now
        self.reasoning = reasoning
        self.special_tokens = special_tokens_of(tokenizer)
        self.stop_strings = stop_strings_of(tokenizer)
        # added tokens whose offsets can cover more than their text (see special_token_offsets): those that swallow
        # whitespace, or are matched in normalized text; the others' offsets are exactly their text
        self.added_tokens = {i: str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                             if getattr(t, "lstrip", True) or getattr(t, "rstrip", True) or getattr(t, "normalized", True)}
        self._skeletons: SkeletonRenderer | None = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_offsets = ByteLevelOffsets(backend, not_tiling=list(self.added_tokens)) if backend is not None else None

    @property
    def skeletons(self) -> SkeletonRenderer:
        """What renders and locates turns: once per shape of conversation where the template allows
        (built on first use: it reads the template's syntax tree)."""
        if self._skeletons is None:
            self._skeletons = SkeletonRenderer(self.template.source, stop_strings=self.stop_strings,
                                               special_tokens=self.special_tokens, now=self.now)
        return self._skeletons

    def render(self, messages: Sequence[Mapping[str, Any]] | Conversation, **inputs: Any) -> RenderedConversation:
        """Render with spans. ``inputs``: ``tools`` / ``template_kwargs`` (taken from a Conversation when given one)."""
        messages, inputs = _messages_and_inputs(messages, inputs)
        return self.skeletons.render_with_spans(messages, **inputs)

    def _encode_many(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray]]:
        """Token ids and character offsets of each text, in one batched call to the Rust tokenizer; offsets
        from token lengths where that is exact (:mod:`.offsets`), else read out of the encoding."""
        if not texts:
            return []
        # The template places BOS itself; adding special tokens here would double it.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            encodings = backend.encode_batch(list(texts), add_special_tokens=False)
            ids_of = [encoding.ids for encoding in encodings]
            # computed for a batch; for a few texts numpy's per-call overhead costs more than reading the tuples
            computed_of = self.byte_offsets.offsets_many(texts, ids_of) if len(texts) >= COMPUTED_OFFSETS_FROM else [None] * len(texts)
            out = []
            for text, encoding, ids, computed in zip(texts, encodings, ids_of, computed_of):
                if computed is None or self.byte_offsets.wants_check() and not self.byte_offsets.check(
                        computed, offsets_array(encoding.offsets)):
                    computed = special_token_offsets(text, ids, encoding.offsets, self.added_tokens)
                out.append((ids, computed))
            return out
        # the backend carries its own truncation or padding: the wrapper switches them off per call
        batch = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(ids, special_token_offsets(text, ids, offsets, self.added_tokens))
                for text, ids, offsets in zip(texts, batch["input_ids"], batch["offset_mapping"])]

    def __call__(self, messages: Sequence[Mapping[str, Any]] | Conversation, **inputs: Any) -> TokenizedConversation:
        rendered = self.render(messages, **inputs)
        return self._tokenize_rendered([rendered], [_weight_zero(messages)])[0]

    def tokenize_many(self, conversations: Sequence[Conversation]) -> list[TokenizedConversation | Exception]:
        """:meth:`__call__` over many conversations with one tokenizer call for all of them; a conversation
        the template fails on gives its exception in its place, so one bad record does not stop a batch."""
        rendered: list[RenderedConversation | Exception] = []
        for conv in conversations:
            try:
                rendered.append(self.render(conv))
            except Exception as exc:
                rendered.append(exc)
        fine = [(r, _weight_zero(conv)) for r, conv in zip(rendered, conversations) if not isinstance(r, Exception)]
        good = iter(self._tokenize_rendered([r for r, _ in fine], [untrained for _, untrained in fine]))
        return [r if isinstance(r, Exception) else next(good) for r in rendered]

    def trained_turns(self, rendered: RenderedConversation, untrained: frozenset[int] = frozenset()) -> tuple[TurnSpan, ...]:
        """The turns trained: every assistant turn, or the last (``last_turn_only``), less those whose message
        index is in ``untrained`` (``weight: 0``). The one place this is decided."""
        turns = rendered.turns[-1:] if self.last_turn_only else rendered.turns
        return tuple(t for t in turns if t.message_index not in untrained)

    def _tokenize_rendered(self, rendered: Sequence[RenderedConversation],
                           untrained: Sequence[frozenset[int]]) -> list[TokenizedConversation]:
        turns_of = [self.trained_turns(r, skip) for r, skip in zip(rendered, untrained)]
        texts = [r.text for r in rendered]
        for turns in turns_of:  # a turn the full rendering shows differently trains in an example of its own
            if self.reasoning == "keep":
                texts += [t.own_prompt + t.generated for t in turns if not t.in_context]
        encoded = self._encode_many(texts)
        alone = iter(encoded[len(rendered):])
        shown_of = [[(t.start, t.end) for t in turns] for turns in turns_of]
        offsets_of = [offsets for _, offsets in encoded[:len(rendered)]]
        lengths = [len(r.text) for r in rendered]
        masks = masks_from_offsets(offsets_of, shown_of, lengths)  # the batch's masks in one vectorised pass
        straddling = may_straddle(offsets_of, shown_of, lengths)
        out = []
        for r, turns, (ids, offsets), shown, mask, straddles in zip(rendered, turns_of, encoded, shown_of, masks, straddling):
            in_context = [t for t in turns if t.in_context]
            examples = []
            if in_context:
                trained = mask if len(in_context) == len(turns) else mask_from_offsets(offsets, [(t.start, t.end) for t in in_context])
                examples.append(TrainingExample(ids, trained))
            if self.reasoning == "keep":
                for turn in turns:
                    if not turn.in_context:
                        turn_ids, turn_offsets = next(alone)
                        examples.append(TrainingExample(turn_ids, mask_from_offsets(
                            turn_offsets, [(len(turn.own_prompt), len(turn.own_prompt) + len(turn.generated))])))
            merges = count_boundary_merges(r.text, offsets, shown) if straddles else 0
            out.append(TokenizedConversation(ids, mask, r, offsets, merges, tuple(examples), turns))
        return out


def _weight_zero(messages: Sequence[Mapping[str, Any]] | Conversation) -> frozenset[int]:
    """Indices of the messages marked ``weight: 0`` (context, not trained)."""
    if isinstance(messages, Conversation):
        return frozenset(i for i, m in enumerate(messages.messages) if m.weight == 0)
    return frozenset(i for i, m in enumerate(messages) if m.get("weight") == 0)


def _messages_and_inputs(messages: Any, inputs: dict) -> tuple[list[Mapping[str, Any]], dict]:
    """The message dicts the template renders (a ``weight`` decides training, never the rendering) and its inputs."""
    if isinstance(messages, Conversation):
        return messages.to_dicts(), {**messages.inputs.render_kwargs(), **inputs}
    return [{k: v for k, v in m.items() if k != "weight"} if "weight" in m else m for m in messages], inputs
