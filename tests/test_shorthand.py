"""The four shorthand forms (and the mixed one) of every kind read as the same Spec.

A kind may be written as a bare name (when it has no required field), as
``name: main-argument``, as ``name: {fields}``, canonically as
``{type: name, fields...}``, and mixed as ``{name: main-argument, other: ...}``.
Each form is checked in block-style YAML, in JSON and from Python
(``Spec.model_validate``); all must give equal Spec objects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from nnspec.errors import SpecError
from nnspec.spec import Spec, loads_spec
from nnspec.spec.layers import LAYER_TYPES

#: kind -> (input shape, fields for the written forms: main argument first where the kind has one)
LAYER_FIELDS: dict[str, tuple[list[int], dict[str, Any]]] = {
    "linear": ([6], {"out": 4, "bias": False}),
    "conv1d": ([3, 10], {"out": 4, "kernel": 3, "stride": 2}),
    "conv2d": ([3, 8, 8], {"out": 4, "kernel": [3, 2], "padding": 1}),
    "max_pool": ([2, 8, 8], {"kernel": 2, "stride": 1}),
    "avg_pool": ([2, 9], {"kernel": 3}),
    "global_avg_pool": ([3, 4, 4], {}),
    "flatten": ([3, 4, 4], {}),
    "batch_norm": ([4], {"momentum": 0.2, "eps": 0.001}),
    "layer_norm": ([4], {"eps": 0.0001}),
    "dropout": ([4], {"p": 0.25}),
    "sigmoid": ([4], {}),
    "tanh": ([4], {}),
    "relu": ([4], {}),
    "leaky_relu": ([4], {"slope": 0.2}),
    "prelu": ([4], {"init": 0.1}),
    "softplus": ([4], {"beta": 2.0, "threshold": 10.0}),
    "elu": ([4], {"alpha": 0.5}),
    "gelu": ([4], {"approximate": "tanh"}),
    "silu": ([4], {}),
    "softmax": ([3, 4], {"dim": 1}),
    "log_softmax": ([3, 4], {"dim": -1}),
    "identity": ([4], {}),
    "residual": ([4], {"body": ["relu", {"linear": 4}], "shortcut": [{"linear": 4}]}),
    "parallel": ([4], {"branches": [["relu"], [], [{"linear": 2}]], "merge": "concat"}),
    "repeat": ([4], {"times": 3, "body": [{"linear": 4}, "tanh"]}),
}


def test_the_table_covers_every_layer_kind():
    assert set(LAYER_FIELDS) == set(LAYER_TYPES)


def layer_forms(kind: str) -> dict[str, Any]:
    """Every way to write ``kind`` with the fields of the table (and one with a name)."""
    cls = LAYER_TYPES[kind]
    _, fields = LAYER_FIELDS[kind]
    required = {name for name, info in cls.model_fields.items() if info.is_required()}
    forms: dict[str, Any] = {"canonical": {"type": kind, **fields}, "fields": {kind: dict(fields)}}
    if not required and not fields:
        forms["bare"] = kind
        forms["null"] = {kind: None}
    if cls.main is not None and cls.main in fields:
        rest = {k: v for k, v in fields.items() if k != cls.main}
        if not rest:
            forms["main"] = {kind: fields[cls.main]}
        forms["mixed"] = {kind: fields[cls.main], **rest}
    return forms


def named_forms(kind: str) -> dict[str, Any]:
    """The mixed form with a name beside the kind, e.g. ``{linear: 10, name: head}``."""
    cls = LAYER_TYPES[kind]
    _, fields = LAYER_FIELDS[kind]
    forms: dict[str, Any] = {
        "canonical": {"type": kind, **fields, "name": "head"},
        "fields-with-name-inside": {kind: {**fields, "name": "head"}},
    }
    if cls.main is not None and cls.main in fields:
        forms["mixed"] = {kind: fields[cls.main], **{k: v for k, v in fields.items() if k != cls.main}, "name": "head"}
    else:
        forms["mixed"] = {kind: dict(fields) or None, "name": "head"}
    return forms


def spec_data(input_shape: list[int], layer: Any, **sections: Any) -> dict[str, Any]:
    return {"nnspec": 1, "name": "forms", "input": input_shape, "model": [layer], **sections}


def load_three_ways(data: dict[str, Any]) -> list[Spec]:
    """The same data as block-style YAML, as JSON, and from Python."""
    return [
        loads_spec(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)),
        loads_spec(json.dumps(data, indent=2), fmt="json"),
        Spec.model_validate(data),
    ]


@pytest.mark.parametrize("kind", sorted(LAYER_FIELDS))
def test_layer_forms_are_equal(kind: str):
    input_shape, _ = LAYER_FIELDS[kind]
    forms = layer_forms(kind)
    assert len(forms) >= 2
    expected = Spec.model_validate(spec_data(input_shape, forms["canonical"]))
    for form, layer in forms.items():
        for spec in load_three_ways(spec_data(input_shape, layer)):
            assert spec == expected, form
            assert spec.model[0].type == kind
    # The written fields were kept (not replaced by defaults).
    for field, value in LAYER_FIELDS[kind][1].items():
        got = getattr(expected.model[0], field)
        if field in ("body", "shortcut", "branches"):
            assert len(got) == len(value)
        elif isinstance(value, list):
            assert tuple(got) == tuple(value)
        else:
            assert got == value


@pytest.mark.parametrize("kind", sorted(LAYER_FIELDS))
def test_named_layer_forms_are_equal(kind: str):
    input_shape, _ = LAYER_FIELDS[kind]
    forms = named_forms(kind)
    expected = Spec.model_validate(spec_data(input_shape, forms["canonical"]))
    assert expected.model[0].name == "head"
    for form, layer in forms.items():
        for spec in load_three_ways(spec_data(input_shape, layer)):
            assert spec == expected, form


def test_readme_forms_in_one_file():
    text = """
nnspec: 1
name: mix
input: [1, 28, 28]
model:
  - flatten
  - linear: 200
  - leaky_relu: 0.02
  - layer_norm
  - dropout: {p: 0.2}
  - {type: linear, out: 10}
  - {linear: 10, name: head}
"""
    spec = loads_spec(text)
    assert [layer.type for layer in spec.model] == [
        "flatten", "linear", "leaky_relu", "layer_norm", "dropout", "linear", "linear",
    ]  # fmt: skip
    assert spec.model[1].out == 200 and spec.model[2].slope == 0.02 and spec.model[4].p == 0.2
    assert spec.model[5].out == 10 and spec.model[5].name is None
    assert spec.model[6].out == 10 and spec.model[6].name == "head"


def test_nested_shorthands_inside_composites():
    nested = {"residual": [{"repeat": 2, "body": [{"linear": 4}, {"parallel": [["relu"], [{"linear": 4}]], "merge": "add"}]}]}
    canonical = {
        "type": "residual",
        "body": [{
            "type": "repeat", "times": 2,
            "body": [{"type": "linear", "out": 4},
                     {"type": "parallel", "branches": [[{"type": "relu"}], [{"type": "linear", "out": 4}]], "merge": "add"}],
        }],
    }  # fmt: skip
    expected = Spec.model_validate(spec_data([4], canonical))
    for spec in load_three_ways(spec_data([4], nested)):
        assert spec == expected


# -- the training sections take the same forms ---------------------------------

SECTION_FORMS = {
    "loss": (
        [{"cross_entropy": 0.1}, {"cross_entropy": {"label_smoothing": 0.1}}, {"type": "cross_entropy", "label_smoothing": 0.1}],
        "mse",
        {"type": "mse"},
    ),
    "optimizer": (
        [{"adam": 0.001}, {"adam": {"lr": 0.001}}, {"type": "adam", "lr": 0.001}],
        "adam",
        {"type": "adam"},
    ),
}


@pytest.mark.parametrize("section", sorted(SECTION_FORMS))
def test_training_kind_forms_are_equal(section: str):
    forms, bare, bare_canonical = SECTION_FORMS[section]
    expected = Spec.model_validate(spec_data([4], "relu", **{section: forms[-1]}))
    for written in forms:
        for spec in load_three_ways(spec_data([4], "relu", **{section: written})):
            assert spec == expected, written
    bare_expected = Spec.model_validate(spec_data([4], "relu", **{section: bare_canonical}))
    for spec in load_three_ways(spec_data([4], "relu", **{section: bare})):
        assert spec == bare_expected


def test_loss_and_optimizer_values():
    spec = loads_spec("nnspec: 1\nname: t\ninput: [4]\nmodel: [relu]\nloss: {cross_entropy: 0.1}\noptimizer: {sgd: 0.5}\n")
    assert spec.loss.type == "cross_entropy" and spec.loss.label_smoothing == 0.1
    assert spec.optimizer.type == "sgd" and spec.optimizer.lr == 0.5
    spec = loads_spec("nnspec: 1\nname: t\ninput: [4]\nmodel: [relu]\nloss: mse\noptimizer: adam\n")
    assert spec.loss.type == "mse" and spec.optimizer.lr == 0.001


def test_schedule_as_a_list_of_forms():
    forms = [{"step": 3}, {"step": {"every": 3}}, {"type": "step", "every": 3}]
    listed = []
    for form in forms:  # an open-ended phase (step) must come last
        data = spec_data([4], "relu", schedule=["warmup", {"cosine": 5}, form])
        for spec in load_three_ways(data):
            warmup, cosine, step = spec.schedule
            assert warmup.type == "warmup" and warmup.epochs == 1.0
            assert cosine.type == "cosine" and cosine.epochs == 5
            assert step.type == "step" and step.every == 3
            listed.append(spec)
    assert all(spec == listed[0] for spec in listed)
    single = [loads_spec(yaml.safe_dump(spec_data([4], "relu", schedule=form))) for form in forms]
    assert single[0] == single[1] == single[2]
    assert single[0].schedule.every == 3 and not isinstance(single[0].schedule, list)
    assert single[0] != listed[0]


def test_augment_and_init_take_the_forms():
    # gaussian_noise: the one augmentation a flat (4,) input can take
    augment = ["gaussian_noise", {"gaussian_noise": 0.3}, {"gaussian_noise": {"std": 0.3}}, {"type": "gaussian_noise", "std": 0.3}]
    init = {"linear": {"normal": 0.02}, "conv2d": "xavier_uniform", "layers": {"head": {"type": "normal", "std": 0.02}}}
    data = spec_data([4], {"linear": 10, "name": "head"}, data={"dataset": "synthetic", "augment": augment}, init=init)
    for spec in load_three_ways(data):
        first, *rest = spec.data.augment
        assert first.type == "gaussian_noise" and first.std == 0.1
        assert rest[0] == rest[1] == rest[2] and rest[0].std == 0.3
        assert spec.init.linear == spec.init.layers["head"]
        assert spec.init.linear.std == 0.02 and spec.init.conv2d.type == "xavier_uniform"


# -- forms that cannot be read ---------------------------------------------------


@pytest.mark.parametrize(
    "layer, path, phrase",
    [
        ("relu: 3", "model.0.relu", "'relu' takes no main argument"),
        ("{relu: null, tanh: null}", "model.0.tanh", "names two layers (relu, tanh)"),
        ("{linear: {out: 3}, out: 4}", "model.0.out", "'out' is given twice"),
        ("{}", "model.0", "empty mapping: name a layer"),
        ("[relu]", "model.0", "expected a layer name or mapping, got list"),
        ("conv2d: 4", "model.0.kernel", "missing required field 'kernel'"),
        ("repeat: 3", "model.0.body", "missing required field 'body'"),
        ("{type: lineer, out: 3}", "model.0.type", "unknown layer 'lineer' (did you mean 'linear'?)"),
    ],
)
def test_unreadable_forms_are_located(layer: str, path: str, phrase: str):
    with pytest.raises(SpecError) as caught:
        loads_spec(f"nnspec: 1\nname: t\ninput: [4]\nmodel:\n  - {layer}\n")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.position.line == 5
    assert diagnostic.path == path
    assert phrase in diagnostic.message


def test_python_side_errors_are_validation_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown layer 'linaer'"):
        Spec.model_validate(spec_data([4], {"linaer": 3}))
    with pytest.raises(ValidationError, match="takes no main argument"):
        Spec.model_validate(spec_data([4], {"relu": 3}))
