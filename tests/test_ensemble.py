"""Tests for nnspec.train.ensemble: bootstrap resampling and combining members' outputs."""

from __future__ import annotations

import pytest
import torch

from nnspec.train.ensemble import bootstrap_indices, combine


def test_bootstrap_samples_with_replacement_in_range() -> None:
    idx = bootstrap_indices(10_000, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and idx.shape == (10_000,)
    assert idx.min().item() >= 0 and idx.max().item() < 10_000
    distinct = idx.unique().numel() / 10_000
    assert distinct == pytest.approx(1 - 1 / torch.e, abs=0.01)  # ~63.2% distinct: duplicates exist


def test_bootstrap_is_reproducible_per_generator() -> None:
    a = bootstrap_indices(100, torch.Generator().manual_seed(1))
    assert torch.equal(a, bootstrap_indices(100, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, bootstrap_indices(100, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError):
        bootstrap_indices(0, None)


def test_mean_of_probabilities_averages_softmaxes_not_logits() -> None:
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    mild = torch.tensor([[0.0, 1.0, 0.0]])
    out = combine([confident, mild], "mean", probabilities=True)
    expected = (confident.softmax(-1) + mild.softmax(-1)) / 2
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(-1), torch.ones(1))
    assert not torch.allclose(out, ((confident + mild) / 2).softmax(-1))


def test_mean_of_outputs_when_not_probabilities() -> None:
    a, b = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(combine([a, b], "mean", probabilities=False), torch.tensor([[2.0, 1.0]]))


def test_mean_of_log_probabilities_equals_mean_of_probabilities() -> None:
    logits = [torch.randn(5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    torch.testing.assert_close(
        combine([x.log_softmax(-1) for x in logits], "mean", True), combine(logits, "mean", True)
    )


def test_vote_takes_the_majority_argmax_as_one_hot() -> None:
    members = [
        torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]]),
        torch.tensor([[0.1, 0.8, 0.1], [0.0, 0.1, 0.9]]),
        torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]),
    ]
    out = combine(members, "vote", probabilities=False)
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert out.argmax(-1).tolist() == [1, 2]


def test_vote_ties_go_to_the_lowest_class() -> None:
    members = [torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]])]  # one vote each for 2 and 1
    assert combine(members, "vote", probabilities=True).tolist() == [[0.0, 1.0, 0.0]]


def test_members_must_agree_in_shape() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        combine([torch.zeros(2, 3), torch.zeros(2, 4)], "mean", True)
    with pytest.raises(ValueError):
        combine([], "vote", False)
