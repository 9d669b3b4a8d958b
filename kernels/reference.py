"""PyTorch reference implementations of the three fused ops (the ``backend="torch"`` path).

These live apart from the Triton modules on purpose: the CPU path must not import triton,
and every Triton module imports it at the top.  Each function here is the semantic twin of
one Triton launch wrapper (same arguments, same auxiliary outputs), so the custom ops can
switch between the two without the autograd or fake-tensor code caring which ran.

The math is done in float32 (float64 stays float64) whatever the input dtype, like the
kernels do; the tests check both against PyTorch's own functional ops run in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "linear_leaky_relu_fwd",
    "linear_leaky_relu_bwd",
    "cross_entropy_fwd",
    "cross_entropy_bwd",
    "batch_norm_fwd",
    "batch_norm_bwd",
    "compute_dtype",
    "empty_grad",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (so gradcheck works), everything else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_grad(ref: torch.Tensor) -> torch.Tensor:
    # Placeholder for a gradient nobody asked for.  Custom ops cannot return None, and a
    # zero-length tensor costs nothing to allocate.
    return ref.new_empty((0,))


# --------------------------------------------------------------------------- linear


def linear_leaky_relu_fwd(x, weight, bias, slope):
    """Returns ``(leaky_relu(x @ weight.T + bias, slope), pre_activation > 0)``."""
    pre = F.linear(x, weight, bias)
    mask = pre > 0
    # where() rather than F.leaky_relu so that the output is bit-identical to the mask
    # semantics used by the backward (pre > 0 keeps, anything else is scaled).
    out = torch.where(mask, pre, pre * slope)
    return out.contiguous(), mask.contiguous()


def linear_leaky_relu_bwd(grad_out, mask, x, weight, slope, need_x, need_w, need_b):
    n = weight.shape[0]
    k = weight.shape[1]
    g = torch.where(mask, grad_out, grad_out * slope)
    g2 = g.reshape(-1, n)
    x2 = x.reshape(-1, k)
    dx = (g2 @ weight).reshape(x.shape) if need_x else empty_grad(x)
    dw = (g2.t() @ x2).to(weight.dtype) if need_w else empty_grad(weight)
    db = g2.sum(0, dtype=compute_dtype(g2.dtype)).to(weight.dtype) if need_b else empty_grad(weight)
    return dx, dw, db


# --------------------------------------------------------------------------- cross-entropy


def _target_weights(target, weight, ignore_index, dtype):
    valid = target != ignore_index
    if weight is None:
        return valid.to(dtype)
    safe = torch.where(valid, target, torch.zeros_like(target))
    return weight.to(dtype)[safe] * valid.to(dtype)


def cross_entropy_fwd(logits, target, weight, ignore_index, label_smoothing, reduction, count_correct):
    """Returns ``(loss, stats, denom, correct)``.

    stats: (2, N) per-row (max, log sum exp(x - max)) in the compute dtype, saved for the
    backward (the log-sum-exp in two parts, see cross_entropy); denom: the divisor of the
    mean reduction (sum of the target weights of non-ignored rows); correct: 0-d int64 count
    of non-ignored rows whose argmax is the target (0 when not requested).
    """
    cdt = compute_dtype(logits.dtype)
    xf = logits.to(cdt)
    wf = None if weight is None else weight.to(cdt)
    m = xf.amax(dim=1) if xf.shape[1] else xf.new_zeros(xf.shape[0])
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all -inf row: 0
    log_s = torch.log(torch.exp(xf - shift[:, None]).sum(dim=1))
    stats = torch.stack([shift, log_s])
    loss = F.cross_entropy(
        xf, target, weight=wf, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing,
    ).to(logits.dtype)
    denom = _target_weights(target, weight, ignore_index, cdt).sum()
    if count_correct:
        hit = (logits.argmax(dim=1) == target) & (target != ignore_index)
        correct = hit.sum(dtype=torch.int64)
    else:
        correct = torch.zeros((), dtype=torch.int64, device=logits.device)
    return loss, stats, denom, correct


def cross_entropy_bwd(grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction):
    """d loss / d logits, written out (rather than autograd) so the Triton kernel has a
    line-by-line twin:

        per valid row i with target t, p = softmax(x_i), eps = label_smoothing:
        dL_i/dx_c = (1 - eps) * w_t * (p_c - [c == t]) + eps / C * (sum(w) * p_c - w_c)
    """
    cdt = compute_dtype(logits.dtype)
    n, c = logits.shape
    xf = logits.to(cdt)
    p = torch.exp((xf - stats[0][:, None]) - stats[1][:, None])
    valid = target != ignore_index
    w_t = _target_weights(target, weight, ignore_index, cdt)
    if reduction == "none":
        g = grad_loss.to(cdt)
    elif reduction == "sum":
        g = grad_loss.to(cdt).expand(n)
    else:
        g = (grad_loss.to(cdt) / denom.to(cdt)).expand(n)
    safe_t = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe_t, c).to(cdt)
    grad = (1.0 - label_smoothing) * w_t[:, None] * (p - onehot)
    if label_smoothing > 0:
        if weight is None:
            w_all = torch.ones(c, dtype=cdt, device=logits.device)
        else:
            w_all = weight.to(cdt)
        grad = grad + (label_smoothing / c) * (w_all.sum() * p - w_all[None, :])
    grad = torch.where(valid[:, None], grad * g[:, None], torch.zeros((), dtype=cdt, device=logits.device))
    return grad.to(logits.dtype).contiguous()


# --------------------------------------------------------------------------- batch norm


def _bn_shape(x):
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def batch_norm_fwd(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    """Returns ``(y, save_mean, save_invstd, new_running_mean, new_running_var)``.

    With batch statistics and running buffers, the new running values are returned rather
    than written (custom ops with autograd must be functional); the caller copies them in.
    Otherwise the last two outputs are empty.
    """
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    dims = [0] + list(range(2, x.dim()))
    shape = _bn_shape(x)
    empty = x.new_empty((0,), dtype=cdt)
    if use_batch_stats:
        count = x.numel() // x.shape[1]
        mean = xf.mean(dim=dims)
        var = xf.var(dim=dims, unbiased=False)
        invstd = torch.rsqrt(var + eps)
        if running_mean is not None:
            new_rm = ((1 - momentum) * running_mean.to(cdt) + momentum * mean).to(running_mean.dtype)
            unbiased = var * (count / max(count - 1, 1))
            new_rv = ((1 - momentum) * running_var.to(cdt) + momentum * unbiased).to(running_var.dtype)
        else:
            new_rm, new_rv = empty, empty.clone()
    else:
        # clone(): the saved statistics must never alias the caller's buffers.
        mean = running_mean.to(cdt).clone()
        invstd = torch.rsqrt(running_var.to(cdt) + eps)
        new_rm, new_rv = empty, empty.clone()
    y = (xf - mean.view(shape)) * invstd.view(shape)
    if weight is not None:
        y = y * weight.to(cdt).view(shape)
    if bias is not None:
        y = y + bias.to(cdt).view(shape)
    out = torch.empty_like(x)
    out.copy_(y)  # keeps x's memory format (channels_last in, channels_last out)
    return out, mean, invstd, new_rm, new_rv


def batch_norm_bwd(grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b):
    cdt = compute_dtype(x.dtype)
    dims = [0] + list(range(2, x.dim()))
    shape = _bn_shape(x)
    dy = grad_out.to(cdt)
    xhat = (x.to(cdt) - save_mean.view(shape)) * save_invstd.view(shape)
    sum_dy = dy.sum(dim=dims)
    sum_dy_xhat = (dy * xhat).sum(dim=dims)
    wf = weight.to(cdt) if weight is not None else torch.ones_like(save_mean)
    if need_x:
        scale = (wf * save_invstd).view(shape)
        if use_batch_stats:
            count = x.numel() // x.shape[1]
            dxf = scale * (dy - (sum_dy / count).view(shape) - xhat * (sum_dy_xhat / count).view(shape))
        else:
            dxf = scale * dy
        dx = torch.empty_like(x)
        dx.copy_(dxf)
    else:
        dx = empty_grad(x)
    wdt = weight.dtype if weight is not None else x.dtype
    dw = sum_dy_xhat.to(wdt) if need_w else empty_grad(x)
    db = sum_dy.to(wdt) if need_b else empty_grad(x)
    return dx, dw, db
