"""Literal-tensor tests of the padded collator, best-fit-decreasing packing and the loss functions."""

from __future__ import annotations

import math

import pytest
import torch

from tuneful.models.losses import selected_nll_sum, token_nll_sum
from tuneful.tokenization.batching import Example, best_fit_decreasing, collate_packed, collate_padded
from tuneful.tokenization.plan import plan_epoch

X = -100


def test_collate_padded_literal():
    batch = collate_padded([Example([5, 6, 7], [X, 6, 7]), Example([8, 9], [X, 9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [X, 9, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_collate_packed_literal():
    row = [Example([5, 6, 7], [5, 6, 7]), Example([8, 9], [8, 9])]
    batch = collate_packed([row, [Example([4], [4])]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    # the first label of each example is ignored: nothing before it in its own example predicts it
    assert batch["labels"].tolist() == [[X, 6, 7, X, 9], [X, X, X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert batch["attention_mask"][1, 0].int().tolist() == [
        [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]


def test_collate_packed_without_block_mask_for_varlen_kernels():
    batch = collate_packed([[Example([1, 2], [1, 2]), Example([3], [3])]], pad_id=0, block_mask=False)
    assert "attention_mask" not in batch and batch["position_ids"].tolist() == [[0, 1, 0]]


def test_best_fit_decreasing_literal():
    # sorted: 6(0) 5(3) 4(1) 3(4) 2(2) 2(5); capacity 8
    bins = best_fit_decreasing([6, 4, 2, 5, 3, 2], 8)
    assert bins == [[0, 2], [3, 4], [1, 5]]
    assert best_fit_decreasing([8, 8], 8) == [[0], [1]]
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([9], 8)


def test_epoch_plan_is_deterministic_and_covers_every_row():
    lengths = list(range(10, 20))
    first = plan_epoch(lengths, 3, seed=1, epoch=0, packing=False)
    assert first == plan_epoch(lengths, 3, seed=1, epoch=0, packing=False)
    assert first != plan_epoch(lengths, 3, seed=1, epoch=1, packing=False)
    assert sorted(r for b in first for r in b) == list(range(10))


def test_token_nll_sum_hand_computed():
    # vocab 2, uniform logits at every position: each trained token costs ln 2
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[X, 1, X, 0]])
    total, count = token_nll_sum(logits, labels)
    assert count == 2 and math.isclose(total.item(), 2 * math.log(2), rel_tol=1e-6)
    # a confident right answer: logits (0, ln 3) -> p(1) = 3/4
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
    total, count = token_nll_sum(logits, torch.tensor([[X, 1]]))
    assert count == 1 and math.isclose(total.item(), -math.log(0.75), rel_tol=1e-6)


def test_selected_and_chunked_nll_equal_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = X
    full, n = token_nll_sum(head(hidden), labels)
    full.backward()
    grad_full = hidden.grad.clone()
    hidden.grad = None
    for chunk in (0, 1, 4):
        total, m = selected_nll_sum(hidden, labels, head, chunk)
        assert m == n and torch.allclose(total, full, atol=1e-5)
        total.backward()
        assert torch.allclose(hidden.grad, grad_full, atol=1e-6)
        hidden.grad = None
