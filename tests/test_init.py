"""Tests for nnspec.train.init: schemes per kind and per layer, Kaiming gains, pretrained weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import nnspec
from nnspec.errors import SpecError
from nnspec.train.init import initialize
from nnspec.spec.model import Spec


def spec_of(model: str, init: str, input_: str = "[8]") -> Spec:
    return nnspec.loads_spec(f"nnspec: 1\nname: t\ninput: {input_}\nmodel: {model}\ninit: {init}\n")


def raw_spec(model: list, init: dict, input_: list[int] = [8]) -> Spec:  # noqa: B006 - never mutated
    """Schema validation only (no meaning checks), as a Python caller may build a Spec."""
    return Spec.model_validate({"nnspec": 1, "name": "t", "input": input_, "model": model, "init": init})


def initialized(spec: Spec, base_dir: Path = Path("."), seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = nnspec.build(spec)
    initialize(spec, model, base_dir)
    return model


# -- Kaiming gain from the following activation --------------------------------------------------

FAN_IN = 2000


@pytest.mark.parametrize(
    ("activation", "gain"),
    [
        ("relu", math.sqrt(2.0)),
        ("{leaky_relu: 0.2}", math.sqrt(2.0 / (1 + 0.2**2))),
        ("tanh", 5.0 / 3.0),
        ("sigmoid", 1.0),
        ("identity", 1.0),  # no activation follows: linear gain
    ],
)
def test_kaiming_normal_std_follows_the_activation(activation: str, gain: float) -> None:
    spec = spec_of(f"[linear: 1000, {activation}]", "{linear: kaiming_normal}", f"[{FAN_IN}]")
    weight = initialized(spec).linear_0.weight
    assert weight.std().item() == pytest.approx(gain / math.sqrt(FAN_IN), rel=0.005)


def test_leaky_relu_slope_and_relu_give_distinguishable_stds() -> None:
    relu = initialized(spec_of("[linear: 1000, relu]", "{linear: kaiming_normal}", f"[{FAN_IN}]")).linear_0.weight.std()
    leaky = initialized(spec_of("[linear: 1000, {leaky_relu: 0.2}]", "{linear: kaiming_normal}", f"[{FAN_IN}]")).linear_0.weight.std()
    # theory: ratio sqrt(1 + 0.04) = 1.0198; sampling error on 2M weights is ~0.05%
    assert (relu / leaky).item() == pytest.approx(math.sqrt(1.04), rel=0.002)


def test_kaiming_uniform_bound_and_gain_looks_past_normalization() -> None:
    spec = spec_of("[linear: 500, batch_norm, dropout, {leaky_relu: 0.5}, linear: 3]", "{linear: kaiming_uniform}", f"[{FAN_IN}]")
    model = initialized(spec)
    bound = math.sqrt(2.0 / (1 + 0.25)) * math.sqrt(3.0 / FAN_IN)
    weight = model.linear_0.weight
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() == pytest.approx(bound, rel=0.01)
    # the head is followed by nothing: linear gain, bound sqrt(3 / 500).  Reached, not just
    # respected: PyTorch's default init (bound sqrt(1 / 500)) and zeros respect it too.
    head = model.linear_4.weight.abs().max().item()
    assert head <= math.sqrt(3.0 / 500)
    assert head == pytest.approx(math.sqrt(3.0 / 500), rel=0.01)  # 1,500 draws: max within 0.1% of the bound


def test_conv_kaiming_uses_fan_in_of_the_kernel() -> None:
    spec = spec_of("[conv2d: {out: 64, kernel: 5}, relu]", "{conv2d: kaiming_normal}", "[16, 12, 12]")
    weight = initialized(spec).conv2d_0.weight
    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / (16 * 25)), rel=0.02)


# -- schemes, biases, precedence ---------------------------------------------------------------


def test_scheme_zeroes_bias_and_default_leaves_pytorch_init() -> None:
    spec = spec_of("[linear: 16, relu, {linear: 4, name: head}]", "{linear: xavier_uniform, layers: {head: default}}")
    model = initialized(spec, seed=5)
    assert torch.all(model.linear_0.bias == 0)
    torch.manual_seed(5)
    pytorch = nnspec.build(spec)
    assert torch.equal(model.head.weight, pytorch.head.weight) and torch.equal(model.head.bias, pytorch.head.bias)
    assert not torch.equal(model.linear_0.weight, pytorch.linear_0.weight)


@pytest.mark.parametrize(
    ("scheme", "check"),
    [
        ("zeros", lambda w: bool(torch.all(w == 0))),
        ("{normal: 0.5}", lambda w: abs(w.std().item() - 0.5) < 0.02),
        ("orthogonal", lambda w: torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-5)),
        ("xavier_normal", lambda w: abs(w.std().item() - math.sqrt(2.0 / (300 + 100))) < 0.002),
        # bounded by sqrt(6 / (fan_in + fan_out)) and reaching it (30,000 draws): a bound
        # alone would also hold for zeros and for PyTorch's default (sqrt(1 / 300)).
        ("xavier_uniform", lambda w: math.sqrt(6.0 / 400) * 0.99 <= w.abs().max().item() <= math.sqrt(6.0 / 400)),
    ],
)
def test_each_scheme(scheme: str, check) -> None:
    weight = initialized(spec_of("[linear: 100]", f"{{linear: {scheme}}}", "[300]")).linear_0.weight
    assert check(weight.detach())


def test_layer_entry_wins_over_kind_and_addresses_by_name_path_or_module() -> None:
    spec = spec_of(
        "[linear: 16, relu, {linear: 16, name: mid}, relu, linear: 16, relu, linear: 4]",
        "{linear: {normal: 1.0}, layers: {mid: zeros, model.4: zeros, linear_6: {normal: 0.001}}}",
    )
    model = initialized(spec)
    assert torch.all(model.mid.weight == 0) and torch.all(model.linear_4.weight == 0)
    assert model.linear_6.weight.std().item() < 0.01
    assert model.linear_0.weight.std().item() > 0.5


def test_block_entries_apply_inside_and_the_layer_itself_beats_its_block() -> None:
    spec = spec_of(
        "[{residual: [linear: 8, relu, {linear: 8, name: inner}], name: block}, {repeat: {times: 2, body: [linear: 8]}}]",
        "{layers: {inner: zeros, block: {normal: 1.0}, model.1.body.0: zeros}}",
    )
    model = initialized(spec)
    assert model.block.body.linear_0.weight.std().item() > 0.5
    assert torch.all(model.block.body.inner.weight == 0)
    assert torch.all(model.repeat_1[0].linear_0.weight == 0) and torch.all(model.repeat_1[1].linear_0.weight == 0)


def test_unknown_layer_key_is_a_spec_error_with_a_suggestion() -> None:
    spec = raw_spec([{"linear": 8}, {"linear": 4, "name": "head"}], {"layers": {"haed": "zeros"}})
    with pytest.raises(SpecError) as err:
        initialized(spec)
    (diagnostic,) = err.value.diagnostics
    assert diagnostic.path == "init.layers.haed"
    assert "did you mean 'head'" in diagnostic.message


def test_scheme_on_a_layer_without_weights_is_a_spec_error() -> None:
    spec = raw_spec([{"linear": 8}, "relu"], {"layers": {"model.1": "zeros"}})
    with pytest.raises(SpecError, match="no weights to initialize") as err:
        initialized(spec)
    assert err.value.diagnostics[0].path == "init.layers.model.1"


# -- pretrained -------------------------------------------------------------------------------------

NET = "[linear: 8, batch_norm, relu, {linear: 4, name: head}]"


def saved_model(tmp_path: Path, model: str = NET, seed: int = 42, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    source = nnspec.build(spec_of(model, "{}"))
    if hasattr(source, "batch_norm_1"):  # give the buffers a value PyTorch's init never has
        with torch.no_grad():
            source.batch_norm_1.running_mean.fill_(0.7)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / name))
    return state


def test_pretrained_copies_every_matching_tensor_from_a_run_directory(tmp_path: Path) -> None:
    state = saved_model(tmp_path)
    model = initialized(spec_of(NET, "{linear: zeros, pretrained: {checkpoint: '.'}}"), tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # the pretrained weights win over the scheme
    assert all(p.requires_grad for p in model.parameters())


def test_pretrained_listed_layers_only_and_freeze(tmp_path: Path) -> None:
    state = saved_model(tmp_path, name="w.safetensors")
    spec = spec_of(NET, "{linear: zeros, pretrained: {checkpoint: w.safetensors, layers: [model.0, batch_norm_1], freeze: true}}")
    model = initialized(spec, tmp_path)
    assert torch.equal(model.linear_0.weight, state["linear_0.weight"])
    assert torch.equal(model.batch_norm_1.running_mean, state["batch_norm_1.running_mean"])
    assert torch.all(model.head.weight == 0)  # not listed: keeps the scheme
    assert not model.linear_0.weight.requires_grad and not model.batch_norm_1.bias.requires_grad
    assert model.head.weight.requires_grad


def test_pretrained_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    saved_model(tmp_path)
    spec = spec_of("[linear: 8, batch_norm, relu, {linear: 5, name: head}]", "{pretrained: {checkpoint: '.'}}")
    with pytest.raises(SpecError, match=r"'head.weight' has shape \(4, 8\) in the checkpoint but \(5, 8\)"):
        initialized(spec, tmp_path)


def test_pretrained_missing_tensor_names_it(tmp_path: Path) -> None:
    saved_model(tmp_path, model="[linear: 8]")
    spec = spec_of(NET, "{pretrained: {checkpoint: '.', layers: [head]}}")
    with pytest.raises(SpecError, match="no tensor 'head.weight'"):
        initialized(spec, tmp_path)


def test_pretrained_missing_file_and_unknown_layer(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no checkpoint at") as err:
        initialized(spec_of(NET, "{pretrained: {checkpoint: nowhere}}"), tmp_path)
    assert err.value.diagnostics[0].path == "init.pretrained.checkpoint"
    saved_model(tmp_path)
    spec = raw_spec([{"linear": 8}, {"linear": 4, "name": "head"}], {"pretrained": {"checkpoint": ".", "layers": ["heda"]}})
    with pytest.raises(SpecError, match="did you mean 'head'") as err:
        initialized(spec, tmp_path)
    assert err.value.diagnostics[0].path == "init.pretrained.layers.0"


def test_pretrained_file_that_is_not_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(SpecError, match="cannot read .* as safetensors") as err:
        initialized(spec_of(NET, "{pretrained: {checkpoint: '.'}}"), tmp_path)
    assert err.value.diagnostics[0].path == "init.pretrained.checkpoint"
