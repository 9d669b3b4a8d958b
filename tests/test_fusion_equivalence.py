"""What the fusion pass fuses, and that a ``kernels="triton"`` build computes what the
``kernels="torch"`` build does - on the CPU too, through Triton's interpreter.

Only ``linear`` followed by ``relu`` / ``leaky_relu`` has a kernel behind it; any other
activation fused there would run through the LeakyReLU kernel and silently compute the
wrong function, so every other layer that can follow a linear layer is checked both ways:
unfused in the plan, and numerically equal to PyTorch when built with the Triton kernels.
"""
from __future__ import annotations

import os

import pytest
import torch

import nnspec
from nnspec.spec import loads_spec

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs a GPU or Triton's interpreter",
)

FUSED = {"relu": "linear+relu", "leaky_relu: 0.2": "linear+leaky_relu"}
UNFUSED = [
    "sigmoid", "tanh", "prelu", "softplus", "elu", "gelu", "silu", "softmax", "log_softmax",
    "identity", "dropout: 0.0", "layer_norm", "batch_norm", "linear: 10",
]


def _spec(after_linear: str):
    return loads_spec(
        "nnspec: 1\nname: fuse\ninput: [12]\nloss: cross_entropy\nmodel:\n"
        f"  - linear: 10\n  - {after_linear}\n  - linear: 4\n"
    )


@pytest.mark.parametrize("layer", list(FUSED))
def test_relu_and_leaky_relu_fuse_into_the_linear_kernel(layer):
    rows = nnspec.plan(_spec(layer), "cuda").rows
    fused = [row for row in rows if "+" in row.path]
    assert [(row.path, row.op, row.kernel) for row in fused] == [("model.0+1", FUSED[layer], "triton:linear_leaky_relu")]


@pytest.mark.parametrize("layer", UNFUSED)
def test_other_layers_after_linear_stay_unfused(layer):
    rows = nnspec.plan(_spec(layer), "cuda").rows
    assert not any("+" in row.path or "+" in row.op for row in rows), [(r.path, r.op) for r in rows]
    linear = next(row for row in rows if row.path == "model.0")
    assert (linear.op, linear.kernel) == ("linear", "torch")


def _compare_builds(spec, x, *, train: bool, rtol=1e-4, atol=1e-5):
    """Output and every parameter gradient of the triton build against the torch build."""
    torch_model = nnspec.build(spec, kernels="torch")
    triton_model = nnspec.build(spec, kernels="triton")
    triton_model.load_state_dict(torch_model.state_dict())
    outputs = []
    for model in (torch_model, triton_model):
        model.train(train)
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=rtol, atol=atol)
    grads = {name: p.grad for name, p in torch_model.named_parameters()}
    for name, p in triton_model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=rtol, atol=atol, msg=name)
    return torch_model, triton_model


@pytest.mark.parametrize("layer", list(FUSED) + UNFUSED)
def test_triton_build_matches_torch_build_after_linear(layer):
    torch.manual_seed(0)
    x = torch.randn(6, 12) * 2
    _compare_builds(_spec(layer), x, train=True)


MIXED = """\
nnspec: 1
name: each-fused-node
input: [3, 6, 6]
loss: cross_entropy
model:
  - conv2d: {out: 4, kernel: 3, padding: 1}
  - batch_norm            # triton:batch_norm, 2-D
  - relu
  - flatten
  - linear: 16
  - leaky_relu: 0.1       # triton:linear_leaky_relu
  - batch_norm            # triton:batch_norm, 1-D
  - linear: 12
  - relu                  # triton:linear_leaky_relu with slope 0
  - linear: 5
"""


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_triton_build_matches_torch_build_with_every_fused_node(train):
    spec = loads_spec(MIXED)
    kernels = {row.kernel for row in nnspec.plan(spec, "cuda").rows}
    assert {"triton:batch_norm", "triton:linear_leaky_relu", "triton:softmax_cross_entropy"} <= kernels
    torch.manual_seed(1)
    x = torch.randn(5, 3, 6, 6)
    torch_model, triton_model = _compare_builds(spec, x, train=train)
    assert any(step.fused_with for step in triton_model.program)
    y = torch.randint(0, 5, (5,))
    losses = [nnspec.build_loss(spec, kernels=k)(m(x), y) for k, m in (("torch", torch_model), ("triton", triton_model))]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
