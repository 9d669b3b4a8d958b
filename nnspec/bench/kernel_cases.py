"""What the kernel suite measures: each op's inputs, its minimum FLOPs and bytes, its float64
reference and how our kernel and PyTorch eager compute it (:class:`Op`), and the shapes of each
suite (:data:`SUITES`).  How the rows are checked and timed is :mod:`nnspec.bench.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

SLOPE = 0.01
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


# --------------------------------------------------------------------------- the ops


@dataclass(frozen=True)
class Case:
    kernel: str
    shape: tuple[int, ...]
    dtype: str
    tag: str = ""


class Op:
    """One kernel: its inputs, minimum FLOPs / bytes, the eager peer and our entry point."""

    name = ""
    dims: tuple[str, ...] = ()
    grad_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    roof = "memory"  # "matmul": compute and memory terms count; "memory": bytes only

    def label(self, shape: tuple[int, ...]) -> str:
        return "x".join(map(str, shape))

    def size(self, shape: tuple[int, ...], elt: int) -> int:  # bytes of the main operand, for plots
        return math.prod(shape) * elt

    def make(self, shape, dtype, device, gen) -> dict:
        raise NotImplementedError

    def flops(self, shape, direction) -> int:
        raise NotImplementedError

    def bytes(self, shape, elt, direction) -> int:
        raise NotImplementedError

    def eager(self, a: dict) -> torch.Tensor:
        raise NotImplementedError

    def ours(self, K, backend: str) -> Callable[[dict], torch.Tensor]:
        raise NotImplementedError

    def backward_reference(self, inputs64: dict, refs: list[torch.Tensor], outs: list[torch.Tensor]):
        """Float64 reference for a fwd+bwd row given the implementation's outputs ``outs``, when
        the op has a kink whose side rounding may legitimately flip; None = use ``refs``."""
        return None

    def fp64_cost(self, shape, direction) -> tuple[float, float]:
        """(FLOPs, bytes) of the float64 reference, for deciding whether it fits."""
        return float(self.flops(shape, direction)), float(self.bytes(shape, 8, direction)) * 2


def _randn(shape, dtype, device, gen, scale=1.0, shift=0.0):
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    if scale != 1.0:
        t.mul_(scale)
    if shift:
        t.add_(shift)
    return t.to(dtype)


class LinearLeakyReLU(Op):
    """``leaky_relu(x @ W.T + b, 0.01)``; shape (M, K, N)."""

    name = "linear_leaky_relu"
    dims = ("M", "K", "N")
    grad_names = ("x", "weight", "bias")
    roof = "matmul"

    def label(self, shape):
        m, k, n = shape
        return f"{m}x{k}->{n}"

    def size(self, shape, elt):
        m, k, n = shape
        return 2 * m * n * k  # plotted against FLOPs

    def make(self, shape, dtype, device, gen):
        m, k, n = shape
        return {
            "x": _randn((m, k), dtype, device, gen),
            "weight": _randn((n, k), dtype, device, gen, scale=1 / math.sqrt(k)),
            "bias": _randn((n,), dtype, device, gen, scale=0.1),
            "grad_out": _randn((m, n), dtype, device, gen),
        }

    def flops(self, shape, direction):
        m, k, n = shape
        fwd = 2 * m * n * k + 2 * m * n  # matmul + bias add + activation
        if direction == "fwd":
            return fwd
        return fwd + 4 * m * n * k + 2 * m * n  # dX, dW, activation derivative, db

    def bytes(self, shape, elt, direction):
        m, k, n = shape
        fwd = elt * (m * k + n * k + n + m * n)  # read x, W, b; write y
        if direction == "fwd":
            return fwd
        # The pre-activation sign is one byte per element (what nnspec's kernel writes; a bit
        # mask would save 7/8 of it but costs a cross-lane pack): written by the forward, read back.
        sign = 2 * m * n
        bwd = elt * (m * n + m * k + n * k) + elt * (m * k + n * k + n)  # read dy, x, W; write dx, dW, db
        return fwd + sign + bwd

    def eager(self, a):
        return F.leaky_relu(F.linear(a["x"], a["weight"], a["bias"]), SLOPE)

    def backward_reference(self, inputs64, refs, outs):
        # LeakyReLU has a kink at 0: a pre-activation within rounding of 0 lands on either side
        # depending on summation order, and its gradient then differs by (1 - slope) * dy,
        # which a matmul spreads over a whole row of dX / dW.  So the backward is checked with
        # the implementation's *own* activation pattern (the sign of its output; slope > 0) in
        # float64; how many elements flipped relative to float64 is reported.  A backward that
        # uses a pattern other than its own forward's still fails.
        mask = outs[0].to(device=refs[0].device) > 0
        flips = int((mask != (refs[0] > 0)).sum())
        scale = torch.full(mask.shape, SLOPE, dtype=torch.float64, device=mask.device).masked_fill_(mask, 1.0)
        g = inputs64["grad_out"] * scale
        fixed = [refs[0], g @ inputs64["weight"], g.t() @ inputs64["x"], g.sum(0)]
        return fixed, {"activation_flips": flips, "elements": mask.numel()}

    def ours(self, K, backend):
        fn = K.linear_leaky_relu
        return lambda a: fn(a["x"], a["weight"], a["bias"], SLOPE, backend=backend)


class SoftmaxCrossEntropy(Op):
    """``cross_entropy(logits, target)``, mean over rows; shape (N, C)."""

    name = "softmax_cross_entropy"
    dims = ("N", "C")
    grad_names = ("logits",)

    def make(self, shape, dtype, device, gen):
        n, c = shape
        return {
            "logits": _randn((n, c), dtype, device, gen, scale=2.0),
            "target": torch.randint(0, c, (n,), generator=gen, device=device),
        }

    def flops(self, shape, direction):
        n, c = shape
        fwd = 4 * n * c  # max, subtract, exp, sum (nominal: the op is memory-bound)
        return fwd if direction == "fwd" else fwd + 3 * n * c  # exp(x - lse), - onehot, * scale

    def bytes(self, shape, elt, direction):
        n, c = shape
        base = n * c * elt + 8 * n + elt  # read logits once, int64 targets; write the loss
        return base if direction == "fwd" else base + n * c * elt  # + write dlogits (a fused op reads once)

    def eager(self, a):
        return F.cross_entropy(a["logits"], a["target"])

    def ours(self, K, backend):
        fn = K.softmax_cross_entropy
        return lambda a: fn(a["logits"], a["target"], backend=backend)


class BatchNorm(Op):
    """Training-mode ``batch_norm`` (batch statistics, running stats updated); shape (N, C, H, W)."""

    name = "batch_norm"
    dims = ("N", "C", "H", "W")
    grad_names = ("x", "weight", "bias")
    state_names = ("running_mean", "running_var")

    def make(self, shape, dtype, device, gen):
        c = shape[1]
        # Parameters and running statistics stay float32 (as nn.BatchNorm2d keeps them under autocast).
        return {
            "x": _randn(shape, dtype, device, gen, scale=1.5, shift=0.5),
            "running_mean": _randn((c,), torch.float32, device, gen, scale=0.1),
            "running_var": torch.rand((c,), generator=gen, device=device).add_(0.5),
            "weight": _randn((c,), torch.float32, device, gen, scale=0.1, shift=1.0),
            "bias": _randn((c,), torch.float32, device, gen, scale=0.1),
            "grad_out": _randn(shape, dtype, device, gen),
        }

    def flops(self, shape, direction):
        s = math.prod(shape)
        fwd = 5 * s  # sum, sum of squares (3) + normalise with folded scale/shift (2)
        return fwd if direction == "fwd" else fwd + 9 * s

    def bytes(self, shape, elt, direction):
        s, c = math.prod(shape), shape[1]
        params = 4 * c * 4 + 4 * c * 4  # read w, b, running mean/var; write running mean/var + saved stats
        fwd = 2 * s * elt + params  # read x once, write y
        return fwd if direction == "fwd" else fwd + 3 * s * elt + 3 * c * 4  # read dy, x; write dx; dw, db

    def eager(self, a):
        return F.batch_norm(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                            training=True, momentum=BN_MOMENTUM, eps=BN_EPS)  # fmt: skip

    def ours(self, K, backend):
        fn = K.batch_norm
        return lambda a: fn(a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                            training=True, momentum=BN_MOMENTUM, eps=BN_EPS, backend=backend)  # fmt: skip


OPS: dict[str, Op] = {op.name: op for op in (LinearLeakyReLU(), SoftmaxCrossEntropy(), BatchNorm())}


# --------------------------------------------------------------------------- shape suites

MNIST = "mnist-mlp"  # specs/mlp.yaml, specs/deep_mlp.yaml at their batch sizes
CNN = "cnn-residual"  # specs/cnn_residual.yaml at batch 128


def _cases(shapes: dict[str, list[tuple[tuple[int, ...], str]]], dtypes: list[str]) -> list[Case]:
    return [Case(k, s, d, tag) for k, lst in shapes.items() for s, tag in lst for d in dtypes]


SUITES: dict[str, dict[str, list[tuple[tuple[int, ...], str]]]] = {
    # Test-sized: one small shape per kernel (seconds on any CPU).
    "tiny": {
        "linear_leaky_relu": [((64, 96, 40), "")],
        "softmax_cross_entropy": [((64, 10), "")],
        "batch_norm": [((8, 4, 6, 6), "")],
    },
    # CPU-sized: our specs' shapes plus one medium shape each.
    "quick": {
        "linear_leaky_relu": [((128, 784, 200), MNIST), ((1024, 784, 200), MNIST), ((1024, 1024, 1024), "")],
        "softmax_cross_entropy": [((128, 10), MNIST), ((1024, 10), MNIST), ((256, 32768), "vocab")],
        "batch_norm": [((128, 32, 28, 28), CNN), ((128, 64, 14, 14), CNN)],
    },
    # A handful of shapes: a few minutes on one GPU.
    "default": {
        "linear_leaky_relu": [((128, 784, 200), MNIST), ((1024, 784, 200), MNIST), ((4096, 4096, 4096), "large"),
                              ((8192, 8192, 8192), "large")],  # fmt: skip
        "softmax_cross_entropy": [((128, 10), MNIST), ((1024, 10), MNIST), ((4096, 32768), "vocab"),
                                  ((4096, 131072), "vocab")],  # fmt: skip
        "batch_norm": [((128, 32, 28, 28), CNN), ((128, 64, 14, 14), CNN), ((64, 256, 56, 56), "large")],
    },
    # tools/gpu-check.sh: the shapes the project's GPU targets are stated at - cross-entropy at
    # vocabulary sizes, Linear+LeakyReLU at the MNIST shapes and 4096^3, BatchNorm at the CNN
    # specs' shapes and a ResNet stage - in one short run.
    "gpu-check": {
        "linear_leaky_relu": [((128, 784, 200), MNIST), ((1024, 784, 200), MNIST), ((4096, 4096, 4096), "large")],
        "softmax_cross_entropy": [((4096, c), "vocab") for c in (32768, 131072, 262144)],
        "batch_norm": [((128, 32, 28, 28), CNN), ((128, 64, 14, 14), CNN), ((64, 256, 56, 56), "large")],
    },
    # The sweep behind the plots.
    "full": {
        "linear_leaky_relu": [((128, 784, 200), MNIST), ((1024, 784, 200), MNIST)]
        + [((s, s, s), "square") for s in (512, 1024, 2048, 4096, 8192)]
        + [((8192, 4096, 14336), "large")],
        "softmax_cross_entropy": [((128, 10), MNIST), ((1024, 10), MNIST)]
        + [((4096, c), "vocab") for c in (1024, 4096, 16384, 32768, 65536, 131072)],
        "batch_norm": [((128, 32, 28, 28), CNN), ((128, 64, 14, 14), CNN)]
        + [((n, c, 56, 56), "large") for n, c in ((32, 64), (64, 128), (64, 256), (128, 256))],
    },
}


def default_dtypes(device: torch.device) -> list[str]:
    return ["float32", "bfloat16"] if device.type == "cuda" else ["float32"]


def suite_cases(suite: str, device: torch.device, dtypes: list[str] | None, only: list[str] | None) -> list[Case]:
    shapes = {k: v for k, v in SUITES[suite].items() if not only or k in only}
    return _cases(shapes, dtypes or default_dtypes(device))
