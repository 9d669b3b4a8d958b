"""Ensembles (``ensemble`` section): bootstrap resampling of the training set, and combining members' outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def bootstrap_indices(n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` indices drawn uniformly *with replacement* from ``range(n)`` (a bootstrap sample).

    Each member sees about 63% of the distinct samples, some several times;
    that diversity is what makes averaging members better than one model.
    """
    if n < 1:
        raise ValueError(f"a bootstrap sample needs at least one sample, got n={n}")
    return torch.randint(0, n, (n,), generator=generator, dtype=torch.long)


def combine(outputs: list[Tensor], how: Literal["mean", "vote"], probabilities: bool) -> Tensor:
    """One output from the members' outputs, shaped like one of them (classes on the last dimension).

    ``mean`` averages softmax probabilities when ``probabilities`` (members
    output logits or log-probabilities: averaging logits would let one
    overconfident member dominate), else the raw outputs. ``vote`` gives each
    sample a one-hot row for the majority class of the members' argmaxes, ties
    going to the lowest class index — explicit here rather than left to how
    argmax happens to break ties on a given device.
    """
    if not outputs:
        raise ValueError("combine needs at least one member's outputs")
    shapes = {tuple(out.shape) for out in outputs}
    if len(shapes) > 1:
        raise ValueError(f"members' outputs differ in shape: {sorted(shapes)}")
    stacked = torch.stack(outputs)  # (members, ..., classes)
    if how == "mean":
        return (stacked.softmax(dim=-1) if probabilities else stacked).mean(dim=0)
    if how == "vote":
        return _vote(stacked)
    raise ValueError(f"combine is 'mean' or 'vote', not {how!r}")


def _vote(stacked: Tensor) -> Tensor:
    classes = stacked.shape[-1]
    counts = F.one_hot(stacked.argmax(dim=-1), classes).sum(dim=0)  # (..., classes) votes per class
    # The lowest class among the tied maxima: mask the maxima, then take the first True.
    is_max = counts == counts.max(dim=-1, keepdim=True).values
    first = torch.arange(classes, device=stacked.device).masked_fill(~is_max, classes).min(dim=-1).values
    return F.one_hot(first, classes).to(stacked.dtype if stacked.is_floating_point() else torch.float32)
