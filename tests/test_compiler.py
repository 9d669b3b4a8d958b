"""The compiler's plan: fusion, kernel choice per device, loss row, totals and FLOPs; ``nnspec compile --json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nnspec
from nnspec.cli import main
from nnspec.compiler.ir import from_shaped
from nnspec.compiler.lower import lower_modules
from nnspec.compiler.modules import Step
from nnspec.compiler.passes import run_passes
from nnspec.errors import SpecError
from nnspec.spec import Spec, load_spec, loads_spec
from nnspec.spec.shapes import infer_shapes

SPECS = Path(__file__).resolve().parents[1] / "specs"

MLP = """\
nnspec: 1
name: mlp
input: [1, 8, 8]
loss: cross_entropy
model:
  - flatten
  - linear: 32
  - leaky_relu: 0.02
  - linear: 16
  - relu
  - batch_norm
  - {linear: 10, name: head}
"""

CNN = """\
nnspec: 1
name: cnn
input: [3, 8, 8]
regularization: {l2: 0.0001}
model:
  - conv2d: {out: 4, kernel: 3, padding: 1}
  - batch_norm
  - relu
  - residual:
      body:
        - conv2d: {out: 4, kernel: 3, padding: 1}
        - batch_norm
      shortcut: []
  - repeat: {times: 2, body: [conv2d: {out: 4, kernel: 1}]}
  - parallel: {branches: [[conv2d: {out: 2, kernel: 1}], []], merge: concat}
  - global_avg_pool
  - linear: 16
  - leaky_relu: 0.1
  - linear: 10
"""


def rows_by_path(plan):
    return {row.path: row for row in plan.rows}


# -- fusion and kernels ---------------------------------------------------------------


def test_cpu_plan_fuses_but_runs_torch():
    rows = rows_by_path(nnspec.plan(loads_spec(MLP), "cpu"))
    fused = rows["model.1+2"]
    assert (fused.op, fused.kernel, fused.module) == ("linear+leaky_relu", "torch", "linear_1+leaky_relu_2")
    assert rows["model.3+4"].op == "linear+relu"
    assert rows["model.5"].kernel == "torch"
    assert "model.2" not in rows and "model.4" not in rows  # absorbed rows are not repeated


def test_cuda_plan_uses_triton_kernels_without_a_gpu():
    rows = rows_by_path(nnspec.plan(loads_spec(MLP), "cuda"))
    assert rows["model.1+2"].kernel == "triton:linear_leaky_relu"
    assert rows["model.3+4"].kernel == "triton:linear_leaky_relu"  # relu is leaky_relu with slope 0
    assert rows["model.5"].op == "batch_norm" and rows["model.5"].kernel == "triton:batch_norm"
    assert rows["model.0"].kernel == "torch" and rows["model.6"].kernel == "torch"
    assert rows["model.6"].module == "head"


def test_kernels_in_composites_follow_the_device():
    cpu = rows_by_path(nnspec.plan(loads_spec(CNN), "cpu"))
    cuda = rows_by_path(nnspec.plan(loads_spec(CNN), "cuda:0"))
    assert cuda["model.3.body.1"].kernel == "triton:batch_norm" and cpu["model.3.body.1"].kernel == "torch"
    assert cuda["model.3"].kernel == cpu["model.3"].kernel == "-"  # the residual itself runs no kernel
    assert cuda["model.7+8"].kernel == "triton:linear_leaky_relu"
    assert cuda["model.0"].kernel == "torch"  # no Triton conv: convolutions stay on cuDNN


def test_kernels_policy():
    spec = loads_spec(MLP)
    assert {row.kernel for row in nnspec.plan(spec, "cuda", kernels="torch").rows} == {"torch"}
    with pytest.raises(SpecError, match="kernels must be auto, torch or triton"):
        nnspec.plan(spec, "cpu", kernels="fast")  # type: ignore[arg-type]


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SpecError, match="TRITON_INTERPRET=1"):
        nnspec.plan(loads_spec(MLP), "cpu", kernels="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rows = rows_by_path(nnspec.plan(loads_spec(MLP), "cpu", kernels="triton"))
    assert rows["model.1+2"].kernel == "triton:linear_leaky_relu"


def test_cuda_lowering_fuses_the_program_and_keeps_the_modules():
    spec = loads_spec(MLP)
    shaped, _ = infer_shapes(spec.model, spec.input)
    _, cpu_program = lower_modules(run_passes(from_shaped(shaped), "cpu", "auto"))
    modules, cuda_program = lower_modules(run_passes(from_shaped(shaped), "cuda", "auto"))
    assert Step("linear_1", "leaky_relu_2", 0.02) in cuda_program
    assert Step("linear_3", "relu_4", 0.0) in cuda_program
    assert [step.module for step in cpu_program] == list(modules)  # unfused: one step per module
    assert {"leaky_relu_2", "relu_4"} <= set(modules)
    assert type(modules["batch_norm_5"]).__name__ == "TritonBatchNorm1d"


# -- the loss row ---------------------------------------------------------------------


def test_loss_row():
    spec = loads_spec(MLP)
    cpu, cuda = nnspec.plan(spec, "cpu"), nnspec.plan(spec, "cuda")
    for plan, kernel in ((cpu, "torch"), (cuda, "triton:softmax_cross_entropy")):
        last = plan.rows[-1]
        assert (last.path, last.op, last.kernel, last.params) == ("loss", "cross_entropy", kernel, 0)
        assert last.line == 4
        assert last.flops == 4 * 10


def test_other_losses_run_torch_and_no_loss_no_row():
    spec = loads_spec(MLP.replace("loss: cross_entropy", "loss: mse"))
    assert nnspec.plan(spec, "cuda").rows[-1].kernel == "torch"
    spec = loads_spec(MLP.replace("loss: cross_entropy\n", ""))
    assert all(row.path != "loss" for row in nnspec.plan(spec, "cuda").rows)


def test_build_loss_matches_torch():
    spec = loads_spec(MLP.replace("loss: cross_entropy", "loss: {cross_entropy: 0.1}"))
    loss = nnspec.build_loss(spec)
    outputs, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    torch.testing.assert_close(loss(outputs, labels), F.cross_entropy(outputs, labels, label_smoothing=0.1))
    mse = nnspec.build_loss(loads_spec(MLP.replace("loss: cross_entropy", "loss: mse")))
    torch.testing.assert_close(mse(outputs, labels), F.mse_loss(outputs, F.one_hot(labels, 10).float()))
    with pytest.raises(SpecError, match="no 'loss' section"):
        nnspec.build_loss(loads_spec(MLP.replace("loss: cross_entropy\n", "")))


# -- totals and FLOPs -------------------------------------------------------------------


@pytest.mark.parametrize("text", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plan_totals_equal_the_built_model(text, device):
    spec = loads_spec(text)
    plan = nnspec.plan(spec, device)
    model = nnspec.build(spec)
    assert plan.params == sum(p.numel() for p in model.parameters())
    assert plan.params == sum(row.params for row in plan.rows)
    assert plan.flops == sum(row.flops for row in plan.rows)
    assert plan.rows[-1 if spec.loss is None else -2].output == tuple(model(torch.randn(2, *spec.input)).shape[1:])


def test_plan_lines_point_at_the_spec():
    spec = loads_spec(CNN)
    rows = rows_by_path(nnspec.plan(spec))
    lines = CNN.splitlines()
    assert "conv2d" in lines[rows["model.0"].line - 1]
    assert "residual" in lines[rows["model.3"].line - 1]
    assert "batch_norm" in lines[rows["model.3.body.1"].line - 1]
    assert "global_avg_pool" in lines[rows["model.6"].line - 1]


def flops_of(text_layers: str, input_shape: list[int]) -> list[int]:
    spec = loads_spec(f"nnspec: 1\nname: f\ninput: {input_shape}\nmodel:\n{text_layers}")
    return [row.flops for row in nnspec.plan(spec).rows]


@pytest.mark.parametrize("n_in, n_out", [(1, 1), (784, 200), (200, 10)])
def test_linear_flops(n_in, n_out):
    assert flops_of(f"  - linear: {n_out}\n", [n_in]) == [2 * n_in * n_out + n_out]
    assert flops_of(f"  - linear: {{out: {n_out}, bias: false}}\n", [n_in]) == [2 * n_in * n_out]
    # over (C, L): once per row
    assert flops_of(f"  - linear: {n_out}\n", [3, n_in]) == [3 * (2 * n_in * n_out + n_out)]


def test_conv_and_elementwise_flops():
    (conv,) = flops_of("  - conv2d: {out: 4, kernel: 3}\n", [2, 6, 6])
    assert conv == 4 * 4 * 4 * (2 * 2 * 3 * 3 + 1)
    assert flops_of("  - relu\n", [3, 5]) == [15]
    # a fused row counts both halves
    assert flops_of("  - linear: 5\n  - leaky_relu\n", [4]) == [2 * 4 * 5 + 5 + 5]


def test_penalized_weights_are_listed():
    rows = nnspec.plan(loads_spec(CNN)).rows
    penalized = [name for row in rows for name in row.penalized]
    assert "conv2d_0.weight" in penalized and "residual_3.body.conv2d_0.weight" in penalized
    assert not any("batch_norm" in name or name.endswith(".bias") for name in penalized)
    assert all(row.penalized == [] for row in nnspec.plan(loads_spec(MLP)).rows)


@pytest.mark.parametrize("extra, listed", [
    ("regularization: {l2: 0.001}\n", True),
    ("regularization: {l1: 0.001}\n", True),
    ("regularization: {weight_decay: 0.01}\n", True),
    ("optimizer: adamw\n", True),  # adamw decays by default (0.01)
    ("optimizer: adamw\nregularization: {weight_decay: 0}\n", False),
    ("optimizer: adam\n", False),
    ("regularization: {l2: 0, l1: 0, weight_decay: 0}\n", False),
])
def test_penalized_column_follows_every_weight_penalty(extra, listed):
    text = "nnspec: 1\nname: p\ninput: [6]\nmodel:\n  - linear: 4\n  - batch_norm\n  - linear: 2\n" + extra
    rows = nnspec.plan(loads_spec(text)).rows
    penalized = [name for row in rows for name in row.penalized]
    assert penalized == (["linear_0.weight", "linear_2.weight"] if listed else [])


# -- guards --------------------------------------------------------------------------


def test_python_built_spec_is_shape_checked_by_the_compiler():
    spec = Spec.model_validate({"nnspec": 1, "name": "py", "input": [3, 8, 8], "model": [{"linear": 4}]})
    with pytest.raises(SpecError, match="linear takes"):
        nnspec.build(spec)
    with pytest.raises(SpecError, match="linear takes"):
        nnspec.plan(spec)


def test_build_and_plan_accept_a_path():
    path = SPECS / "mlp.yaml"
    assert nnspec.plan(path).params == nnspec.plan(load_spec(path)).params
    assert sum(p.numel() for p in nnspec.build(str(path)).parameters()) == nnspec.plan(path).params


# -- nnspec compile --json -----------------------------------------------------------------


def test_compile_json(tmp_path, capsys):
    path = tmp_path / "mlp.yaml"
    path.write_text(MLP)
    assert main(["compile", str(path), "--json", "--device", "cuda"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = nnspec.build(loads_spec(MLP))
    assert out["params"] == sum(p.numel() for p in model.parameters())
    assert out["spec"] == "mlp" and out["device"] == "cuda" and out["input"] == [1, 8, 8]
    nodes = {node["path"]: node for node in out["nodes"]}
    assert nodes["model.1+2"]["kernel"] == "triton:linear_leaky_relu"
    assert nodes["model.1+2"]["output"] == [32] and nodes["model.1+2"]["params"] == 64 * 32 + 32
    assert nodes["loss"]["kernel"] == "triton:softmax_cross_entropy"
    assert set(nodes["model.0"]) == {"path", "module", "line", "op", "kernel", "output", "params", "flops", "penalized"}
    assert out["flops_per_sample"] == sum(node["flops"] for node in out["nodes"])


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a CUDA GPU or Triton's interpreter",
)
def test_cuda_model_matches_cpu_model():
    """The CUDA plan's model (Triton kernels) against the CPU one; without a GPU the same
    kernels run on the CPU through Triton's interpreter (kernels="triton")."""
    spec = loads_spec(CNN)
    cpu = nnspec.build(spec, "cpu").eval()
    if torch.cuda.is_available():
        device, other = "cuda", nnspec.build(spec, "cuda").eval()
    else:
        device, other = "cpu", nnspec.build(spec, "cpu", kernels="triton").eval()
    other.load_state_dict(cpu.state_dict())
    assert any(step.fused_with for step in other.program)
    x = torch.randn(4, *spec.input)
    torch.testing.assert_close(other(x.to(device)).cpu(), cpu(x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("device", ["foo", "meta", "", "tpu", "cuda:x", "cpu:0"])
def test_compile_refuses_a_device_it_cannot_plan_for(tmp_path, capsys, device):
    path = tmp_path / "mlp.yaml"
    path.write_text(MLP)
    assert main(["compile", str(path), "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"device: cannot plan for device {device!r}; nnspec plans for cpu, cuda, cuda:N"
    with pytest.raises(SpecError, match="cannot plan for device"):
        nnspec.plan(loads_spec(MLP), device)


def test_compile_plans_for_an_indexed_cuda_device(tmp_path, capsys):
    path = tmp_path / "mlp.yaml"
    path.write_text(MLP)
    assert main(["compile", str(path), "--device", "cuda:1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == "cuda:1"
