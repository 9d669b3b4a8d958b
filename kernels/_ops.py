"""The ``nnspec::*`` custom ops: schemas, fake (meta) kernels and autograd formulas.

Each differentiable op has a functional forward op and a backward op; both are custom ops
so that torch.compile / torch.export see two opaque nodes with fake kernels instead of
trying to trace into a Triton launch.  Every op takes a ``backend`` string and resolves it
against the device of its inputs when it runs, so an exported graph keeps the caller's
choice ("auto" stays device-dependent).

Backward ops have no autograd formula of their own: double backward is not supported.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _dispatch, reference


def _kernels(name: str, backend: str, device: torch.device):
    """The Triton module for ``name``, or None for the PyTorch reference."""
    if _dispatch.resolve(backend, device) == "torch":
        return None
    return _dispatch.load(name, device)


def _out_dtype(t: Optional[Tensor], fallback: torch.dtype) -> torch.dtype:
    return t.dtype if t is not None else fallback


# --------------------------------------------------------------------------- linear + leaky relu


@torch.library.custom_op("nnspec::linear_leaky_relu", mutates_args=())
def linear_leaky_relu_op(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], slope: float, backend: str
) -> tuple[Tensor, Tensor]:
    """-> (leaky_relu(x @ weight.T + bias), pre_activation > 0)"""
    mod = _kernels("linear_leaky_relu", backend, x.device)
    if mod is None:
        return reference.linear_leaky_relu_fwd(x, weight, bias, slope)
    return mod.forward(x, weight, bias, slope)


@linear_leaky_relu_op.register_fake
def _(x, weight, bias, slope, backend):
    shape = (*x.shape[:-1], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.bool)


@torch.library.custom_op("nnspec::linear_leaky_relu_backward", mutates_args=())
def linear_leaky_relu_backward_op(
    grad_out: Tensor, mask: Tensor, x: Tensor, weight: Tensor, slope: float,
    need_x: bool, need_w: bool, need_b: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight, dbias); a gradient not asked for comes back as an empty tensor."""
    mod = _kernels("linear_leaky_relu", backend, x.device)
    if mod is None:
        return reference.linear_leaky_relu_bwd(grad_out, mask, x, weight, slope, need_x, need_w, need_b)
    return mod.backward(grad_out, mask, x, weight, slope, need_x, need_w, need_b)


@linear_leaky_relu_backward_op.register_fake
def _(grad_out, mask, x, weight, slope, need_x, need_w, need_b, backend):
    none = weight.new_empty((0,))
    return (
        x.new_empty(x.shape) if need_x else x.new_empty((0,)),
        weight.new_empty(weight.shape) if need_w else none,
        weight.new_empty((weight.shape[0],)) if need_b else none.clone(),
    )


def _llr_setup(ctx, inputs, output):
    x, weight, bias, slope, backend = inputs
    _, mask = output
    ctx.save_for_backward(x, weight, mask)
    ctx.slope, ctx.backend = slope, backend
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.mark_non_differentiable(mask)
    ctx.set_materialize_grads(False)


def _llr_backward(ctx, grad_out, _grad_mask):
    if grad_out is None:
        return None, None, None, None, None
    x, weight, mask = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.bias_dtype is not None
    dx, dw, db = linear_leaky_relu_backward_op(
        grad_out, mask, x, weight, ctx.slope, need_x, need_w, need_b, ctx.backend
    )
    return (
        dx if need_x else None,
        dw if need_w else None,
        db.to(ctx.bias_dtype) if need_b else None,
        None,
        None,
    )


linear_leaky_relu_op.register_autograd(_llr_backward, setup_context=_llr_setup)


# --------------------------------------------------------------------------- cross-entropy


@torch.library.custom_op("nnspec::softmax_cross_entropy", mutates_args=())
def softmax_cross_entropy_op(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
    label_smoothing: float, reduction: str, count_correct: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, per-row (max, log sum exp(x - max)), mean denominator, correct count)"""
    mod = _kernels("cross_entropy", backend, logits.device)
    args = (logits, target, weight, ignore_index, label_smoothing, reduction, count_correct)
    if mod is None:
        return reference.cross_entropy_fwd(*args)
    return mod.forward(*args)


@softmax_cross_entropy_op.register_fake
def _(logits, target, weight, ignore_index, label_smoothing, reduction, count_correct, backend):
    n = logits.shape[0]
    cdt = reference.compute_dtype(logits.dtype)
    loss = logits.new_empty((n,) if reduction == "none" else ())
    return (
        loss,
        logits.new_empty((2, n), dtype=cdt),
        logits.new_empty((), dtype=cdt),
        logits.new_empty((), dtype=torch.int64),
    )


@torch.library.custom_op("nnspec::softmax_cross_entropy_backward", mutates_args=())
def softmax_cross_entropy_backward_op(
    grad_loss: Tensor, logits: Tensor, target: Tensor, weight: Optional[Tensor], stats: Tensor,
    denom: Tensor, ignore_index: int, label_smoothing: float, reduction: str, backend: str,
) -> Tensor:
    mod = _kernels("cross_entropy", backend, logits.device)
    args = (grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction)
    if mod is None:
        return reference.cross_entropy_bwd(*args)
    return mod.backward(*args)


@softmax_cross_entropy_backward_op.register_fake
def _(grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction, backend):
    return logits.new_empty(logits.shape)


def _ce_setup(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, reduction, _, backend = inputs
    _, stats, denom, correct = output
    ctx.save_for_backward(logits, target, weight, stats, denom)
    ctx.ignore_index, ctx.label_smoothing = ignore_index, label_smoothing
    ctx.reduction, ctx.backend = reduction, backend
    ctx.mark_non_differentiable(stats, denom, correct)
    ctx.set_materialize_grads(False)


def _ce_backward(ctx, grad_loss, *_unused):
    if grad_loss is None or not ctx.needs_input_grad[0]:
        return (None,) * 8
    logits, target, weight, stats, denom = ctx.saved_tensors
    dlogits = softmax_cross_entropy_backward_op(
        grad_loss, logits, target, weight, stats, denom, ctx.ignore_index,
        ctx.label_smoothing, ctx.reduction, ctx.backend,
    )
    return (dlogits,) + (None,) * 7


softmax_cross_entropy_op.register_autograd(_ce_backward, setup_context=_ce_setup)


# --------------------------------------------------------------------------- batch norm


@torch.library.custom_op("nnspec::batch_norm", mutates_args=())
def batch_norm_op(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
    running_var: Optional[Tensor], use_batch_stats: bool, momentum: float, eps: float, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (y, save_mean, save_invstd, new_running_mean, new_running_var).

    Functional: the new running statistics come back as outputs (empty when there is
    nothing to update) and the caller copies them into its buffers.  register_autograd
    refuses ops whose schema mutates an input, and this op needs an autograd formula.
    """
    mod = _kernels("batch_norm", backend, x.device)
    args = (x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps)
    if mod is None:
        return reference.batch_norm_fwd(*args)
    return mod.forward(*args)


@batch_norm_op.register_fake
def _(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    cdt = reference.compute_dtype(x.dtype)
    c = x.shape[1]
    if use_batch_stats and running_mean is not None:
        new_rm = running_mean.new_empty((c,))
        new_rv = running_var.new_empty((c,))
    else:
        new_rm = x.new_empty((0,), dtype=cdt)
        new_rv = x.new_empty((0,), dtype=cdt)
    return (
        torch.empty_like(x),
        x.new_empty((c,), dtype=cdt),
        x.new_empty((c,), dtype=cdt),
        new_rm,
        new_rv,
    )


@torch.library.custom_op("nnspec::batch_norm_backward", mutates_args=())
def batch_norm_backward_op(
    grad_out: Tensor, x: Tensor, weight: Optional[Tensor], save_mean: Tensor, save_invstd: Tensor,
    use_batch_stats: bool, need_x: bool, need_w: bool, need_b: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dx, dweight, dbias); a gradient not asked for comes back as an empty tensor."""
    mod = _kernels("batch_norm", backend, x.device)
    args = (grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b)
    if mod is None:
        return reference.batch_norm_bwd(*args)
    return mod.backward(*args)


@batch_norm_backward_op.register_fake
def _(grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b, backend):
    c = x.shape[1]
    pdt = _out_dtype(weight, x.dtype)
    return (
        torch.empty_like(x) if need_x else x.new_empty((0,)),
        x.new_empty((c,), dtype=pdt) if need_w else x.new_empty((0,)),
        x.new_empty((c,), dtype=pdt) if need_b else x.new_empty((0,)),
    )


def _bn_setup(ctx, inputs, output):
    x, weight, bias, _, _, use_batch_stats, _, _, backend = inputs
    _, mean, invstd, new_rm, new_rv = output
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.use_batch_stats, ctx.backend = use_batch_stats, backend
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.has_weight = weight is not None
    ctx.mark_non_differentiable(mean, invstd, new_rm, new_rv)
    ctx.set_materialize_grads(False)


def _bn_backward(ctx, grad_out, *_unused):
    if grad_out is None:
        return (None,) * 9
    x, weight, mean, invstd = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_w = need_w and ctx.has_weight
    need_b = need_b and ctx.bias_dtype is not None
    dx, dw, db = batch_norm_backward_op(
        grad_out, x, weight, mean, invstd, ctx.use_batch_stats, need_x, need_w, need_b, ctx.backend
    )
    return (
        dx if need_x else None,
        dw if need_w else None,
        db.to(ctx.bias_dtype) if need_b else None,
    ) + (None,) * 6


batch_norm_op.register_autograd(_bn_backward, setup_context=_bn_setup)
