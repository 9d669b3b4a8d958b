"""Edge cases found by running outside test suites (PyTorch's OpInfo samples, Liger-Kernel's
and attorch's parameter grids) through the three backends: empty batches and reductions,
layouts only the forward used to accept, NaN / -inf logits, out-of-range targets, and the
inputs every backend must refuse the same way."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnspec.kernels as K
from nnspec.kernels.cross_entropy_op import softmax_cross_entropy_op
from nnspec.kernels.linear_leaky_relu_op import linear_leaky_relu_op
from nnspec_kernel_helpers import BACKENDS, assert_matches, call

TRITON_ONLY = [b for b in BACKENDS if getattr(b, "values", (b,))[0] == "triton"]


# --------------------------------------------------------------------------- batch_norm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (4, 3, 0), (0, 3)])
def test_batch_norm_empty_batch_leaves_running_statistics_unchanged(backend, shape):
    running_mean = torch.tensor([0.5, -1.0, 2.0])
    running_var = torch.tensor([1.5, 0.25, 3.0])
    before = running_mean.clone(), running_var.clone()
    x = torch.randn(shape, requires_grad=True)
    y = call(K.batch_norm, backend, x, running_mean, running_var, None, None, True, 0.1, 1e-5)
    assert y.shape == x.shape
    assert torch.equal(running_mean, before[0]) and torch.equal(running_var, before[1])
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_takes_every_layout_the_forward_takes(backend, training):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, 10, 8, generator=g, dtype=torch.float64)
    x = base.transpose(2, 3).requires_grad_()  # spatial dims permuted: not (N, C, L)-addressable
    w = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    rm, rv = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    y = call(K.batch_norm, backend, x, rm, rv, w, None, training, 0.1, 1e-5)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, gy)
    x64 = x.detach().clone().requires_grad_()
    ref = F.batch_norm(x64, torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), w, None,
                       training, 0.1, 1e-5)
    (dx_ref,) = torch.autograd.grad(ref, x64, gy)
    assert_matches(y, ref, torch.float64, what="output")
    assert_matches(dx, dx_ref, torch.float64, what="dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_eps_zero_is_refused_in_training_only(backend):
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="eps must be positive during training"):
        call(K.batch_norm, backend, x, torch.zeros(3), torch.ones(3), None, None, True, 0.1, 0.0)
    y = call(K.batch_norm, backend, x, torch.zeros(3), torch.ones(3), None, None, False, 0.1, 0.0)
    assert torch.allclose(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_dtype,stat_dtype", [
    (torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.bfloat16),
])
def test_batch_norm_mixed_dtypes_are_refused_like_pytorch(backend, x_dtype, stat_dtype):
    x = torch.randn(4, 3, 5).to(x_dtype)
    with pytest.raises(RuntimeError):  # PyTorch refuses these too
        F.batch_norm(x, torch.zeros(3, dtype=stat_dtype), torch.ones(3, dtype=stat_dtype), training=True)
    with pytest.raises(TypeError, match=f"running_mean is {stat_dtype} but x is {x_dtype}"):
        call(K.batch_norm, backend, x, torch.zeros(3, dtype=stat_dtype), torch.ones(3, dtype=stat_dtype),
             None, None, True, 0.1, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_momentum_none_names_the_argument(backend):
    with pytest.raises(TypeError, match="batch_norm: momentum must be a float, got NoneType None"):
        call(K.batch_norm, backend, torch.randn(4, 3), torch.zeros(3), torch.ones(3), None, None, True, None, 1e-5)


# --------------------------------------------------------------------------- linear_leaky_relu


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m,k,n", [(4, 0, 3), (4, 5, 0), (0, 5, 3), (0, 0, 0)])
def test_linear_leaky_relu_empty_reduction_and_outputs(backend, m, k, n):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(m, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    y = call(K.linear_leaky_relu, backend, x, w, b, 0.1)
    ref = F.leaky_relu(F.linear(x, w, b), 0.1)
    assert_matches(y, ref, torch.float64, what="output")
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, w, b), gy, allow_unused=True)
    want = torch.autograd.grad(ref, (x, w, b), gy, allow_unused=True)
    for name, a, r in zip(("dx", "dw", "db"), got, want):
        assert_matches(a if a is not None else torch.zeros_like(r), r if r is not None else torch.zeros_like(a),
                       torch.float64, what=name)


def test_linear_leaky_relu_k_zero_is_leaky_relu_of_the_bias():
    bias = torch.tensor([-2.0, 0.0, 3.0])
    for backend in ("torch", "triton"):
        out, mask = linear_leaky_relu_op(torch.empty(2, 0), torch.empty(3, 0), bias, 0.5, backend)
        assert torch.equal(out, torch.tensor([[-1.0, 0.0, 3.0]] * 2)), backend
        assert torch.equal(mask, torch.tensor([[False, False, True]] * 2)), backend


# --------------------------------------------------------------------------- cross_entropy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (interpreter): inf - inf
def test_nan_logit_is_the_prediction_like_torch_argmax(backend):
    logits = torch.tensor([
        [0.0, 5.0, float("nan"), 1.0],        # argmax picks the NaN: index 2
        [float("nan"), 9.0, float("nan"), 0.0],  # first NaN: index 0
        [1.0, 7.0, 2.0, 3.0],                 # no NaN: index 1
    ] + [[0.0] * 4] * 0)
    # A NaN beyond the first block of the Triton kernel too (blocks of 32 classes).
    wide = torch.zeros(2, 70)
    wide[0, 3], wide[0, 50] = 9.0, float("nan")  # NaN in a later block still wins
    wide[1, 40], wide[1, 65] = float("nan"), 99.0  # a larger value after the NaN does not
    for x, target in ((logits, torch.tensor([2, 0, 1])), (wide, torch.tensor([50, 40]))):
        assert torch.equal(x.argmax(dim=1), target)
        _, correct = call(K.softmax_cross_entropy, backend, x, target, return_correct=True)
        assert int(correct) == len(target)
        _, correct = call(K.softmax_cross_entropy, backend, x, 1 - target.clamp(max=1), return_correct=True)
        assert int(correct) == int(((1 - target.clamp(max=1)) == target).sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (interpreter): log(0), inf - inf
def test_all_minus_inf_row_with_ignored_target_gradient(backend):
    """Documented divergence (docs/kernels.md): an ignored row contributes exactly nothing on
    the nnspec custom-op paths (gradient 0), where PyTorch's own op - and so the eager torch
    backend, which is F.cross_entropy - gives that row a NaN gradient."""
    logits = torch.tensor([[float("-inf")] * 3, [0.5, 1.0, -1.0]], requires_grad=True)
    target = torch.tensor([-100, 1])
    loss = call(K.softmax_cross_entropy, backend, logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss)
    if backend == "torch":
        assert torch.isnan(grad[0]).all()
    else:
        assert torch.equal(grad[0], torch.zeros(3))
    assert torch.isfinite(grad[1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [40, -1, 10**6])
def test_out_of_range_target_raises_on_cpu(backend, bad):
    logits = torch.randn(3, 40)
    target = torch.tensor([0, bad, 5])
    with pytest.raises(IndexError, match=f"Target {bad} is out of bounds"):
        F.cross_entropy(logits, target)
    with pytest.raises(IndexError, match=rf"Target {bad} is out of bounds \(row 1: class indices must be in \[0, 40\)"):
        call(K.softmax_cross_entropy, backend, logits, target)


@pytest.mark.parametrize("backend", TRITON_ONLY)
@pytest.mark.parametrize("bad", [40, -1, 10**6])
def test_out_of_range_target_makes_the_kernel_loss_nan(backend, bad):
    """Where the values cannot be checked without a host synchronisation (CUDA), the kernel
    itself marks the row: NaN loss and NaN gradient, never a finite wrong loss."""
    logits = torch.randn(3, 40, requires_grad=True)
    target = torch.tensor([0, bad, 5])
    rows, *_ = softmax_cross_entropy_op(logits, target, None, -100, 0.0, "none", False, backend)
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    mean, *_ = softmax_cross_entropy_op(logits, target, None, -100, 0.1, "mean", False, backend)
    assert torch.isnan(mean)
    (grad,) = torch.autograd.grad(rows.nansum(), logits)
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8])
def test_non_int64_targets_are_refused_like_pytorch(backend, dtype):
    logits, target = torch.randn(3, 5), torch.tensor([0, 1, 2], dtype=dtype)
    with pytest.raises(RuntimeError, match="expected target dtype to be Long"):
        F.cross_entropy(logits, target)
    with pytest.raises(ValueError, match=f"target must hold int64 \\(or uint8\\) class indices, got {dtype}"):
        call(K.softmax_cross_entropy, backend, logits, target)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_targets_are_accepted_like_pytorch(backend):
    logits, target = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 4, 2], dtype=torch.uint8)
    got = call(K.softmax_cross_entropy, backend, logits, target)
    assert_matches(got, F.cross_entropy(logits, target), torch.float64)
