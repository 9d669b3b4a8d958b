"""The loss, compiled separately from the model (the model maps inputs to outputs only).

Class labels become one-hot targets for the regression-style losses (mse, bce,
l1, huber), as in the textbook setups. ``cross_entropy`` runs the fused Triton
softmax cross-entropy when the plan says so.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nnspec.compiler.ir import TORCH
from nnspec.kernels import softmax_cross_entropy
from nnspec.spec import training as T


#: ``compute(outputs, labels, class_weights) -> scalar``: one loss kind with its options bound.
LossFunction = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class SpecLoss(nn.Module):
    """``loss(outputs, labels) -> scalar`` (mean over the batch) for one spec's ``loss`` section.

    The kind and its options are bound once, into a plain function: the loss
    runs every training step, and on a small model the Python of a per-call
    dispatch over kinds is a measurable share of the step.
    """

    def __init__(self, loss: T.Kind, kernel: str = TORCH):
        super().__init__()
        self.loss = loss
        self.kernel = kernel
        weights = getattr(loss, "class_weights", None)
        self.register_buffer("class_weights", torch.tensor(weights) if weights else None, persistent=False)
        self.compute = loss_function(loss, kernel)

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.compute(outputs, labels, self.class_weights)

    def bound(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``loss(outputs, labels)`` as a plain function of the module as it is now (device, class weights).

        For a training loop's hot path: it skips ``nn.Module.__call__``, which
        matters on a small model; a module moved afterwards needs a new one.
        """
        compute, weights = self.compute, self.class_weights
        return lambda outputs, labels: compute(outputs, labels, weights)

    def extra_repr(self) -> str:
        return f"{self.loss.type}, kernel={self.kernel}"


def one_hot_targets(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One-hot targets when labels are class indices (int64, one dimension fewer than the outputs)."""
    if labels.dtype == torch.int64 and labels.dim() == outputs.dim() - 1:
        return F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
    return labels


def loss_function(loss: T.Kind, kernel: str = TORCH) -> LossFunction:
    """The function computing one loss kind; class labels become one-hot targets for the regression losses."""
    kind = loss.type
    if kind == "cross_entropy":
        smoothing = loss.label_smoothing
        if kernel != TORCH:
            return lambda outputs, labels, weight: softmax_cross_entropy(
                outputs, labels, weight=weight, label_smoothing=smoothing, backend="triton"
            )
        return lambda outputs, labels, weight: F.cross_entropy(outputs, labels, weight=weight, label_smoothing=smoothing)
    if kind == "nll":
        return lambda outputs, labels, weight: F.nll_loss(outputs, labels)
    if kind not in T.ONE_HOT_LOSSES:  # unreachable: the schema lists the kinds
        raise ValueError(f"no implementation for loss {kind!r}")
    compare: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if kind == "huber":
        compare = functools.partial(F.huber_loss, delta=loss.delta)
    else:
        compare = {"mse": F.mse_loss, "bce": F.binary_cross_entropy,
                   "bce_with_logits": F.binary_cross_entropy_with_logits, "l1": F.l1_loss}[kind]  # fmt: skip
    return lambda outputs, labels, weight: compare(outputs, one_hot_targets(outputs, labels))
