"""The PyTorch modules a spec lowers to.

:class:`Chain` is a Sequential whose forward follows a *program*: usually one
step per child module, but a fused step runs a Linear and the activation after
it as one Triton kernel. The children are the same either way, so the
``state_dict`` of a model compiled for CUDA loads into one compiled for the CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# A leaf package that imports no triton until a Triton kernel actually runs.
from nnspec.kernels import batch_norm, linear_leaky_relu


class Step(NamedTuple):
    """Run ``module``; if ``fused_with`` is set, run it together with that activation module."""

    module: str
    fused_with: str | None = None
    slope: float = 0.0


class Chain(nn.Module):
    """Named children run in order, following a fixed program of (possibly fused) steps."""

    def __init__(self, modules: dict[str, nn.Module], program: list[Step]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.program:
            module = getattr(self, step.module)
            if step.fused_with is None:
                x = module(x)
            else:
                x = linear_leaky_relu(x, module.weight, module.bias, step.slope, backend="triton")
        return x


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; an empty shortcut chain is the identity."""

    def __init__(self, body: Chain, shortcut: Chain):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Parallel(nn.Module):
    """Every branch on the same input; outputs concatenated along channels (dim 1) or added."""

    def __init__(self, branches: list[Chain], merge: str):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.merge == "concat":
            return torch.cat(outs, dim=1)
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total


class GlobalAvgPool(nn.Module):
    """Mean over every spatial position: (N, C, ...) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


class _TritonBatchNorm:
    """Mixin: the forward of nn.BatchNorm*d through nnspec's Triton kernel (same buffers and keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.training:
            self.num_batches_tracked.add_(1)  # kept in step with nn.BatchNorm for identical state_dicts
        return batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps, backend="triton",
        )  # fmt: skip


class TritonBatchNorm1d(_TritonBatchNorm, nn.BatchNorm1d):
    pass


class TritonBatchNorm2d(_TritonBatchNorm, nn.BatchNorm2d):
    pass


class SampleSoftmax(nn.Module):
    """Softmax / log-softmax over a *sample* dimension (0 = classes or channels)."""

    def __init__(self, dim: int, log: bool):
        super().__init__()
        self.dim = dim + 1 if dim >= 0 else dim
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(x, dim=self.dim) if self.log else F.softmax(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log={self.log}"


class SpecModel(Chain):
    """The compiled network: maps a batch of inputs to the last layer's outputs (no loss)."""

    def __init__(self, modules: dict[str, nn.Module], program: list[Step], name: str, input_shape: tuple[int, ...]):
        super().__init__(modules, program)
        self.spec_name = name
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The model knows its input: a wrong shape is named here, in the spec's terms, rather than
        # several layers in as "mat1 and mat2 shapes cannot be multiplied (16x25 and 400x120)".
        if x.shape[1:] != self.input_shape:
            raise ValueError(input_shape_message(self.spec_name, self.input_shape, tuple(x.shape)))
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"spec={self.spec_name!r}, input={self.input_shape}"


def _shape(dims: tuple[int, ...] | tuple[str | int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def input_shape_message(name: str, expected: tuple[int, ...], got: tuple[int, ...]) -> str:
    """``mnist-cnn: expected input (N, 1, 28, 28), got (1, 28, 28)``, with a hint for the usual mistakes."""
    message = f"{name}: expected input {_shape(('N', *expected))}, got {_shape(got)}"
    if got == tuple(expected):
        return message + "; a single sample needs a batch dimension: model(x.unsqueeze(0))"
    if len(got) >= 1 and math.prod(got[1:]) == math.prod(expected):
        return message + f"; the values per sample match: reshape with x.reshape(len(x), {', '.join(map(str, expected))})"
    return message
