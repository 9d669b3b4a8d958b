"""The compiler's IR: the shaped layer tree plus, per node, the op that will run and its kernel.

A node usually wraps one layer. After the fusion pass a node may also absorb
the activation that follows it (``linear`` + ``leaky_relu`` -> one kernel);
the absorbed layer keeps its own module, so ``state_dict`` keys never depend
on the device the model was compiled for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from nnspec.spec.shapes import ShapedLayer

TORCH = "torch"


@dataclass
class Node:
    shaped: ShapedLayer
    op: str
    kernel: str = TORCH
    absorbed: ShapedLayer | None = None
    children: list[list["Node"]] = field(default_factory=list)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.absorbed or self.shaped).out_shape

    @property
    def params(self) -> int:
        return self.shaped.params + (self.absorbed.params if self.absorbed else 0)

    @property
    def flops(self) -> int:
        return self.shaped.flops + (self.absorbed.flops if self.absorbed else 0)

    def walk(self) -> Iterator["Node"]:
        yield self
        for group in self.children:
            for child in group:
                yield from child.walk()


def from_shaped(layers: list[ShapedLayer]) -> list[Node]:
    return [Node(s, s.layer.type, children=[from_shaped(group) for group in s.children]) for s in layers]


def walk(nodes: list[Node]) -> Iterator[Node]:
    for node in nodes:
        yield from node.walk()
