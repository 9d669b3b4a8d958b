"""The nnspec::* custom ops: registration checks, torch.export, torch.compile, dispatch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nnspec.kernels as K
from nnspec.kernels import _dispatch
from nnspec_kernel_helpers import INTERPRETER, assert_matches, run_python

OP_BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(
        not INTERPRETER, reason="Triton on CPU needs TRITON_INTERPRET=1")),
]

ops = torch.ops.nnspec


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


# --------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_opcheck_linear_leaky_relu(backend):
    g = _gen(1)
    x = torch.randn(2, 3, 20, generator=g, requires_grad=True)
    w = torch.randn(7, 20, generator=g, requires_grad=True)
    b = torch.randn(7, generator=g, requires_grad=True)
    _opcheck(ops.linear_leaky_relu.default, (x, w, b, 0.1, backend))
    _opcheck(ops.linear_leaky_relu.default, (x, w, None, 0.0, backend))
    dy = torch.randn(2, 3, 7, generator=g)
    mask = torch.randn(2, 3, 7, generator=g) > 0
    _opcheck(ops.linear_leaky_relu_backward.default,
             (dy, mask, x.detach(), w.detach(), 0.1, True, True, True, backend))
    _opcheck(ops.linear_leaky_relu_backward.default,
             (dy, mask, x.detach(), w.detach(), 0.1, False, True, False, backend))


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_opcheck_softmax_cross_entropy(backend):
    g = _gen(2)
    logits = torch.randn(6, 45, generator=g, requires_grad=True)
    target = torch.randint(0, 45, (6,), generator=g)
    target[1] = -100
    weight = torch.rand(45, generator=g) + 0.5
    for red in ("none", "mean"):
        _opcheck(ops.softmax_cross_entropy.default,
                 (logits, target, weight, -100, 0.1, red, True, backend))
    _opcheck(ops.softmax_cross_entropy.default, (logits, target, None, -100, 0.0, "sum", False, backend))
    _, stats, denom, _ = ops.softmax_cross_entropy(logits.detach(), target, weight, -100, 0.1, "none", False, backend)
    _opcheck(ops.softmax_cross_entropy_backward.default,
             (torch.randn(6, generator=g), logits.detach(), target, weight, stats, denom, -100, 0.1, "none", backend))


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_opcheck_batch_norm(backend):
    g = _gen(3)
    x = torch.randn(4, 3, 5, 2, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    w = (torch.rand(3, generator=g) + 0.5).requires_grad_()
    b = torch.randn(3, generator=g).requires_grad_()
    rm, rv = torch.zeros(3), torch.ones(3)
    _opcheck(ops.batch_norm.default, (x, w, b, rm, rv, True, 0.1, 1e-5, backend))
    _opcheck(ops.batch_norm.default, (x, w, b, rm, rv, False, 0.1, 1e-5, backend))
    _opcheck(ops.batch_norm.default, (x, None, None, None, None, True, 0.1, 1e-5, backend))
    _, mean, invstd, _, _ = ops.batch_norm(x.detach(), w.detach(), b.detach(), rm, rv, True, 0.1, 1e-5, backend)
    _opcheck(ops.batch_norm_backward.default,
             (torch.randn(x.shape, generator=g), x.detach(), w.detach(), mean, invstd, True, True, True, True, backend))


def test_ops_are_functional():
    # The forward ops must not touch their inputs (the running statistics come back as
    # outputs); the public batch_norm is what writes them into the caller's buffers.
    x = torch.randn(6, 4, generator=_gen(4))
    rm, rv = torch.zeros(4), torch.ones(4)
    _, _, _, new_rm, new_rv = ops.batch_norm(x, None, None, rm, rv, True, 0.1, 1e-5, "torch")
    assert torch.equal(rm, torch.zeros(4)) and torch.equal(rv, torch.ones(4))
    assert not torch.equal(new_rm, rm)
    for name in ("linear_leaky_relu", "softmax_cross_entropy", "batch_norm"):
        schema = getattr(ops, name).default._schema
        assert not schema.is_mutable, schema


# --------------------------------------------------------------------------- export / compile


class TinyNet(torch.nn.Module):
    """Uses all three ops, so one export/compile covers them together."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.fc = torch.nn.Linear(12, 10)
        self.bn = torch.nn.BatchNorm1d(10)

    def forward(self, x, target):
        h = K.linear_leaky_relu(x, self.fc.weight, self.fc.bias, 0.1, backend=self.backend)
        h = K.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                         self.training, 0.1, 1e-5, backend=self.backend)
        return K.softmax_cross_entropy(h, target, label_smoothing=0.1, backend=self.backend,
                                       return_correct=True)


def _reference_net(net, x, target):
    """The same computation with torch.nn.functional, on copies of net's state."""
    fc, bn = net.fc, net.bn
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    h = F.leaky_relu(F.linear(x, fc.weight, fc.bias), 0.1)
    h = F.batch_norm(h, rm, rv, bn.weight, bn.bias, net.training, 0.1, 1e-5)
    loss = F.cross_entropy(h, target, label_smoothing=0.1)
    return loss, ((h.argmax(1) == target).sum()), rm, rv


def _data(seed=5):
    g = _gen(seed)
    return torch.randn(8, 12, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("strict", [False, True])  # torch < 2.7 exported strictly by default
def test_export_captures_the_custom_ops(backend, strict):
    torch.manual_seed(0)
    net = TinyNet(backend)
    x, t = _data()
    rm_before = net.bn.running_mean.clone()
    ep = torch.export.export(net, (x, t), strict=strict)
    assert torch.equal(net.bn.running_mean, rm_before), "export must not update real buffers"
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for name in ("linear_leaky_relu", "batch_norm", "softmax_cross_entropy"):
        assert f"nnspec.{name}.default" in targets, targets

    # Functionalised IR records the running-statistics update as buffer mutations.
    core = ep.run_decompositions({})
    mutated = set(core.graph_signature.buffers_to_mutate.values())
    assert {"bn.running_mean", "bn.running_var"} <= mutated, core.graph_signature

    # The exported program computes what PyTorch computes, buffers included.
    want_loss, want_correct, want_rm, want_rv = _reference_net(net, x, t)
    module = ep.module()
    loss, correct = module(x, t)
    assert_matches(loss, want_loss.double(), torch.float32)
    assert correct.item() == want_correct.item()
    assert_matches(module.bn.running_mean, want_rm.double(), torch.float32)
    assert_matches(module.bn.running_var, want_rv.double(), torch.float32)


def test_export_eval_mode():
    net = TinyNet("torch").eval()
    x, t = _data(6)
    ep = torch.export.export(net, (x, t))
    loss, _ = ep.module()(x, t)
    assert_matches(loss, _reference_net(net, x, t)[0].double(), torch.float32)


def _compiled_matches_eager(backend, compile_backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager, compiled_net = TinyNet(backend), TinyNet(backend)
    compiled_net.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_net, fullgraph=True, backend=compile_backend)
    x, t = _data(7)
    for step in range(2):  # second step: running stats changed, no recompile needed
        want_loss, want_correct = eager(x, t)
        want_loss.backward()
        loss, correct = compiled(x, t)
        loss.backward()
        assert_matches(loss, want_loss.double(), torch.float32, what=f"loss step {step}")
        assert correct.item() == want_correct.item()
    for (name, p), q in zip(eager.named_parameters(), compiled_net.parameters()):
        assert_matches(q.grad, p.grad.double(), torch.float32, what=f"grad {name}")
    assert_matches(compiled_net.bn.running_mean, eager.bn.running_mean.double(), torch.float32)
    assert_matches(compiled_net.bn.running_var, eager.bn.running_var.double(), torch.float32)


def test_compile_fullgraph_inductor_cpu():
    # Inductor generates C++ for the surrounding graph; the nnspec ops stay opaque calls.
    _compiled_matches_eager("torch", "inductor")


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_compile_fullgraph_aot_eager(backend):
    _compiled_matches_eager(backend, "aot_eager")


# --------------------------------------------------------------------------- dispatch


def test_cpu_path_never_imports_triton():
    code = """
        import sys
        import torch
        import nnspec.kernels as K
        assert "triton" not in sys.modules, "import nnspec.kernels imported triton"
        x = torch.randn(5, 8, requires_grad=True)
        w = torch.randn(6, 8, requires_grad=True)
        y = K.linear_leaky_relu(x, w, torch.zeros(6))
        y = K.batch_norm(y, torch.zeros(6), torch.ones(6), training=True)
        loss, correct = K.softmax_cross_entropy(y, torch.tensor([0, 1, 2, 3, 4]), return_correct=True)
        loss.backward()
        assert x.grad is not None and w.grad is not None
        K.triton_available()
        assert "triton" not in sys.modules, sorted(m for m in sys.modules if "triton" in m)
        print("ok")
    """
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_triton_backend_on_cpu_without_interpreter_raises():
    code = """
        import torch
        import nnspec.kernels as K
        assert not K.triton_available() or torch.cuda.is_available()
        try:
            K.softmax_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), backend="triton")
        except RuntimeError as e:
            assert "TRITON_INTERPRET" in str(e), e
            print("ok")
    """
    out = run_python(code, TRITON_INTERPRET=None)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_backend_resolution():
    cpu = torch.device("cpu")
    assert _dispatch.resolve("auto", cpu) == "torch"
    assert _dispatch.resolve("torch", cpu) == "torch"
    if _dispatch.triton_installed():
        assert _dispatch.resolve("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="backend"):
        _dispatch.resolve("cudnn", cpu)
    with pytest.raises(ValueError, match="backend"):
        K.linear_leaky_relu(torch.randn(2, 3), torch.randn(4, 3), backend="Triton")
    assert K.triton_available() == (_dispatch.triton_installed() and (INTERPRETER or torch.cuda.is_available()))


def test_eager_torch_path_skips_the_custom_op(monkeypatch):
    # Plain eager CPU calls run torch.nn.functional directly; the op is only for tracing and
    # Triton.  Poison the op to prove it is not reached.
    import importlib

    def boom(*a, **k):
        raise AssertionError("custom op called on the eager torch path")

    for module, op in (("linear_leaky_relu_op", "linear_leaky_relu_op"),
                       ("cross_entropy_op", "softmax_cross_entropy_op"), ("batch_norm_op", "batch_norm_op")):
        monkeypatch.setattr(importlib.import_module(f"nnspec.kernels.{module}"), op, boom)
    K.linear_leaky_relu(torch.randn(2, 3), torch.randn(4, 3))
    K.softmax_cross_entropy(torch.randn(2, 3), torch.tensor([0, 2]))
    K.batch_norm(torch.randn(2, 3), torch.zeros(3), torch.ones(3), training=True)
