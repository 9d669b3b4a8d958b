"""Regularization from a spec's ``regularization`` section: penalties, clipping, early stopping, noise, FGSM.

Everything here acts on the same parameter split as weight decay
(:func:`nnspec.train.optim.split_parameters`): only linear/conv weights are
penalized, never biases, normalization parameters or PReLU slopes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from nnspec.train.optim import split_parameters
from nnspec.spec.model import Spec

LossFn = Callable[[Tensor, Tensor], Tensor]


# -- penalties and clipping ------------------------------------------------------------------


def penalty(spec: Spec, model: nn.Module) -> Tensor:
    """``l2 * sum(w^2) + l1 * sum(|w|)`` over the penalized weights, to add to the data loss.

    With both coefficients 0 it is a 0-d zero on the model's device and walks
    no parameter, because the trainer calls it every step.
    """
    reg = spec.regularization
    device = next(model.parameters(), torch.empty(0)).device
    total = torch.zeros((), device=device)
    if reg.l2 == 0 and reg.l1 == 0:
        return total
    for weight in split_parameters(model)[0]:
        if reg.l2:
            total = total + reg.l2 * weight.pow(2).sum()
        if reg.l1:
            total = total + reg.l1 * weight.abs().sum()
    return total


def clip_gradients(spec: Spec, model: nn.Module) -> torch.Tensor | None:
    """Clip gradients in place; returns the total gradient norm *before* clipping when norm clipping is on.

    Norm clipping runs first so the returned norm is the raw one (what one
    watches for explosions); value clipping afterwards can only shrink the
    norm further, so both bounds hold at the end. The norm stays a 0-d tensor
    on the gradients' device: reading it back every step would cost a host
    synchronization on CUDA.
    """
    reg = spec.regularization
    params = [p for p in model.parameters() if p.grad is not None]
    norm: torch.Tensor | None = None
    if reg.clip_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, reg.clip_grad_norm) if params else torch.zeros(())
    if reg.clip_grad_value is not None and params:
        torch.nn.utils.clip_grad_value_(params, reg.clip_grad_value)
    return norm


# -- early stopping ----------------------------------------------------------------------------


class EarlyStopping:
    """Stop when the monitored validation metric has not improved by ``min_delta`` for ``patience`` epochs.

    The best weights are kept as a CPU copy (so holding them costs no GPU
    memory) and put back by :meth:`restore` when ``restore_best``.
    """

    def __init__(
        self,
        monitor: Literal["val_loss", "val_accuracy"] = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        if monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"early stopping monitors val_loss or val_accuracy, not {monitor!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, Tensor] | None = None

    @classmethod
    def from_spec(cls, spec: Spec) -> "EarlyStopping | None":
        """The spec's early stopping, or None when it asks for none."""
        section = spec.regularization.early_stopping
        if section is None:
            return None
        return cls(section.monitor, section.patience, section.min_delta, section.restore_best)

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.monitor == "val_accuracy":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record this epoch's metric; True means stop training now."""
        if self.monitor not in metrics:
            raise ValueError(
                f"early stopping monitors '{self.monitor}' but this epoch reported only "
                f"{', '.join(sorted(metrics)) or 'nothing'} (val_* metrics need data.val > 0)"
            )
        value = float(metrics[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights back into ``model``; False when there are none to restore."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.best_state = state["best_state"]


# -- input noise and adversarial training --------------------------------------------------------


def noisy_inputs(x: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``x`` plus Gaussian noise of ``std`` (``x`` itself when std is 0), drawn from ``generator``.

    Taking the generator explicitly keeps the noise reproducible per run
    without disturbing the global RNG that dropout and shuffling use.
    """
    if std == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


def fgsm_example(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
    """``x + epsilon * sign(d loss / d x)``: the fast-gradient-sign adversarial input (detached).

    The input gradient comes from ``torch.autograd.grad`` so no parameter's
    ``.grad`` is written. The forward runs on *copies* of the buffers, so
    crafting does not count as a training pass for BatchNorm's running
    statistics — and, unlike restoring them afterwards, never modifies in place
    a tensor that the clean loss's graph may have saved for its backward.
    """
    probe = x.detach().clone().requires_grad_(True)
    buffers = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    loss = loss_fn(torch.func.functional_call(model, buffers, (probe,), strict=False), y)
    (grad,) = torch.autograd.grad(loss, probe)
    return (x.detach() + epsilon * grad.sign()).detach()


def fgsm_loss(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, epsilon: float, weight: float, clean_loss: Tensor
) -> Tensor:
    """``(1 - weight) * clean_loss + weight * loss(model(fgsm_example))``, differentiable in the parameters."""
    adversarial = loss_fn(model(fgsm_example(model, loss_fn, x, y, epsilon)), y)
    return (1.0 - weight) * clean_loss + weight * adversarial
