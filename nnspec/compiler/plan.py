"""The compile plan: what each node runs, on which kernel, with shapes, parameters and FLOPs.

``nnspec compile`` prints it as a table or JSON. Planning needs no GPU: the
CUDA plan of a spec can be inspected on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from nnspec.compiler.ir import Node, walk
from nnspec.errors import dotted
from nnspec.spec.layers import Conv1d, Conv2d, Linear, Parallel, fmt
from nnspec.spec.model import Spec

#: Layer kinds whose ``weight`` is penalized by l2/l1/weight_decay. Biases,
#: normalization parameters and PReLU slopes never are.
PENALIZED_KINDS = (Linear, Conv1d, Conv2d)


@dataclass
class PlanRow:
    path: str
    module: str
    line: int | None
    op: str
    kernel: str
    output: tuple[int, ...]
    params: int
    flops: int
    penalized: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "module": self.module, "line": self.line, "op": self.op, "kernel": self.kernel,
            "output": list(self.output), "params": self.params, "flops": self.flops, "penalized": self.penalized,
        }  # fmt: skip


@dataclass
class Plan:
    spec_name: str
    device: str
    input: tuple[int, ...]
    rows: list[PlanRow]

    @property
    def params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def flops(self) -> int:
        return sum(row.flops for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec_name,
            "device": self.device,
            "input": list(self.input),
            "params": self.params,
            "flops_per_sample": self.flops,
            "nodes": [row.as_dict() for row in self.rows],
        }

    def table(self) -> str:
        headers = ["node", "line", "op", "kernel", "output", "params", "FLOPs/sample", "penalized"]
        body = [
            [f"{r.path} {r.module}", r.line or "", r.op, r.kernel, fmt(r.output), f"{r.params:,}", f"{r.flops:,}", ", ".join(r.penalized)]
            for r in self.rows
        ]
        body.append(["total", "", "", "", "", f"{self.params:,}", f"{self.flops:,}", ""])
        title = f"{self.spec_name} on {self.device}: input {fmt(self.input)}"
        return title + "\n" + tabulate(body, headers=headers, disable_numparse=True, colalign=("left",) * 5 + ("right", "right", "left"))


def _penalized(node: Node, spec: Spec) -> list[str]:
    reg = spec.regularization
    adamw = spec.optimizer is not None and spec.optimizer.type == "adamw"
    # weight_decay unset means adamw's default (0.01, see train.optim.weight_decay_of);
    # an explicit 0 switches decay off for adamw too.
    decays = reg.weight_decay > 0 if reg.weight_decay is not None else adamw
    weighted = reg.l2 > 0 or reg.l1 > 0 or decays
    if weighted and isinstance(node.shaped.layer, PENALIZED_KINDS):
        return [f"{node.shaped.module}.weight"]
    return []


def plan_rows(nodes: list[Node], spec: Spec) -> list[PlanRow]:
    rows = []
    for node in walk(nodes):
        if node.children:
            layer = node.shaped.layer
            op = f"{node.op}({layer.merge})" if isinstance(layer, Parallel) else node.op
            kernel, params = "-", 0  # parameters are counted on the children's rows
            flops = node.flops - sum(child.flops for group in node.children for child in group)  # the merge itself
        else:
            op, kernel, params, flops = node.op, node.kernel, node.params, node.flops
        path = dotted(node.shaped.path)
        module = node.shaped.module
        if node.absorbed is not None:
            path += f"+{node.absorbed.path[-1]}"
            module += f"+{node.absorbed.local_name}"
        position = spec.position_of(node.shaped.path)
        rows.append(
            PlanRow(path, module, position.line if position else None, op, kernel, node.out_shape, params, flops, _penalized(node, spec))
        )
    return rows
