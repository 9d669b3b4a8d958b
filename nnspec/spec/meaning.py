"""Meaning checks: specs that type-check but do not mean what their author wants.

Each finding is an error, or a warning where a textbook setup legitimately does
the thing (the caller prints warnings and goes on). Every finding carries the
key path of what must change — the layer to remove, the loss to switch, the
``input`` to fix — so the printed ``file:line`` is where the edit goes.

The checks run after shape inference succeeded, so they may rely on it. They
never touch torch: validating a spec must stay cheap.

This module also owns the *addressing* of layers (``layer_addresses`` /
``resolve_layer``): ``init.layers`` and ``init.pretrained.layers`` name layers
by given name, module name or spec path, and both validation (here) and the
runner's initializer must agree on what a key means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from nnspec.errors import did_you_mean, dotted
from nnspec.spec.layers import (
    Conv1d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Layer,
    Linear,
    LogSoftmax,
    Repeat,
    Sigmoid,
    Softmax,
    fmt,
)
from nnspec.spec.compiling import compile_problems
from nnspec.spec.model import Spec
from nnspec.spec.runnable import runnable_findings
from nnspec.spec.shapes import ShapedLayer, infer_shapes, walk

#: Classes per dataset whose label count is fixed (npz is unknown until loaded;
#: synthetic reads ``data.synthetic.classes``).
DATASET_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10}

#: Sample shape the loader produces, per dataset with a fixed shape.
DATASET_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}

#: Layer kinds that own a ``weight`` an init scheme can set.
WEIGHT_KINDS = (Linear, Conv1d, Conv2d)

#: Schedule kinds that last to the end of training: nothing can follow them.
_OPEN_ENDED = ("step", "exponential", "plateau")

# Trailing layers that leave the meaning of the outputs alone (a flatten of a
# (C,) vector or an identity changes nothing; dropout is identity in eval).
_PASS_THROUGH = (Identity, Dropout, Flatten)


@dataclass(frozen=True)
class Finding:
    path: tuple[str | int, ...]
    message: str
    warning: bool = False


def meaning_findings(spec: Spec) -> list[Finding]:
    """Every meaning problem of ``spec`` (shapes are already known to be valid)."""
    shaped, problems = infer_shapes(spec.model, spec.input)
    if problems:  # a Spec built in Python may reach here unchecked; shapes report themselves
        return []
    findings: list[Finding] = []
    findings += _loss_findings(spec, shaped)
    findings += _data_findings(spec, shaped)
    findings += _schedule_findings(spec)
    findings += [Finding(path, message) for path, message in compile_problems(spec)]
    findings += _init_findings(spec, shaped)
    findings += runnable_findings(spec, shaped)
    return findings


# -- what the model's outputs are ---------------------------------------------


def output_layer(shaped: Sequence[ShapedLayer]) -> ShapedLayer | None:
    """The layer whose kind decides what the outputs mean (skipping pass-through layers).

    A ``repeat`` ends in its last repetition's last layer; a residual or a
    parallel is returned itself: it merges several outputs, so it is neither a
    softmax nor bounded. None only for a model of pass-through layers alone.
    """
    for node in reversed(shaped):
        if isinstance(node.layer, _PASS_THROUGH) and node.in_shape[-1] == node.out_shape[-1]:
            continue
        if isinstance(node.layer, Repeat):
            return output_layer(node.children[-1]) or node
        return node
    return None


def _width_setter(shaped: Sequence[ShapedLayer]) -> tuple[str | int, ...]:
    """The path of the last top-level layer that changed the last dimension (where the width is written)."""
    for node in reversed(shaped):
        if node.in_shape[-1] != node.out_shape[-1]:
            return node.path
    return ("input",)


def _loss_findings(spec: Spec, shaped: list[ShapedLayer]) -> list[Finding]:
    """Loss and final layer disagree: softmax applied twice, or probabilities/log-probabilities expected but absent."""
    if spec.loss is None:
        return []
    last = output_layer(shaped)
    kind = spec.loss.type
    if kind == "cross_entropy" and last is not None and isinstance(last.layer, (Softmax, LogSoftmax)):
        return [Finding(last.path, _double_softmax(last.layer))]
    if kind == "nll" and (last is None or not isinstance(last.layer, LogSoftmax)):
        what = _ends_in(last)
        return [Finding(("loss",), f"nll expects log-probabilities but the model ends in {what}; "
                                   "end the model with log_softmax, or use cross_entropy on logits", warning=True)]
    if kind == "bce" and (last is None or not isinstance(last.layer, (Sigmoid, Softmax))):
        what = _ends_in(last)
        return [Finding(("loss",), f"bce needs outputs in [0, 1] but the model ends in {what}, which is not bounded; "
                                   "use bce_with_logits (it applies the sigmoid itself, stably) or end the model with sigmoid")]
    return []


def _double_softmax(layer: Layer) -> str:
    if isinstance(layer, LogSoftmax):
        return ("cross_entropy applies log_softmax itself, so this final log_softmax is applied twice; "
                "remove this layer (or keep it and use loss: nll)")
    return ("cross_entropy applies softmax itself, so this final softmax is applied twice (squashing the "
            "gradients); remove this layer and let the model output logits")


def _ends_in(node: ShapedLayer | None) -> str:
    return "pass-through layers only" if node is None else f"'{node.layer.type}' ({dotted(node.path)})"


# -- model against data -------------------------------------------------------------


def dataset_classes(spec: Spec) -> int | None:
    """How many classes the spec's data has, when that is known before loading it."""
    if spec.data is None:
        return None
    if spec.data.dataset == "synthetic":
        return spec.data.synthetic.classes
    return DATASET_CLASSES.get(spec.data.dataset)


def _data_findings(spec: Spec, shaped: list[ShapedLayer]) -> list[Finding]:
    """The input shape and the output width must match what the dataset delivers."""
    if spec.data is None:
        return []
    findings: list[Finding] = []
    expected = DATASET_SHAPES.get(spec.data.dataset)
    if expected is not None and tuple(spec.input) != expected:
        findings.append(Finding(("input",), (
            f"{spec.data.dataset} samples have shape {fmt(expected)} but input is {fmt(tuple(spec.input))}; "
            f"write input: [{', '.join(map(str, expected))}] (and start the model with flatten for a dense network)"
        )))
    classes = dataset_classes(spec)
    out = shaped[-1].out_shape
    if classes is not None and len(out) != 1:
        findings.append(Finding(shaped[-1].path, (
            f"the model outputs {fmt(out)} per sample but {spec.data.dataset} needs one score per class, "
            f"({classes},); add flatten (or global_avg_pool) and linear: {classes}"
        )))
    elif classes is not None and out[-1] != classes:
        findings.append(Finding(_width_setter(shaped), (
            f"the model outputs {out[-1]} values per sample but {spec.data.dataset} has {classes} classes; "
            f"the last layer must have {classes} outputs"
        )))
    return findings


# -- schedule ---------------------------------------------------------------------


def _schedule_findings(spec: Spec) -> list[Finding]:
    """A phase after one that lasts to the end of training would never run."""
    if not isinstance(spec.schedule, list):
        return []
    for i, phase in enumerate(spec.schedule[:-1]):
        if phase.type in _OPEN_ENDED or (phase.type == "cosine" and phase.epochs is None):
            return [Finding(("schedule", i + 1), (
                f"this phase never runs: '{phase.type}' (schedule.{i}) lasts until the end of training; "
                "only warmup and cosine with epochs end, so put open-ended phases last"
            ))]
    return []


# -- layer addressing (init.layers, init.pretrained.layers) -----------------------


def layer_addresses(shaped: Sequence[ShapedLayer]) -> dict[str, list[ShapedLayer]]:
    """Every key a user may write for a layer -> the shaped layers it means.

    A layer answers to its spec path (``model.3``), its module name
    (``linear_3``, ``residual_4.body.conv2d_0``) and its given name. Inside a
    ``repeat`` one path or name means every repetition (they share one spec
    entry), while module names single out one repetition.
    """
    addresses: dict[str, list[ShapedLayer]] = {}
    for node in walk(shaped):
        keys = {dotted(node.path), node.module}
        if node.layer.name is not None:
            keys.add(node.layer.name)
        for key in keys:
            found = addresses.setdefault(key, [])
            if all(other is not node for other in found):
                found.append(node)
    return addresses


def resolve_layer(addresses: dict[str, list[ShapedLayer]], key: str) -> tuple[list[ShapedLayer], str]:
    """The layers ``key`` means, or ``([], message)`` saying what is wrong, with a suggestion."""
    found = addresses.get(key)
    if found:
        return found, ""
    suggestion = did_you_mean(key, addresses)
    return [], (f"no layer '{key}'{suggestion}; address a layer by its name, its module name "
                "(like linear_1) or its path (like model.1)")


def weight_layers(nodes: Sequence[ShapedLayer]) -> list[ShapedLayer]:
    """The linear/conv layers in ``nodes`` and everything nested inside them."""
    return [sub for node in nodes for sub in node.walk() if isinstance(sub.layer, WEIGHT_KINDS)]


def _init_findings(spec: Spec, shaped: list[ShapedLayer]) -> list[Finding]:
    """Every layer key under ``init`` must name a layer (a scheme also needs weights to act on)."""
    if not spec.init.layers and (spec.init.pretrained is None or not spec.init.pretrained.layers):
        return []
    addresses = layer_addresses(shaped)
    findings: list[Finding] = []
    for key in spec.init.layers:
        nodes, problem = resolve_layer(addresses, key)
        if problem:
            findings.append(Finding(("init", "layers", key), problem))
        elif not weight_layers(nodes):
            findings.append(Finding(("init", "layers", key), (
                f"'{key}' is a {nodes[0].layer.type} layer, which has no weights to initialize; "
                "init schemes apply to linear, conv1d and conv2d (or a block containing them)"
            )))
    pretrained = spec.init.pretrained
    for i, key in enumerate((pretrained.layers or []) if pretrained is not None else []):
        _, problem = resolve_layer(addresses, key)
        if problem:
            findings.append(Finding(("init", "pretrained", "layers", i), problem))
    return findings
