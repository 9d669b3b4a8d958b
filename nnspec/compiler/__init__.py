"""The compiler: spec -> IR with inferred shapes -> passes (fusion, kernel choice) -> module.

``build`` returns an ordinary ``nn.Module`` (state_dict, ``.to()``,
``torch.compile`` and ``torch.export`` all work on it); ``build_loss`` compiles
the loss separately; ``plan`` describes what ``build`` would run on a device
without building anything, so it needs no GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nnspec.compiler.ir import TORCH, from_shaped
from nnspec.compiler.loss import SpecLoss
from nnspec.compiler.lower import lower_modules
from nnspec.compiler.modules import SpecModel
from nnspec.compiler.passes import FUSED_CROSS_ENTROPY, KernelPolicy, check_plannable, run_passes, use_triton
from nnspec.compiler.plan import Plan, PlanRow, plan_rows
from nnspec.errors import SpecError
from nnspec.spec import Spec, load_spec
from nnspec.spec.shapes import infer_shapes

__all__ = ["build", "build_loss", "plan", "Plan", "SpecModel", "SpecLoss"]


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def _nodes(spec: Spec, device: str, kernels: KernelPolicy):
    shaped, problems = infer_shapes(spec.model, spec.input)
    if problems:  # a Spec built in Python may skip file validation
        raise SpecError.single(problems[0].message, path=".".join(map(str, problems[0].path)))
    return run_passes(from_shaped(shaped), device, kernels)


def build(spec: Spec | str | Path, device: str | torch.device = "cpu", kernels: KernelPolicy = "auto") -> SpecModel:
    """Compile ``spec`` (or the spec file at that path) into a module on ``device``."""
    spec = _spec(spec)
    device = str(device)
    modules, program = lower_modules(_nodes(spec, device, kernels))
    model = SpecModel(modules, program, spec.name, tuple(spec.input))
    return model.to(device)


def build_loss(spec: Spec | str | Path, device: str | torch.device = "cpu", kernels: KernelPolicy = "auto") -> SpecLoss:
    """The spec's loss as a module ``(outputs, labels) -> scalar``. Raises SpecError if the spec has none."""
    spec = _spec(spec)
    if spec.loss is None:
        raise SpecError.single("the spec has no 'loss' section", path="loss")
    kernel = FUSED_CROSS_ENTROPY if spec.loss.type == "cross_entropy" and use_triton(str(device), kernels) else TORCH
    return SpecLoss(spec.loss, kernel).to(str(device))


def plan(spec: Spec | str | Path, device: str = "cpu", kernels: KernelPolicy = "auto") -> Plan:
    """What ``build`` runs on ``device``: one row per node, plus a loss row when the spec has a loss."""
    device = check_plannable(device)
    spec = _spec(spec)
    nodes = _nodes(spec, device, kernels)
    rows = plan_rows(nodes, spec)
    if spec.loss is not None:
        triton = spec.loss.type == "cross_entropy" and use_triton(device, kernels)
        position = spec.position_of(("loss",))
        classes = nodes[-1].out_shape[-1] if nodes else 0
        # softmax cross-entropy: max, exp, sum, log and the pick, about 4 FLOPs per logit
        rows.append(PlanRow("loss", spec.loss.type, position.line if position else None,
                            spec.loss.type, FUSED_CROSS_ENTROPY if triton else TORCH, (), 0, 4 * classes))  # fmt: skip
    return Plan(spec.name, device, tuple(spec.input), rows)
