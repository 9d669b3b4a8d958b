"""Lowering: IR nodes -> PyTorch modules."""

from __future__ import annotations

from torch import nn

from nnspec.compiler import modules as m
from nnspec.compiler.ir import TORCH, Node
from nnspec.spec import layers as L


def _layer_module(layer: L.Layer, in_shape: tuple[int, ...], kernel: str) -> nn.Module:
    """The module for one non-composite layer given its input sample shape."""
    spatial = len(in_shape) - 1
    if isinstance(layer, L.Linear):
        return nn.Linear(in_shape[-1], layer.out, bias=layer.bias)
    if isinstance(layer, (L.Conv1d, L.Conv2d)):
        conv = nn.Conv1d if isinstance(layer, L.Conv1d) else nn.Conv2d
        return conv(in_shape[0], layer.out, layer.kernel, stride=layer.stride, padding=layer.padding, bias=layer.bias)
    if isinstance(layer, L.MaxPool):
        return (nn.MaxPool1d if spatial == 1 else nn.MaxPool2d)(layer.kernel, stride=layer.stride or layer.kernel)
    if isinstance(layer, L.AvgPool):
        return (nn.AvgPool1d if spatial == 1 else nn.AvgPool2d)(layer.kernel, stride=layer.stride or layer.kernel)
    if isinstance(layer, L.BatchNorm):
        triton = kernel != TORCH
        if spatial == 2:
            cls = m.TritonBatchNorm2d if triton else nn.BatchNorm2d
        else:
            cls = m.TritonBatchNorm1d if triton else nn.BatchNorm1d
        return cls(in_shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, L.LayerNorm):
        return nn.LayerNorm(in_shape[-1], eps=layer.eps)
    if isinstance(layer, L.PReLU):
        return nn.PReLU(num_parameters=in_shape[0], init=layer.init)
    if isinstance(layer, (L.Softmax, L.LogSoftmax)):
        return m.SampleSoftmax(layer.dim, log=isinstance(layer, L.LogSoftmax))
    simple = {
        L.GlobalAvgPool: lambda: m.GlobalAvgPool(),
        L.Flatten: lambda: nn.Flatten(),
        L.Dropout: lambda: nn.Dropout(layer.p),
        L.Sigmoid: nn.Sigmoid,
        L.Tanh: nn.Tanh,
        L.ReLU: nn.ReLU,
        L.LeakyReLU: lambda: nn.LeakyReLU(layer.slope),
        L.Softplus: lambda: nn.Softplus(beta=layer.beta, threshold=layer.threshold),
        L.ELU: lambda: nn.ELU(alpha=layer.alpha),
        L.GELU: lambda: nn.GELU(approximate=layer.approximate),
        L.SiLU: nn.SiLU,
        L.Identity: nn.Identity,
    }
    return simple[type(layer)]()


def _composite_module(node: Node) -> nn.Module:
    layer = node.shaped.layer
    chains = [lower_chain(group) for group in node.children]
    if isinstance(layer, L.Residual):
        return m.Residual(chains[0], chains[1])
    if isinstance(layer, L.Parallel):
        return m.Parallel(chains, layer.merge)
    assert isinstance(layer, L.Repeat)
    return nn.Sequential(*chains)  # children "0", "1", ... — one chain per repetition


def lower_modules(nodes: list[Node]) -> tuple[dict[str, nn.Module], list[m.Step]]:
    modules: dict[str, nn.Module] = {}
    program: list[m.Step] = []
    for node in nodes:
        name = node.shaped.local_name
        if node.children or isinstance(node.shaped.layer, (L.Residual, L.Parallel, L.Repeat)):
            modules[name] = _composite_module(node)
        else:
            modules[name] = _layer_module(node.shaped.layer, node.shaped.in_shape, node.kernel)
        if node.absorbed is not None:
            act_name = node.absorbed.local_name
            act = node.absorbed.layer
            modules[act_name] = _layer_module(act, node.absorbed.in_shape, TORCH)
            if node.kernel == TORCH:
                program += [m.Step(name), m.Step(act_name)]
            else:
                slope = act.slope if isinstance(act, L.LeakyReLU) else 0.0
                program.append(m.Step(name, fused_with=act_name, slope=slope))
        else:
            program.append(m.Step(name))
    return modules, program


def lower_chain(nodes: list[Node]) -> m.Chain:
    return m.Chain(*lower_modules(nodes))
