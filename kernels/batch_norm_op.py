"""Batch normalisation: Triton kernels, launch wrappers, the ``nnspec::batch_norm`` custom op
(fake kernel, autograd formula), the public :func:`batch_norm` and its PyTorch reference,
in that order.

Design
------
* Every input is addressed as a 3-D (N, C, L) view with explicit strides, L being the
  flattened spatial dims.  That one indexing scheme covers (N, C), (N, C, L) and
  (N, C, H, W) in both contiguous (L has unit stride) and channels_last (C has unit
  stride) layouts without copies.  Tensors whose spatial dims cannot be flattened into one
  stride (e.g. a spatially sliced or permuted view) are copied with ``.contiguous()`` once;
  gradients whose strides differ from the input's are copied into the input's layout so
  that every kernel reads and writes with the same coalesced tile orientation.  Outputs
  follow ``torch.empty_like(x)``, so channels_last in gives channels_last out.
* When the batch stride equals L * (spatial stride) - channels_last, and all 2-D inputs -
  N and L fold into one long reduction axis.
* Tiles are (BLOCK_L, BLOCK_C).  Which axis is wide depends on which one has unit stride,
  so loads are coalesced in both layouts.
* Statistics are a two-stage reduction, with no atomics (so results are deterministic):
    1. the reduction axis is cut into S splits; each program reduces its tiles for
       BLOCK_C channels into a partial (count, mean, M2), merging tile after tile with
       Chan's parallel-variance update (each tile reduced around its own mean first, so
       there is no E[x^2] - E[x]^2 cancellation);
    2. one tiny kernel merges the S partials per channel the same way, produces mean and
       1/sqrt(var + eps) for the normalisation and the backward, and computes the new
       running statistics (momentum blend, unbiased variance) in-kernel.
  The statistics are always fp32 (fp64 for fp64 inputs), whatever the input dtype.
* The new running statistics are written to fresh buffers, not into the caller's: the
  custom op must be functional to carry an autograd formula, so the caller copies the C
  values in.  Nothing here is autotuned (block sizes are a fixed heuristic), so no tuning
  run can double-apply a running-stat update.
* Backward: the same two-stage pattern reduces sum(dy) and sum(dy * xhat) per channel (the
  bias and weight gradients), then one elementwise pass writes dx.

Why one file of this length: the op is one piece of arithmetic seen four times - the
kernels, their launch plan (_Plan), the autograd formula and the reference - and the
reference and the backward kernel are line-by-line twins that have to be read side by side.
Splitting them apart is what made reading one op mean opening four files.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch

# triton and tl are stand-ins until _dispatch.load() activates this module (see _triton):
# the kernels below are ordinary Triton, made real on the first Triton launch.
from ._triton import INTERPRET, acc_dtype, compute_dtype, empty_grad, join_f64, split_f64, tl, triton

_NAME = "batch_norm_op"  # for _dispatch.load

# Small tiles under the interpreter make small test shapes span several tiles and splits.
INTERPRET_TILE = 16
INTERPRET_SPLITS = 3


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _load_tile(base, t, n_lblocks, L, s_n, s_l, offs_c_scaled, c_ok, BLOCK_L: tl.constexpr):
    # Tile t = (batch index n, block lb of the flattened spatial axis).
    n = t // n_lblocks
    offs_l = (t % n_lblocks) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    ptrs = base + n.to(tl.int64) * s_n + offs_l.to(tl.int64)[:, None] * s_l + offs_c_scaled[None, :]
    ok = l_ok[:, None] & c_ok[None, :]
    return ptrs, ok, l_ok


@triton.jit
def _stats_partial_kernel(
    x_ptr, part_ptr,
    C, L, sx_n, sx_c, sx_l,
    n_lblocks, n_tiles, tiles_per_split, S,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    xc = offs_c.to(tl.int64) * sx_c

    count = tl.zeros((), ACC)
    mean = tl.zeros((BLOCK_C,), ACC)
    m2 = tl.zeros((BLOCK_C,), ACC)
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        ptrs, ok, l_ok = _load_tile(x_ptr, t, n_lblocks, L, sx_n, sx_l, xc, c_ok, BLOCK_L)
        x = tl.load(ptrs, mask=ok, other=0.0).to(ACC)
        t_count = tl.sum(l_ok.to(ACC), axis=0)  # >= 1: tiles are never empty
        t_mean = tl.sum(x, axis=0) / t_count
        d = tl.where(l_ok[:, None], x - t_mean[None, :], 0.0)
        t_m2 = tl.sum(d * d, axis=0)
        # Chan et al.: merge (count, mean, m2) with the tile's (t_count, t_mean, t_m2).
        new_count = count + t_count
        frac = t_count / new_count
        delta = t_mean - mean
        mean = mean + delta * frac
        m2 = m2 + t_m2 + delta * delta * (count * frac)
        count = new_count

    out = split * C + offs_c
    tl.store(part_ptr + out, tl.zeros((BLOCK_C,), ACC) + count, mask=c_ok)
    tl.store(part_ptr + S * C + out, mean, mask=c_ok)
    tl.store(part_ptr + 2 * S * C + out, m2, mask=c_ok)


@triton.jit
def _stats_finalize_kernel(
    part_ptr, S, C,
    mean_ptr, invstd_ptr, rm_ptr, rv_ptr, new_rm_ptr, new_rv_ptr,
    mom_hi, mom_lo, eps_hi, eps_lo,
    BATCH_STATS: tl.constexpr, UPDATE_RUNNING: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    momentum = join_f64(mom_hi, mom_lo, ACC)
    eps = join_f64(eps_hi, eps_lo, ACC)
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    if BATCH_STATS:
        count = tl.zeros((BLOCK_C,), ACC)
        mean = tl.zeros((BLOCK_C,), ACC)
        m2 = tl.zeros((BLOCK_C,), ACC)
        # Fixed merge order over the splits: bitwise reproducible run to run.
        for s in range(0, S):
            p_count = tl.load(part_ptr + s * C + offs_c, mask=c_ok, other=0.0)
            p_mean = tl.load(part_ptr + S * C + s * C + offs_c, mask=c_ok, other=0.0)
            p_m2 = tl.load(part_ptr + 2 * S * C + s * C + offs_c, mask=c_ok, other=0.0)
            new_count = count + p_count
            # A split that got no tiles (or a padding channel) has count 0 and must change
            # nothing: 0 / max(0, 1) = 0.
            frac = p_count / tl.maximum(new_count, 1.0)
            delta = p_mean - mean
            mean = mean + delta * frac
            m2 = m2 + p_m2 + delta * delta * (count * frac)
            count = new_count
        # Real channels have count >= 2; the max only keeps padding lanes finite.
        var = m2 / tl.maximum(count, 1.0)
        invstd = 1.0 / tl.sqrt(var + eps)
        if UPDATE_RUNNING:
            rm = tl.load(rm_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
            rv = tl.load(rv_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
            # Normalisation uses the biased variance, the running estimate the unbiased one
            # (count >= 2 is checked on the host, from shapes only).
            unbiased = m2 / tl.maximum(count - 1.0, 1.0)
            new_rm = (1.0 - momentum) * rm + momentum * mean
            new_rv = (1.0 - momentum) * rv + momentum * unbiased
            tl.store(new_rm_ptr + offs_c, new_rm.to(new_rm_ptr.dtype.element_ty), mask=c_ok)
            tl.store(new_rv_ptr + offs_c, new_rv.to(new_rv_ptr.dtype.element_ty), mask=c_ok)
    else:
        mean = tl.load(rm_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
        rv = tl.load(rv_ptr + offs_c, mask=c_ok, other=1.0).to(ACC)
        invstd = 1.0 / tl.sqrt(rv + eps)
    tl.store(mean_ptr + offs_c, mean, mask=c_ok)
    tl.store(invstd_ptr + offs_c, invstd, mask=c_ok)


@triton.jit
def _apply_kernel(
    x_ptr, y_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr,
    C, L, sx_n, sx_c, sx_l, sy_n, sy_c, sy_l,
    n_lblocks, n_tiles, tiles_per_split,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    # Per-channel affine folded once per program: y = (x - mean) * scale + shift.
    mean = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    scale = tl.load(invstd_ptr + offs_c, mask=c_ok, other=0.0)
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
    if HAS_B:
        shift = tl.load(b_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
    else:
        shift = tl.zeros((BLOCK_C,), ACC)
    xc = offs_c.to(tl.int64) * sx_c
    yc = offs_c.to(tl.int64) * sy_c
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        xp, ok, l_ok = _load_tile(x_ptr, t, n_lblocks, L, sx_n, sx_l, xc, c_ok, BLOCK_L)
        yp, ok, l_ok = _load_tile(y_ptr, t, n_lblocks, L, sy_n, sy_l, yc, c_ok, BLOCK_L)
        x = tl.load(xp, mask=ok, other=0.0).to(ACC)
        y = (x - mean[None, :]) * scale[None, :] + shift[None, :]
        tl.store(yp, y.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_partial_kernel(
    dy_ptr, x_ptr, mean_ptr, invstd_ptr, part_ptr,
    C, L, sd_n, sd_c, sd_l, sx_n, sx_c, sx_l,
    n_lblocks, n_tiles, tiles_per_split, S,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mean = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    invstd = tl.load(invstd_ptr + offs_c, mask=c_ok, other=0.0)
    dc = offs_c.to(tl.int64) * sd_c
    xc = offs_c.to(tl.int64) * sx_c
    sum_dy = tl.zeros((BLOCK_C,), ACC)
    sum_dy_xhat = tl.zeros((BLOCK_C,), ACC)
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        dp, ok, l_ok = _load_tile(dy_ptr, t, n_lblocks, L, sd_n, sd_l, dc, c_ok, BLOCK_L)
        xp, ok, l_ok = _load_tile(x_ptr, t, n_lblocks, L, sx_n, sx_l, xc, c_ok, BLOCK_L)
        dy = tl.load(dp, mask=ok, other=0.0).to(ACC)
        x = tl.load(xp, mask=ok, other=0.0).to(ACC)
        xhat = (x - mean[None, :]) * invstd[None, :]
        sum_dy += tl.sum(dy, axis=0)
        sum_dy_xhat += tl.sum(dy * xhat, axis=0)
    out = split * C + offs_c
    tl.store(part_ptr + out, sum_dy, mask=c_ok)
    tl.store(part_ptr + S * C + out, sum_dy_xhat, mask=c_ok)


@triton.jit
def _bwd_finalize_kernel(
    part_ptr, S, C, sums_ptr, dw_ptr, db_ptr,
    NEED_W: tl.constexpr, NEED_B: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    sum_dy = tl.zeros((BLOCK_C,), ACC)
    sum_dy_xhat = tl.zeros((BLOCK_C,), ACC)
    for s in range(0, S):
        sum_dy += tl.load(part_ptr + s * C + offs_c, mask=c_ok, other=0.0)
        sum_dy_xhat += tl.load(part_ptr + S * C + s * C + offs_c, mask=c_ok, other=0.0)
    tl.store(sums_ptr + offs_c, sum_dy, mask=c_ok)
    tl.store(sums_ptr + C + offs_c, sum_dy_xhat, mask=c_ok)
    if NEED_W:
        tl.store(dw_ptr + offs_c, sum_dy_xhat.to(dw_ptr.dtype.element_ty), mask=c_ok)
    if NEED_B:
        tl.store(db_ptr + offs_c, sum_dy.to(db_ptr.dtype.element_ty), mask=c_ok)


@triton.jit
def _bwd_dx_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, sums_ptr,
    C, L, sd_n, sd_c, sd_l, sx_n, sx_c, sx_l, so_n, so_c, so_l,
    n_lblocks, n_tiles, tiles_per_split, count,
    BATCH_STATS: tl.constexpr, HAS_W: tl.constexpr,
    ACC: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    mean = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    invstd = tl.load(invstd_ptr + offs_c, mask=c_ok, other=0.0)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(ACC)
    if BATCH_STATS:
        inv_count = 1.0 / count.to(ACC)
        # The statistics depend on x too: dx = scale * (dy - mean(dy) - xhat * mean(dy*xhat)).
        mean_dy = tl.load(sums_ptr + offs_c, mask=c_ok, other=0.0) * inv_count
        mean_dy_xhat = tl.load(sums_ptr + C + offs_c, mask=c_ok, other=0.0) * inv_count
    dc = offs_c.to(tl.int64) * sd_c
    xc = offs_c.to(tl.int64) * sx_c
    oc = offs_c.to(tl.int64) * so_c
    t0 = split * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)
    for t in range(t0, t1):
        dp, ok, l_ok = _load_tile(dy_ptr, t, n_lblocks, L, sd_n, sd_l, dc, c_ok, BLOCK_L)
        op, ok, l_ok = _load_tile(dx_ptr, t, n_lblocks, L, so_n, so_l, oc, c_ok, BLOCK_L)
        dy = tl.load(dp, mask=ok, other=0.0).to(ACC)
        if BATCH_STATS:
            xp, ok, l_ok = _load_tile(x_ptr, t, n_lblocks, L, sx_n, sx_l, xc, c_ok, BLOCK_L)
            x = tl.load(xp, mask=ok, other=0.0).to(ACC)
            xhat = (x - mean[None, :]) * invstd[None, :]
            dx = scale[None, :] * (dy - mean_dy[None, :] - xhat * mean_dy_xhat[None, :])
        else:
            dx = scale[None, :] * dy
        tl.store(op, dx.to(dx_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- launch wrappers


def _ncl_strides(t):
    """(sN, sC, sL) addressing t as (N, C, L), or None if the spatial dims cannot share one
    stride."""
    spatial = [(size, st) for size, st in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, st0), (size1, st1) in zip(spatial, spatial[1:]):
        if st0 != st1 * size1:
            return None
    s_n, s_c = t.stride(0), t.stride(1)
    length = math.prod(t.shape[2:])
    s_l = spatial[-1][1] if spatial else s_n  # L == 1: any stride works; s_n lets N fold
    if t.shape[0] == 1:
        s_n = length * s_l  # a single batch entry: its stride is never used, let it fold
    return s_n, s_c, s_l


class _Plan:
    """Shared tiling for all tensors of one launch (same shape, possibly different strides)."""

    def __init__(self, shape, strides_list, device):
        n, c = shape[0], shape[1]
        length = math.prod(shape[2:])
        # Fold N into L when every tensor allows it (channels_last, 2-D inputs).
        if all(s_n == length * s_l for s_n, _, s_l in strides_list):
            self.strides = [(0, s_c, s_l) for _, s_c, s_l in strides_list]
            n, length = 1, n * length
        else:
            self.strides = list(strides_list)
        self.C, self.L = c, length
        _, s_c, s_l = self.strides[0]
        channels_fast = (s_c == 1 and s_l != 1) or length == 1
        p2c = triton.next_power_of_2(max(c, 1))
        p2l = triton.next_power_of_2(max(length, 1))
        if INTERPRET:
            if channels_fast:
                bc, bl = min(p2c, 8), min(p2l, INTERPRET_TILE)
            else:
                bl, bc = min(p2l, INTERPRET_TILE), min(p2c, 4)
        elif channels_fast:
            bc = min(p2c, 64)
            bl = min(p2l, max(1, 4096 // bc))
        else:
            bl = min(p2l, 1024)
            bc = min(p2c, max(1, 4096 // bl))
        self.BLOCK_C, self.BLOCK_L = max(bc, 2), max(bl, 2)
        self.n_lblocks = triton.cdiv(length, self.BLOCK_L)
        self.n_tiles = n * self.n_lblocks
        self.c_blocks = triton.cdiv(c, self.BLOCK_C)
        if INTERPRET:
            splits = INTERPRET_SPLITS
        else:
            # Enough programs to fill the GPU a few times over.
            sms = _sm_count(device)
            splits = triton.cdiv(4 * sms, self.c_blocks)
        splits = max(1, min(splits, self.n_tiles))
        self.tiles_per_split = triton.cdiv(self.n_tiles, splits)
        self.S = triton.cdiv(self.n_tiles, self.tiles_per_split) if self.n_tiles else 1
        self.grid = (self.c_blocks, self.S)
        self.num_warps = 4 if self.BLOCK_C * self.BLOCK_L <= 2048 else 8
        self.fin_block = min(triton.next_power_of_2(max(c, 1)), 256 if not INTERPRET else 8)
        self.fin_block = max(self.fin_block, 2)
        self.fin_grid = (triton.cdiv(c, self.fin_block),)

    def tiles(self):
        return self.n_lblocks, self.n_tiles, self.tiles_per_split


_SM_CACHE: dict = {}


def _sm_count(device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_CACHE:
        _SM_CACHE[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_CACHE[idx]


def _addressable(x):
    s = _ncl_strides(x)
    if s is None:
        x = x.contiguous()
        s = _ncl_strides(x)
    return x, s


def forward(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    """Triton twin of :func:`reference_forward`."""
    cdt = compute_dtype(x.dtype)
    c = x.shape[1]
    dev = x.device
    y = torch.empty_like(x)
    xs, sx = _addressable(x)
    sy = _ncl_strides(y)
    if sy is None:  # cannot happen for empty_like output, but stay correct if it does
        y = torch.empty(x.shape, dtype=x.dtype, device=dev)
        sy = _ncl_strides(y)
    plan = _Plan(x.shape, [sx, sy], dev)
    (sxn, sxc, sxl), (syn, syc, syl) = plan.strides
    mean = torch.empty(c, dtype=cdt, device=dev)
    invstd = torch.empty(c, dtype=cdt, device=dev)
    update = use_batch_stats and running_mean is not None
    if update:
        new_rm = torch.empty_like(running_mean, memory_format=torch.contiguous_format)
        new_rv = torch.empty_like(running_var, memory_format=torch.contiguous_format)
    else:
        new_rm = x.new_empty((0,), dtype=cdt)
        new_rv = x.new_empty((0,), dtype=cdt)
    if x.numel() == 0:
        if update:  # no samples, nothing to learn from: the running statistics stay as they are
            new_rm.copy_(running_mean)
            new_rv.copy_(running_var)
        return y, mean.fill_(float("nan")), invstd.fill_(float("nan")), new_rm, new_rv
    acc = acc_dtype(x.dtype)
    n_lblocks, n_tiles, tps = plan.tiles()
    rm = running_mean.contiguous() if running_mean is not None else mean
    rv = running_var.contiguous() if running_var is not None else invstd
    if use_batch_stats:
        part = torch.empty((3, plan.S, c), dtype=cdt, device=dev)
        _stats_partial_kernel[plan.grid](
            xs, part, c, plan.L, sxn, sxc, sxl, n_lblocks, n_tiles, tps, plan.S,
            ACC=acc, BLOCK_L=plan.BLOCK_L, BLOCK_C=plan.BLOCK_C, num_warps=plan.num_warps,
        )
    else:
        part = mean  # unused
    _stats_finalize_kernel[plan.fin_grid](
        part, plan.S, c, mean, invstd, rm, rv,
        new_rm if update else mean, new_rv if update else invstd,
        *split_f64(float(momentum)), *split_f64(float(eps)),
        BATCH_STATS=use_batch_stats, UPDATE_RUNNING=update, ACC=acc, BLOCK_C=plan.fin_block,
    )
    _apply_kernel[plan.grid](
        xs, y, mean, invstd,
        weight.contiguous() if weight is not None else mean,
        bias.contiguous() if bias is not None else mean,
        c, plan.L, sxn, sxc, sxl, syn, syc, syl, n_lblocks, n_tiles, tps,
        HAS_W=weight is not None, HAS_B=bias is not None,
        ACC=acc, BLOCK_L=plan.BLOCK_L, BLOCK_C=plan.BLOCK_C, num_warps=plan.num_warps,
    )
    return y, mean, invstd, new_rm, new_rv


def backward(grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b):
    """Triton twin of :func:`reference_backward` -> (dx, dweight, dbias)."""
    cdt = compute_dtype(x.dtype)
    c = x.shape[1]
    dev = x.device
    pdt = weight.dtype if weight is not None else x.dtype
    dw = torch.empty(c, dtype=pdt, device=dev) if need_w else empty_grad(x)
    db = torch.empty(c, dtype=pdt, device=dev) if need_b else empty_grad(x)
    if x.numel() == 0:
        if need_w:
            dw.zero_()
        if need_b:
            db.zero_()
        return torch.empty_like(x) if need_x else empty_grad(x), dw, db
    xs, sx = _addressable(x)
    # dx takes the layout of the addressable x: empty_like(x) of a permuted view (one the
    # forward had to copy) keeps its permuted strides, which no (N, C, L) view can address.
    dx = torch.empty_like(xs) if need_x else empty_grad(x)
    dy = grad_out
    if dy.stride() != xs.stride():
        # Same layout as x, so one tile orientation is coalesced for both (this also
        # materialises expanded, stride-0 gradients).
        dy = torch.empty_like(xs).copy_(dy)
    sd = _ncl_strides(dy)
    so = _ncl_strides(dx) if need_x else sx
    plan = _Plan(x.shape, [sx, sd, so], dev)
    (sxn, sxc, sxl), (sdn, sdc, sdl), (son, soc, sol) = plan.strides
    n_lblocks, n_tiles, tps = plan.tiles()
    acc = acc_dtype(x.dtype)
    need_sums = need_w or need_b or (need_x and use_batch_stats)
    sums = torch.empty((2, c), dtype=cdt, device=dev)
    if need_sums:
        part = torch.empty((2, plan.S, c), dtype=cdt, device=dev)
        _bwd_partial_kernel[plan.grid](
            dy, xs, save_mean, save_invstd, part,
            c, plan.L, sdn, sdc, sdl, sxn, sxc, sxl, n_lblocks, n_tiles, tps, plan.S,
            ACC=acc, BLOCK_L=plan.BLOCK_L, BLOCK_C=plan.BLOCK_C, num_warps=plan.num_warps,
        )
        _bwd_finalize_kernel[plan.fin_grid](
            part, plan.S, c, sums, dw if need_w else sums, db if need_b else sums,
            NEED_W=need_w, NEED_B=need_b, ACC=acc, BLOCK_C=plan.fin_block,
        )
    if need_x:
        count = x.numel() // c
        _bwd_dx_kernel[plan.grid](
            dy, xs, dx, save_mean, save_invstd,
            weight.contiguous() if weight is not None else save_mean, sums,
            c, plan.L, sdn, sdc, sdl, sxn, sxc, sxl, son, soc, sol,
            n_lblocks, n_tiles, tps, count,
            BATCH_STATS=use_batch_stats, HAS_W=weight is not None,
            ACC=acc, BLOCK_L=plan.BLOCK_L, BLOCK_C=plan.BLOCK_C, num_warps=plan.num_warps,
        )
    return dx, dw, db


# --------------------------------------------------------------------------- custom ops
# A forward op and a backward op, both opaque to torch.compile / torch.export (fake kernels
# give them shapes).  The backend string travels with the op and is resolved when it runs.
# The backward op has no autograd formula: double backward is not supported.


def _out_dtype(t: Optional[Tensor], fallback: torch.dtype) -> torch.dtype:
    return t.dtype if t is not None else fallback


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
    triton_path = _dispatch.runs_triton(_NAME, backend, x.device)
    args = (x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps)
    if triton_path:
        return forward(*args)
    return reference_forward(*args)


@batch_norm_op.register_fake
def _(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    cdt = compute_dtype(x.dtype)
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
    triton_path = _dispatch.runs_triton(_NAME, backend, x.device)
    args = (grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b)
    if triton_path:
        return backward(*args)
    return reference_backward(*args)


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


# --------------------------------------------------------------------------- public function


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
    _check_scalars_and_dtypes(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps)
    if use_batch_stats and x.shape[0] * math.prod(x.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    be = _dispatch.resolve(backend, x.device)
    if not _dispatch.use_custom_op(be, x, running_mean, running_var, weight, bias):
        return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps)
    y, _, _, new_rm, new_rv = batch_norm_op(
        x, weight, bias, running_mean, running_var, use_batch_stats, float(momentum), float(eps), backend
    )
    if use_batch_stats and running_mean is not None:
        # new_rm / new_rv are non-differentiable outputs, so this records nothing for
        # autograd; a plain copy_ (not under no_grad) is what export records as a buffer
        # mutation.
        running_mean.copy_(new_rm)
        running_var.copy_(new_rv)
    return y


def _check_scalars_and_dtypes(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps):
    """Refuse, before any backend runs, what F.batch_norm refuses, so that the three backends
    (eager PyTorch, the custom op on PyTorch, Triton) accept and refuse the same calls with
    the same message.

    * momentum and eps must be real numbers (``momentum=None``, nn.BatchNorm's cumulative
      average, is the module's business: it passes the factor it computed).
    * eps must be positive when batch statistics are used: var + 0 is 0 for a constant
      channel, and 1/sqrt(0) turns the whole channel into inf/nan.
    * weight, bias and the running statistics have x's dtype; bfloat16 / float16 inputs may
      also keep them in float32 (mixed precision), as PyTorch allows - nothing else mixes.
    """
    for name, value in (("momentum", momentum), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"batch_norm: {name} must be a float, got {type(value).__name__} {value!r}")
    if use_batch_stats and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    allowed = {x.dtype}
    if x.dtype in (torch.bfloat16, torch.float16):
        allowed.add(torch.float32)
    named = (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var))
    for name, t in named:
        if t is not None and t.dtype not in allowed:
            raise TypeError(
                f"batch_norm: {name} is {t.dtype} but x is {x.dtype}; weight, bias and the running "
                "statistics must have x's dtype (or float32 for bfloat16/float16 x)"
            )


# --------------------------------------------------------------------------- PyTorch reference
# The backend="torch" path: twins of forward() and backward() above (same arguments, same
# auxiliary outputs), so the custom op can switch between them without the autograd or
# fake code caring which ran.  Math in float32 (float64 stays float64) whatever the input dtype, like
# the kernels; the tests check both against PyTorch's own ops run in float64.


def _bn_shape(x):
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def reference_forward(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
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
        count = x.numel() // x.shape[1] if x.shape[1] else 0
        if count == 0:
            # An empty batch has no statistics (nan, like the kernels) and must leave the
            # running ones untouched, as F.batch_norm does.
            mean = xf.new_full((x.shape[1],), float("nan"))
            invstd = mean.clone()
            if running_mean is not None:
                new_rm, new_rv = running_mean.clone(), running_var.clone()
            else:
                new_rm, new_rv = empty, empty.clone()
            return torch.empty_like(x), mean, invstd, new_rm, new_rv
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


def reference_backward(grad_out, x, weight, save_mean, save_invstd, use_batch_stats, need_x, need_w, need_b):
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
