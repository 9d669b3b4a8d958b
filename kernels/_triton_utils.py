"""Small pieces shared by the Triton kernel modules (imports triton; kernel side only)."""
from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

try:  # triton >= 3.4 exposes the setting that triton.jit itself consults
    INTERPRET = bool(triton.knobs.runtime.interpret)
except AttributeError:  # pragma: no cover - older triton reads the environment
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "on", "yes"}


def acc_dtype(dtype: torch.dtype):
    """fp32 math for fp32/bf16/fp16 inputs; float64 inputs keep float64 (gradcheck-grade)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def split_f64(value: float) -> tuple[float, float]:
    """Split a Python float into two fp32-representable parts whose sum is the value to ~48
    bits.  Triton passes float scalars as fp32; kernels rejoin the parts in their
    accumulation dtype, so float64 inputs see exact hyper-parameters (slope, eps, ...)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    lo = struct.unpack("f", struct.pack("f", value - hi))[0]
    return hi, lo


@triton.jit
def join_f64(hi, lo, ACC: tl.constexpr):
    # Start from an ACC zero so that both parts are promoted before they are added.
    return tl.zeros((), ACC) + hi + lo
