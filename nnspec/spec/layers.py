"""The layer vocabulary of spec format v1.

Each layer is a pydantic model whose fields are its arguments (defaults as in
PyTorch unless stated) and whose methods state its shape rule, parameter count
and FLOPs. Shapes are of ONE sample — ``(C, H, W)``, ``(C, L)`` or
``(features,)`` — never including the batch.

FLOPs are per sample; a multiply-add counts 2; element-wise operations count
one FLOP per output element (a normalization counts a few), which is what the
compile table's totals are meant for: comparing layers, not timing them.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

from pydantic import BeforeValidator, Field, StringConstraints

from nnspec.spec.kinds import Kind, KindsOf, shorthand_validator

Shape = tuple[int, ...]

MAX_WIDTH = 1 << 20  # channels / features / classes of one layer
MAX_KERNEL = 1024
MAX_REPEAT = 1000

# Numbers and flags are strict: YAML's `true` is not the width 1, nor the string '3' the
# number 3, nor `no` the flag false. (A float field still takes an integer.)
Width = Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]
KernelSize = Annotated[int, Field(strict=True, ge=1, le=MAX_KERNEL)]
Stride = Annotated[int, Field(strict=True, ge=1, le=MAX_KERNEL)]
Padding = Annotated[int, Field(strict=True, ge=0, le=MAX_KERNEL)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: Largest float32: parameters initialised from a spec value are float32 tensors.
FLOAT32_MAX = 3.4028234663852886e38
Flag = Annotated[bool, Field(strict=True)]
LayerName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+$", max_length=64)]


class ShapeError(ValueError):
    """A layer cannot take the shape it is given."""


def fmt(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def numel(shape: Shape) -> int:
    return math.prod(shape)


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value


class Layer(Kind):
    """Common to every layer: an optional unique ``name`` that addresses it."""

    name: LayerName | None = Field(
        None, description="unique name; the module name (and state_dict prefix) instead of <type>_<index>"
    )

    def infer(self, shape: Shape) -> Shape:
        """The output shape for a sample of ``shape``; raises ShapeError if it cannot take it."""
        return shape

    def param_count(self, shape: Shape) -> int:
        return 0

    def flops(self, shape: Shape, out: Shape) -> int:
        return 0


# -- dense and convolutional ----------------------------------------------


class Linear(Layer):
    """``y = x W^T + b`` over the last dimension (``(features,)`` or ``(C, L)`` inputs)."""

    type: Literal["linear"] = "linear"
    main: ClassVar[str] = "out"
    out: Width = Field(description="output features")
    bias: Flag = True

    def infer(self, shape: Shape) -> Shape:
        if len(shape) > 2:
            raise ShapeError(f"linear takes (features,) or (C, L) inputs, got {fmt(shape)}; add 'flatten' before it")
        return shape[:-1] + (self.out,)

    def param_count(self, shape: Shape) -> int:
        return shape[-1] * self.out + (self.out if self.bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        rows = numel(shape[:-1])
        return rows * (2 * shape[-1] * self.out + (self.out if self.bias else 0))


class _Conv(Layer):
    main: ClassVar[str] = "out"
    out: Width = Field(description="output channels")
    stride: Stride | tuple[Stride, ...] = 1
    padding: Padding | tuple[Padding, ...] = 0
    bias: Flag = True
    spatial: ClassVar[int]

    def _tuple(self, value: int | tuple[int, ...], field: str) -> tuple[int, ...]:
        if isinstance(value, int):
            return (value,) * self.spatial
        if len(value) != self.spatial:
            want = "1 value" if self.spatial == 1 else f"1 or {self.spatial} values"
            raise ShapeError(f"{field} needs {want}, got {len(value)}")
        return tuple(value)

    def infer(self, shape: Shape) -> Shape:
        if len(shape) != self.spatial + 1:
            want = "(C, L)" if self.spatial == 1 else "(C, H, W)"
            raise ShapeError(f"{self.type} takes {want} inputs, got {fmt(shape)}")
        sizes = []
        kernel, stride, padding = (self._tuple(v, f) for v, f in ((self.kernel, "kernel"), (self.stride, "stride"), (self.padding, "padding")))
        for size, k, s, p in zip(shape[1:], kernel, stride, padding):
            out = (size + 2 * p - k) // s + 1
            if out < 1:
                raise ShapeError(f"kernel {k} (padding {p}) is larger than the input size {size} of {fmt(shape)}")
            sizes.append(out)
        return (self.out, *sizes)

    def param_count(self, shape: Shape) -> int:
        kernel = numel(self._tuple(self.kernel, "kernel"))
        return self.out * shape[0] * kernel + (self.out if self.bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        kernel = numel(self._tuple(self.kernel, "kernel"))
        return numel(out) * (2 * shape[0] * kernel + (1 if self.bias else 0))


class Conv1d(_Conv):
    """1-D convolution over ``(C, L)``."""

    type: Literal["conv1d"] = "conv1d"
    kernel: KernelSize | tuple[KernelSize] = Field(description="kernel length")
    spatial: ClassVar[int] = 1


class Conv2d(_Conv):
    """2-D convolution over ``(C, H, W)``; kernel/stride/padding are one int or [h, w]."""

    type: Literal["conv2d"] = "conv2d"
    kernel: KernelSize | tuple[KernelSize, KernelSize] = Field(description="kernel size, or [h, w]")
    spatial: ClassVar[int] = 2


class _Pool(Layer):
    main: ClassVar[str] = "kernel"
    kernel: KernelSize = Field(description="window size (square for images)")
    stride: Stride | None = Field(None, description="defaults to the kernel size")

    def infer(self, shape: Shape) -> Shape:
        if len(shape) not in (2, 3):
            raise ShapeError(f"{self.type} takes (C, L) or (C, H, W) inputs, got {fmt(shape)}")
        stride = self.stride or self.kernel
        sizes = []
        for size in shape[1:]:
            if size < self.kernel:
                raise ShapeError(f"window {self.kernel} is larger than the input size {size} of {fmt(shape)}")
            sizes.append((size - self.kernel) // stride + 1)
        return (shape[0], *sizes)

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(out) * self.kernel ** (len(shape) - 1)


class MaxPool(_Pool):
    """Max pooling (1-D or 2-D, chosen from the input shape)."""

    type: Literal["max_pool"] = "max_pool"


class AvgPool(_Pool):
    """Average pooling (1-D or 2-D, chosen from the input shape)."""

    type: Literal["avg_pool"] = "avg_pool"


class GlobalAvgPool(Layer):
    """Mean over every spatial position: ``(C, ...) -> (C,)``."""

    type: Literal["global_avg_pool"] = "global_avg_pool"

    def infer(self, shape: Shape) -> Shape:
        if len(shape) < 2:
            raise ShapeError(f"global_avg_pool needs spatial dimensions, got {fmt(shape)}")
        return (shape[0],)

    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(shape)


class Flatten(Layer):
    """Collapse a sample to ``(features,)``."""

    type: Literal["flatten"] = "flatten"

    def infer(self, shape: Shape) -> Shape:
        return (numel(shape),)


# -- normalization and dropout --------------------------------------------


class BatchNorm(Layer):
    """Batch normalization with running statistics for evaluation.

    1-D (``(features,)`` or ``(C, L)``) or 2-D (``(C, H, W)``) is chosen from
    the inferred input shape; statistics are per channel (the first dimension).
    """

    type: Literal["batch_norm"] = "batch_norm"
    main: ClassVar[str] = "momentum"
    momentum: Number = Field(0.1, ge=0.0, le=1.0)
    eps: Number = Field(1e-5, gt=0.0)

    def infer(self, shape: Shape) -> Shape:
        if len(shape) > 3:
            raise ShapeError(f"batch_norm takes up to (C, H, W) inputs, got {fmt(shape)}")
        return shape

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[0]

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * numel(shape)


class LayerNorm(Layer):
    """Layer normalization over the last dimension, with a learnable scale and shift."""

    type: Literal["layer_norm"] = "layer_norm"
    main: ClassVar[str] = "eps"
    eps: Number = Field(1e-5, gt=0.0)

    def param_count(self, shape: Shape) -> int:
        return 2 * shape[-1]

    def flops(self, shape: Shape, out: Shape) -> int:
        return 5 * numel(shape)


class Dropout(Layer):
    """Zero each element with probability ``p`` in training (scaled by 1/(1-p)); identity in eval."""

    type: Literal["dropout"] = "dropout"
    main: ClassVar[str] = "p"
    p: Number = Field(0.5, ge=0.0, lt=1.0)


# -- activations -----------------------------------------------------------


class _Elementwise(Layer):
    def flops(self, shape: Shape, out: Shape) -> int:
        return numel(out)


class Sigmoid(_Elementwise):
    type: Literal["sigmoid"] = "sigmoid"


class Tanh(_Elementwise):
    type: Literal["tanh"] = "tanh"


class ReLU(_Elementwise):
    type: Literal["relu"] = "relu"


class LeakyReLU(_Elementwise):
    """``max(x, slope * x)``; fused with a preceding linear on CUDA."""

    type: Literal["leaky_relu"] = "leaky_relu"
    main: ClassVar[str] = "slope"
    slope: Number = Field(0.01, ge=0.0, le=1.0)


class PReLU(_Elementwise):
    """LeakyReLU with one learnable slope per channel (the first dimension), initialised to ``init``."""

    type: Literal["prelu"] = "prelu"
    main: ClassVar[str] = "init"
    init: Annotated[float, Field(strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)] = Field(
        0.25, description="initial slope (a float32 parameter)")

    def param_count(self, shape: Shape) -> int:
        return shape[0]


class Softplus(_Elementwise):
    type: Literal["softplus"] = "softplus"
    main: ClassVar[str] = "beta"
    beta: Number = Field(1.0, gt=0.0)
    threshold: Number = 20.0


class ELU(_Elementwise):
    type: Literal["elu"] = "elu"
    main: ClassVar[str] = "alpha"
    alpha: Number = 1.0


class GELU(_Elementwise):
    type: Literal["gelu"] = "gelu"
    main: ClassVar[str] = "approximate"
    approximate: Literal["none", "tanh"] = "none"


class SiLU(_Elementwise):
    type: Literal["silu"] = "silu"


class _SoftmaxLike(_Elementwise):
    main: ClassVar[str] = "dim"
    dim: int = Field(0, strict=True, description="sample dimension to normalize over (0 = classes/channels; negative counts from the end)")

    def infer(self, shape: Shape) -> Shape:
        if not -len(shape) <= self.dim < len(shape):
            raise ShapeError(f"dim {self.dim} is out of range for {fmt(shape)}")
        return shape

    def flops(self, shape: Shape, out: Shape) -> int:
        return 3 * numel(out)


class Softmax(_SoftmaxLike):
    type: Literal["softmax"] = "softmax"


class LogSoftmax(_SoftmaxLike):
    type: Literal["log_softmax"] = "log_softmax"


class Identity(Layer):
    type: Literal["identity"] = "identity"


# -- composites ------------------------------------------------------------


class Residual(Layer):
    """``body(x) + shortcut(x)``; the shortcut defaults to the identity."""

    type: Literal["residual"] = "residual"
    main: ClassVar[str] = "body"
    body: list[LayerSpec] = Field(min_length=1)
    shortcut: list[LayerSpec] = Field(default_factory=list, description="empty = identity")


class Parallel(Layer):
    """Run every branch on the same input and merge: ``concat`` along channels, or ``add``."""

    type: Literal["parallel"] = "parallel"
    main: ClassVar[str] = "branches"
    branches: list[list[LayerSpec]] = Field(min_length=1, description="each branch is a list of layers (may be empty = identity)")
    merge: Literal["concat", "add"] = "concat"


class Repeat(Layer):
    """``times`` consecutive copies of ``body``, each with its own parameters."""

    type: Literal["repeat"] = "repeat"
    main: ClassVar[str] = "times"
    times: int = Field(strict=True, ge=1, le=MAX_REPEAT)
    body: list[LayerSpec] = Field(min_length=1)


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        Linear, Conv1d, Conv2d, MaxPool, AvgPool, GlobalAvgPool, Flatten,
        BatchNorm, LayerNorm, Dropout,
        Sigmoid, Tanh, ReLU, LeakyReLU, PReLU, Softplus, ELU, GELU, SiLU, Softmax, LogSoftmax, Identity,
        Residual, Parallel, Repeat,
    )
}  # fmt: skip

LAYERS = KindsOf(LAYER_TYPES, "layer")

LayerSpec = Annotated[
    Union[tuple(LAYER_TYPES.values())],  # type: ignore[valid-type]
    Field(discriminator="type"),
    BeforeValidator(shorthand_validator(LAYERS)),
    LAYERS,
    LAYERS.json_schema_ref(),
]

for _cls in (Residual, Parallel, Repeat):
    _cls.model_rebuild()


def children(layer: Layer) -> list[tuple[tuple[str | int, ...], list[Layer]]]:
    """The nested layer lists of a composite, with their relative paths."""
    if isinstance(layer, Residual):
        return [(("body",), layer.body), (("shortcut",), layer.shortcut)]
    if isinstance(layer, Parallel):
        return [(("branches", i), branch) for i, branch in enumerate(layer.branches)]
    if isinstance(layer, Repeat):
        return [(("body",), layer.body)]
    return []
