"""nnspec.kernels.softmax_cross_entropy against F.cross_entropy in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import nnspec.kernels as K
import nnspec.kernels.cross_entropy_op as CE
from nnspec_kernel_helpers import (
    BACKENDS, INTERPRETER, TOL, assert_matches, call, cuda, hyp, no_host_sync, requires_cuda,
)

NEG_INF = float("-inf")


def _case(n, c, dtype, *, device="cpu", seed=0, n_ignored=0, scale=3.0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * scale).to(device=device, dtype=dtype)
    target = torch.randint(0, c, (n,), generator=g)
    if n_ignored:
        target[torch.randperm(n, generator=g)[:n_ignored]] = ignore_index
    return logits, target.to(device)


def _check(logits, target, backend, *, weight=None, ignore_index=-100, label_smoothing=0.0,
           reduction="mean", tol=None, grad_seed=1):
    """Loss, logits gradient and accuracy count vs float64 F.cross_entropy."""
    dtype = logits.dtype
    x = logits.detach().clone().requires_grad_()
    loss, correct = call(
        K.softmax_cross_entropy, backend, x, target, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction, return_correct=True,
    )
    x64 = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(
        x64, target, weight=None if weight is None else weight.double(), ignore_index=ignore_index,
        label_smoothing=label_smoothing, reduction=reduction,
    )
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert_matches(loss, ref, dtype, tol, "loss")

    valid = target != ignore_index
    want_correct = ((logits.double().argmax(1) == target) & valid).sum()
    assert correct.dtype == torch.int64 and correct.dim() == 0
    assert correct.item() == want_correct.item()

    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(grad_seed)).to(dtype)
    (grad,) = torch.autograd.grad(loss, x, gy.to(loss.device))
    (grad_ref,) = torch.autograd.grad(ref, x64, gy.double().to(ref.device))
    assert grad.dtype == dtype
    assert_matches(grad, grad_ref, dtype, tol, "dlogits")
    return loss, grad


@pytest.mark.parametrize("backend", BACKENDS)
@hyp(max_examples=8)
@given(
    n=st.integers(1, 9),
    c=st.integers(2, 150),  # the interpreter's block is 32 classes: most draws span blocks
    reduction=st.sampled_from(["none", "sum", "mean"]),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.35]),
    weighted=st.booleans(),
    ignored=st.integers(0, 3),
    ignore_index=st.sampled_from([-100, 1]),
    seed=st.integers(0, 2**16),
)
def test_random_fp32(backend, n, c, reduction, label_smoothing, weighted, ignored, ignore_index, seed):
    logits, target = _case(n, c, torch.float32, seed=seed, n_ignored=min(ignored, n - 1),
                           ignore_index=ignore_index)
    weight = torch.rand(c, generator=torch.Generator().manual_seed(seed)) + 0.1 if weighted else None
    _check(logits, target, backend, weight=weight, ignore_index=ignore_index,
           label_smoothing=label_smoothing, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_weighted_mean_divides_by_target_weights(backend, reduction, label_smoothing):
    # Class weights + ignored rows: 'mean' divides by the summed weights of the non-ignored
    # targets (PyTorch's rule, smoothing term included), not by the row count.
    logits, target = _case(7, 70, torch.float32, seed=3, n_ignored=2)
    weight = torch.linspace(0.2, 3.0, 70)
    _check(logits, target, backend, weight=weight, label_smoothing=label_smoothing, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(backend, dtype):
    logits, target = _case(6, 90, dtype, seed=4, n_ignored=1)
    weight = torch.rand(90, generator=torch.Generator().manual_seed(0)).to(dtype) + 0.5
    tol = TOL[dtype]
    if backend == "torch" and dtype != torch.float64:
        # Eager PyTorch on CPU keeps the log-softmax in 16-bit: one more rounding.
        tol *= 2
    _check(logits, target, backend, weight=weight, label_smoothing=0.1, reduction="mean", tol=tol)
    _check(logits, target, backend, reduction="none", tol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one_and_single_class(backend):
    logits, target = _case(1, 45, torch.float32, seed=5)
    for red in ("none", "sum", "mean"):
        _check(logits, target, backend, reduction=red, label_smoothing=0.1)
    logits, target = _case(3, 1, torch.float32, seed=6)
    _check(logits, target, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_classes(backend, monkeypatch):
    # More classes than one GPU block (4096); under the interpreter the block is raised to
    # 256 for speed, which still leaves 20 blocks for the online softmax and the argmax.
    if backend == "triton":
        from nnspec.kernels import cross_entropy_op as mod

        monkeypatch.setattr(mod, "INTERPRET_BLOCK_C", 256)
    logits, target = _case(2, 5000, torch.float32, seed=7)
    logits[0, 4999] = 40.0
    target[0] = 4999
    _check(logits, target, backend, label_smoothing=0.05, reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_minus_inf_logits(backend, label_smoothing):
    logits, target = _case(5, 100, torch.float32, seed=8)
    # row 0: the first 70 classes (more than two interpreter blocks) are -inf, target finite
    logits[0, :70] = NEG_INF
    target[0] = 85
    # row 1: scattered -inf, target finite
    logits[1, ::3] = NEG_INF
    target[1] = 4
    # row 2: target's own logit is -inf -> loss inf (as PyTorch), gradient still finite
    logits[2, 10] = NEG_INF
    target[2] = 10
    # row 3: only the target is finite
    logits[3, :] = NEG_INF
    logits[3, 50] = 2.0
    target[3] = 50
    for red in ("none", "sum"):
        loss, grad = _check(logits, target, backend, label_smoothing=label_smoothing, reduction=red)
        assert torch.isfinite(grad).all()
        if red == "none":
            # Without smoothing only row 2 (target logit -inf) is inf; smoothing puts weight
            # on every class, so then any row holding a -inf logit is inf (PyTorch agrees,
            # see _check).
            inf_rows = [2] if label_smoothing == 0.0 else [0, 1, 2, 3]
            assert torch.equal(torch.isinf(loss).nonzero().flatten(), torch.tensor(inf_rows))
            assert (loss[inf_rows] > 0).all() and torch.isfinite(loss[4])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (interpreter): log(0), inf - inf
def test_all_minus_inf_row_is_nan_like_pytorch(backend):
    logits, target = _case(3, 40, torch.float32, seed=9)
    logits[1, :] = NEG_INF
    x = logits.clone().requires_grad_()
    loss = call(K.softmax_cross_entropy, backend, x, target, reduction="none")
    ref = F.cross_entropy(logits.double(), target, reduction="none")
    assert torch.isnan(ref[1]) and torch.isnan(loss[1])
    assert_matches(loss[[0, 2]], ref[[0, 2]], torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits(backend):
    logits, target = _case(6, 77, torch.float32, seed=10)
    logits[0, 5] = 1e4
    logits[1, :] += 1e4  # all large: only differences matter
    logits[2, 3] = -1e4
    logits[3, :40] = 1e4
    target[0] = 5
    target[1] = 6
    for red in ("none", "mean"):
        loss, grad = _check(logits, target, backend, label_smoothing=0.1, reduction=red)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored(backend):
    logits, target = _case(4, 30, torch.float32, seed=11)
    target[:] = -100
    x = logits.clone().requires_grad_()
    mean = call(K.softmax_cross_entropy, backend, x, target)
    assert torch.isnan(mean)  # 0 / 0, as in PyTorch
    total, correct = call(K.softmax_cross_entropy, backend, x, target, reduction="sum", return_correct=True)
    assert total.item() == 0.0 and correct.item() == 0
    (grad,) = torch.autograd.grad(total, x)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits(backend):
    g = torch.Generator().manual_seed(12)
    base = torch.randn(50, 8, generator=g)
    logits = base.t()  # (8, 50) with column stride 8
    target = torch.randint(0, 50, (8,), generator=g)
    _check(logits, target, backend, label_smoothing=0.1, reduction="none")
    _check(base[::2], torch.randint(0, 8, (25,), generator=g), backend)  # row stride 16


@pytest.mark.parametrize("backend", ["torch-op", "triton"])
def test_gradcheck_float64(backend, monkeypatch):
    if backend == "triton" and not INTERPRETER:
        pytest.skip("needs the interpreter on CPU")
    if backend == "triton":
        from nnspec.kernels import cross_entropy_op as mod

        monkeypatch.setattr(mod, "INTERPRET_BLOCK_C", 16)  # 19 classes = two blocks, few evaluations
    logits, target = _case(3, 19, torch.float64, seed=13, n_ignored=1)
    weight = torch.rand(19, dtype=torch.float64) + 0.5
    x = logits.clone().requires_grad_()
    for red in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda x: call(K.softmax_cross_entropy, backend, x, target, weight=weight,
                           label_smoothing=0.2, reduction=red),
            (x,),
        )


@pytest.mark.parametrize("backend", ["torch-op", "triton"])
def test_no_host_synchronisation(backend, monkeypatch):
    if backend == "triton" and not INTERPRETER:
        pytest.skip("needs the interpreter on CPU")
    # The one value read allowed: the CPU-only out-of-range target check (CUDA tensors skip it
    # and get a NaN loss from the kernel instead; test_kernels_edge_cases.py covers both).
    monkeypatch.setattr(CE, "_check_target_range", lambda *args: None)
    logits, target = _case(5, 60, torch.float32, seed=14, n_ignored=2)
    x = logits.clone().requires_grad_()
    weight = torch.rand(60) + 0.5
    with no_host_sync():
        loss, correct = call(K.softmax_cross_entropy, backend, x, target, weight=weight,
                             label_smoothing=0.1, return_correct=True)
        (grad,) = torch.autograd.grad(loss, x)
    ref = F.cross_entropy(logits.double(), target, weight=weight.double(), label_smoothing=0.1)
    assert_matches(loss, ref, torch.float32)


def test_argument_errors():
    logits, target = _case(3, 5, torch.float32)
    with pytest.raises(ValueError, match="reduction"):
        K.softmax_cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="backend"):
        K.softmax_cross_entropy(logits, target, backend="cuda")
    with pytest.raises(ValueError, match="target"):
        K.softmax_cross_entropy(logits, target.float())
    with pytest.raises(RuntimeError, match="class weights"):
        K.softmax_cross_entropy(logits, target, weight=torch.ones(5, requires_grad=True))


def test_int32_targets_are_refused_like_pytorch():
    # (was: accepted and cast; F.cross_entropy refuses them, so every backend does now -
    # see test_kernels_edge_cases.py for all backends and dtypes)
    logits, target = _case(4, 9, torch.float32, seed=15)
    with pytest.raises(ValueError, match="int64"):
        K.softmax_cross_entropy(logits, target.int())


# --------------------------------------------------------------------------- GPU


@cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,c", [(1, 10), (64, 1000), (8, 50257), (3, 262144)])
def test_cuda_matches_float64(dtype, n, c):
    logits, target = _case(n, c, dtype, device="cuda", seed=n + c, n_ignored=n // 4)
    weight = torch.rand(c, device="cuda") + 0.5
    for red in ("none", "mean"):
        _check(logits, target, "triton", reduction=red, label_smoothing=0.1)
    _check(logits, target, "triton", weight=weight.to(dtype), reduction="mean")


@cuda
@requires_cuda
def test_cuda_minus_inf_and_huge():
    logits, target = _case(4, 5000, torch.bfloat16, device="cuda", seed=1)
    logits[0, :4096] = NEG_INF  # a whole GPU block of -inf
    target[0] = 4500
    logits[1, 7] = 1e4
    logits[2, 9] = NEG_INF
    target[2] = 9
    _check(logits, target, "triton", reduction="none", label_smoothing=0.0)


@cuda
@requires_cuda
def test_cuda_graph_capture():
    # No host synchronisation anywhere in forward or backward: capturable by CUDA graphs.
    logits, target = _case(32, 3000, torch.float32, device="cuda", seed=2, n_ignored=4)
    weight = torch.rand(3000, device="cuda") + 0.5
    x = logits.clone().requires_grad_()

    def step():
        loss, correct = K.softmax_cross_entropy(x, target, weight=weight, label_smoothing=0.1,
                                                return_correct=True)
        (grad,) = torch.autograd.grad(loss, x)
        return loss, correct, grad

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up: compiles the kernels outside the capture
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            loss, correct, grad = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x.data.copy_(logits * 0.5)  # new inputs in the captured buffers
    graph.replay()
    torch.cuda.synchronize()
    x64 = (logits * 0.5).double().requires_grad_()
    ref = F.cross_entropy(x64, target, weight=weight.double(), label_smoothing=0.1)
    (ref_grad,) = torch.autograd.grad(ref, x64)
    assert_matches(loss, ref, torch.float32)
    assert_matches(grad, ref_grad, torch.float32)
    assert correct.item() == ((x64.argmax(1) == target) & (target != -100)).sum().item()
