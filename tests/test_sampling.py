"""``tuneful.infer.sampling``: the next token of many rows in one pass, each by its own settings and random stream."""

from __future__ import annotations

import math

import pytest
import torch

from tuneful.infer.requests import GenerationRequest, RunningRow, Sampling
from tuneful.infer.sampling import UnusableScores, inverse_cdf, next_tokens, probabilities


def _row(temperature: float = 0.0, top_p: float = 1.0, seed: int | None = 0) -> RunningRow:
    return RunningRow(GenerationRequest([1, 2], 8, Sampling(temperature, top_p), seed=seed), 4, [0])


def test_probabilities_take_each_rows_temperature_and_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    probs = probabilities(scores, torch.tensor([1.0, 1.0]), torch.tensor([0.6, 1.0]))
    # top-p 0.6: 0.5 is below it, so 0.3 joins the head; 0.5 + 0.3 reaches it, so 0.2 is out. Top-p 1: all kept
    assert torch.allclose(probs, torch.tensor([[0.5, 0.3, 0.0], [0.5, 0.3, 0.2]]))
    hot = probabilities(scores[:1], torch.tensor([2.0]), torch.tensor([1.0]))
    expected = torch.tensor([0.5, 0.3, 0.2]) ** 0.5
    assert torch.allclose(hot[0], expected / expected.sum())
    cold = probabilities(scores[:1], torch.tensor([1e-300]), torch.tensor([1.0]))  # clamped: greedy, no NaN
    assert cold[0].tolist() == [1.0, 0.0, 0.0]


def test_inverse_cdf_never_takes_a_token_of_probability_zero():
    probs = torch.tensor([[0.2, 0.0, 0.8]] * 5 + [[2.0, 0.0, 8.0]])  # any positive scale
    uniforms = torch.tensor([0.0, 0.1999, 0.2, 0.7, 1.0 - 1e-12, 0.2], dtype=torch.float64)
    tokens, usable = inverse_cdf(probs, uniforms)
    assert tokens == [0, 0, 2, 2, 2, 2] and all(usable)
    tokens, usable = inverse_cdf(torch.tensor([[float("nan"), 1.0], [0.0, 0.0], [1.0, 1.0]]),
                                 torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
    assert usable == [False, False, True] and tokens[2] == 1


def test_sampled_rows_follow_their_distribution():
    """20,000 draws of one row: each token's share within 4 standard errors of its probability."""
    scores = torch.log(torch.tensor([0.1, 0.6, 0.05, 0.25]))
    rows = [_row(1.0, seed=k) for k in range(20000)]
    counts = torch.bincount(torch.tensor(next_tokens(rows, scores.expand(len(rows), -1))), minlength=4)
    for p, n in zip([0.1, 0.6, 0.05, 0.25], counts.tolist()):
        assert abs(n / 20000 - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_a_rows_token_does_not_depend_on_the_rows_beside_it():
    scores = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    together = next_tokens([_row(0.8, 0.9, seed=k) for k in range(3)] + [_row()] * 3, scores)
    alone = [next_tokens([_row(0.8, 0.9, seed=k)], scores[k : k + 1])[0] for k in range(3)]
    assert together[:3] == alone
    assert together[3:] == scores[3:].argmax(-1).tolist()  # greedy rows: the highest score
    # the batched pass and a row choosing alone (a constrained row's path) draw the same token from the same stream
    assert [_row(0.8, 0.9, seed=k).choose(scores[k]) for k in range(3)] == alone
    streams = [_row(1.0, seed=7) for _ in range(2)]
    assert [next_tokens([streams[0]], scores[:1])[0] for _ in range(20)] == \
           [next_tokens([streams[1], _row()], scores[:2])[0] for _ in range(20)]  # the stream advances per row


def test_one_rows_failure_is_its_own():
    class Broken:
        constraint, generator = None, object()
        request = GenerationRequest([1], 4, Sampling(1.0))

        def uniform(self) -> float:
            raise RuntimeError("this row's generator is broken")

    scores = torch.tensor([[0.0, 1.0, 0.0, 0.0], [float("nan")] * 4, [0.0, 0.0, 3.0, 0.0], [0.0] * 4])
    out = next_tokens([_row(), _row(1.0), _row(0.5, seed=1), Broken()], scores)
    assert out[0] == 1 and out[2] in range(4)
    assert isinstance(out[1], UnusableScores) and isinstance(out[3], RuntimeError)
    with pytest.raises(UnusableScores):
        _row(1.0).choose(scores[1])
