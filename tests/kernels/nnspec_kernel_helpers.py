"""Helpers shared by the nnspec.kernels tests (imported by name; see conftest.py)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import settings

from nnspec.kernels import _dispatch

# Relative tolerance per dtype, applied as |actual - ref| <= tol * (|ref| + max|ref|) against
# a float64 PyTorch reference evaluated on the same (already rounded) input values.
#   float64: the kernels then compute in float64 too.
#   float32: fp32 accumulation over at most a few hundred terms.
#   bfloat16 / float16: fp32 math, one rounding of the output to the storage dtype
#   (bf16 has 8 mantissa bits, fp16 11) plus operand roundings in the matmul backward.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 4e-3,
}
# TF32 tensor cores keep 10 mantissa bits of each fp32 operand.
TOL_TF32 = 5e-3

INTERPRETER = _dispatch.interpreter_requested()
HAS_CUDA = torch.cuda.is_available()

# "torch": eager PyTorch path; "torch-op": the same backend forced through the nnspec custom
# ops (what compile/export run); "triton": the Triton kernels (interpreter on CPU).
BACKENDS = [
    "torch",
    "torch-op",
    pytest.param("triton", marks=pytest.mark.skipif(
        not (INTERPRETER and _dispatch.triton_installed()),
        reason="Triton on CPU needs TRITON_INTERPRET=1 (set by conftest when there is no GPU)")),
]

# Few, reproducible examples: the interpreter is slow, and CI must not flake on a new draw.
def hyp(max_examples=6):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, print_blob=True,
                    database=None)


cuda = pytest.mark.cuda
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


class ForceCustomOp(torch.overrides.TorchFunctionMode):
    """A pass-through function mode: its mere presence routes calls through the custom ops,
    exactly as any tracing mode would."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def call(fn, backend, *args, **kwargs):
    """Call a public nnspec.kernels function on one of the BACKENDS."""
    if backend == "torch-op":
        with ForceCustomOp():
            return fn(*args, backend="torch", **kwargs)
    return fn(*args, backend=backend, **kwargs)


def assert_matches(actual, ref, dtype, tol=None, what="", floor=0.0):
    """Compare with a float64 reference: same non-finite entries, finite ones within the
    per-dtype tolerance, scaled by the reference's largest finite magnitude (or by `floor`,
    the size of the terms that cancel into the result, when that is larger)."""
    tol = TOL[dtype] if tol is None else tol
    actual = actual.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isnan(actual), torch.isnan(ref)), f"{what}: nan positions differ"
    inf = torch.isinf(ref)
    assert torch.equal(actual[inf], ref[inf]), f"{what}: inf entries differ"
    if fin.any():
        scale = max(ref[fin].abs().max().item(), floor)
        err = (actual[fin] - ref[fin]).abs()
        bound = tol * (ref[fin].abs() + scale) + 1e-300
        worst = (err / bound).max().item()
        assert worst <= 1.0, (
            f"{what}: max abs err {err.max().item():.3e} exceeds tolerance {tol:g} "
            f"(scale {scale:.3e}, worst ratio {worst:.2f})"
        )


@contextlib.contextmanager
def no_host_sync():
    """Fail if anything inside reads a tensor value back to Python (.item(), bool(), ...).

    On CPU this stands in for CUDA's sync-debug mode: a kernel wrapper that never asks the
    host for a value is one that CUDA graphs can capture.
    """
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(self, *a, **k):
        raise AssertionError("host synchronisation inside a kernel wrapper")

    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def run_python(code: str, **env_overrides: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (import-time behaviour needs one); an override of
    None removes that variable from the environment."""
    env = dict(os.environ)
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)
