"""PyTorch's own OpInfo sample inputs (the suite PyTorch tests its operators with) run through
nnspec's ops: every sample inside an op's documented domain must match PyTorch in float64 on
the custom-op paths (the eager "torch" backend is PyTorch itself).

Samples outside the domain (probability targets, >2-D logits, 1-D batch norm inputs) are
skipped by rule, not by hand, so new upstream samples are picked up automatically.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnspec.kernels as K
from nnspec_kernel_helpers import BACKENDS, assert_matches, call

pytest.importorskip("expecttest")  # torch.testing._internal needs it (a test dependency)
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

OP_BACKENDS = [b for b in BACKENDS if getattr(b, "values", (b,))[0] != "torch"]
MAX_SAMPLES = 40  # per op: keeps the interpreter runs short


def _samples(name: str):
    op = next(o for o in op_db if o.name == name and o.variant_test_name == "")
    return list(op.sample_inputs("cpu", torch.float64, requires_grad=False))[:MAX_SAMPLES]


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_cross_entropy_samples(backend):
    checked = 0
    for sample in _samples("nn.functional.cross_entropy"):
        logits, (target,), kwargs = sample.input, sample.args, dict(sample.kwargs)
        if logits.dim() != 2 or target.dtype != torch.int64:
            continue  # (N, C, d...) logits and probability targets are outside softmax_cross_entropy
        ref = F.cross_entropy(logits, target, **kwargs)
        got = call(K.softmax_cross_entropy, backend, logits, target, **kwargs)
        assert_matches(got, ref, torch.float64, what=f"{kwargs}")
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_linear_samples_with_leaky_relu(backend):
    checked = 0
    for sample in _samples("nn.functional.linear"):
        x, (weight, *rest) = sample.input, sample.args
        bias = rest[0] if rest else sample.kwargs.get("bias")
        x_in = x.detach().clone().requires_grad_()
        got = call(K.linear_leaky_relu, backend, x_in, weight, bias, 0.01)
        x_ref = x.detach().clone().requires_grad_()
        ref = F.leaky_relu(F.linear(x_ref, weight, bias), 0.01)
        assert_matches(got, ref, torch.float64, what=f"x {tuple(x.shape)} w {tuple(weight.shape)}")
        if ref.numel():
            gy = torch.linspace(-1, 1, ref.numel(), dtype=torch.float64).reshape(ref.shape)
            (dx,) = torch.autograd.grad(got, x_in, gy)
            (dx_ref,) = torch.autograd.grad(ref, x_ref, gy)
            assert_matches(dx, dx_ref, torch.float64, what="dx")
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_leaky_relu_samples_through_an_identity_linear(backend):
    checked = 0
    for sample in _samples("nn.functional.leaky_relu"):
        x = sample.input
        slope = sample.kwargs.get("negative_slope", sample.args[0] if sample.args else 0.01)
        if x.dim() == 0 or sample.kwargs.get("inplace"):
            continue
        eye = torch.eye(x.shape[-1], dtype=x.dtype)
        got = call(K.linear_leaky_relu, backend, x, eye, None, slope)
        assert_matches(got, F.leaky_relu(x, slope), torch.float64, what=f"slope {slope}")
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_batch_norm_samples(backend):
    checked = 0
    for sample in _samples("nn.functional.batch_norm"):
        x, args, kwargs = sample.input, list(sample.args), dict(sample.kwargs)
        if x.dim() < 2:
            continue  # nnspec's batch_norm takes (N, C, ...) only
        running_mean, running_var, weight, bias = (args + [None] * 4)[:4]
        training = kwargs.get("training", False)
        momentum, eps = kwargs.get("momentum", 0.1), kwargs.get("eps", 1e-5)
        rm_ref = None if running_mean is None else running_mean.clone()
        rv_ref = None if running_var is None else running_var.clone()
        ref = F.batch_norm(x, rm_ref, rv_ref, weight, bias, training, momentum, eps)
        rm = None if running_mean is None else running_mean.clone()
        rv = None if running_var is None else running_var.clone()
        got = call(K.batch_norm, backend, x, rm, rv, weight, bias, training, momentum, eps)
        assert_matches(got, ref, torch.float64, what=f"{tuple(x.shape)} {kwargs}")
        if rm is not None:
            assert_matches(rm, rm_ref, torch.float64, what="running_mean")
            assert_matches(rv, rv_ref, torch.float64, what="running_var")
        checked += 1
    assert checked >= 5
