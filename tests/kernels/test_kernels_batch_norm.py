"""nnspec.kernels.batch_norm against F.batch_norm in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import nnspec.kernels as K
from nnspec_kernel_helpers import (
    BACKENDS, INTERPRETER, assert_matches, call, cuda, hyp, requires_cuda,
)


def _case(shape, dtype, *, device="cpu", seed=0, channels_last=False, affine=True,
          running=True, param_dtype=None):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    # An offset mean and a non-unit spread, so that centring actually matters.
    x = (torch.randn(shape, generator=g) * 2.5 + 4.0).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.contiguous_format)
        if x.dim() == 3:  # (N, C, L) with channels innermost
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
    pdt = param_dtype or dtype
    w = (torch.rand(c, generator=g) + 0.5).to(pdt) if affine else None
    b = torch.randn(c, generator=g).to(pdt) if affine else None
    rm = torch.randn(c, generator=g).to(pdt) if running else None
    rv = (torch.rand(c, generator=g) + 0.5).to(pdt) if running else None
    return [t.to(device) if t is not None else None for t in (x, w, b, rm, rv)]


def _check(x, w, b, rm, rv, training, backend, *, momentum=0.1, eps=1e-5, tol=None, grad_layout=None):
    """Output, gradients of x / weight / bias, and running statistics vs float64."""
    dtype = x.dtype
    use_batch = training or rm is None
    rm64 = None if rm is None else rm.double()
    rv64 = None if rv is None else rv.double()
    x_in = x.detach().clone().requires_grad_()
    leaves = [x_in] + [t.requires_grad_() for t in (w, b) if t is not None]
    y = call(K.batch_norm, backend, x_in, rm, rv, w, b, training, momentum, eps)

    x64 = x.detach().double().requires_grad_()
    w64 = None if w is None else w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    ref = F.batch_norm(x64, rm64, rv64, w64, b64, use_batch, momentum, eps)

    assert y.dtype == dtype and y.shape == x.shape
    if backend != "torch":  # (eager PyTorch returns (N, C, L) outputs contiguous)
        assert y.stride() == x.stride(), "output must keep the input's memory layout"
    assert_matches(y, ref, dtype, tol, "output")
    if rm is not None:
        # Running statistics are kept in their own dtype; compare at that precision.
        assert_matches(rm, rm64, rm.dtype, tol if rm.dtype == dtype else None, "running_mean")
        assert_matches(rv, rv64, rv.dtype, tol if rv.dtype == dtype else None, "running_var")

    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    if grad_layout is not None:
        gy = gy.contiguous(memory_format=grad_layout)
    grads = torch.autograd.grad(y, leaves, gy.to(y.device))
    leaves64 = [x64] + [t for t in (w64, b64) if t is not None]
    gy64 = gy.double().to(ref.device)
    refs = torch.autograd.grad(ref, leaves64, gy64)
    # Gradients can cancel to ~0 (e.g. two values per channel: the output is then +-1 for
    # any input, so dx = 0); measure errors against the size of the cancelling terms.
    dims = [0] + list(range(2, x.dim()))
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    x64d = x64.detach()
    if use_batch:
        mean, var = x64d.mean(dims), x64d.var(dims, unbiased=False)
    else:
        mean, var = rm.double(), rv.double()  # unchanged in evaluation
    xhat = (x64d - mean.view(shape)) * (var + eps).rsqrt().view(shape)
    wabs = w64.detach().abs() if w64 is not None else torch.ones_like(var)
    floors = {
        "dx": (gy64.abs() * ((var + eps).rsqrt() * wabs).view(shape)).amax().item(),
        "dweight": (gy64 * xhat).abs().sum(dims).amax().item(),
        "dbias": gy64.abs().sum(dims).amax().item(),
    }
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, refs):
        assert_matches(got, want, dtype if name == "dx" else got.dtype,
                       tol if name == "dx" or got.dtype == dtype else None, name, floor=floors[name])
    return y


_SHAPES = st.one_of(
    st.tuples(st.integers(2, 9), st.integers(1, 13)),
    st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 17)),
    st.tuples(st.integers(1, 4), st.integers(1, 7), st.integers(1, 6), st.integers(1, 7)),
).filter(lambda s: s[0] * (s[2] if len(s) > 2 else 1) * (s[3] if len(s) > 3 else 1) > 1)


@pytest.mark.parametrize("backend", BACKENDS)
@hyp(max_examples=8)
@given(
    shape=_SHAPES,
    channels_last=st.booleans(),
    training=st.booleans(),
    affine=st.booleans(),
    running=st.booleans(),
    momentum=st.sampled_from([0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_random_fp32(backend, shape, channels_last, training, affine, running, momentum, seed):
    x, w, b, rm, rv = _case(shape, torch.float32, seed=seed, channels_last=channels_last,
                            affine=affine, running=running)
    _check(x, w, b, rm, rv, training, backend, momentum=momentum)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 19), (2, 6, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_layouts(backend, shape, channels_last, training):
    x, w, b, rm, rv = _case(shape, torch.float32, seed=sum(shape), channels_last=channels_last)
    _check(x, w, b, rm, rv, training, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(backend, dtype):
    x, w, b, rm, rv = _case((4, 6, 5, 3), dtype, seed=2, channels_last=True)
    _check(x, w, b, rm, rv, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_input_with_fp32_parameters_and_statistics(backend):
    # The usual mixed-precision setup: activations in bf16, BatchNorm state in fp32.  The
    # statistics must be computed in fp32 from the bf16 values (the running buffers are then
    # as accurate as fp32 allows, far better than a bf16 computation would give).
    x, w, b, rm, rv = _case((8, 5, 6, 6), torch.bfloat16, seed=3, param_dtype=torch.float32)
    y = _check(x, w, b, rm, rv, True, backend)
    assert y.dtype == torch.bfloat16 and rm.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 4), (1, 3, 1), (1, 2, 1, 1)])
def test_one_value_per_channel_raises_in_training(backend, shape):
    x, w, b, rm, rv = _case(shape, torch.float32)
    before = rm.clone()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        call(K.batch_norm, backend, x, rm, rv, w, b, True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(x, rm, rv, w, b, True)  # the behaviour being matched
    assert torch.equal(rm, before)
    # Evaluation with running statistics is fine with a single value.
    _check(x, w, b, rm, rv, False, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one(backend):
    x, w, b, rm, rv = _case((1, 3, 4, 5), torch.float32, seed=4)
    _check(x, w, b, rm, rv, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_running_stats_uses_batch_stats_in_eval(backend):
    # nn.BatchNorm(track_running_stats=False) semantics.
    x, w, b, _, _ = _case((5, 4, 6), torch.float32, seed=5, running=False)
    y = call(K.batch_norm, backend, x, None, None, w, b, False)
    ref = F.batch_norm(x.double(), None, None, w.double(), b.double(), True)
    assert_matches(y, ref, torch.float32)
    with pytest.raises(ValueError, match="both"):
        call(K.batch_norm, backend, x, torch.zeros(4), None, w, b, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_awkward_strides(backend):
    g = torch.Generator().manual_seed(6)
    # Spatially sliced (no single spatial stride) -> copied once; permuted NHWC view.
    x1 = torch.randn(3, 4, 10, 9, generator=g)[:, :, ::2, 1:8]
    x2 = torch.randn(3, 7, 5, 4, generator=g).permute(0, 3, 1, 2)  # (3, 4, 7, 5), odd layout
    for x in (x1, x2):
        c = x.shape[1]
        rm, rv = torch.zeros(c), torch.ones(c)
        w, b = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
        xin = x.clone().requires_grad_()
        y = call(K.batch_norm, backend, xin, rm, rv, w, b, True)
        ref = F.batch_norm(x.double(), torch.zeros(c).double(), torch.ones(c).double(),
                           w.double(), b.double(), True)
        assert_matches(y, ref, torch.float32)
        gy = torch.randn(y.shape, generator=g)
        xr = x.double().requires_grad_()
        (want,) = torch.autograd.grad(F.batch_norm(xr, None, None, w.double(), b.double(), True), xr, gy.double())
        (got,) = torch.autograd.grad(y, xin, gy)
        assert_matches(got, want, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_layout_differs_from_input(backend):
    x, w, b, rm, rv = _case((3, 5, 4, 6), torch.float32, seed=7, channels_last=True)
    _check(x, w, b, rm, rv, True, backend, grad_layout=torch.contiguous_format)
    x, w, b, rm, rv = _case((3, 5, 4, 6), torch.float32, seed=8)
    _check(x, w, b, rm, rv, True, backend, grad_layout=torch.channels_last)


@pytest.mark.skipif(not INTERPRETER, reason="Triton on CPU needs the interpreter")
def test_triton_is_deterministic():
    x, w, b, rm, rv = _case((5, 6, 7, 3), torch.float32, seed=9, channels_last=True)
    outs = []
    for _ in range(2):
        rmi, rvi = rm.clone(), rv.clone()
        xi = x.clone().requires_grad_()
        wi = w.clone().requires_grad_()
        y = K.batch_norm(xi, rmi, rvi, wi, b, True, backend="triton")
        dx, dw = torch.autograd.grad(y, (xi, wi), torch.ones_like(y) + y.detach())
        outs.append((y, dx, dw, rmi, rvi))
    for a, bb in zip(*outs):
        assert torch.equal(a, bb)


@pytest.mark.parametrize("backend", ["torch-op", "triton"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(backend, training):
    if backend == "triton" and not INTERPRETER:
        pytest.skip("needs the interpreter on CPU")
    x, w, b, rm, rv = _case((2, 2, 3), torch.float64, seed=10)
    for t in (x, w, b):
        t.requires_grad_()
    # Fresh running buffers per evaluation: gradcheck calls the function many times.
    fn = lambda x, w, b: call(K.batch_norm, backend, x, rm.clone(), rv.clone(), w, b, training)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


# --------------------------------------------------------------------------- GPU


@cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channels_last", [
    ((256, 100), False),
    ((32, 64, 56, 56), False),
    ((32, 64, 56, 56), True),
    ((8, 512, 7, 7), True),
    ((16, 33, 1000), False),
])
def test_cuda_matches_float64(dtype, shape, channels_last):
    x, w, b, rm, rv = _case(shape, dtype, device="cuda", seed=11, channels_last=channels_last,
                            param_dtype=torch.float32)
    _check(x, w, b, rm, rv, True, "triton")
    _check(x, w, b, rm, rv, False, "triton")


@cuda
@requires_cuda
def test_cuda_deterministic():
    x, w, b, rm, rv = _case((64, 32, 28, 28), torch.bfloat16, device="cuda", seed=12,
                            channels_last=True, param_dtype=torch.float32)
    runs = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        y = K.batch_norm(xi, rm.clone(), rv.clone(), w, b, True)
        (dx,) = torch.autograd.grad(y, xi, y.detach())
        runs.append((y, dx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
