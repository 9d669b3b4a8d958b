"""Compile every nnspec Triton kernel variant for an NVIDIA target, without a GPU.

Run as a script (``python nnspec_kernel_aot.py [sm]``) with TRITON_INTERPRET unset: the
interpreter never lowers kernels, so type or layout errors that only the real compiler
sees (loop-carried types, dot shapes, shared-memory use) would otherwise surface only on a
GPU machine.  Prints one line per kernel variant and exits non-zero if any fails.
"""
from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import torch  # noqa: E402

from nnspec.kernels import _dispatch  # noqa: E402

# The op modules as the first Triton launch leaves them: kernels activated (made real).
BN, CE, LIN = (_dispatch.load(name, torch.device("cuda")) for name in ("batch_norm_op", "cross_entropy_op", "linear_leaky_relu_op"))

PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}
ACC = {"fp32": tl.float32, "bf16": tl.float32, "fp16": tl.float32, "fp64": tl.float64}


def compile_one(target, fn, ptrs, constexprs, *, floats=(), i64=(), unit=(), num_warps=4, num_stages=3):
    """Compile fn with pointer arguments 16-byte aligned and `unit` stride arguments equal to
    1 - the specialisations a real launch on contiguous tensors gets."""
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in unit:
            sig[name] = "constexpr"
            consts[name] = 1
        elif name in ptrs:
            sig[name] = ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in i64 else "i32"
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})
    return kernel.metadata.shared


def variants():
    slope = ("slope_hi", "slope_lo")
    # fp16 lowers like bf16 and is left out to keep this quick; fp64 takes other code paths
    # (outer-product matmul, fp64 statistics), so it is in.
    for dt in ("bf16", "fp32", "fp64"):
        p = PTR[dt]
        if dt == "fp64":
            cfgs = [(LIN.FP64_CONFIG, 4, 3)]
        else:
            # one tile of the autotuning space (a small one: large tiles compile slowly, and
            # the autotuner already skips any config that runs out of shared memory)
            cfgs = [(c.kwargs, c.num_warps, c.num_stages) for c in LIN._configs()[-1:]]
        for cfg, warps, stages in cfgs:
            common = dict(PRECISION="tf32" if dt == "fp32" else "ieee", UPCAST=False, FMA=dt == "fp64",
                          ACC=ACC[dt], **cfg)
            opts = dict(floats=slope, num_warps=warps, num_stages=stages)
            yield (f"linear fwd {dt} {cfg}", LIN._fwd_kernel,
                   {"x_ptr": p, "w_ptr": p, "b_ptr": p, "y_ptr": p, "mask_ptr": "*i8"},
                   dict(HAS_BIAS=True, **common), dict(unit=("stride_xk", "stride_wk", "stride_b", "stride_yn"), **opts))
            yield (f"linear dx {dt} {cfg}", LIN._bwd_dx_kernel,
                   {"dy_ptr": p, "mask_ptr": "*i8", "w_ptr": p, "dx_ptr": p},
                   common, dict(unit=("stride_dyn", "stride_mn", "stride_wk", "stride_dxk"), **opts))
            yield (f"linear dw {dt} {cfg}", LIN._bwd_dw_kernel,
                   {"dy_ptr": p, "mask_ptr": "*i8", "x_ptr": p, "dw_ptr": p, "db_ptr": p},
                   dict(HAS_BIAS=True, **common), dict(unit=("stride_dyn", "stride_mn", "stride_xk", "stride_dwk"), **opts))

        a = PTR["fp64" if dt == "fp64" else "fp32"]
        ce_opts = dict(floats=("ls_hi", "ls_lo"), i64=("ignore_index",), num_warps=16)
        for weighted, smooth in ((False, False), (True, True)):  # every constexpr branch off / on
            yield (f"ce fwd {dt} w={weighted} ls={smooth}", CE._ce_fwd_kernel,
                   {"logits_ptr": p, "target_ptr": "*i64", "weight_ptr": p, "loss_ptr": a,
                    "stats_ptr": a, "wt_ptr": a, "correct_ptr": "*i32"},
                   dict(HAS_WEIGHT=weighted, HAS_SMOOTHING=smooth, COUNT_CORRECT=True, ACC=ACC[dt],
                        BLOCK_C=CE.MAX_BLOCK_C), ce_opts)
            yield (f"ce bwd {dt} w={weighted} ls={smooth}", CE._ce_bwd_kernel,
                   {"grad_ptr": p, "logits_ptr": p, "dlogits_ptr": p, "target_ptr": "*i64",
                    "weight_ptr": p, "wsum_ptr": a, "stats_ptr": a, "denom_ptr": a},
                   dict(HAS_WEIGHT=weighted, HAS_SMOOTHING=smooth, MEAN=smooth, ACC=ACC[dt],
                        BLOCK_C=CE.MAX_BLOCK_C), ce_opts)

        acc = ACC[dt]
        # channels-fast (channels_last) and length-fast (contiguous NCHW) tile shapes
        for bl, bc, unit_c, unit_l in ((64, 64, ("sx_c", "sy_c", "sd_c", "so_c"), ()),
                                       (1024, 4, (), ("sx_l", "sy_l", "sd_l", "so_l"))):
            tile = dict(ACC=acc, BLOCK_L=bl, BLOCK_C=bc)
            warps = dict(num_warps=8)

            def units(*names):
                return tuple(n for n in names if n in unit_c + unit_l)

            yield (f"bn stats {dt} {bl}x{bc}", BN._stats_partial_kernel, {"x_ptr": p, "part_ptr": a}, tile,
                   dict(unit=units("sx_c", "sx_l"), **warps))
            yield (f"bn apply {dt} {bl}x{bc}", BN._apply_kernel,
                   {"x_ptr": p, "y_ptr": p, "mean_ptr": a, "invstd_ptr": a, "w_ptr": "*fp32", "b_ptr": "*fp32"},
                   dict(HAS_W=True, HAS_B=True, **tile), dict(unit=units("sx_c", "sx_l", "sy_c", "sy_l"), **warps))
            yield (f"bn bwd-partial {dt} {bl}x{bc}", BN._bwd_partial_kernel,
                   {"dy_ptr": p, "x_ptr": p, "mean_ptr": a, "invstd_ptr": a, "part_ptr": a}, tile,
                   dict(unit=units("sd_c", "sd_l", "sx_c", "sx_l"), **warps))
            for batch_stats in (True, False):
                yield (f"bn dx {dt} {bl}x{bc} batch={batch_stats}", BN._bwd_dx_kernel,
                       {"dy_ptr": p, "x_ptr": p, "dx_ptr": p, "mean_ptr": a, "invstd_ptr": a,
                        "w_ptr": "*fp32", "sums_ptr": a},
                       dict(BATCH_STATS=batch_stats, HAS_W=True, **tile),
                       dict(i64=("count",), unit=units("sd_c", "sd_l", "sx_c", "sx_l", "so_c", "so_l"), **warps))
        for batch_stats, update in ((True, True), (True, False), (False, False)):
            yield (f"bn finalize {dt} batch={batch_stats} update={update}", BN._stats_finalize_kernel,
                   {"part_ptr": a, "mean_ptr": a, "invstd_ptr": a, "rm_ptr": "*fp32", "rv_ptr": "*fp32",
                    "new_rm_ptr": "*fp32", "new_rv_ptr": "*fp32"},
                   dict(BATCH_STATS=batch_stats, UPDATE_RUNNING=update, ACC=acc, BLOCK_C=256),
                   dict(floats=("mom_hi", "mom_lo", "eps_hi", "eps_lo")))
        yield (f"bn bwd-finalize {dt}", BN._bwd_finalize_kernel,
               {"part_ptr": a, "sums_ptr": a, "dw_ptr": "*fp32", "db_ptr": "*fp32"},
               dict(NEED_W=True, NEED_B=True, ACC=acc, BLOCK_C=256), {})


def main(arch: int = 90) -> int:
    target = GPUTarget("cuda", arch, 32)
    failures = 0
    for name, fn, ptrs, consts, opts in variants():
        try:
            shared = compile_one(target, fn, ptrs, consts, **opts)
            print(f"ok   {name}  shared={shared}")
        except Exception as e:  # report every failure, not just the first
            failures += 1
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:500]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
