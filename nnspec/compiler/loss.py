"""The loss, compiled separately from the model (the model maps inputs to outputs only).

Class labels become one-hot targets for the regression-style losses (mse, bce,
l1, huber), as in the textbook setups. ``cross_entropy`` runs the fused Triton
softmax cross-entropy when the plan says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnspec.compiler.ir import TORCH
from nnspec.kernels import softmax_cross_entropy
from nnspec.spec import training as T


class SpecLoss(nn.Module):
    """``loss(outputs, labels) -> scalar`` (mean over the batch) for one spec's ``loss`` section."""

    def __init__(self, loss: T.Kind, kernel: str = TORCH):
        super().__init__()
        self.loss = loss
        self.kernel = kernel
        weights = getattr(loss, "class_weights", None)
        self.register_buffer("class_weights", torch.tensor(weights) if weights else None, persistent=False)

    def targets_for(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One-hot targets when the loss compares outputs with vectors and labels are class indices."""
        if self.loss.type in T.ONE_HOT_LOSSES and labels.dtype == torch.int64 and labels.dim() == outputs.dim() - 1:
            return F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
        return labels

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kind = self.loss.type
        if kind == "cross_entropy":
            if self.kernel != TORCH:
                return softmax_cross_entropy(
                    outputs, labels, weight=self.class_weights,
                    label_smoothing=self.loss.label_smoothing, backend="triton",
                )  # fmt: skip
            return F.cross_entropy(outputs, labels, weight=self.class_weights, label_smoothing=self.loss.label_smoothing)
        if kind == "nll":
            return F.nll_loss(outputs, labels)
        target = self.targets_for(outputs, labels)
        if kind == "mse":
            return F.mse_loss(outputs, target)
        if kind == "bce":
            return F.binary_cross_entropy(outputs, target)
        if kind == "bce_with_logits":
            return F.binary_cross_entropy_with_logits(outputs, target)
        if kind == "l1":
            return F.l1_loss(outputs, target)
        if kind == "huber":
            return F.huber_loss(outputs, target, delta=self.loss.delta)
        raise ValueError(f"no implementation for loss {kind!r}")  # unreachable: the schema lists kinds

    def extra_repr(self) -> str:
        return f"{self.loss.type}, kernel={self.kernel}"
