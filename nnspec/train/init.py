"""Weight initialization from a spec's ``init`` section: schemes per kind and per layer, then pretrained weights.

Order of precedence, lowest first: PyTorch's own init, the scheme for the
layer's kind (``init.linear``…), a ``init.layers`` entry naming an enclosing
block, one naming the layer itself, and finally ``init.pretrained`` (loaded
weights are the point of loading them). A scheme also zeroes the bias;
``default`` leaves the layer entirely as PyTorch made it, so it can exempt one
layer from a kind-wide scheme.

Kaiming's gain follows the activation *after* the layer in the spec, looking
past layers that do not change what the nonlinearity sees (normalization,
dropout, pooling, flatten, identity). GELU, SiLU, ELU and Softplus get ReLU's
gain (they are ReLU-shaped and ``calculate_gain`` knows none of them); a PReLU
uses its initial slope; a layer followed by nothing in its own list (the end of
the model or of a residual body), by another weight layer or by a softmax gets
the linear gain. Xavier and orthogonal keep gain 1, as in their papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from nnspec.errors import SpecError, dotted
from nnspec.spec import layers as L
from nnspec.spec import training as T
from nnspec.spec.meaning import WEIGHT_KINDS, layer_addresses, resolve_layer, weight_layers
from nnspec.spec.model import Spec
from nnspec.spec.shapes import ShapedLayer, infer_shapes

#: Layers that sit between a weight layer and its activation without changing which gain fits.
_TRANSPARENT = (L.BatchNorm, L.LayerNorm, L.Dropout, L.MaxPool, L.AvgPool, L.Flatten, L.Identity)

#: Activations without a ``calculate_gain`` entry that behave like ReLU for the variance argument.
_RELU_LIKE = (L.ReLU, L.GELU, L.SiLU, L.ELU, L.Softplus)

CHECKPOINT_FILE = "model.safetensors"


# -- which activation follows each weight layer ----------------------------------------------------


def following_activations(shaped: Sequence[ShapedLayer]) -> dict[str, L.Layer | None]:
    """Module name of every linear/conv layer -> the layer that acts as its nonlinearity (None if none)."""
    found: dict[str, L.Layer | None] = {}
    for i, node in enumerate(shaped):
        if isinstance(node.layer, WEIGHT_KINDS):
            found[node.module] = _next_activation(shaped[i + 1:])
        for group in node.children:
            found.update(following_activations(group))
    return found


def _next_activation(after: Sequence[ShapedLayer]) -> L.Layer | None:
    for node in after:
        if not isinstance(node.layer, _TRANSPARENT):
            return node.layer
    return None


def kaiming_nonlinearity(activation: L.Layer | None) -> tuple[str, float]:
    """``(nonlinearity, a)`` for ``torch.nn.init.kaiming_*`` given the activation after the layer."""
    if isinstance(activation, L.LeakyReLU):
        return "leaky_relu", activation.slope
    if isinstance(activation, L.PReLU):
        return "leaky_relu", activation.init
    if isinstance(activation, _RELU_LIKE):
        return "relu", 0.0
    if isinstance(activation, L.Tanh):
        return "tanh", 0.0
    if isinstance(activation, L.Sigmoid):
        return "sigmoid", 0.0
    return "linear", 0.0


# -- schemes -------------------------------------------------------------------------------------


def apply_scheme(module: nn.Module, scheme: T.Kind, activation: L.Layer | None) -> None:
    """Initialize ``module.weight`` with ``scheme`` and zero its bias (``default`` touches nothing)."""
    if scheme.type == "default":
        return
    weight: Tensor = module.weight
    with torch.no_grad():
        if scheme.type == "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        elif scheme.type == "xavier_normal":
            nn.init.xavier_normal_(weight)
        elif scheme.type in ("kaiming_uniform", "kaiming_normal"):
            nonlinearity, a = kaiming_nonlinearity(activation)
            init = nn.init.kaiming_uniform_ if scheme.type == "kaiming_uniform" else nn.init.kaiming_normal_
            init(weight, a=a, mode="fan_in", nonlinearity=nonlinearity)
        elif scheme.type == "normal":
            nn.init.normal_(weight, mean=0.0, std=scheme.std)
        elif scheme.type == "orthogonal":
            nn.init.orthogonal_(weight)
        elif scheme.type == "zeros":
            nn.init.zeros_(weight)
        else:  # unreachable: the schema lists the schemes
            raise ValueError(f"no init scheme {scheme.type!r}")
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _kind_scheme(init: T.InitSection, layer: L.Layer) -> T.Kind | None:
    return {L.Linear: init.linear, L.Conv1d: init.conv1d, L.Conv2d: init.conv2d}.get(type(layer))


def _resolve(spec: Spec, addresses: dict[str, list[ShapedLayer]], key: str, path: tuple[str | int, ...]) -> list[ShapedLayer]:
    """The layers ``key`` means, or a SpecError at ``path`` (with a did-you-mean)."""
    nodes, problem = resolve_layer(addresses, key)
    if problem:
        raise SpecError.single(problem, position=spec.position_of(path), path=dotted(path))
    return nodes


def chosen_schemes(spec: Spec, shaped: Sequence[ShapedLayer]) -> dict[str, T.Kind]:
    """Module name of each weight layer -> its scheme, after applying the precedence rules."""
    chosen: dict[str, T.Kind] = {}
    for node in weight_layers(shaped):
        scheme = _kind_scheme(spec.init, node.layer)
        if scheme is not None:
            chosen[node.module] = scheme
    addresses = layer_addresses(shaped)
    resolved = [(key, _resolve(spec, addresses, key, ("init", "layers", key))) for key in spec.init.layers]
    # Shallow targets first, so a key naming the layer itself beats one naming its block.
    for key, nodes in sorted(resolved, key=lambda item: min(len(n.path) for n in item[1])):
        targets = weight_layers(nodes)
        if not targets:
            path = ("init", "layers", key)
            raise SpecError.single(
                f"'{key}' is a {nodes[0].layer.type} layer, which has no weights to initialize",
                position=spec.position_of(path), path=dotted(path),
            )
        for node in targets:
            chosen[node.module] = spec.init.layers[key]
    return chosen


# -- pretrained weights -----------------------------------------------------------------------------


def checkpoint_file(checkpoint: str, base_dir: Path) -> Path:
    """The .safetensors file of a ``pretrained.checkpoint`` (a run directory or the file itself)."""
    path = Path(checkpoint)
    path = path if path.is_absolute() else Path(base_dir) / path
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise SpecError.single(
            f"no checkpoint at {path} (give a run directory containing {CHECKPOINT_FILE}, or a .safetensors file)",
            path="init.pretrained.checkpoint",
        )
    return path


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The tensors of a .safetensors file, on the CPU; a file that is not one is the spec's problem to report."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types (and OSError) for bad files
        raise SpecError.single(f"cannot read {path} as safetensors: {exc}", path="init.pretrained.checkpoint") from None


def _wanted_keys(spec: Spec, shaped: Sequence[ShapedLayer], model_keys: list[str], saved: dict[str, Tensor]) -> list[str]:
    """The state_dict keys to copy: those of the listed layers, or every key the checkpoint also has."""
    layers = spec.init.pretrained.layers
    if layers is None:
        keys = [key for key in model_keys if key in saved]
        if not keys:
            raise SpecError.single("no tensor of the checkpoint matches a tensor of this model", path="init.pretrained.checkpoint")
        return keys
    addresses = layer_addresses(shaped)
    prefixes = [
        node.module + "."
        for i, key in enumerate(layers)
        for node in _resolve(spec, addresses, key, ("init", "pretrained", "layers", i))
    ]
    keys = [key for key in model_keys if any(key.startswith(prefix) for prefix in prefixes)]
    missing = [key for key in keys if key not in saved]
    if missing:
        raise SpecError.single(
            f"the checkpoint has no tensor '{missing[0]}' (needed for the listed layers)", path="init.pretrained.layers"
        )
    return keys


def load_pretrained(spec: Spec, model: nn.Module, shaped: Sequence[ShapedLayer], base_dir: Path) -> list[str]:
    """Copy the chosen tensors from the checkpoint (shape-checked) and freeze them if asked; returns the keys copied."""
    pretrained = spec.init.pretrained
    assert pretrained is not None
    saved = read_checkpoint(checkpoint_file(pretrained.checkpoint, base_dir))
    state = model.state_dict()
    keys = _wanted_keys(spec, shaped, list(state), saved)
    for key in keys:
        if tuple(saved[key].shape) != tuple(state[key].shape):
            raise SpecError.single(
                f"tensor '{key}' has shape {tuple(saved[key].shape)} in the checkpoint but "
                f"{tuple(state[key].shape)} in this model (list the layers to copy in init.pretrained.layers)",
                path="init.pretrained",
            )
    with torch.no_grad():
        for key in keys:
            state[key].copy_(saved[key])  # state_dict tensors share storage with the model's
    if pretrained.freeze:
        params = dict(model.named_parameters())
        for key in keys:
            if key in params:
                params[key].requires_grad_(False)
    return keys


# -- entry point -------------------------------------------------------------------------------------


def initialize(spec: Spec, model: nn.Module, base_dir: Path) -> None:
    """Apply ``spec.init`` to a freshly built ``model`` (relative checkpoint paths are under ``base_dir``)."""
    shaped, problems = infer_shapes(spec.model, spec.input)
    if problems:
        raise SpecError.single(problems[0].message, path=dotted(problems[0].path))
    activations = following_activations(shaped)
    for module_name, scheme in chosen_schemes(spec, shaped).items():
        apply_scheme(model.get_submodule(module_name), scheme, activations.get(module_name))
    if spec.init.pretrained is not None:
        load_pretrained(spec, model, shaped, Path(base_dir))
