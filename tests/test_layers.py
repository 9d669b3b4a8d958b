"""Every layer kind against a hand-built PyTorch module.

For each kind a one-layer (or one-composite) spec is validated and built, and
compared with the module a person would write by hand: the inferred output
shape, the parameter count (of the spec's shape inference, of the plan and of
the built model) and — after copying the hand-built module's state into the
built one — the outputs, in training mode under the same seed (so dropout and
batch statistics are covered) and in eval mode.
"""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

import nnspec
from nnspec.compiler.ir import from_shaped
from nnspec.compiler.lower import lower_modules
from nnspec.compiler.modules import SpecModel
from nnspec.compiler.passes import run_passes
from nnspec.spec import loads_spec
from nnspec.spec.shapes import infer_shapes

BATCH = 5


def spec_text(input_shape: tuple[int, ...], layers: str) -> str:
    body = "\n".join("  " + line for line in layers.strip("\n").splitlines())
    return f"nnspec: 1\nname: layer-test\ninput: {list(input_shape)}\nmodel:\n{body}\n"


# -- hand-built reference pieces -------------------------------------------


class Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)


class Concat(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Add(nn.Module):
    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())))


@dataclass
class Case:
    id: str
    input: tuple[int, ...]
    layers: str
    reference: Callable[[], nn.Module]


CASES = [
    Case("linear", (6,), "- linear: 4", lambda: nn.Linear(6, 4)),
    Case("linear-no-bias", (6,), "- linear: {out: 3, bias: false}", lambda: nn.Linear(6, 3, bias=False)),
    Case("linear-on-C-L", (3, 5), "- linear: 4", lambda: nn.Linear(5, 4)),
    Case("conv1d", (3, 10), "- conv1d: {out: 4, kernel: 3, stride: 2, padding: 1}",
         lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1)),
    Case("conv2d", (3, 9, 8), "- conv2d: {out: 5, kernel: [3, 2], stride: [2, 1], padding: [1, 0]}",
         lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0))),
    Case("conv2d-no-bias", (2, 6, 6), "- conv2d: {out: 3, kernel: 3, bias: false}",
         lambda: nn.Conv2d(2, 3, 3, bias=False)),
    Case("max_pool-1d", (3, 10), "- max_pool: {kernel: 3, stride: 2}", lambda: nn.MaxPool1d(3, stride=2)),
    Case("max_pool-2d", (2, 7, 7), "- max_pool: 2", lambda: nn.MaxPool2d(2)),
    Case("avg_pool-1d", (3, 9), "- avg_pool: 2", lambda: nn.AvgPool1d(2)),
    Case("avg_pool-2d", (2, 8, 7), "- avg_pool: {kernel: 3, stride: 1}", lambda: nn.AvgPool2d(3, stride=1)),
    Case("global_avg_pool-2d", (3, 5, 4), "- global_avg_pool",
         lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
    Case("global_avg_pool-1d", (4, 7), "- global_avg_pool",
         lambda: nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten())),
    Case("flatten", (2, 3, 4), "- flatten", lambda: nn.Flatten()),
    Case("batch_norm-1d-features", (5,), "- batch_norm: {momentum: 0.2, eps: 0.001}",
         lambda: nn.BatchNorm1d(5, momentum=0.2, eps=0.001)),
    Case("batch_norm-1d-C-L", (4, 6), "- batch_norm", lambda: nn.BatchNorm1d(4)),
    Case("batch_norm-2d", (3, 4, 4), "- batch_norm: 0.3", lambda: nn.BatchNorm2d(3, momentum=0.3)),
    Case("layer_norm", (3, 6), "- layer_norm: 0.0001", lambda: nn.LayerNorm(6, eps=1e-4)),
    Case("dropout", (40,), "- dropout: 0.3", lambda: nn.Dropout(0.3)),
    Case("sigmoid", (7,), "- sigmoid", lambda: nn.Sigmoid()),
    Case("tanh", (7,), "- tanh", lambda: nn.Tanh()),
    Case("relu", (2, 5), "- relu", lambda: nn.ReLU()),
    Case("leaky_relu", (7,), "- leaky_relu: 0.2", lambda: nn.LeakyReLU(0.2)),
    Case("prelu-features", (6,), "- prelu", lambda: nn.PReLU(6)),
    Case("prelu-channels", (4, 3, 3), "- prelu: 0.1", lambda: nn.PReLU(4, init=0.1)),
    Case("softplus", (7,), "- softplus: {beta: 2, threshold: 1}", lambda: nn.Softplus(beta=2, threshold=1)),
    Case("elu", (7,), "- elu: 0.5", lambda: nn.ELU(alpha=0.5)),
    Case("gelu", (7,), "- gelu", lambda: nn.GELU()),
    Case("gelu-tanh", (7,), "- gelu: tanh", lambda: nn.GELU(approximate="tanh")),
    Case("silu", (7,), "- silu", lambda: nn.SiLU()),
    Case("softmax", (6,), "- softmax", lambda: nn.Softmax(dim=1)),
    Case("softmax-dim1", (3, 4), "- softmax: 1", lambda: nn.Softmax(dim=2)),
    Case("softmax-negative-dim", (3, 4, 2), "- softmax: -2", lambda: nn.Softmax(dim=-2)),
    Case("log_softmax", (3, 4), "- log_softmax", lambda: nn.LogSoftmax(dim=1)),
    Case("identity", (5,), "- identity", lambda: nn.Identity()),
    Case("residual-identity-shortcut", (6,), "- residual: [linear: 6, tanh]",
         lambda: Residual(nn.Sequential(nn.Linear(6, 6), nn.Tanh()))),
    Case("residual-with-shortcut", (3, 8, 8),
         """
- residual:
    body:
      - conv2d: {out: 4, kernel: 3, stride: 2, padding: 1}
      - relu
    shortcut:
      - conv2d: {out: 4, kernel: 1, stride: 2}
""",
         lambda: Residual(
             nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()), nn.Conv2d(3, 4, 1, stride=2)
         )),
    Case("parallel-concat", (3, 6, 6),
         "- parallel: [[conv2d: {out: 2, kernel: 1}], [conv2d: {out: 3, kernel: 3, padding: 1}, relu], []]",
         lambda: Concat(nn.Conv2d(3, 2, 1), nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), nn.Identity())),
    Case("parallel-add", (5,), "- parallel: {branches: [[linear: 5], [linear: 5, tanh]], merge: add}",
         lambda: Add(nn.Linear(5, 5), nn.Sequential(nn.Linear(5, 5), nn.Tanh()))),
    Case("repeat", (6,), "- repeat: {times: 3, body: [linear: 6, relu]}",
         lambda: nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(3)])),
    Case("repeat-changing-shape", (4,), "- repeat: {times: 2, body: [linear: 3]}",
         lambda: nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))),
]  # fmt: skip

#: Every layer kind of the vocabulary must appear above.
COVERED = {case.layers.split(":")[0].strip("- \n") for case in CASES}


def test_every_layer_kind_is_covered():
    from nnspec.spec.layers import LAYER_TYPES

    assert COVERED == set(LAYER_TYPES), sorted(set(LAYER_TYPES) ^ COVERED)


def copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state into ``dst`` entry by entry, in registration order, checking shapes."""
    src_state, dst_state = src.state_dict(), dst.state_dict()
    assert len(src_state) == len(dst_state), (list(src_state), list(dst_state))
    for (src_key, src_value), (dst_key, dst_value) in zip(src_state.items(), dst_state.items()):
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1], (src_key, dst_key)
        assert src_value.shape == dst_value.shape, (src_key, dst_key)
    dst.load_state_dict(dict(zip(dst_state, src_state.values())))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_layer_matches_hand_built_module(case: Case):
    spec = loads_spec(spec_text(case.input, case.layers))
    shaped, problems = infer_shapes(spec.model, spec.input)
    assert problems == []
    torch.manual_seed(0)
    reference = case.reference()
    torch.manual_seed(1)  # different initial values: the comparison must come from copying the state
    model = nnspec.build(spec)

    expected_params = sum(p.numel() for p in reference.parameters())
    assert sum(node.params for node in shaped) == expected_params
    assert nnspec.plan(spec).params == expected_params
    assert sum(p.numel() for p in model.parameters()) == expected_params

    x = torch.randn(BATCH, *case.input)
    with torch.no_grad():
        expected_shape = tuple(reference(x).shape)
        assert tuple(model(x).shape) == expected_shape
    assert (BATCH, *shaped[-1].out_shape) == expected_shape

    copy_state(reference, model)
    for train in (True, False):
        reference.train(train)
        model.train(train)
        with torch.no_grad():
            torch.manual_seed(7)
            want = reference(x)
            torch.manual_seed(7)
            got = model(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Training-mode batch norm updated the running statistics identically.
    torch.testing.assert_close(model.state_dict(), dict(zip(model.state_dict(), reference.state_dict().values())))


def test_dropout_is_random_in_training_and_identity_in_eval():
    spec = loads_spec(spec_text((1000,), "- dropout: 0.5"))
    model = nnspec.build(spec)
    x = torch.ones(2, 1000)
    out = model.train()(x)
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(model.eval()(x), x)


# -- state_dict keys ---------------------------------------------------------

KEYS_SPEC = """
nnspec: 1
name: keys
input: [8]
model:
  - relu
  - linear: 8
  - repeat: {times: 2, body: [linear: 8, relu]}
  - {linear: 3, name: out}
"""

CONV_SPEC = """
nnspec: 1
name: conv-keys
input: [2, 6, 6]
model:
  - conv2d: {out: 4, kernel: 3, padding: 1}
  - relu
  - repeat: {times: 2, body: [conv2d: {out: 4, kernel: 1}]}
  - batch_norm
  - residual: [conv2d: {out: 4, kernel: 3, padding: 1}, relu]
  - parallel: [[conv2d: {out: 2, kernel: 1}], []]
  - {residual: {body: [conv2d: {out: 6, kernel: 1}], shortcut: [{conv2d: {out: 6, kernel: 1}, name: proj}]}, name: block}
  - global_avg_pool
  - linear: 16
  - leaky_relu: 0.1
  - {linear: 10, name: head}
"""


def test_state_dict_keys_follow_the_spec():
    model = nnspec.build(loads_spec(KEYS_SPEC))
    assert list(model.state_dict()) == [
        "linear_1.weight", "linear_1.bias",
        "repeat_2.0.linear_0.weight", "repeat_2.0.linear_0.bias",
        "repeat_2.1.linear_0.weight", "repeat_2.1.linear_0.bias",
        "out.weight", "out.bias",
    ]  # fmt: skip


def test_state_dict_keys_of_composites_and_given_names():
    keys = set(nnspec.build(loads_spec(CONV_SPEC)).state_dict())
    for key in (
        "conv2d_0.weight",
        "repeat_2.1.conv2d_0.weight",
        "batch_norm_3.running_mean",
        "batch_norm_3.num_batches_tracked",
        "residual_4.body.conv2d_0.weight",
        "parallel_5.branches.0.conv2d_0.bias",
        "block.body.conv2d_0.weight",
        "block.shortcut.proj.weight",
        "linear_8.weight",
        "head.weight",
    ):
        assert key in keys
    # Given names replace the generated ones; nothing is left under the generated name.
    assert not any(key.startswith(("linear_10.", "residual_6.")) for key in keys)
    assert "block.shortcut.conv2d_0.weight" not in keys


@pytest.mark.parametrize("text", [KEYS_SPEC, CONV_SPEC], ids=["mlp", "conv"])
def test_state_dict_keys_do_not_depend_on_device_or_kernels(text):
    spec = loads_spec(text)
    cpu = nnspec.build(spec, "cpu")
    torch_kernels = nnspec.build(spec, "cpu", kernels="torch")
    assert list(cpu.state_dict()) == list(torch_kernels.state_dict())
    # What the CUDA plan lowers to (fused linear+leaky_relu, Triton batch norm), built on the CPU.
    shaped, _ = infer_shapes(spec.model, spec.input)
    nodes = run_passes(from_shaped(shaped), "cuda", "auto")
    assert any(node.kernel.startswith("triton:") for node in nodes) or "batch_norm" not in text
    cuda = SpecModel(*lower_modules(nodes), spec.name, tuple(spec.input))
    assert list(cuda.state_dict()) == list(cpu.state_dict())
    cuda.load_state_dict(cpu.state_dict())  # strict: the weights move between devices unchanged
    torch_kernels.load_state_dict(cpu.state_dict())
    x = torch.randn(3, *spec.input)
    torch.testing.assert_close(torch_kernels.eval()(x), cpu.eval()(x))
    # ... and the CUDA-lowered model computes the same function with those weights (its
    # Triton kernels run here through the interpreter, or on the GPU when there is one).
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        got = cuda.to(device).eval()(x.to(device)).cpu()
        torch.testing.assert_close(got, cpu.eval()(x), rtol=1e-4, atol=1e-5)


def test_plan_modules_match_built_modules():
    spec = loads_spec(CONV_SPEC)
    model = nnspec.build(spec)
    names = {name for name, _ in model.named_modules()}
    rows = nnspec.plan(spec).rows
    assert any("+" in row.module for row in rows)  # the fused linear+leaky_relu row
    for row in rows:
        first, *absorbed = row.module.split("+")
        assert first in names, row.module
        prefix = first.rpartition(".")[0]
        for local in absorbed:  # an absorbed activation keeps its own module beside the linear
            assert (f"{prefix}.{local}" if prefix else local) in names, row.module


# -- torch.export and torch.compile -------------------------------------------


def test_built_model_exports():
    spec = loads_spec(CONV_SPEC)
    model = nnspec.build(spec).eval()
    x = torch.randn(2, *spec.input)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    other = torch.randn(2, *spec.input)
    torch.testing.assert_close(exported.module()(other), model(other))


def test_built_model_compiles():
    spec = loads_spec(CONV_SPEC)
    model = nnspec.build(spec).eval()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, *spec.input)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    # Training through the compiled module updates the same parameters.
    model.train()
    loss = compiled(x).square().mean()
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
