"""Fused Linear + LeakyReLU: Triton kernels, launch wrappers, the ``nnspec::linear_leaky_relu``
custom op (fake kernel, autograd formula), the public :func:`linear_leaky_relu` and its
PyTorch reference, in that order.

Design
------
* Forward: a tiled matmul ``x (M, K) @ weight.T (K, N)`` with fp32 accumulation; bias,
  activation and the sign mask are applied in the epilogue while the tile is still in
  registers, so the pre-activation never touches memory.
* What the backward keeps: the pre-activation sign as one byte per element (bool), not the
  output.  LeakyReLU's derivative only needs that sign, and a separate mask keeps the op
  correct for any slope (including 0, where the output alone cannot tell "was zero" from
  "was negative" once it is overwritten) while costing half (bf16) or a quarter (fp32) of
  an output copy.
* Backward: two matmul kernels, each applying the activation derivative to grad_out tiles as
  they are loaded (``g = dy * where(mask, 1, slope)``), so the pre-activation gradient is
  never materialised:
      dx = g @ weight         tiles over (M, K), reduction over N
      dW = g.T @ x  (+ db)    tiles over (N, K), reduction over M; the programs of the first
                              K-column also sum g over M for the bias gradient, reusing the
                              g tile they already hold (deterministic, no atomics).
* Program ids are swizzled in bands of GROUP_M tile-rows so that tiles running at the same
  time share their operand panels in L2.
* fp32 inputs use TF32 tensor cores exactly when PyTorch's own matmuls would
  (torch.backends.cuda.matmul.allow_tf32 / fp32_precision); otherwise IEEE fp32.
* @triton.autotune picks the tile shape on GPU (every kernel writes only fresh outputs, so
  re-running a config during tuning is harmless).  Under the interpreter autotuning would
  run every config on the CPU, so a fixed small config is used instead.

Why one file of this length: the three matmul kernels share one tiling, swizzle, operand
and epilogue convention and one autotuning space, and the backward kernels are read
against the reference backward and the autograd formula that call them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch

# triton and tl are stand-ins until _dispatch.load() activates this module (see _triton):
# the kernels below are ordinary Triton, made real on the first Triton launch.
from ._triton import INTERPRET, acc_dtype, compute_dtype, empty_grad, join_f64, split_f64, tl, triton

_NAME = "linear_leaky_relu_op"  # for _dispatch.load

# Fixed tiles under the interpreter: 16 is tl.dot's minimum, and small tiles make the
# small test shapes span several tiles in every dimension (tails included).
INTERPRET_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2)
FP64_CONFIG = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=8, GROUP_M=8)


# The autotuning space, per operand class and kernel, as (BLOCK_M, BLOCK_N, BLOCK_K, warps,
# stages).  Chosen so that no kept config spills registers on sm_90 (``ptxas -v``), which
# tests/kernels/test_kernels_spills.py checks without a GPU at every layer shape the shipped
# specs use.  What drives the register demand:
#   * the accumulator tile over the threads: tiles of 128 x 128 and 64 x 128 need 8 warps
#     (4 warps spilled at every dtype);
#   * unaligned operands (a size or stride not a multiple of 16, as N = 200 of the MNIST layer
#     or K = 200 of the layer after it): the loads cannot be asynchronous copies, so the
#     pipelined stages wait in registers; every tile from 128 x 128 up spilled 0.3-5 KB per
#     thread, and with K unaligned the backward kernels (which also load, scale and cast
#     grad_out in registers) spilled at 128 x 64 too;
#   * IEEE float32 (TF32 off) has no tensor cores: tl.dot becomes FMAs on register operands;
#     its backward keeps 64 x 64 (8 warps) and 32 x 64 tiles, and only 32 x 64 unaligned.
# The float64 path has its own fixed config (FP64_CONFIG).
_BIG = [(256, 128, 64, 8, 3), (128, 128, 64, 8, 3), (128, 128, 32, 8, 4)]
_MID = [(128, 64, 64, 8, 4), (64, 128, 64, 8, 4), (128, 64, 32, 8, 4), (64, 128, 32, 8, 4)]
_SMALL = [(64, 64, 32, 8, 4), (64, 64, 32, 4, 5), (32, 64, 32, 4, 5)]
KEPT = {
    # (operands, aligned) -> {"fwd": tiles, "bwd": tiles (dx and dW)}
    ("16-bit", True): {"fwd": _BIG + _MID + _SMALL, "bwd": _BIG + _MID + _SMALL},
    ("16-bit", False): {"fwd": _MID + _SMALL, "bwd": [(64, 64, 32, 8, 4), (32, 64, 32, 4, 5)]},
    ("tf32", True): {"fwd": _BIG[1:] + _MID + _SMALL, "bwd": [(128, 64, 32, 8, 4), (64, 64, 32, 8, 4), (32, 64, 32, 4, 5)]},
    ("tf32", False): {"fwd": _MID + _SMALL, "bwd": [(128, 64, 32, 8, 4), (64, 64, 32, 8, 4), (32, 64, 32, 4, 5)]},
    ("ieee", True): {"fwd": _BIG[1:] + _MID + [(64, 64, 32, 8, 4), (32, 64, 32, 4, 5)],
                     "bwd": [(64, 64, 32, 8, 4), (32, 64, 32, 4, 5)]},
    ("ieee", False): {"fwd": [(128, 64, 32, 8, 4), (64, 128, 32, 8, 4), (64, 64, 32, 8, 4), (32, 64, 32, 4, 5)],
                      "bwd": [(32, 64, 32, 4, 5)]},
}


def _tile(c) -> tuple[int, int, int, int, int]:
    k = c.kwargs
    return (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], c.num_warps, c.num_stages)


def _configs():
    """Every tile any class keeps (each autotuner holds all; ``kept_configs`` picks per launch)."""
    tiles = dict.fromkeys(t for lists in KEPT.values() for tl_ in lists.values() for t in tl_)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
            for bm, bn, bk, w, st in tiles]


# --------------------------------------------------------------------------- Triton kernels


@triton.jit
def _swizzle(pid, tiles_r, tiles_c, GROUP: tl.constexpr):
    # Consecutive pids walk down a band of GROUP tile-rows before moving one tile-column
    # right, instead of sweeping a whole row of tiles: the band's operand panels stay hot
    # in L2 while it is being consumed.
    per_band = GROUP * tiles_c
    band = pid // per_band
    first = band * GROUP
    rows = tl.minimum(tiles_r - first, GROUP)
    r = first + (pid % per_band) % rows
    c = (pid % per_band) // rows
    return r, c


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr, FMA: tl.constexpr, ACC: tl.constexpr):
    if FMA:
        # float64 on GPU: an outer-product sum on the CUDA cores.  tl.dot's fp64 lowering
        # fails for register-computed operands in some Triton releases (3.6), and fp64 here
        # exists for gradcheck-grade accuracy, not speed.
        return acc + tl.sum(a[:, :, None].to(ACC) * b[None, :, :].to(ACC), axis=1)
    elif UPCAST:
        # Interpreter only: its numpy tl.dot mishandles bf16 operands.
        return tl.dot(a.to(ACC), b.to(ACC), acc, input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def _fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mask_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_b, stride_ym, stride_yn,
    slope_hi, slope_lo,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, FMA: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    slope = join_f64(slope_hi, slope_lo, ACC)
    pid_m, pid_n = _swizzle(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    # int64 row/column indices: M * K alone can pass 2**31 for long sequences.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    # weight is (N, K); reading it as a (K, N) tile is just a stride swap.
    b_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    m_ok = offs_m < M
    n_ok = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _mma(a, b, acc, PRECISION, UPCAST, FMA, ACC)
        a_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n * stride_b, mask=n_ok, other=0.0).to(ACC)[None, :]
    positive = acc > 0
    out = tl.where(positive, acc, acc * slope)
    out_off = offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    ok = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + out_off, out.to(y_ptr.dtype.element_ty), mask=ok)
    # The mask shares y's (contiguous) layout.
    tl.store(mask_ptr + out_off, positive.to(tl.int8), mask=ok)


@triton.jit
def _bwd_dx_kernel(
    dy_ptr, mask_ptr, w_ptr, dx_ptr,
    M, N, K,
    stride_dym, stride_dyn, stride_mm, stride_mn, stride_wn, stride_wk, stride_dxm, stride_dxk,
    slope_hi, slope_lo,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, FMA: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # dx (M, K) = g (M, N) @ weight (N, K); the reduction runs over N.
    slope = join_f64(slope_hi, slope_lo, ACC)
    pid_m, pid_k = _swizzle(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_k = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    dy_ptrs = dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    mk_ptrs = mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    m_ok = offs_m < M
    k_ok = offs_k < K

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        n_ok = (n0 + offs_n) < N
        tile_ok = m_ok[:, None] & n_ok[None, :]
        dy = tl.load(dy_ptrs, mask=tile_ok, other=0.0).to(ACC)
        pos = tl.load(mk_ptrs, mask=tile_ok, other=0) != 0
        # Activation derivative fused into the operand load; rounded to the operand dtype
        # like PyTorch's unfused leaky_relu_backward output would be.
        g = tl.where(pos, dy, dy * slope).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _mma(g, w, acc, PRECISION, UPCAST, FMA, ACC)
        dy_ptrs += BLOCK_N * stride_dyn
        mk_ptrs += BLOCK_N * stride_mn
        w_ptrs += BLOCK_N * stride_wn

    off = offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _bwd_dw_kernel(
    dy_ptr, mask_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K,
    stride_dym, stride_dyn, stride_mm, stride_mn, stride_xm, stride_xk, stride_dwn, stride_dwk,
    slope_hi, slope_lo,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, FMA: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # dW (N, K) = g.T (N, M) @ x (M, K); the reduction runs over M.
    slope = join_f64(slope_hi, slope_lo, ACC)
    pid_n, pid_k = _swizzle(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP_M)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    # g.T tile (BLOCK_N, BLOCK_M) read straight from the (M, N) layout via strides.
    dy_ptrs = dy_ptr + offs_n[:, None] * stride_dyn + offs_m[None, :] * stride_dym
    mk_ptrs = mask_ptr + offs_n[:, None] * stride_mn + offs_m[None, :] * stride_mm
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    n_ok = offs_n < N
    k_ok = offs_k < K

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    db = tl.zeros((BLOCK_N,), dtype=ACC)
    for m0 in range(0, M, BLOCK_M):
        m_ok = (m0 + offs_m) < M
        tile_ok = n_ok[:, None] & m_ok[None, :]
        dy = tl.load(dy_ptrs, mask=tile_ok, other=0.0).to(ACC)
        pos = tl.load(mk_ptrs, mask=tile_ok, other=0) != 0
        g32 = tl.where(pos, dy, dy * slope)
        if HAS_BIAS:
            db += tl.sum(g32, axis=1)
        g = g32.to(x_ptr.dtype.element_ty)
        xt = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _mma(g, xt, acc, PRECISION, UPCAST, FMA, ACC)
        dy_ptrs += BLOCK_M * stride_dym
        mk_ptrs += BLOCK_M * stride_mm
        x_ptrs += BLOCK_M * stride_xm

    off = offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
    tl.store(dw_ptr + off, acc.to(dw_ptr.dtype.element_ty), mask=n_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        # Every K-column of programs computed the same db; only the first one writes it.
        # (A bound rather than `n_ok & (pid_k == 0)`: the interpreter turns tensor-bool &
        # scalar-bool into int32, which it then refuses as a mask.)
        db_limit = tl.where(pid_k == 0, N, 0)
        tl.store(db_ptr + offs_n, db.to(db_ptr.dtype.element_ty), mask=offs_n < db_limit)


def _smem_budget(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) or 160 * 1024


# Per kernel: the operand whose element size sizes the tiles, and the elements of the two
# operand tiles one pipeline stage holds.
_TILES = {
    "fwd": ("x_ptr", lambda c: c["BLOCK_K"] * (c["BLOCK_M"] + c["BLOCK_N"])),
    "dx": ("w_ptr", lambda c: c["BLOCK_N"] * (c["BLOCK_M"] + c["BLOCK_K"])),
    "dw": ("x_ptr", lambda c: c["BLOCK_M"] * (c["BLOCK_N"] + c["BLOCK_K"])),
}


def launch_kind(named_args) -> str:
    """Which matmul kernel ``named_args`` (argument name -> value) are for."""
    return "dx" if "dx_ptr" in named_args else "dw" if "dw_ptr" in named_args else "fwd"


def operand_class(named_args, precision: str) -> tuple[str, bool]:
    """(operands, aligned) of one launch, the key of :data:`KEPT`.

    ``aligned``: every pointer 16-byte aligned and every integer argument (sizes, strides) a
    multiple of 16 or 1 - exactly when Triton specialises them all as divisible by 16, which
    is what lets it vectorise the loads and make them asynchronous copies.
    """
    aligned = True
    for value in named_args.values():
        if isinstance(value, torch.Tensor):
            aligned &= value.data_ptr() % 16 == 0
        elif isinstance(value, int) and not isinstance(value, bool):
            aligned &= value % 16 == 0 or value == 1
    t = named_args["w_ptr"] if "w_ptr" in named_args else named_args["x_ptr"]
    if t.dtype == torch.float32:
        return ("tf32" if precision == "tf32" else "ieee"), aligned
    return "16-bit", aligned


def kept_configs(configs, named_args, smem_budget, **kwargs):
    """The configs worth compiling for one launch (the autotuner's early pruning).

    Keeps the tiles :data:`KEPT` lists for the launch's operand class and kernel (those
    that do not spill registers there), then drops those whose pipelined operand tiles
    cannot fit in ``smem_budget`` bytes of shared memory (fp32 tiles are twice the bf16
    ones) rather than compiling them only to hit OutOfResources.  Pure:
    ``python -m nnspec.bench.precompile --aot`` calls it with sm_90's budget to compile,
    without a GPU, exactly what a launch would keep.
    """
    kind = launch_kind(named_args)
    operand, tile_elems = _TILES[kind]
    wanted = set(KEPT[operand_class(named_args, kwargs.get("PRECISION", "ieee"))]["fwd" if kind == "fwd" else "bwd"])
    ours = [c for c in configs if _tile(c) in wanted] or list(configs)
    elt = named_args[operand].element_size()
    fit = [c for c in ours if c.num_stages * tile_elems(c.kwargs) * elt <= smem_budget]
    return fit or [min(ours, key=lambda c: c.num_stages * tile_elems(c.kwargs))]


def _pruner():
    def prune(configs, named_args, **kwargs):
        device = named_args[_TILES[launch_kind(named_args)][0]].device
        return kept_configs(configs, named_args, _smem_budget(device), **kwargs)

    return {"early_config_prune": prune}


_fwd_tuned = triton.autotune(
    configs=_configs(), key=["M", "N", "K"],
    prune_configs_by=_pruner(),
)(_fwd_kernel)
_dx_tuned = triton.autotune(
    configs=_configs(), key=["M", "N", "K"],
    prune_configs_by=_pruner(),
)(_bwd_dx_kernel)
_dw_tuned = triton.autotune(
    configs=_configs(), key=["M", "N", "K"],
    prune_configs_by=_pruner(),
)(_bwd_dw_kernel)


# --------------------------------------------------------------------------- launch wrappers


def _tf32_enabled() -> bool:
    m = torch.backends.cuda.matmul
    prec = getattr(m, "fp32_precision", None)  # torch >= 2.9
    if prec == "tf32":
        return True
    if prec == "ieee":
        return False
    try:
        return bool(m.allow_tf32)
    except RuntimeError:  # mixed legacy/new API settings: be exact
        return False


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not INTERPRET and _tf32_enabled():
        return "tf32"
    return "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype in (torch.bfloat16, torch.float16)


def _launch(tuned, raw, grid_tiles, *args, **kwargs):
    fma = kwargs["ACC"] == tl.float64 and not INTERPRET
    kwargs["FMA"] = fma
    if INTERPRET or fma:
        # Fixed tiles: the interpreter would "tune" on the CPU, and the fp64 outer-product
        # path wants small tiles (BLOCK_M * BLOCK_N * BLOCK_K values live in registers).
        cfg = INTERPRET_CONFIG if INTERPRET else FP64_CONFIG
        raw[(grid_tiles(cfg),)](*args, **kwargs, **cfg)
    else:
        tuned[lambda meta: (grid_tiles(meta),)](*args, **kwargs)


def _rows(x) -> int:
    """M, the number of rows x (..., K) holds.  Counted from the leading dims, because
    ``reshape(-1, K)`` cannot infer it when K (or N, for the gradient) is 0."""
    m = 1
    for size in x.shape[:-1]:
        m *= size
    return m


def forward(x, weight, bias, slope):
    """Triton twin of :func:`reference_forward` -> (out, mask)."""
    n, k = weight.shape
    m = _rows(x)
    x2 = x.reshape(m, k)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    mask = torch.empty((m, n), dtype=torch.bool, device=x.device)
    if m > 0 and n > 0:
        if k == 0:  # empty reduction: the matmul is zero, only bias + activation remain
            pre = torch.zeros((m, n), dtype=compute_dtype(x.dtype), device=x.device)
            if bias is not None:
                pre = pre + bias.to(pre.dtype)
            out.copy_(torch.where(pre > 0, pre, pre * slope))
            mask.copy_(pre > 0)
        else:
            b = bias if bias is not None else out
            _launch(
                _fwd_tuned, _fwd_kernel,
                lambda c: triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]),
                x2, weight, b, out, mask.view(torch.int8),
                m, n, k,
                x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
                b.stride(0) if bias is not None else 0, out.stride(0), out.stride(1),
                *split_f64(float(slope)),
                HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype), UPCAST=_upcast(x.dtype),
                ACC=acc_dtype(x.dtype),
            )
    shape = tuple(x.shape[:-1]) + (n,)
    return out.view(shape), mask.view(shape)


def backward(grad_out, mask, x, weight, slope, need_x, need_w, need_b):
    """Triton twin of :func:`reference_backward` -> (dx, dW, db)."""
    n, k = weight.shape
    m = _rows(x)
    x2 = x.reshape(m, k)
    dy = grad_out.reshape(m, n)
    mk = mask.reshape(m, n).view(torch.int8)
    prec = _precision(x.dtype)
    up = _upcast(x.dtype)
    dx = empty_grad(x)
    dw = empty_grad(weight)
    db = empty_grad(weight)
    if need_x:
        dx = torch.empty((m, k), dtype=x.dtype, device=x.device)
        if m > 0 and k > 0:
            if n == 0:
                dx.zero_()
            else:
                _launch(
                    _dx_tuned, _bwd_dx_kernel,
                    lambda c: triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(k, c["BLOCK_K"]),
                    dy, mk, weight, dx, m, n, k,
                    dy.stride(0), dy.stride(1), mk.stride(0), mk.stride(1),
                    weight.stride(0), weight.stride(1), dx.stride(0), dx.stride(1),
                    *split_f64(float(slope)), PRECISION=prec, UPCAST=up, ACC=acc_dtype(x.dtype),
                )
        dx = dx.view(x.shape)
    if need_w or need_b:
        dw_buf = torch.empty((n, k), dtype=weight.dtype, device=x.device)
        db_buf = torch.empty((n,), dtype=weight.dtype, device=x.device)
        if m == 0 or k == 0:
            dw_buf.zero_()
            dyf = dy.to(compute_dtype(dy.dtype))
            db_buf.copy_(torch.where(mask.reshape(m, n), dyf, dyf * slope).sum(0))
        elif n > 0:
            _launch(
                _dw_tuned, _bwd_dw_kernel,
                lambda c: triton.cdiv(n, c["BLOCK_N"]) * triton.cdiv(k, c["BLOCK_K"]),
                dy, mk, x2, dw_buf, db_buf, m, n, k,
                dy.stride(0), dy.stride(1), mk.stride(0), mk.stride(1),
                x2.stride(0), x2.stride(1), dw_buf.stride(0), dw_buf.stride(1),
                *split_f64(float(slope)), HAS_BIAS=need_b, PRECISION=prec, UPCAST=up, ACC=acc_dtype(x.dtype),
            )
        if need_w:
            dw = dw_buf
        if need_b:
            db = db_buf
    return dx, dw, db


# --------------------------------------------------------------------------- custom ops
# A forward op and a backward op, both opaque to torch.compile / torch.export (fake kernels
# give them shapes).  The backend string travels with the op and is resolved when it runs.
# The backward op has no autograd formula: double backward is not supported.


@torch.library.custom_op("nnspec::linear_leaky_relu", mutates_args=())
def linear_leaky_relu_op(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], slope: float, backend: str
) -> tuple[Tensor, Tensor]:
    """-> (leaky_relu(x @ weight.T + bias), pre_activation > 0)"""
    triton_path = _dispatch.runs_triton(_NAME, backend, x.device)
    if triton_path:
        return forward(x, weight, bias, slope)
    return reference_forward(x, weight, bias, slope)


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
    triton_path = _dispatch.runs_triton(_NAME, backend, x.device)
    if triton_path:
        return backward(grad_out, mask, x, weight, slope, need_x, need_w, need_b)
    return reference_backward(grad_out, mask, x, weight, slope, need_x, need_w, need_b)


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


# --------------------------------------------------------------------------- public function


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
    out, _ = linear_leaky_relu_op(x, weight, bias, slope, backend)
    return out


# --------------------------------------------------------------------------- PyTorch reference
# The backend="torch" path: twins of forward() and backward() above (same arguments, same
# auxiliary outputs), so the custom op can switch between them without the autograd or
# fake code caring which ran.  Math in float32 (float64 stays float64) whatever the input dtype, like
# the kernels; the tests check both against PyTorch's own ops run in float64.


def reference_forward(x, weight, bias, slope):
    """Returns ``(leaky_relu(x @ weight.T + bias, slope), pre_activation > 0)``."""
    pre = F.linear(x, weight, bias)
    mask = pre > 0
    # where() rather than F.leaky_relu so that the output is bit-identical to the mask
    # semantics used by the backward (pre > 0 keeps, anything else is scaled).
    out = torch.where(mask, pre, pre * slope)
    return out.contiguous(), mask.contiguous()


def reference_backward(grad_out, mask, x, weight, slope, need_x, need_w, need_b):
    n = weight.shape[0]
    k = weight.shape[1]
    m = _rows(x)
    g = torch.where(mask, grad_out, grad_out * slope)
    g2 = g.reshape(m, n)
    x2 = x.reshape(m, k)
    dx = (g2 @ weight).reshape(x.shape) if need_x else empty_grad(x)
    dw = (g2.t() @ x2).to(weight.dtype) if need_w else empty_grad(weight)
    db = g2.sum(0, dtype=compute_dtype(g2.dtype)).to(weight.dtype) if need_b else empty_grad(weight)
    return dx, dw, db
