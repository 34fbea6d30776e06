"""``tuneful.infer.generate``: the serving engine run in the caller's thread over a list of prompts.

Greedy replies equal the model's own ``generate`` on each prompt alone, while prompts join the running batch as
rows free up; a sampled reply depends on its seed and its place in the list, not on which prompts share its
batch; stop tokens end a reply and are reported, never emitted; a next turn through a prefix cache replies as the model
does on the whole prompt.
"""

from __future__ import annotations

import torch

from tuneful.infer.engine import Decoding, GenerationEngine, GenerationRequest, Sampling
from tuneful.infer.generate import generate
from tuneful.infer.prefix_cache import PrefixCache

QUESTIONS = ["What is the capital of Norland?", "Name an animal.", "Tell me about Vesper and its long rivers.",
             "Hi.", "Which city is the largest one in the whole of Ostia, and why?", "Count to three."]


def _prompts(chat) -> list[list[int]]:
    return [chat.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_replies_equal_the_models_own_generate_alone(sandbox_chat):
    chat = sandbox_chat
    prompts = _prompts(chat)
    ours = generate(chat.model, chat.tokenizer, prompts, stop_ids=chat.stop_ids, max_new_tokens=24, batch_size=2)
    for prompt, reply in zip(prompts, ours):
        own, stop = _models_own_greedy(chat, prompt, 24)
        assert reply.token_ids == (own if stop is None else own[:stop])
        assert reply.stopped == (stop is not None) and reply.stop_token == (own[stop] if stop is not None else None)


def _models_own_greedy(chat, prompt: list[int], max_new_tokens: int) -> tuple[list[int], int | None]:
    """The model's own ``generate`` on ``prompt`` alone: its new tokens and where the first stop token is (None)."""
    ids = torch.tensor([prompt])
    out = chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, eos_token_id=chat.stop_ids, pad_token_id=chat.pad_id)
    own = out[0, len(prompt):].tolist()
    return own, next((k for k, t in enumerate(own) if t in chat.stop_ids), None)


def test_a_sample_depends_on_its_seed_and_place_not_on_its_batch(sandbox_chat):
    chat = sandbox_chat
    prompts = _prompts(chat)
    options = dict(stop_ids=chat.stop_ids, max_new_tokens=16, do_sample=True, temperature=1.0, seed=7)
    together = generate(chat.model, chat.tokenizer, prompts, batch_size=6, **options)
    in_pairs = generate(chat.model, chat.tokenizer, prompts, batch_size=2, **options)
    assert [g.token_ids for g in together] == [g.token_ids for g in in_pairs]
    other_seed = generate(chat.model, chat.tokenizer, prompts, batch_size=6, **{**options, "seed": 8})
    assert [g.token_ids for g in other_seed] != [g.token_ids for g in together]


def test_a_next_turn_prefills_only_what_the_kept_turn_did_not_hold_and_replies_the_same(sandbox_chat):
    """A second turn (first turn, its reply, a new question) through a PrefixCache holding the first turns, in a
    call that also holds prompts with nothing kept (they prefill apart) and rows that join as others end: the
    same greedy tokens as the model's own ``generate`` on each prompt alone, with most of the tokens reused."""
    chat = sandbox_chat
    system = {"role": "system", "content": "You answer questions about the sandbox world, briefly and plainly."}
    conversations = [[system, {"role": "user", "content": q}] for q in QUESTIONS]
    kept = PrefixCache()
    first = generate(chat.model, chat.tokenizer, [chat.prompt_ids(c) for c in conversations], stop_ids=chat.stop_ids,
                     max_new_tokens=24, batch_size=2, prefix_cache=kept)
    assert len(kept) == len(QUESTIONS)
    follow = ["And why is that?", "Say it again, but longer this time please."]
    second = [chat.prompt_ids(c + [{"role": "assistant", "content": g.text}, {"role": "user", "content": f}])
              for c, g in zip(conversations, first) for f in follow[: 1 + len(c[1]["content"]) % 2]]
    second += [chat.prompt_ids([{"role": "user", "content": "Something new: tell me about the long sea " * 3}])]
    ours = generate(chat.model, chat.tokenizer, second, stop_ids=chat.stop_ids, max_new_tokens=20, batch_size=3,
                    prefix_cache=kept)
    assert kept.taken >= len(QUESTIONS)  # each first turn, and rows of this call for a sibling follow-up
    assert kept.reused_tokens > 0.6 * sum(map(len, second))
    for prompt, reply in zip(second, ours):
        own, stop = _models_own_greedy(chat, prompt, 20)
        assert reply.token_ids == (own if stop is None else own[:stop])


def test_a_group_of_one_prompt_is_prefilled_once_and_each_row_samples_its_own(sandbox_chat):
    """GRPO's group: the same prompt 4 times among others. Joined together, each distinct prompt runs through the
    model once; every row still draws its own sample, the one it draws when it joins alone."""
    chat = sandbox_chat
    prompts = [p for p in _prompts(chat)[:3] for _ in range(4)]
    options = dict(stop_ids=chat.stop_ids, max_new_tokens=16, do_sample=True, temperature=1.0, seed=3)
    together = generate(chat.model, chat.tokenizer, prompts, batch_size=12, **options)
    alone = generate(chat.model, chat.tokenizer, prompts, batch_size=1, **options)
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert len({tuple(g.token_ids) for g in together[:4]}) > 1  # a group's samples differ

    engine = GenerationEngine(Decoding(chat.model, chat.stop_ids, chat.pad_id), max_batch=12)
    engine.run([GenerationRequest(p, 4, Sampling(1.0), seed=k, stream=False) for k, p in enumerate(prompts)])
    assert engine.prefilled_tokens == sum(map(len, _prompts(chat)[:3]))


def test_a_prefix_every_prompt_shares_is_run_once(sandbox_chat):
    """Prompts behind one long system prompt (tool definitions, a Self-Instruct prompt's fixed examples), two of
    them identical: the shared prefix runs through the model once, each distinct rest once, and every reply is the
    model's own greedy one on its whole prompt."""
    chat = sandbox_chat
    system = {"role": "system", "content": "You answer questions about the sandbox world. Keep every answer to one "
                                           "short sentence, name the country you speak of, and never guess a "
                                           "number: say that you do not know it instead. " * 2}
    prompts = [chat.prompt_ids([system, {"role": "user", "content": q}]) for q in QUESTIONS + QUESTIONS[:1]]
    shared = next(i for i in range(len(prompts[0])) if len({p[i] for p in prompts}) > 1)
    assert shared >= 64
    engine = GenerationEngine(Decoding(chat.model, chat.stop_ids, chat.pad_id), max_batch=8)
    requests = [GenerationRequest(p, 12, stream=False) for p in prompts]
    engine.run(requests)
    assert engine.prefilled_tokens == shared + sum(len(p) - shared for p in prompts[:-1])
    for prompt, request in zip(prompts, requests):
        own, stop = _models_own_greedy(chat, prompt, 12)
        assert list(request.tokens()) == (own if stop is None else own[:stop])
