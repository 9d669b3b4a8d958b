"""``--set key.path=value`` overrides: applied to the document, validated like the file, errors name the override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.errors import Position, SpecError
from nnspec.spec import validate_document
from nnspec.spec.overrides import apply_overrides, parse_override
from nnspec.spec.source import parse_text

SPEC = """\
nnspec: 1
name: tiny
input: [1, 8, 8]
model:
  - flatten
  - linear: 32
  - relu
  - {type: linear, out: 10}
loss: cross_entropy
optimizer: {sgd: 0.1}
data: {dataset: synthetic}
train: {epochs: 3}
"""


def doc():
    return parse_text(SPEC, "tiny.yaml", "yaml")


def spec_with(*overrides: str):
    return validate_document(apply_overrides(doc(), list(overrides)))


def error_of(*overrides: str) -> str:
    with pytest.raises(SpecError) as info:
        spec_with(*overrides)
    return str(info.value)


# -- values land where the path says -------------------------------------------------------


def test_scalar_override_is_parsed_as_yaml():
    spec = spec_with("train.epochs=1", "train.shuffle=false", "regularization.l2=1e-4")
    assert spec.train.epochs == 1
    assert spec.train.shuffle is False
    assert spec.regularization.l2 == pytest.approx(1e-4)  # YAML 1.2: 1e-4 is a float, not a string


def test_kind_is_replaced_whole():
    spec = spec_with("optimizer=adam")
    assert spec.optimizer.type == "adam"
    assert spec.optimizer.lr == pytest.approx(1e-3)  # adam's default, not sgd's 0.1


def test_field_of_a_shorthand_kind_expands_it():
    # optimizer is written as {sgd: 0.1}; setting one field must keep the kind and its lr.
    spec = spec_with("optimizer.momentum=0.9")
    assert (spec.optimizer.type, spec.optimizer.lr, spec.optimizer.momentum) == ("sgd", 0.1, 0.9)


def test_field_of_a_bare_name_kind():
    spec = spec_with("optimizer=adam", "optimizer.lr=0.01")
    assert (spec.optimizer.type, spec.optimizer.lr) == ("adam", 0.01)


def test_layer_field_by_index():
    spec = spec_with("model.1.out=64")
    assert spec.model[1].out == 64
    assert spec.model[3].out == 10


def test_layers_inside_composites_are_addressed_by_path():
    text = SPEC.replace("  - relu\n", "  - residual:\n      body: [{linear: 32}, relu, {linear: 32}]\n")
    document = parse_text(text, "tiny.yaml", "yaml")
    spec = validate_document(apply_overrides(document, ["model.2.body.2.bias=false", "model.2.body.1=tanh"]))
    body = spec.model[2].body
    assert (body[1].type, body[2].type, body[2].bias) == ("tanh", "linear", False)


def test_missing_sections_are_created():
    spec = spec_with("regularization.early_stopping.patience=2", "data.val=16")
    assert spec.regularization.early_stopping.patience == 2
    assert spec.data.val == 16


def test_flow_mapping_value():
    spec = spec_with("schedule={step: {every: 2, gamma: 0.5}}")
    assert (spec.schedule.type, spec.schedule.every, spec.schedule.gamma) == ("step", 2, 0.5)


def test_later_override_wins():
    assert spec_with("train.epochs=1", "train.epochs=7").train.epochs == 7


def test_document_is_not_modified():
    original = doc()
    apply_overrides(original, ["train.epochs=1", "optimizer.momentum=0.5"])
    assert original.data["train"] == {"epochs": 3}
    assert original.data["optimizer"] == {"sgd": 0.1}


def test_no_overrides_returns_the_same_document():
    original = doc()
    assert apply_overrides(original, []) is original


# -- errors name the override -----------------------------------------------------------------


def test_invalid_value_points_at_the_override():
    message = error_of("train.epochs=x")
    assert message.startswith("--set train.epochs=x:1:14: train.epochs: ")
    assert "valid integer" in message


def test_unknown_field_suggests_the_right_one():
    message = error_of("train.epoch=3")
    assert message.startswith("--set train.epoch=3:1:")
    assert "did you mean 'epochs'" in message


def test_value_errors_keep_the_file_positions_for_untouched_values():
    # The override is fine; an error elsewhere still points into the file.
    with pytest.raises(SpecError) as info:
        validate_document(apply_overrides(parse_text(SPEC.replace("relu", "reluu"), "tiny.yaml", "yaml"),
                                          ["train.epochs=1"]))  # fmt: skip
    assert str(info.value).startswith("tiny.yaml:7:")


def test_semantic_error_from_an_override_is_positioned_there():
    # A shape problem caused by an overridden value is reported at the override.
    with pytest.raises(SpecError) as info:
        spec_with("input=[0, 8, 8]")
    assert "--set input=[0, 8, 8]:1:" in str(info.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs", "no '='"),
        ("=3", "empty key"),
        ("train..epochs=3", "empty component"),
        ("model.9.out=3", "out of range"),
        ("model.x.out=3", "no layer named 'x'"),  # a layer list takes names too
        ("input.x=3", "is a list"),
        ("name.first=3", "not a mapping or list"),
        ("train.epochs=[1", "invalid YAML"),
        ("loss.label_smoothing=0.1", None),  # valid: loss 'cross_entropy' expands to its canonical form
    ],
)
def test_malformed_overrides_are_one_line_errors(override: str, fragment: str | None):
    if fragment is None:
        assert spec_with(override).loss.label_smoothing == pytest.approx(0.1)
        return
    message = error_of(override)
    assert "\n" not in message
    assert message.startswith(f"--set {override}:1:")
    assert fragment in message


def test_kind_field_without_the_kind_asks_for_it_first():
    document = parse_text(SPEC.replace("optimizer: {sgd: 0.1}\n", ""), "tiny.yaml", "yaml")
    with pytest.raises(SpecError) as info:
        apply_overrides(document, ["optimizer.lr=0.1"])
    assert "--set optimizer=<optimizer name>" in str(info.value)


def test_a_single_string_is_refused():
    with pytest.raises(TypeError):
        apply_overrides(doc(), "train.epochs=1")  # type: ignore[arg-type]


def test_parse_override_columns():
    parsed = parse_override("optimizer.lr=0.5")
    assert parsed.path == ("optimizer", "lr")
    assert parsed.value_text == "0.5"
    assert parsed.position(parsed.value_col) == Position("--set optimizer.lr=0.5", 1, 14)


@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(min_value=1, max_value=100_000), seed=st.integers(min_value=0, max_value=2**62 - 1))
def test_integer_overrides_round_trip(epochs: int, seed: int):
    spec = spec_with(f"train.epochs={epochs}", f"train.seed={seed}")
    assert (spec.train.epochs, spec.train.seed) == (epochs, seed)


def test_cli_reports_a_bad_override_and_exits_2(tmp_path: Path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(SPEC)
    result = subprocess.run(
        [sys.executable, "-m", "nnspec", "train", str(spec_file), "--set", "train.epochs=x", "-q",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("--set train.epochs=x:1:14: train.epochs:")
    assert "Traceback" not in result.stderr
