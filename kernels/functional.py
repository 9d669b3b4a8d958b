"""Public functions of nnspec.kernels (same semantics as torch.nn.functional).

Routing, per call:
  * backend "auto" -> Triton for CUDA tensors, PyTorch otherwise; "triton" / "torch" force one.
  * Eager calls that resolve to PyTorch run torch.nn.functional directly (no custom op, so no
    dispatcher detour and - importantly - no triton import on the CPU path).
  * Everything else (Triton, or any tracing: torch.compile, torch.export, make_fx, fake
    tensors) goes through the ``nnspec::*`` custom ops, which carry fake kernels and
    autograd formulas, so graphs capture one opaque node per op without breaks.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch
from . import _ops as ops  # registers the nnspec::* custom ops (no triton import)

_REDUCTIONS = ("none", "sum", "mean")


def linear_leaky_relu(
    x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, slope: float = 0.01, *, backend: str = "auto"
) -> Tensor:
    """``leaky_relu(x @ weight.T + bias, slope)`` for x (..., K), weight (N, K), bias (N,).

    slope=0 gives ReLU.  Differentiable in x, weight and bias.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x's last dimension must match weight's K: x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        # as F.linear: no implicit mixed precision (cast, or use autocast around F.linear)
        raise TypeError(
            f"x, weight and bias must share a dtype, got {x.dtype}, {weight.dtype}"
            + ("" if bias is None else f", {bias.dtype}")
        )
    slope = float(slope)
    be = _dispatch.resolve(backend, x.device)
    if not _dispatch.use_custom_op(be, x, weight, bias):
        return F.leaky_relu(F.linear(x, weight, bias), slope)
    out, _ = ops.linear_leaky_relu_op(x, weight, bias, slope, backend)
    return out


def softmax_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    backend: str = "auto",
    return_correct: bool = False,
):
    """``F.cross_entropy(logits, target, ...)`` for logits (N, C) and class-index targets (N,).

    With ``return_correct=True`` returns ``(loss, correct)`` where ``correct`` is a 0-d int64
    tensor counting non-ignored rows whose argmax is the target, computed in the same pass
    over the logits.  Differentiable in logits only (class weights are not, as in PyTorch).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be 1-D with N={logits.shape[0]} class indices, got shape {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    if target.dtype != torch.int64:
        target = target.long()
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if weight is not None:
        if tuple(weight.shape) != (logits.shape[1],):
            raise ValueError(f"weight must have shape ({logits.shape[1]},), got {tuple(weight.shape)}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "softmax_cross_entropy is not differentiable with respect to the class weights "
                "(neither is F.cross_entropy); pass weight.detach()"
            )
    be = _dispatch.resolve(backend, logits.device)
    if not _dispatch.use_custom_op(be, logits, target, weight):
        loss = F.cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing,
        )
        if not return_correct:
            return loss
        hit = (logits.detach().argmax(dim=1) == target) & (target != ignore_index)
        return loss, hit.sum(dtype=torch.int64)
    loss, _, _, correct = ops.softmax_cross_entropy_op(
        logits, target, weight, int(ignore_index), float(label_smoothing), reduction,
        bool(return_correct), backend,
    )
    return (loss, correct) if return_correct else loss


def batch_norm(
    x: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> Tensor:
    """``F.batch_norm`` for x of shape (N, C), (N, C, L) or (N, C, H, W) (any layout).

    In training, normalises with the biased batch variance and updates running_mean /
    running_var in place (momentum blend, unbiased variance).  When both running buffers are
    None, batch statistics are used in evaluation too (nn.BatchNorm's
    track_running_stats=False behaviour; F.batch_norm itself would raise).
    """
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects at least 2-D input (N, C, ...), got {x.dim()}-D")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != c:
            raise ValueError(f"{name} must have {c} elements (one per channel), got {t.numel()}")
    use_batch_stats = bool(training) or running_mean is None
    if use_batch_stats and x.shape[0] * math.prod(x.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    be = _dispatch.resolve(backend, x.device)
    if not _dispatch.use_custom_op(be, x, running_mean, running_var, weight, bias):
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps)
    y, _, _, new_rm, new_rv = ops.batch_norm_op(
        x, weight, bias, running_mean, running_var, use_batch_stats, float(momentum), float(eps), backend
    )
    if use_batch_stats and running_mean is not None:
        # new_rm / new_rv are non-differentiable outputs, so this records nothing for
        # autograd; a plain copy_ (not under no_grad) is what export records as a buffer
        # mutation.
        running_mean.copy_(new_rm)
        running_var.copy_(new_rv)
    return y
