"""Passes over the IR: fusion (which layers run as one kernel) and kernel selection.

Only fusions with a kernel behind them are made. The choice is per device:
``kernels="auto"`` uses the Triton kernels on CUDA and plain PyTorch on the CPU,
where the fallback is faster than anything the Triton interpreter could do.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from nnspec.compiler.ir import TORCH, Node
from nnspec.errors import SpecError, short_repr
from nnspec.spec.layers import BatchNorm, LeakyReLU, Linear, ReLU

KernelPolicy = Literal["auto", "torch", "triton"]

FUSED_LINEAR = "triton:linear_leaky_relu"
FUSED_BATCH_NORM = "triton:batch_norm"
FUSED_CROSS_ENTROPY = "triton:softmax_cross_entropy"


#: The devices a plan can be made for (no GPU is needed to plan for cuda).
PLANNABLE_DEVICES = ("cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"cuda:[0-9]+")


def check_plannable(device: object) -> str:
    """``device`` as a string, or SpecError when no plan can be made for it (tpu, meta, '')."""
    text = str(device)
    if text in ("cpu", "cuda") or _CUDA_INDEX.fullmatch(text):
        return text
    raise SpecError.single(
        f"cannot plan for device {short_repr(text)}; nnspec plans for {', '.join(PLANNABLE_DEVICES)}", path="device"
    )


def use_triton(device: str, kernels: KernelPolicy) -> bool:
    """Whether the Triton kernels run for this device and policy (raises on an impossible ask)."""
    if kernels not in ("auto", "torch", "triton"):
        raise SpecError.single(f"kernels must be auto, torch or triton, got {kernels!r}")
    if kernels == "torch":
        return False
    on_cuda = str(device).startswith("cuda")
    if kernels == "auto":
        return on_cuda
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise SpecError.single(
            "kernels='triton' on the CPU needs Triton's interpreter: set TRITON_INTERPRET=1 before starting"
        )
    return True


def fuse_linear_activation(nodes: list[Node]) -> list[Node]:
    """``linear`` followed by ``relu``/``leaky_relu`` in the same list becomes one node."""
    out: list[Node] = []
    i = 0
    while i < len(nodes):
        node = nodes[i]
        node.children = [fuse_linear_activation(group) for group in node.children]
        following = nodes[i + 1] if i + 1 < len(nodes) else None
        if (
            isinstance(node.shaped.layer, Linear)
            and following is not None
            and isinstance(following.shaped.layer, (LeakyReLU, ReLU))
        ):
            out.append(Node(node.shaped, f"linear+{following.shaped.layer.type}", absorbed=following.shaped))
            i += 2
            continue
        out.append(node)
        i += 1
    return out


def select_kernels(nodes: list[Node], triton: bool) -> None:
    """Fused nodes and batch norms run Triton when ``triton``; everything else runs PyTorch."""
    for node in nodes:
        if triton and node.absorbed is not None:
            node.kernel = FUSED_LINEAR
        elif triton and isinstance(node.shaped.layer, BatchNorm):
            node.kernel = FUSED_BATCH_NORM
        else:
            node.kernel = TORCH
        for group in node.children:
            select_kernels(group, triton)


def run_passes(nodes: list[Node], device: str, kernels: KernelPolicy) -> list[Node]:
    fused = fuse_linear_activation(nodes)
    select_kernels(fused, use_triton(device, kernels))
    return fused
