"""Tests for nnspec.train.regularize: penalties, clipping, early stopping, input noise, FGSM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnspec
from nnspec.train.regularize import (
    EarlyStopping,
    clip_gradients,
    fgsm_example,
    fgsm_loss,
    noisy_inputs,
    penalty,
)
from nnspec.spec.model import Spec

MODEL = """
nnspec: 1
name: t
input: [6]
model:
  - linear: 8
  - batch_norm
  - prelu
  - linear: 8
  - layer_norm
  - linear: 3
"""


def spec_with(regularization: str = "{}") -> Spec:
    return nnspec.loads_spec(MODEL + f"regularization: {regularization}\n")


def build(spec: Spec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nnspec.build(spec)


WEIGHTS = ("linear_0.weight", "linear_3.weight", "linear_5.weight")


# -- penalty ---------------------------------------------------------------------------------


def test_penalty_value_counts_weights_only() -> None:
    spec = spec_with("{l2: 0.1, l1: 0.01}")
    model = build(spec)
    params = dict(model.named_parameters())
    expected = sum(0.1 * params[k].pow(2).sum() + 0.01 * params[k].abs().sum() for k in WEIGHTS)
    torch.testing.assert_close(penalty(spec, model), expected)
    with torch.no_grad():
        params["linear_0.bias"].add_(5.0)
        params["layer_norm_4.weight"].add_(5.0)
    torch.testing.assert_close(penalty(spec, model), expected)  # biases and norm params do not count


def test_zero_coefficients_give_a_zero_scalar_without_a_graph() -> None:
    result = penalty(spec_with(), build(spec_with()))
    assert result.shape == () and result.item() == 0.0 and not result.requires_grad


def test_frozen_weights_are_not_penalized() -> None:
    spec = spec_with("{l2: 1.0}")
    model = build(spec)
    before = penalty(spec, model).item()
    model.linear_5.weight.requires_grad_(False)
    assert penalty(spec, model).item() == pytest.approx(before - model.linear_5.weight.pow(2).sum().item())


def test_l2_shrinks_weights_and_leaves_other_parameters_bit_identical() -> None:
    """With zero data gradient, an SGD step on the penalty alone is w -= lr * 2 * l2 * w."""
    spec = nnspec.loads_spec(MODEL + "optimizer: {sgd: 0.1}\nregularization: {l2: 0.5}\n")
    model = build(spec)
    from nnspec.train.optim import build_optimizer

    opt = build_optimizer(spec, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    data_loss = (model(torch.randn(4, 6)) * 0.0).sum()  # a real graph with zero gradient
    (data_loss + penalty(spec, model)).backward()
    opt.step()
    for name, param in model.named_parameters():
        if name in WEIGHTS:
            torch.testing.assert_close(param.detach(), before[name] * (1 - 0.1 * 2 * 0.5))
            assert param.detach().norm() < before[name].norm()
        else:
            assert torch.equal(param.detach(), before[name]), name


# -- clipping -----------------------------------------------------------------------------------


def set_grads(model: nn.Module, value: float) -> float:
    """Fill every gradient with ``value``; returns the total norm."""
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return value * sum(p.numel() for p in model.parameters()) ** 0.5


def total_norm(model: nn.Module) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_clip_norm_returns_the_norm_before_clipping() -> None:
    spec = spec_with("{clip_grad_norm: 1.0}")
    model = build(spec)
    raw = set_grads(model, 3.0)
    assert clip_gradients(spec, model) == pytest.approx(raw, rel=1e-5)
    assert total_norm(model) == pytest.approx(1.0, rel=1e-4)


def test_clip_value_bounds_every_element_and_returns_none() -> None:
    spec = spec_with("{clip_grad_value: 0.5}")
    model = build(spec)
    set_grads(model, -3.0)
    assert clip_gradients(spec, model) is None
    assert all(torch.all(p.grad == -0.5) for p in model.parameters())


def test_both_clips_hold_together() -> None:
    """Norm clipping first, then value clipping - and each one bites: the gradients below
    are what neither clip alone, nor the two in the other order, would leave."""
    spec = spec_with("{clip_grad_norm: 2.0, clip_grad_value: 0.05}")
    model = build(spec)
    generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 0.2
    raw = [p.grad.clone() for p in model.parameters()]
    raw_norm = torch.cat([g.flatten() for g in raw]).norm().item()

    def clipped(order: str) -> list[torch.Tensor]:
        params = [nn.Parameter(torch.zeros_like(g)) for g in raw]
        for param, g in zip(params, raw):
            param.grad = g.clone()
        for step in order:
            if step == "n":
                torch.nn.utils.clip_grad_norm_(params, 2.0)
            else:
                torch.nn.utils.clip_grad_value_(params, 0.05)
        return [param.grad for param in params]

    expected = clipped("nv")
    for other in ("n", "v", "vn"):  # every alternative leaves different gradients
        assert any(not torch.allclose(a, b) for a, b in zip(clipped(other), expected)), other
    assert clip_gradients(spec, model) == pytest.approx(raw_norm, rel=1e-5)
    for param, want in zip(model.parameters(), expected):
        torch.testing.assert_close(param.grad, want)
    assert total_norm(model) <= 2.0 + 1e-5
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.05 + 1e-9


def test_no_clipping_leaves_gradients() -> None:
    spec = spec_with()
    model = build(spec)
    set_grads(model, 7.0)
    assert clip_gradients(spec, model) is None
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())


# -- early stopping ---------------------------------------------------------------------------


def feed(stopper: EarlyStopping, values: list[float], model: nn.Module, key: str = "val_loss") -> int | None:
    """Epoch at which ``stopper`` says stop (None if never); the model's weights encode the epoch."""
    for epoch, value in enumerate(values):
        with torch.no_grad():
            model.linear_0.weight.fill_(float(epoch))
        if stopper.update(epoch, {key: value}, model):
            return epoch
    return None


def test_stops_after_patience_epochs_without_improvement() -> None:
    model = build(spec_with())
    assert feed(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.96, 0.5], model) == 3
    assert feed(EarlyStopping(patience=3), [1.0, 0.9, 0.95, 0.96, 0.5, 0.6], model) is None


def test_min_delta_ignores_tiny_improvements() -> None:
    model = build(spec_with())
    assert feed(EarlyStopping(patience=2, min_delta=0.05), [1.0, 0.98, 0.97], model) == 2
    assert feed(EarlyStopping(patience=2, min_delta=0.0), [1.0, 0.98, 0.97], model) is None


def test_accuracy_is_maximized_and_nan_never_improves() -> None:
    model = build(spec_with())
    stopper = EarlyStopping(monitor="val_accuracy", patience=1)
    assert feed(stopper, [0.5, 0.7, float("nan")], model, "val_accuracy") == 2
    assert stopper.best == 0.7 and stopper.best_epoch == 1


def test_restore_brings_back_the_best_weights_from_a_cpu_copy() -> None:
    model = build(spec_with())
    stopper = EarlyStopping(patience=5)
    feed(stopper, [1.0, 0.5, 0.7, 0.8], model)  # best at epoch 1; model now holds epoch 3
    assert stopper.best_state["linear_0.weight"].device.type == "cpu"
    assert torch.all(model.linear_0.weight == 3.0)
    assert stopper.restore(model)
    assert torch.all(model.linear_0.weight == 1.0)


def test_no_restore_keeps_no_copy() -> None:
    model = build(spec_with())
    stopper = EarlyStopping(restore_best=False)
    feed(stopper, [1.0, 0.5], model)
    assert stopper.best_state is None and not stopper.restore(model)
    assert torch.all(model.linear_0.weight == 1.0)


def test_state_dict_resumes_the_count() -> None:
    model = build(spec_with())
    first = EarlyStopping(patience=3)
    feed(first, [1.0, 0.5, 0.6, 0.7], model)  # two bad epochs so far
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(first.state_dict())
    assert resumed.update(4, {"val_loss": 0.8}, model)  # the third bad epoch stops
    assert resumed.restore(model) and torch.all(model.linear_0.weight == 1.0)


def test_from_spec_and_missing_metric() -> None:
    spec = spec_with("{early_stopping: {monitor: val_accuracy, patience: 7, min_delta: 0.01, restore_best: false}}")
    stopper = EarlyStopping.from_spec(spec)
    assert (stopper.monitor, stopper.patience, stopper.min_delta, stopper.restore_best) == ("val_accuracy", 7, 0.01, False)
    assert EarlyStopping.from_spec(spec_with()) is None
    with pytest.raises(ValueError, match="monitors 'val_accuracy'"):
        stopper.update(0, {"val_loss": 1.0}, build(spec))


# -- input noise ----------------------------------------------------------------------------------


def test_noise_has_the_asked_std_and_is_reproducible() -> None:
    x = torch.ones(200_000)
    noisy = noisy_inputs(x, 0.3, torch.Generator().manual_seed(1))
    assert (noisy - x).std().item() == pytest.approx(0.3, rel=0.01)
    assert (noisy - x).mean().item() == pytest.approx(0.0, abs=0.005)
    assert torch.equal(noisy, noisy_inputs(x, 0.3, torch.Generator().manual_seed(1)))
    assert not torch.equal(noisy, noisy_inputs(x, 0.3, torch.Generator().manual_seed(2)))


def test_noise_uses_only_its_generator_and_zero_std_is_identity() -> None:
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    noisy_inputs(torch.zeros(10), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG did not move
    x = torch.randn(5)
    assert noisy_inputs(x, 0.0, None) is x


# -- FGSM -------------------------------------------------------------------------------------


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)


def test_fgsm_example_increases_the_loss_within_epsilon() -> None:
    model = classifier().eval()
    x, y = batch()
    adv = fgsm_example(model, F.cross_entropy, x, y, 0.1)
    assert (adv - x).abs().max().item() == pytest.approx(0.1)
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.01


def test_crafting_touches_no_parameter_grad_and_no_buffer() -> None:
    model = classifier().train()
    x, y = batch()
    sentinel = {name: torch.full_like(p, 0.25) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = sentinel[name].clone()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    fgsm_example(model, F.cross_entropy, x, y, 0.05)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[name]), name
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name


def test_fgsm_loss_mixes_clean_and_adversarial_and_trains_the_parameters() -> None:
    model = classifier().eval()
    x, y = batch()
    clean = F.cross_entropy(model(x), y)
    adversarial = F.cross_entropy(model(fgsm_example(model, F.cross_entropy, x, y, 0.2)), y)
    mixed = fgsm_loss(model, F.cross_entropy, x, y, 0.2, 0.25, clean)
    torch.testing.assert_close(mixed, 0.75 * clean + 0.25 * adversarial)
    mixed.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    only_clean = fgsm_loss(model, F.cross_entropy, x, y, 0.2, 0.0, clean)
    torch.testing.assert_close(only_clean, clean)
