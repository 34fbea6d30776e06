"""``tuneful.infer.prefix_cache``: finished sequences' keys and values, taken by the request sharing the longest prefix.

Literal tensors: every stored key holds its own position, so a taken prefix shows which positions came back.
"""

from __future__ import annotations

import torch

from tuneful.infer.prefix_cache import BLOCK, PrefixCache, _Stored


def _layers(length: int, tag: float = 0.0, n_layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(heads 1, length, dim 1) keys holding their position (+ tag), values the negated keys."""
    keys = (torch.arange(length, dtype=torch.float32) + tag).view(1, length, 1)
    return [(keys + layer * 1000, -(keys + layer * 1000)) for layer in range(n_layers)]


def test_the_longest_shared_prefix_is_reused_and_a_sequence_covered_whole_leaves():
    cache = PrefixCache()
    prompt = list(range(100, 140))  # 40 tokens: two whole blocks and a part
    cache.put(prompt[:35], _layers(35, tag=0.5))  # shares 35 tokens: all of it
    cache.put(prompt[:20] + [7] * 20, _layers(40, tag=0.25))  # shares 20
    found = cache.take(prompt)
    assert found.length == 35
    assert found.layers[0][0].view(-1).tolist() == [i + 0.5 for i in range(35)]
    assert found.layers[1][1].view(-1).tolist() == [-(1000 + i + 0.5) for i in range(35)]
    assert len(cache) == 1 and (cache.taken, cache.reused_tokens) == (1, 35)  # covered whole: gone
    for _ in range(2):  # the other one's 20 shared tokens; matched in part, it stays for its own next turn
        again = cache.take(prompt)
        assert again.length == 20 and again.layers[0][0].view(-1).tolist() == [i + 0.25 for i in range(20)]
    assert len(cache) == 1 and cache.take(prompt[:20] + [7] * 21).length == 40 and len(cache) == 0
    assert cache.nbytes == 0 and cache.take(prompt) is None

    cache.put(prompt, _layers(40))
    assert cache.take(prompt).length == 39  # the same prompt again: its last token is prefilled for its logits
    cache.put(prompt + [1, 2, 3], _layers(43))
    assert cache.take(prompt).length == 39


def test_short_matches_hash_collisions_and_the_byte_budget():
    cache = PrefixCache()
    cache.put(list(range(BLOCK - 1)), _layers(BLOCK - 1))  # shorter than a block: not kept
    assert len(cache) == 0
    cache.put(list(range(40)), _layers(40))
    assert cache.take([0, 1, 2] + [9] * 40) is None  # shares less than a block
    assert len(cache) == 1  # and left in place

    forged = PrefixCache()  # a sequence reached through the hash of a prefix it does not have
    forged.put(list(range(40)), _layers(40))
    bucket = forged._stored[0].blocks[0]
    forged._remove(0)
    forged._stored[9] = _Stored([5] * BLOCK + list(range(BLOCK, 40)), _layers(40, tag=9.0), [bucket], 0)
    forged._by_block[bucket] = {9: None}
    assert forged.take(list(range(20))) is None

    one = sum(k.numel() * 4 * 2 for k, _ in _layers(40))  # bytes of one 40-token sequence (keys and values)
    small = PrefixCache(max_bytes=2 * one)
    small.put(list(range(0, 40)), _layers(40))
    small.put(list(range(1000, 1040)), _layers(40))
    assert small.take(list(range(20))).length == 19  # used: now the most recent
    small.put(list(range(2000, 2040)), _layers(40))
    assert len(small) == 2 and small.nbytes == 2 * one  # the least recently used went first
    assert small.take(list(range(1000, 1040))) is None and small.take(list(range(0, 40))).length == 39
    small.put(list(range(40)), _layers(40) * 3)  # larger than the whole budget: not kept, nothing evicted for it
    assert len(small) == 2
