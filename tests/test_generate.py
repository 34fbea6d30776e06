"""``tuneful.infer.generate``: the serving engine run in the caller's thread over a list of prompts.

Greedy replies equal the model's own ``generate`` on each prompt alone, while prompts join the running batch as
rows free up; a sampled reply depends on its seed and its place in the list, not on which prompts share its
batch; stop tokens end a reply and are reported, never emitted.
"""

from __future__ import annotations

import torch

from tuneful.infer.generate import generate

QUESTIONS = ["What is the capital of Norland?", "Name an animal.", "Tell me about Vesper and its long rivers.",
             "Hi.", "Which city is the largest one in the whole of Ostia, and why?", "Count to three."]


def _prompts(chat) -> list[list[int]]:
    return [chat.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_replies_equal_the_models_own_generate_alone(sandbox_chat):
    chat = sandbox_chat
    prompts = _prompts(chat)
    ours = generate(chat.model, chat.tokenizer, prompts, stop_ids=chat.stop_ids, max_new_tokens=24, batch_size=2)
    for prompt, reply in zip(prompts, ours):
        ids = torch.tensor([prompt])
        out = chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                  do_sample=False, eos_token_id=chat.stop_ids, pad_token_id=chat.pad_id)
        own = out[0, len(prompt):].tolist()
        stop = next((k for k, t in enumerate(own) if t in chat.stop_ids), None)
        assert reply.token_ids == (own if stop is None else own[:stop])
        assert reply.stopped == (stop is not None) and reply.stop_token == (own[stop] if stop is not None else None)


def test_a_sample_depends_on_its_seed_and_place_not_on_its_batch(sandbox_chat):
    chat = sandbox_chat
    prompts = _prompts(chat)
    options = dict(stop_ids=chat.stop_ids, max_new_tokens=16, do_sample=True, temperature=1.0, seed=7)
    together = generate(chat.model, chat.tokenizer, prompts, batch_size=6, **options)
    in_pairs = generate(chat.model, chat.tokenizer, prompts, batch_size=2, **options)
    assert [g.token_ids for g in together] == [g.token_ids for g in in_pairs]
    other_seed = generate(chat.model, chat.tokenizer, prompts, batch_size=6, **{**options, "seed": 8})
    assert [g.token_ids for g in other_seed] != [g.token_ids for g in together]
