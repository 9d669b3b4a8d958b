"""nnspec.kernels.linear_leaky_relu against PyTorch in float64."""
from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import nnspec.kernels as K
from nnspec_kernel_helpers import (
    BACKENDS, INTERPRETER, TOL, TOL_TF32, assert_matches, call, cuda, hyp, requires_cuda,
)


def _inputs(x_shape, n, bias, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    k = x_shape[-1]
    x = torch.randn(x_shape, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=g) / max(k, 1) ** 0.5).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype) if bias else None
    return x, w, b


def _check(x, w, b, slope, backend, dtype, tol=None, need=(True, True, True), own_pattern=False, fn=None):
    """Forward and every input gradient vs float64 F.leaky_relu(F.linear(...)).

    ``own_pattern``: check the gradients against float64 with the implementation's *own*
    activation pattern (the sign of its output; slope > 0), as the bench does.  LeakyReLU has
    a kink at 0: where the implementation rounds differently from float64 (TF32 keeps 10
    mantissa bits), a pre-activation within rounding of 0 lands on the other side, and its
    gradient differs by (1 - slope) * dy - spread by the matmul over a whole row of dx / dW.
    Such flips must stay rare (at most 1 in 1000 elements), and the backward must agree with
    the implementation's own forward.  Returns the number of flipped elements.
    """
    leaves = []
    for t, req in zip((x, w, b), need):
        if t is not None:
            t.requires_grad_(req)
            if req:
                leaves.append(t)
    out = fn(x, w, b, slope) if fn is not None else call(K.linear_leaky_relu, backend, x, w, b, slope)
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], w.shape[0])

    x64, w64 = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, w))
    b64 = None if b is None else b.detach().double().requires_grad_(b.requires_grad)
    ref = F.leaky_relu(F.linear(x64, w64, b64), slope)
    assert_matches(out, ref, dtype, tol, "output")

    positive = out.detach().double().cpu() > 0
    flips = int((positive != (ref.detach().cpu() > 0)).sum())
    if not leaves:
        return flips
    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, leaves, gy.to(out.device))
    if own_pattern:
        assert slope > 0, "the output's sign is the pre-activation's only when slope > 0"
        assert flips <= max(1, ref.numel() // 1000), f"{flips} of {ref.numel()} activations flipped"
        g = (gy.double() * torch.where(positive, 1.0, slope)).to(ref.device)
        g2, x2 = g.reshape(-1, w.shape[0]), x64.detach().reshape(-1, w.shape[1])
        every = {"dx": (g2 @ w64.detach()).reshape(x.shape), "dW": g2.t() @ x2, "db": g2.sum(0)}
        refs = [every[name] for name, t in zip(("dx", "dW", "db"), (x, w, b)) if t is not None and t.requires_grad]
    else:
        leaves64 = [t for t in (x64, w64, b64) if t is not None and t.requires_grad]
        refs = torch.autograd.grad(ref, leaves64, gy.double().to(ref.device))
    names = [name for name, t in zip(("dx", "dW", "db"), (x, w, b)) if t is not None and t.requires_grad]
    for name, got, want in zip(names, grads, refs):
        assert got.dtype == dtype
        assert_matches(got, want, dtype, tol, name)
    return flips


def _tf32_round(t):
    """Round float32 values to TF32's 10 mantissa bits (round to nearest), gradient straight through."""
    bits = t.detach().float().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return t + (rounded - t.detach())


def _tf32_like_linear_leaky_relu(x, w, b, slope):
    # What a TF32 matmul computes: operands rounded to 10 mantissa bits, products summed in fp32.
    return F.leaky_relu(F.linear(_tf32_round(x), _tf32_round(w), b), slope)


def test_tf32_rounding_flips_the_kink_and_own_pattern_check_allows_it():
    # The inputs of test_cuda_tf32_when_enabled, through a CPU model of TF32 rounding: some
    # pre-activations land on the other side of 0, so the plain float64 gradient check fails
    # on a correct implementation; the own-pattern check passes it and counts the flips.
    x, w, b = _inputs((512, 384), 256, True, torch.float32)
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        _check(x, w, b, 0.01, None, torch.float32, tol=TOL_TF32, fn=_tf32_like_linear_leaky_relu)
    x, w, b = _inputs((512, 384), 256, True, torch.float32)
    flips = _check(x, w, b, 0.01, None, torch.float32, tol=TOL_TF32, fn=_tf32_like_linear_leaky_relu,
                   own_pattern=True)  # fmt: skip
    assert flips > 0


def test_own_pattern_check_still_catches_a_wrong_backward():
    def wrong_backward(x, w, b, slope):
        out = F.leaky_relu(F.linear(x, w, b), slope)
        return out + 0.05 * (out - out.detach())  # right forward, gradients 5% too large

    x, w, b = _inputs((64, 48), 32, True, torch.float32)
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        _check(x, w, b, 0.01, None, torch.float32, tol=TOL_TF32, fn=wrong_backward, own_pattern=True)


@pytest.mark.parametrize("backend", BACKENDS)
@hyp(max_examples=6)
@given(
    lead=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    m=st.integers(1, 37),
    k=st.integers(1, 45),
    n=st.integers(1, 40),
    bias=st.booleans(),
    slope=st.sampled_from([0.0, 0.01, 0.2]),
)
def test_random_shapes_fp32(backend, lead, m, k, n, bias, slope):
    x, w, b = _inputs((*lead, m, k), n, bias, torch.float32)
    _check(x, w, b, slope, backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(backend, dtype):
    x, w, b = _inputs((3, 19, 33), 21, True, dtype)
    _check(x, w, b, 0.1, backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one_and_vector_input(backend):
    x, w, b = _inputs((1, 17), 18, True, torch.float32)
    _check(x, w, b, 0.01, backend, torch.float32)
    x, w, b = _inputs((17,), 18, False, torch.float32, seed=3)
    _check(x, w, b, 0.0, backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_requires_grad(backend):
    # First layer of a net: x needs no gradient, so the dx matmul must be skipped, and the
    # rest must still be right.
    x, w, b = _inputs((9, 20), 13, True, torch.float32)
    _check(x, w, b, 0.1, backend, torch.float32, need=(False, True, True))
    x, w, b = _inputs((9, 20), 13, True, torch.float32, seed=2)
    _check(x, w, b, 0.1, backend, torch.float32, need=(True, False, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 11, generator=g).t()  # (11, 20), column-major
    w = torch.randn(20, 18, generator=g).t()  # (18, 20) as a transposed view
    b = torch.randn(36, generator=g)[::2]  # stride 2
    assert not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous())
    _check(x, w, b, 0.05, backend, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, w, b = _inputs((0, 7), 5, True, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    out = call(K.linear_leaky_relu, backend, x, w, b, 0.1)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert x.grad.shape == (0, 7) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("backend", ["torch-op", "triton"])
def test_saved_mask_is_preactivation_sign(backend):
    if backend == "triton" and not INTERPRETER:
        pytest.skip("needs the interpreter on CPU")
    x, w, b = _inputs((6, 29), 19, True, torch.float32)
    be = "torch" if backend == "torch-op" else backend
    out, mask = torch.ops.nnspec.linear_leaky_relu(x, w, b, 0.0, be)
    pre = F.linear(x.double(), w.double(), b.double())
    assert mask.dtype == torch.bool and mask.shape == out.shape
    # Sign of the pre-activation (where it is not within rounding of zero), not the output:
    # with slope 0 the output alone cannot tell "negative" from "zero".
    clear = pre.abs() > 1e-4
    assert torch.equal(mask[clear], (pre > 0)[clear])
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))


@pytest.mark.parametrize("backend", ["torch-op", "triton"])
def test_gradcheck_float64(backend):
    if backend == "triton" and not INTERPRETER:
        pytest.skip("needs the interpreter on CPU")
    x, w, b = _inputs((2, 3, 5), 4, True, torch.float64, seed=7)
    for t in (x, w, b):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, b: call(K.linear_leaky_relu, backend, x, w, b, 0.3), (x, w, b)
    )


@pytest.mark.skipif(not INTERPRETER, reason="checks the interpreter configuration")
def test_interpreter_bypasses_autotune():
    pytest.importorskip("triton")
    mod = importlib.import_module("nnspec.kernels.linear_leaky_relu_op")

    x, w, b = _inputs((40, 24), 20, True, torch.float32)
    K.linear_leaky_relu(x.requires_grad_(), w.requires_grad_(), b, backend="triton").sum().backward()
    # The fixed interpreter config ran; no autotuner benchmarked anything.
    assert mod.INTERPRET
    assert all(len(t.cache) == 0 for t in (mod._fwd_tuned, mod._dx_tuned, mod._dw_tuned))


def test_tf32_follows_pytorch_matmul_setting():
    pytest.importorskip("triton")
    mod = importlib.import_module("nnspec.kernels.linear_leaky_relu_op")

    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        try:
            matmul.fp32_precision = "tf32"
            assert mod._tf32_enabled()
            matmul.fp32_precision = "ieee"
            assert not mod._tf32_enabled()
        finally:
            matmul.fp32_precision = old
    else:  # torch < 2.9
        old = matmul.allow_tf32
        try:
            matmul.allow_tf32 = True
            assert mod._tf32_enabled()
            matmul.allow_tf32 = False
            assert not mod._tf32_enabled()
        finally:
            matmul.allow_tf32 = old
    # 16-bit inputs never ask for tf32; under the interpreter nothing does (numpy matmul).
    assert mod._precision(torch.bfloat16) == "ieee"


# --------------------------------------------------------------------------- GPU


@contextlib.contextmanager
def _tf32(on: bool):
    """Set PyTorch's fp32-matmul TF32 switch for the block, then restore it exactly (torch >= 2.9
    refuses to read the legacy flag once the new one has been left set)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if on else "ieee"
    else:
        old = matmul.allow_tf32
        matmul.allow_tf32 = on
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = old
        else:
            matmul.allow_tf32 = old


@cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (300, 257), (4, 129, 1000)])
def test_cuda_matches_float64(dtype, shape):
    x, w, b = _inputs(shape, 333, True, dtype, device="cuda")
    with _tf32(False):
        _check(x, w, b, 0.01, "triton", dtype)


@cuda
@requires_cuda
def test_cuda_tf32_when_enabled():
    x, w, b = _inputs((512, 384), 256, True, torch.float32, device="cuda")
    with _tf32(True):
        # TF32 rounding flips the LeakyReLU kink on a few elements (about ten with these
        # inputs): check the gradients against the kernel's own activation pattern.
        _check(x, w, b, 0.01, "triton", torch.float32, tol=TOL_TF32, own_pattern=True)


@cuda
@requires_cuda
def test_cuda_auto_uses_triton_and_matches_torch_backend():
    x, w, b = _inputs((3, 77, 96), 130, True, torch.bfloat16, device="cuda")
    a = K.linear_leaky_relu(x, w, b, 0.1)  # auto -> triton on CUDA
    t = K.linear_leaky_relu(x, w, b, 0.1, backend="torch")
    assert_matches(a, t.double(), torch.bfloat16, 2 * TOL[torch.bfloat16])
