"""Tests for nnspec.spec.meaning: specs that validate but do not mean what their author wants."""

from __future__ import annotations

import pytest

import nnspec
from nnspec.errors import Diagnostic, SpecError

HEAD = "nnspec: 1\nname: t\n"


def error_of(text: str) -> Diagnostic:
    """The single diagnostic validating ``text`` raises."""
    with pytest.raises(SpecError) as err:
        nnspec.loads_spec(text)
    assert len(err.value.diagnostics) == 1, err.value.diagnostics
    return err.value.diagnostics[0]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# -- loss against the final layer ---------------------------------------------------------------

SOFTMAX_CE = HEAD + """input: [4]
model:
  - linear: 3
  - softmax
loss: cross_entropy
"""


def test_softmax_before_cross_entropy_points_at_the_softmax() -> None:
    diagnostic = error_of(SOFTMAX_CE)
    assert diagnostic.path == "model.1"
    assert diagnostic.position.line == line_of(SOFTMAX_CE, "softmax")
    assert "applied twice" in diagnostic.message and "remove this layer" in diagnostic.message


def test_log_softmax_before_cross_entropy_is_an_error_too() -> None:
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [linear: 3, log_softmax, dropout: 0.1]\nloss: cross_entropy\n")
    assert diagnostic.path == "model.1"  # the trailing dropout does not hide it
    assert "log_softmax is applied twice" in diagnostic.message and "nll" in diagnostic.message


def test_softmax_at_the_end_of_a_repeat_is_found() -> None:
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [{repeat: {times: 2, body: [linear: 4, softmax]}}]\nloss: cross_entropy\n")
    assert diagnostic.path == "model.0.body.1"


def test_log_softmax_with_nll_is_clean() -> None:
    spec = nnspec.loads_spec(HEAD + "input: [4]\nmodel: [linear: 3, log_softmax]\nloss: nll\n")
    assert spec.warnings == []


def test_nll_without_log_softmax_is_a_warning_on_the_loss() -> None:
    text = HEAD + "input: [4]\nmodel: [linear: 3]\nloss: nll\n"
    (warning,) = nnspec.loads_spec(text).warnings
    assert warning.path == "loss"
    assert warning.position.line == line_of(text, "loss:")
    assert warning.message.startswith("warning: ") and "expects log-probabilities" in warning.message


def test_bce_on_unbounded_outputs_suggests_logits_or_sigmoid() -> None:
    text = HEAD + "input: [4]\nmodel: [linear: 3, relu]\nloss: bce\n"
    diagnostic = error_of(text)
    assert diagnostic.path == "loss" and diagnostic.position.line == line_of(text, "loss:")
    assert "bce_with_logits" in diagnostic.message and "sigmoid" in diagnostic.message
    assert "'relu' (model.1)" in diagnostic.message


def test_bce_on_a_residual_output_is_an_error() -> None:
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [{residual: [linear: 4, sigmoid]}]\nloss: bce\n")
    assert diagnostic.path == "loss" and "'residual'" in diagnostic.message


@pytest.mark.parametrize("last", ["sigmoid", "softmax"])
def test_bce_on_probabilities_is_clean(last: str) -> None:
    assert nnspec.loads_spec(HEAD + f"input: [4]\nmodel: [linear: 3, {last}]\nloss: bce\n").warnings == []


def test_cross_entropy_on_logits_is_clean() -> None:
    assert nnspec.loads_spec(HEAD + "input: [4]\nmodel: [linear: 3]\nloss: cross_entropy\n").warnings == []


# -- model against data ----------------------------------------------------------------------------

MNIST_WIDE = HEAD + """input: [1, 28, 28]
model:
  - flatten
  - linear: 12
  - softmax: {dim: 0}
data: {dataset: mnist}
"""


def test_output_width_must_match_mnist_classes_and_points_at_the_width() -> None:
    diagnostic = error_of(MNIST_WIDE)
    assert diagnostic.path == "model.1"  # the linear that sets 12, not the softmax after it
    assert diagnostic.position.line == line_of(MNIST_WIDE, "linear: 12")
    assert "12 values per sample" in diagnostic.message and "10 classes" in diagnostic.message


def test_output_width_must_match_synthetic_classes() -> None:
    diagnostic = error_of(HEAD + "input: [5]\nmodel: [linear: 10]\ndata: {dataset: synthetic, synthetic: {classes: 3}}\n")
    assert diagnostic.path == "model.0" and "3 classes" in diagnostic.message


def test_output_must_be_one_score_vector() -> None:
    diagnostic = error_of(HEAD + "input: [1, 28, 28]\nmodel: [conv2d: {out: 10, kernel: 3}]\ndata: {dataset: fashion_mnist}\n")
    assert diagnostic.path == "model.0"
    assert "(10, 26, 26)" in diagnostic.message and "flatten" in diagnostic.message


def test_mnist_input_must_be_the_loader_shape() -> None:
    text = HEAD + "input: [784]\nmodel: [linear: 10]\ndata: {dataset: mnist}\n"
    diagnostic = error_of(text)
    assert diagnostic.path == "input" and diagnostic.position.line == line_of(text, "input:")
    assert "input: [1, 28, 28]" in diagnostic.message


def test_matching_data_is_clean_and_synthetic_takes_any_input() -> None:
    assert nnspec.loads_spec(HEAD + "input: [1, 28, 28]\nmodel: [flatten, linear: 10]\ndata: {dataset: mnist}\n").warnings == []
    assert nnspec.loads_spec(HEAD + "input: [7]\nmodel: [linear: 4]\ndata: {dataset: synthetic, synthetic: {classes: 4}}\n")
    assert nnspec.loads_spec(HEAD + "input: [7]\nmodel: [linear: 4]\ndata: {dataset: npz, path: x.npz}\n")


# -- schedule and init addressing ---------------------------------------------------------------------


def test_a_schedule_phase_after_an_open_ended_one_never_runs() -> None:
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [linear: 3]\nschedule: [{warmup: 1}, exponential, cosine]\n")
    assert diagnostic.path == "schedule.2" and "never runs" in diagnostic.message
    assert nnspec.loads_spec(HEAD + "input: [4]\nmodel: [linear: 3]\nschedule: [{warmup: 1}, {cosine: {epochs: 2}}, step]\n")


def test_unknown_init_layer_is_an_error_with_a_suggestion_at_its_key() -> None:
    text = HEAD + "input: [4]\nmodel: [{linear: 3, name: head}]\ninit:\n  layers:\n    haed: zeros\n"
    diagnostic = error_of(text)
    assert diagnostic.path == "init.layers.haed" and diagnostic.position.line == line_of(text, "haed")
    assert "did you mean 'head'" in diagnostic.message


def test_init_scheme_on_a_layer_without_weights_and_unknown_pretrained_layer() -> None:
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [linear: 3, relu]\ninit: {layers: {relu_1: zeros}}\n")
    assert diagnostic.path == "init.layers.relu_1" and "no weights" in diagnostic.message
    diagnostic = error_of(HEAD + "input: [4]\nmodel: [linear: 3]\ninit: {pretrained: {checkpoint: x, layers: [model.0, model.7]}}\n")
    assert diagnostic.path == "init.pretrained.layers.1" and "no layer 'model.7'" in diagnostic.message


def test_init_keys_accept_names_paths_and_module_names() -> None:
    text = HEAD + "input: [4]\nmodel: [{residual: [linear: 4]}, {linear: 3, name: head}]\n"
    spec = nnspec.loads_spec(text + "init: {layers: {head: zeros, model.0.body.0: zeros, residual_0.body.linear_0: zeros, residual_0: zeros}}\n")
    assert spec.warnings == []
