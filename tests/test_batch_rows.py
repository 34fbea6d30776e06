"""``tuneful.infer.batch_rows``: left-padded rows, their positions, and the cache layer that grows in place.

Literal tensors: each key is its (row, position) written as row * 100 + position, values its negation, so every
operation's result can be read off.
"""

from __future__ import annotations

import torch

from tuneful.infer.batch_rows import GrowingLayer, left_padded, positions_of


def _states(rows: int, start: int, count: int) -> torch.Tensor:
    """(rows, heads 1, count, dim 1): row r, position p holds r * 100 + p."""
    positions = torch.arange(start, start + count, dtype=torch.float32)
    return (torch.arange(rows, dtype=torch.float32)[:, None] * 100 + positions).view(rows, 1, count, 1)


def _read(tensor: torch.Tensor) -> list[list[float]]:
    return tensor[:, 0, :, 0].tolist()


def test_left_padding_and_positions():
    ids, mask = left_padded([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    holes = torch.tensor([[0, 1, 1, 0, 0, 1, 1]])  # a reused prefix, then a left-padded suffix
    assert positions_of(holes).tolist() == [[0, 0, 1, 1, 1, 2, 3]]


def test_a_growing_layer_writes_in_place_and_copies_only_when_full():
    layer = GrowingLayer()
    keys, values = layer.update(_states(2, 0, 5), -_states(2, 0, 5))
    assert _read(keys) == [[0, 1, 2, 3, 4], [100, 101, 102, 103, 104]] and _read(values)[1][0] == -100
    buffer = layer._keys_buffer
    assert buffer.shape[-2] == 5 + 32 and layer.get_seq_length() == 5  # room to spare
    for position in range(5, 37):  # one token per step: the same buffer until it is full
        keys, _ = layer.update(_states(2, position, 1), -_states(2, position, 1))
    assert layer._keys_buffer is buffer and _read(keys)[0] == list(range(37))
    keys, _ = layer.update(_states(2, 37, 1), -_states(2, 37, 1))
    assert layer._keys_buffer is not buffer and _read(keys)[1] == [100 + p for p in range(38)]
    assert layer._keys_buffer.shape[-2] == 38 + 32

    layer.batch_select_indices(torch.tensor([1]))  # a row leaves: the other keeps its room
    assert _read(layer.keys) == [[100 + p for p in range(38)]] and layer._keys_buffer.shape[-2] == 70
    layer.drop_leading(30)  # columns no row uses: forgotten without a copy
    assert _read(layer.keys) == [[100 + p for p in range(30, 38)]] and layer.get_seq_length() == 8
    keys, values = layer.update(_states(2, 38, 1)[1:], -_states(2, 38, 1)[1:])
    assert _read(keys) == [[100 + p for p in range(30, 39)]] and _read(values)[0][-1] == -138


def test_rows_merge_right_aligned_and_a_tensor_set_from_outside_is_never_written_into():
    old, new = GrowingLayer(), GrowingLayer()
    old.update(_states(1, 0, 3), -_states(1, 0, 3))
    new.update(_states(2, 0, 5), -_states(2, 0, 5))
    old.merge_rows(new, width=6)
    assert _read(old.keys) == [[0, 0, 0, 0, 1, 2], [0, 0, 1, 2, 3, 4], [0, 100, 101, 102, 103, 104]]
    assert _read(old.values)[2] == [0, -100, -101, -102, -103, -104]

    outside = _states(1, 0, 4)
    layer = GrowingLayer()
    layer.update(_states(1, 0, 1), -_states(1, 0, 1))
    layer.keys, layer.values = outside[..., :2, :], -outside[..., :2, :]  # transformers' crop assigns a view
    layer.update(_states(1, 7, 1), -_states(1, 7, 1))
    assert _read(layer.keys) == [[0, 1, 7]] and _read(outside) == [[0, 1, 2, 3]]  # written elsewhere


def test_reused_rows_fill_an_empty_layer_right_aligned():
    layer = GrowingLayer()
    rows = [(_states(1, 0, 2)[0], -_states(1, 0, 2)[0]), (_states(2, 0, 4)[1], -_states(2, 0, 4)[1])]
    layer.fill_rows(rows, width=4)
    assert _read(layer.keys) == [[0, 0, 0, 1], [100, 101, 102, 103]] and _read(layer.values)[0] == [0, 0, 0, -1]
    keys, _ = layer.update(_states(2, 4, 1), -_states(2, 4, 1))  # the prompts that follow go after them
    assert _read(keys) == [[0, 0, 0, 1, 4], [100, 101, 102, 103, 104]] and layer.get_seq_length() == 5


def test_rows_join_into_spare_rows_and_leaving_rows_are_overwritten_by_the_last():
    """After a merge the buffer has spare rows: a later row that fits the held width is written there (the rows
    already held are not copied), and a row that ends is overwritten by the last running row (only it is copied)."""
    layer, first = GrowingLayer(), GrowingLayer()
    layer.update(_states(1, 0, 3), -_states(1, 0, 3))
    first.update(_states(2, 0, 2), -_states(2, 0, 2))
    layer.merge_rows(first, width=4)  # a new buffer: 3 rows held, a quarter more (at least 4) spare
    buffer = layer._keys_buffer
    assert buffer.shape[0] == 3 + 4 and _read(layer.keys) == [[0, 0, 1, 2], [0, 0, 0, 1], [0, 0, 100, 101]]
    buffer[3:, 0, :, 0] = 7.0  # what an earlier row left in the spare rows: overwritten or zeroed

    late = GrowingLayer()
    late.update(_states(2, 10, 3), -_states(2, 10, 3))
    layer.merge_rows(late, width=4)
    assert layer._keys_buffer is buffer  # in place
    assert _read(layer.keys)[3:] == [[0, 10, 11, 12], [0, 110, 111, 112]] and _read(layer.values)[4][0] == 0

    layer.keep_rows([4], [1], rows=4)  # row 1 ended (and row 3 stays): the last row takes its place
    assert layer._keys_buffer is buffer
    assert _read(layer.keys) == [[0, 0, 1, 2], [0, 110, 111, 112], [0, 0, 100, 101], [0, 10, 11, 12]]
    assert _read(layer.values)[1] == [0, -110, -111, -112]
    keys, _ = layer.update(_states(4, 20, 1), -_states(4, 20, 1))  # decoding goes on in the same buffer
    assert layer._keys_buffer is buffer and [row[-1] for row in _read(keys)] == [20, 120, 220, 320]

    wide = GrowingLayer()
    wide.update(_states(1, 50, 7), -_states(1, 50, 7))
    layer.merge_rows(wide, width=7)  # wider than what is held: every row into a new buffer
    assert layer._keys_buffer is not buffer
    assert _read(layer.keys)[0] == [0, 0, 0, 0, 1, 2, 20] and _read(layer.keys)[4] == list(range(50, 57))
