"""Softmax cross-entropy: Triton kernels, launch wrappers, the ``nnspec::softmax_cross_entropy``
custom op (fake kernel, autograd formula), the public :func:`softmax_cross_entropy` and its
PyTorch reference, in that order.

Design
------
* One program per row.  The class dimension is streamed in BLOCK_C chunks with an online
  (running max, running sum) softmax in fp32, so any C (256k+) works and no (N, C) fp32
  temporary is ever allocated: the forward reads the logits once and writes four numbers
  per row.
* The forward saves the per-row log-sum-exp, as two numbers: the row max m and log(sum
  exp(x - m)).  Folding them into one fp32 lse would cost accuracy for large logits: at
  |x| ~ 1e4 the rounding of lse alone is ~1e-3, which p = exp(x - lse) turns into a 1e-3
  relative gradient error; exp((x - m) - log_s) keeps full fp32 accuracy.  The backward
  re-reads the logits and writes the gradient.  Writing the gradient during the forward (Liger's trick) would save that
  re-read, but it needs the upstream gradient up front (unknown for reduction="none"),
  allocates an (N, C) tensor even when no backward follows (evaluation), and overwriting
  the logits in place is not allowed for a functional custom op.  Saving 2N floats keeps
  the op pure and the backward cheap.
* Label smoothing needs sum_c w_c * log p_c = sum_c w_c * (x_c - lse).  Accumulating
  sum_c w_c * x_c and subtracting lse * sum_c w_c at the end cancels catastrophically for
  large logits (1e4 * C vs a result of order C), so the kernel accumulates the sum relative
  to the running max and re-bases it whenever the max moves, exactly like the softmax sum.
* The argmax (for training accuracy) rides along in the same pass: it is one more
  reduction over a block that is already in registers.
* Reductions over rows ("sum", "mean") are done by the caller with torch on the per-row fp32
  results: that is deterministic (no atomics) and needs no host synchronisation, so the
  whole op is CUDA-graph safe.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch

# triton and tl are stand-ins until _dispatch.load() activates this module (see _triton):
# the kernels below are ordinary Triton, made real on the first Triton launch.
from ._triton import INTERPRET, acc_dtype, compute_dtype, join_f64, split_f64, tl, triton

_NAME = "cross_entropy_op"  # for _dispatch.load

# The interpreter runs every program in numpy, so small blocks keep tests fast *and* make
# modest class counts span several blocks (the online-softmax rescaling is what needs testing).
INTERPRET_BLOCK_C = 32
MAX_BLOCK_C = 4096

_REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _ce_fwd_kernel(
    logits_ptr, stride_row,
    target_ptr, weight_ptr,
    loss_ptr, stats_ptr, wt_ptr, correct_ptr, N,
    C, ignore_index, ls_hi, ls_lo,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, COUNT_CORRECT: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    label_smoothing = join_f64(ls_hi, ls_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    # int64 row offset: N * C passes 2**31 long before either dimension does.
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(target_ptr + row)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < C)

    neg_inf = float("-inf")
    m = tl.full((), neg_inf, ACC)        # running max
    s = tl.zeros((), ACC)                # sum exp(x - m)
    smooth = tl.zeros((), ACC)           # sum w_c * (x_c - shift(m))
    w_seen = tl.zeros((), ACC)           # sum of w_c seen so far
    best_val = tl.full((), neg_inf, ACC)
    best_idx = tl.zeros((), tl.int32)
    seen_nan = tl.zeros((), tl.int32)

    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < C
        x = tl.load(row_ptr + cols, mask=cmask, other=neg_inf).to(ACC)
        blk_max = tl.max(x, axis=0)
        m_new = tl.maximum(m, blk_max)
        # A prefix that is all -inf (padding, masked vocab) leaves m = -inf; subtracting it
        # would give exp(-inf - -inf) = nan, so exponentials are taken relative to a finite
        # shift.  While m is -inf, s is exactly 0 and its rescale factor is irrelevant (and
        # exp(0 - m_new) could overflow for very negative finite m_new, giving 0 * inf).
        shift_new = tl.where(m_new == neg_inf, 0.0, m_new)
        shift_old = tl.where(m == neg_inf, 0.0, m)
        alpha = tl.where(m == neg_inf, 0.0, tl.exp(m - shift_new))
        s = s * alpha + tl.sum(tl.exp(x - shift_new), axis=0)
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(ACC)
            else:
                w = tl.where(cmask, 1.0, 0.0)
            # Re-base the sum to the new shift; a -inf logit makes it -inf (loss inf), as
            # in PyTorch, and never nan because both shifts are finite.
            smooth = smooth + w_seen * (shift_old - shift_new)
            smooth = smooth + tl.sum(w * tl.where(cmask, x - shift_new, 0.0), axis=0)
            w_seen = w_seen + tl.sum(w, axis=0)
        if COUNT_CORRECT:
            # torch.argmax counts NaN as the largest value (its first NaN wins), so a NaN
            # logit is the prediction; once one is found nothing later can displace it.
            nan_at = tl.min(tl.where(x != x, tl.arange(0, BLOCK_C), BLOCK_C), axis=0)
            blk_nan = nan_at < BLOCK_C
            clean = tl.where(x != x, neg_inf, x)
            clean_max = tl.max(clean, axis=0)
            blk_arg = tl.argmax(clean, axis=0)
            # strict '>' keeps the first maximum, as torch.argmax does
            take = (clean_max > best_val) & (seen_nan == 0)
            best_idx = tl.where(take, start + blk_arg, best_idx)
            best_val = tl.where(take, clean_max, best_val)
            first_nan = blk_nan & (seen_nan == 0)
            best_idx = tl.where(first_nan, start + nan_at, best_idx)
            seen_nan = tl.where(blk_nan, 1, seen_nan)
        m = m_new

    shift = tl.where(m == neg_inf, 0.0, m)
    log_s = tl.log(s)
    # log_s = -inf for an all -inf row; its loss is then nan, as in PyTorch.

    safe_t = tl.where(in_range, target, 0)
    x_t = tl.load(row_ptr + safe_t, mask=valid & in_range, other=0.0).to(ACC)
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + safe_t, mask=valid & in_range, other=0.0).to(ACC)
    else:
        w_t = 1.0
    w_t = tl.where(valid, w_t, 0.0)
    # -log p_t = lse - x_t, with the large parts cancelled first: (shift - x_t) + log_s
    loss = w_t * ((shift - x_t) + log_s)
    if HAS_SMOOTHING:
        # -sum_c w_c log p_c = -(smooth - w_sum * (lse - shift)), and lse - shift = log_s
        smooth_loss = w_seen * log_s - smooth
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / C) * smooth_loss
    loss = tl.where(valid, loss, 0.0)
    # A target outside [0, C) that is not ignore_index has no loss; PyTorch raises, which a
    # kernel cannot do without a host synchronisation.  NaN makes the error visible (the
    # loss and every reduction over it), and the training runner stops on a NaN loss.
    loss = tl.where(valid & (in_range == 0), float("nan"), loss)

    tl.store(loss_ptr + row, loss)
    tl.store(stats_ptr + row, shift)
    tl.store(stats_ptr + N + row, log_s)
    tl.store(wt_ptr + row, w_t)
    if COUNT_CORRECT:
        hit = valid & (best_idx.to(tl.int64) == target)
        tl.store(correct_ptr + row, hit.to(tl.int32))


@triton.jit
def _ce_bwd_kernel(
    grad_ptr, grad_stride,
    logits_ptr, stride_row, dlogits_ptr, dstride_row,
    target_ptr, weight_ptr, wsum_ptr, stats_ptr, denom_ptr, N,
    C, ignore_index, ls_hi, ls_lo,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, MEAN: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    label_smoothing = join_f64(ls_hi, ls_lo, ACC)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    drow_ptr = dlogits_ptr + row * dstride_row
    target = tl.load(target_ptr + row)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < C)

    # grad_stride is 0 for a scalar upstream gradient (sum / mean reductions).
    g = tl.load(grad_ptr + row * grad_stride).to(ACC)
    if MEAN:
        # Divide on the device: the denominator is a tensor, so there is no .item() sync.
        g = g / tl.load(denom_ptr).to(ACC)
    g = tl.where(valid, g, 0.0)
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + tl.where(in_range, target, 0), mask=valid & in_range, other=0.0).to(ACC)
    else:
        w_t = 1.0
    coef_nll = (1.0 - label_smoothing) * w_t * g
    coef_smooth = (label_smoothing / C) * g
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            w_sum = tl.load(wsum_ptr).to(ACC)
        else:
            w_sum = C * 1.0
    shift = tl.load(stats_ptr + row)
    log_s = tl.load(stats_ptr + N + row)
    # Ignored rows skip the logits read (their gradient is exactly zero).  Folding that into
    # the bound, rather than `cmask & valid`, also sidesteps the interpreter promoting
    # tensor-bool & scalar-bool to int32.
    read_limit = tl.where(valid, C, 0)

    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < C
        x = tl.load(row_ptr + cols, mask=cols < read_limit, other=0.0).to(ACC)
        p = tl.exp((x - shift) - log_s)
        grad = coef_nll * (p - tl.where(cols == target, 1.0, 0.0))
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(ACC)
            else:
                w = 1.0
            grad = grad + coef_smooth * (w_sum * p - w)
        grad = tl.where(valid, grad, 0.0)
        grad = tl.where(valid & (in_range == 0), float("nan"), grad)  # see the forward
        tl.store(drow_ptr + cols, grad.to(dlogits_ptr.dtype.element_ty), mask=cmask)


# --------------------------------------------------------------------------- launch wrappers


def _block_c(c: int) -> int:
    cap = INTERPRET_BLOCK_C if INTERPRET else MAX_BLOCK_C
    return max(16, min(triton.next_power_of_2(c), cap))


def _num_warps(block_c: int) -> int:
    return 4 if block_c <= 1024 else (8 if block_c <= 2048 else 16)


def _rows(logits: torch.Tensor) -> torch.Tensor:
    # The kernels index columns with unit stride; anything else is copied once.
    return logits if logits.stride(1) == 1 else logits.contiguous()


def forward(logits, target, weight, ignore_index, label_smoothing, reduction, count_correct):
    """Triton twin of :func:`reference_forward` (same outputs)."""
    n, c = logits.shape
    logits = _rows(logits)
    target = target.contiguous()
    dev = logits.device
    cdt = compute_dtype(logits.dtype)
    loss_rows = torch.empty(n, dtype=cdt, device=dev)
    stats = torch.empty((2, n), dtype=cdt, device=dev)  # (row max, log sum exp(x - max))
    w_rows = torch.empty(n, dtype=cdt, device=dev)
    hits = torch.empty(n if count_correct else 1, dtype=torch.int32, device=dev)
    w = weight.contiguous() if weight is not None else None
    if n > 0:
        block = _block_c(c)
        _ce_fwd_kernel[(n,)](
            logits, logits.stride(0), target, w if w is not None else stats,
            loss_rows, stats, w_rows, hits, n,
            c, ignore_index, *split_f64(float(label_smoothing)),
            HAS_WEIGHT=w is not None, HAS_SMOOTHING=label_smoothing > 0,
            COUNT_CORRECT=count_correct, ACC=acc_dtype(cdt), BLOCK_C=block,
            num_warps=_num_warps(block),
        )
    denom = w_rows.sum()
    if reduction == "none":
        loss = loss_rows.to(logits.dtype)
    elif reduction == "sum":
        loss = loss_rows.sum().to(logits.dtype)
    else:
        # 0/0 = nan when every row is ignored, like PyTorch; no host-side check.
        loss = (loss_rows.sum() / denom).to(logits.dtype)
    if count_correct:
        correct = hits.sum(dtype=torch.int64)
    else:
        correct = torch.zeros((), dtype=torch.int64, device=dev)
    return loss, stats, denom, correct


def backward(grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction):
    """Triton twin of :func:`reference_backward`."""
    n, c = logits.shape
    logits = _rows(logits)
    target = target.contiguous()
    dlogits = torch.empty((n, c), dtype=logits.dtype, device=logits.device)
    if n == 0:
        return dlogits
    w = weight.contiguous() if weight is not None else None
    cdt = compute_dtype(logits.dtype)
    wsum = w.to(cdt).sum() if w is not None else stats
    grad_stride = grad_loss.stride(0) if reduction == "none" else 0
    block = _block_c(c)
    _ce_bwd_kernel[(n,)](
        grad_loss, grad_stride,
        logits, logits.stride(0), dlogits, dlogits.stride(0),
        target, w if w is not None else stats, wsum, stats, denom, n,
        c, ignore_index, *split_f64(float(label_smoothing)),
        HAS_WEIGHT=w is not None, HAS_SMOOTHING=label_smoothing > 0,
        MEAN=reduction == "mean", ACC=acc_dtype(cdt), BLOCK_C=block,
        num_warps=_num_warps(block),
    )
    return dlogits


# --------------------------------------------------------------------------- custom ops
# A forward op and a backward op, both opaque to torch.compile / torch.export (fake kernels
# give them shapes).  The backend string travels with the op and is resolved when it runs.
# The backward op has no autograd formula: double backward is not supported.


@torch.library.custom_op("nnspec::softmax_cross_entropy", mutates_args=())
def softmax_cross_entropy_op(
    logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
    label_smoothing: float, reduction: str, count_correct: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, per-row (max, log sum exp(x - max)), mean denominator, correct count)"""
    triton_path = _dispatch.runs_triton(_NAME, backend, logits.device)
    args = (logits, target, weight, ignore_index, label_smoothing, reduction, count_correct)
    if triton_path:
        return forward(*args)
    return reference_forward(*args)


@softmax_cross_entropy_op.register_fake
def _(logits, target, weight, ignore_index, label_smoothing, reduction, count_correct, backend):
    n = logits.shape[0]
    cdt = compute_dtype(logits.dtype)
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
    triton_path = _dispatch.runs_triton(_NAME, backend, logits.device)
    args = (grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction)
    if triton_path:
        return backward(*args)
    return reference_backward(*args)


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


# --------------------------------------------------------------------------- public function


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
    if target.dtype not in (torch.int64, torch.uint8):
        # F.cross_entropy's rule; casting int32 / int16 silently here would make this
        # backend accept what the eager PyTorch one refuses.
        raise ValueError(f"target must hold int64 (or uint8) class indices, got {target.dtype}")
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
    custom = _dispatch.use_custom_op(be, logits, target, weight)
    if custom and logits.device.type == "cpu" and not _dispatch.tracing(logits, target, weight):
        # On the CPU the values can be read for free: refuse out-of-range targets the way
        # PyTorch does, on every backend.  On CUDA that would be a host synchronisation, so
        # the Triton kernel makes such a row's loss NaN instead (see _ce_fwd_kernel).
        _check_target_range(target, logits.shape[1], ignore_index)
    if not custom:
        try:
            loss = F.cross_entropy(
                logits, target, weight=weight, ignore_index=ignore_index,
                reduction=reduction, label_smoothing=label_smoothing,
            )
        except IndexError:
            # PyTorch's own range check fired (CPU): re-raise it with the message every
            # backend gives - checked only now, so the eager path costs nothing extra.
            _check_target_range(target, logits.shape[1], ignore_index)
            raise
        if not return_correct:
            return loss
        hit = (logits.detach().argmax(dim=1) == target) & (target != ignore_index)
        return loss, hit.sum(dtype=torch.int64)
    loss, _, _, correct = softmax_cross_entropy_op(
        logits, target, weight, int(ignore_index), float(label_smoothing), reduction,
        bool(return_correct), backend,
    )
    return (loss, correct) if return_correct else loss


def _check_target_range(target: Tensor, c: int, ignore_index: int) -> None:
    bad = (target != ignore_index) & ((target < 0) | (target >= c))
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise IndexError(
            f"Target {int(target[first])} is out of bounds (row {first}: class indices must be in "
            f"[0, {c}) or equal ignore_index={ignore_index})"
        )


# --------------------------------------------------------------------------- PyTorch reference
# The backend="torch" path: twins of forward() and backward() above (same arguments, same
# auxiliary outputs), so the custom op can switch between them without the autograd or
# fake code caring which ran.  Math in float32 (float64 stays float64) whatever the input dtype, like
# the kernels; the tests check both against PyTorch's own ops run in float64.


def _target_weights(target, weight, ignore_index, dtype):
    valid = target != ignore_index
    if weight is None:
        return valid.to(dtype)
    safe = torch.where(valid, target, torch.zeros_like(target))
    return weight.to(dtype)[safe] * valid.to(dtype)


def reference_forward(logits, target, weight, ignore_index, label_smoothing, reduction, count_correct):
    """Returns ``(loss, stats, denom, correct)``.

    stats: (2, N) per-row (max, log sum exp(x - max)) in the compute dtype, saved for the
    backward (the log-sum-exp in two parts, see the module docstring); denom: the divisor of the
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


def reference_backward(grad_loss, logits, target, weight, stats, denom, ignore_index, label_smoothing, reduction):
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
