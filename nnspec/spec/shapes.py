"""Shape inference over a validated model: every layer gets its input and output shape.

This runs at validation time (so ``conv2d`` after ``flatten`` is an error that
points at the conv's line) and its result is the compiler's starting IR: a tree
of :class:`ShapedLayer` with stable module names and parameter/FLOP counts.
Nothing here allocates a tensor, so a spec with a billion parameters is
rejected in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from nnspec.spec.layers import (
    Layer,
    Parallel,
    Repeat,
    Residual,
    Shape,
    ShapeError,
    children,
    fmt,
    numel,
)

KeyPath = tuple[str | int, ...]

MAX_PARAMS = 1_000_000_000
MAX_EXPANDED_LAYERS = 20_000  # layers after unrolling every `repeat`


@dataclass
class ShapedLayer:
    """One layer with its shapes. ``path`` is the spec address (``model.4.body.1``),
    ``module`` the dotted module name in the built model (``residual_4.body.conv2d_1``)."""

    layer: Layer
    path: KeyPath
    module: str
    in_shape: Shape
    out_shape: Shape
    params: int
    flops: int
    #: Nested lists for composites: residual -> [body, shortcut]; parallel -> branches;
    #: repeat -> one list per repetition.
    children: list[list["ShapedLayer"]] = field(default_factory=list)

    @property
    def local_name(self) -> str:
        return self.module.rsplit(".", 1)[-1]

    def walk(self) -> Iterator["ShapedLayer"]:
        yield self
        for group in self.children:
            for child in group:
                yield from child.walk()


@dataclass
class ShapeProblem:
    path: KeyPath
    message: str


def module_names(layers: Sequence[Layer]) -> list[str]:
    """Given name, else ``<type>_<index>``: stable across runs, and so are state_dict keys."""
    return [layer.name or f"{layer.type}_{i}" for i, layer in enumerate(layers)]


def expanded_count(layers: Sequence[Layer]) -> int:
    """How many layers the model has once repeats are unrolled — without unrolling."""
    total = 0
    for layer in layers:
        if isinstance(layer, Repeat):
            total += 1 + layer.times * expanded_count(layer.body)
        else:
            total += 1 + sum(expanded_count(group) for _, group in children(layer))
        if total > MAX_EXPANDED_LAYERS:
            return total  # already over the cap; stop counting
    return total


class _Inference:
    def __init__(self) -> None:
        self.problems: list[ShapeProblem] = []
        self.params = 0

    def run(self, layers: Sequence[Layer], shape: Shape, path: KeyPath, prefix: str) -> tuple[list[ShapedLayer], Shape] | None:
        """Shapes for a list of layers; None after the first layer that fails (later shapes are unknowable)."""
        nodes: list[ShapedLayer] = []
        for i, (layer, name) in enumerate(zip(layers, module_names(layers))):
            node = self.one(layer, shape, path + (i,), f"{prefix}{name}")
            if node is None:
                return None
            nodes.append(node)
            shape = node.out_shape
        return nodes, shape

    def one(self, layer: Layer, shape: Shape, path: KeyPath, module: str) -> ShapedLayer | None:
        try:
            if isinstance(layer, (Residual, Parallel, Repeat)):
                return self.composite(layer, shape, path, module)
            out = layer.infer(shape)
        except ShapeError as exc:
            self.problems.append(ShapeProblem(path, str(exc)))
            return None
        params = layer.param_count(shape)
        self.params += params
        return ShapedLayer(layer, path, module, shape, out, params, layer.flops(shape, out))

    def composite(self, layer: Layer, shape: Shape, path: KeyPath, module: str) -> ShapedLayer | None:
        groups: list[list[ShapedLayer]] = []
        outs: list[Shape] = []
        if isinstance(layer, Repeat):
            current = shape
            for rep in range(layer.times):
                result = self.run(layer.body, current, path + ("body",), f"{module}.{rep}.")
                if result is None:
                    return None
                groups.append(result[0])
                current = result[1]
            out = current
        else:
            for rel, group in children(layer):
                sub = ".".join(map(str, rel))
                result = self.run(group, shape, path + rel, f"{module}.{sub}.")
                if result is None:
                    return None
                groups.append(result[0])
                outs.append(result[1])
            out = self.merge(layer, shape, outs)
        params = sum(node.params for group in groups for node in group)
        flops = sum(node.flops for group in groups for node in group)
        if isinstance(layer, Residual) or (isinstance(layer, Parallel) and layer.merge == "add"):
            flops += (len(outs) - 1) * numel(out)  # the element-wise sums
        return ShapedLayer(layer, path, module, shape, out, params, flops, groups)

    @staticmethod
    def merge(layer: Layer, shape: Shape, outs: list[Shape]) -> Shape:
        if isinstance(layer, Residual):
            body, shortcut = outs
            if body != shortcut:
                what = "the identity shortcut keeps" if not layer.shortcut else "the shortcut gives"
                raise ShapeError(
                    f"residual body maps {fmt(shape)} to {fmt(body)} but {what} {fmt(shortcut)}; "
                    "the two must match (add a shortcut that maps to the body's shape)"
                )
            return body
        assert isinstance(layer, Parallel)
        if layer.merge == "add":
            if len(set(outs)) > 1:
                raise ShapeError(f"parallel merge 'add' needs equal branch shapes, got {', '.join(map(fmt, outs))}")
            return outs[0]
        rests = {out[1:] for out in outs}
        if len(rests) > 1:
            raise ShapeError(
                "parallel merge 'concat' joins channels (the first dimension); the other dimensions "
                f"must match, got {', '.join(map(fmt, outs))}"
            )
        return (sum(out[0] for out in outs), *outs[0][1:])


def infer_shapes(layers: Sequence[Layer], input_shape: Shape) -> tuple[list[ShapedLayer], list[ShapeProblem]]:
    """Shape every layer of ``model`` for samples of ``input_shape``.

    Returns the shaped tree (empty if any layer failed) and the problems found:
    shape mismatches, and the caps on unrolled layers and total parameters.
    """
    count = expanded_count(layers)
    if count > MAX_EXPANDED_LAYERS:
        return [], [ShapeProblem(("model",), f"more than {MAX_EXPANDED_LAYERS} layers once repeats are unrolled")]
    inference = _Inference()
    result = inference.run(layers, tuple(input_shape), ("model",), "")
    problems = inference.problems
    if inference.params > MAX_PARAMS:
        problems.append(ShapeProblem(("model",), f"{inference.params:,} parameters exceeds the cap of {MAX_PARAMS:,}"))
    if result is None or problems:
        return [], problems
    return result[0], []


def walk(nodes: Sequence[ShapedLayer]) -> Iterator[ShapedLayer]:
    for node in nodes:
        yield from node.walk()
