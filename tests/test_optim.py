"""Tests for nnspec.train.optim: parameter split, optimizers with decoupled decay, lr schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nnspec
from nnspec.train.optim import (
    DECAY_KEY,
    build_optimizer,
    build_schedule,
    penalized_names,
    split_parameters,
)
from nnspec.spec.model import Spec

CONV_SPEC = """
nnspec: 1
name: t
input: [2, 8, 8]
model:
  - conv2d: {out: 4, kernel: 3}
  - batch_norm
  - prelu
  - flatten
  - linear: 16
  - layer_norm
  - {linear: 3, name: head}
"""


def spec_of(extra: str, model: str = "[linear: 3]", input_: str = "[4]") -> Spec:
    return nnspec.loads_spec(f"nnspec: 1\nname: t\ninput: {input_}\nmodel: {model}\n{extra}")


def raw_spec(**sections: object) -> Spec:
    """A Spec validated by pydantic only (no meaning checks), as a Python caller could build one."""
    return Spec.model_validate({"nnspec": 1, "name": "t", "input": [4], "model": [{"linear": 3}], **sections})


def ids(params: list[nn.Parameter]) -> set[int]:
    return {id(p) for p in params}


# -- split_parameters ------------------------------------------------------------------------


def test_split_decays_only_linear_and_conv_weights() -> None:
    model = nnspec.build(nnspec.loads_spec(CONV_SPEC))
    decayed, others = split_parameters(model)
    named = dict(model.named_parameters())
    assert ids(decayed) == {id(named[k]) for k in ("conv2d_0.weight", "linear_4.weight", "head.weight")}
    expected_others = {"conv2d_0.bias", "batch_norm_1.weight", "batch_norm_1.bias", "prelu_2.weight",
                       "linear_4.bias", "layer_norm_5.weight", "layer_norm_5.bias", "head.bias"}
    assert ids(others) == {id(named[k]) for k in expected_others}


def test_split_covers_conv1d() -> None:
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3))
    decayed, others = split_parameters(model)
    assert ids(decayed) == {id(model[0].weight)}
    assert ids(others) == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_penalized_names_are_state_dict_names() -> None:
    model = nnspec.build(nnspec.loads_spec(CONV_SPEC))
    assert penalized_names(model) == ["conv2d_0.weight", "linear_4.weight", "head.weight"]


def test_frozen_parameters_are_in_neither_list_nor_the_optimizer() -> None:
    spec = nnspec.loads_spec(CONV_SPEC + "optimizer: adam\n")
    model = nnspec.build(spec)
    model.head.weight.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    decayed, others = split_parameters(model)
    assert id(model.head.weight) not in ids(decayed) | ids(others)
    optimizer = build_optimizer(spec, model)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.head.weight) not in in_optimizer and id(model.head.bias) not in in_optimizer
    assert id(model.linear_4.weight) in in_optimizer


# -- build_optimizer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "cls", "expected"),
    [
        ("{sgd: {lr: 0.05, momentum: 0.9, nesterov: true}}", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
        ("{adagrad: {lr: 0.02, eps: 1.0e-9}}", torch.optim.Adagrad, {"lr": 0.02, "eps": 1e-9}),
        ("{adadelta: {rho: 0.8}}", torch.optim.Adadelta, {"lr": 1.0, "rho": 0.8}),
        ("{rmsprop: {lr: 0.003, alpha: 0.9, momentum: 0.5}}", torch.optim.RMSprop, {"lr": 0.003, "alpha": 0.9, "momentum": 0.5}),
        ("{adam: {lr: 0.002, betas: [0.8, 0.9]}}", torch.optim.AdamW, {"lr": 0.002, "betas": (0.8, 0.9), "weight_decay": 0.0}),
    ],
)
def test_optimizer_kind_and_hyperparameters(optimizer: str, cls: type, expected: dict) -> None:
    spec = spec_of(f"optimizer: {optimizer}")
    opt = build_optimizer(spec, nnspec.build(spec))
    assert type(opt) is cls
    for group in opt.param_groups:
        for key, value in expected.items():
            assert group[key] == value, key


@pytest.mark.parametrize(
    ("optimizer", "fused"),
    [("{sgd: {lr: 0.05, momentum: 0.9, nesterov: true}}", True), ("adagrad", True), ("adam", True), ("adamw", True),
     ("adadelta", None), ("rmsprop", None)],
)
def test_fused_kernels_where_torch_has_them_on_this_device(optimizer: str, fused: bool | None) -> None:
    spec = spec_of(f"optimizer: {optimizer}")
    opt = build_optimizer(spec, nnspec.build(spec))
    assert all(group.get("fused") == fused for group in opt.param_groups)


@pytest.mark.parametrize(
    "optimizer",
    ["{sgd: {lr: 0.05, momentum: 0.9, nesterov: true}}", "{adagrad: 0.05}", "{adam: {lr: 0.01, betas: [0.8, 0.9]}}",
     "{adamw: 0.01}"],
)
def test_a_fused_optimizer_follows_torchs_default_implementation(optimizer: str) -> None:
    """The fused kernel must get every hyperparameter: ten steps land where the unfused optimizer's do."""
    spec = spec_of(f"optimizer: {optimizer}\nregularization: {{weight_decay: 0.1}}")
    torch.manual_seed(0)
    model = nnspec.build(spec)
    twin = nnspec.build(spec)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(spec, model)
    plain = build_optimizer(spec, twin)
    for group in plain.param_groups:
        group["fused"] = False  # the same groups and hook, torch's default implementation
    x = torch.randn(8, 4)
    for _ in range(10):
        for net, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_one_parameter_group_unless_weights_decay() -> None:
    """Every group is a pass through the optimizer's Python; splitting only matters when one group decays."""
    plain = spec_of("optimizer: {sgd: 0.1}")
    assert len(build_optimizer(plain, nnspec.build(plain)).param_groups) == 1
    decayed = spec_of("optimizer: {sgd: 0.1}\nregularization: {weight_decay: 0.1}")
    assert [g[DECAY_KEY] for g in build_optimizer(decayed, nnspec.build(decayed)).param_groups] == [0.1, 0.0]


def test_no_optimizer_is_a_value_error() -> None:
    spec = spec_of("")
    with pytest.raises(ValueError, match="no 'optimizer'"):
        build_optimizer(spec, nnspec.build(spec))


def test_adamw_decays_weights_by_default_and_never_biases() -> None:
    spec = spec_of("optimizer: adamw")
    model = nnspec.build(spec)
    opt = build_optimizer(spec, model)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.linear_0.weight)] == 0.01
    assert decays[id(model.linear_0.bias)] == 0.0
    explicit = spec_of("optimizer: adamw\nregularization: {weight_decay: 0}")
    assert all(g["weight_decay"] == 0.0 for g in build_optimizer(explicit, nnspec.build(explicit)).param_groups)


def _steps_with_zero_gradient(opt: torch.optim.Optimizer, model: nn.Module, steps: int) -> None:
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()


@pytest.mark.parametrize(
    "optimizer",
    ["{sgd: {lr: 0.1, momentum: 0.9}}", "{sgd: {lr: 0.1, momentum: 0.9, nesterov: true}}", "{adagrad: 0.1}",
     "{adadelta: 0.5}", "{rmsprop: {lr: 0.1, momentum: 0.5}}", "{adam: 0.1}", "{adamw: 0.1}"],
)
def test_weight_decay_is_decoupled(optimizer: str) -> None:
    """With a zero gradient only the decay acts: w *= 1 - lr*wd per step, exactly.

    Coupled (L2-in-the-gradient) decay fails this: momentum accumulates it and
    adaptive optimizers rescale it to about lr per step.
    """
    spec = spec_of(f"optimizer: {optimizer}\nregularization: {{weight_decay: 0.2}}")
    model = nnspec.build(spec)
    weight0, bias0 = model.linear_0.weight.detach().clone(), model.linear_0.bias.detach().clone()
    opt = build_optimizer(spec, model)
    lr = opt.param_groups[0]["lr"]
    _steps_with_zero_gradient(opt, model, 3)
    torch.testing.assert_close(model.linear_0.weight.detach(), weight0 * (1 - lr * 0.2) ** 3, rtol=1e-6, atol=0)
    assert torch.equal(model.linear_0.bias.detach(), bias0)


def test_decoupled_decay_uses_the_scheduled_lr_and_survives_state_dict() -> None:
    spec = spec_of("optimizer: {sgd: 0.1}\nregularization: {weight_decay: 0.5}")
    model = nnspec.build(spec)
    opt = build_optimizer(spec, model)
    for group in opt.param_groups:
        group["lr"] = 0.4  # what a schedule does
    weight0 = model.linear_0.weight.detach().clone()
    _steps_with_zero_gradient(opt, model, 1)
    torch.testing.assert_close(model.linear_0.weight.detach(), weight0 * (1 - 0.4 * 0.5))
    fresh = build_optimizer(spec, model)
    fresh.load_state_dict(opt.state_dict())
    assert sorted(g[DECAY_KEY] for g in fresh.param_groups) == [0.0, 0.5]


def test_no_decay_leaves_weights_alone_under_zero_gradient() -> None:
    spec = spec_of("optimizer: {sgd: {lr: 0.1, momentum: 0.9}}")
    model = nnspec.build(spec)
    weight0 = model.linear_0.weight.detach().clone()
    _steps_with_zero_gradient(build_optimizer(spec, model), model, 2)
    assert torch.equal(model.linear_0.weight.detach(), weight0)


# -- schedules -------------------------------------------------------------------------------


def run_schedule(spec: Spec, steps_per_epoch: int, epochs: int, metrics: list[dict] | None = None) -> list[float]:
    """The lr used by every step of a training run (optimizer.step() then schedule.after_step())."""
    model = nnspec.build(spec)
    opt = build_optimizer(spec, model)
    schedule = build_schedule(spec, opt, steps_per_epoch, epochs)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.after_step()
        schedule.after_epoch(metrics[epoch] if metrics else {})
    return lrs


def per_epoch(lrs: list[float], steps_per_epoch: int) -> list[float]:
    return lrs[::steps_per_epoch]


def test_no_schedule_keeps_the_lr() -> None:
    assert run_schedule(spec_of("optimizer: {sgd: 0.1}"), 3, 2) == [0.1] * 6


def test_step_schedule_multiplies_every_n_epochs() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {step: {every: 2, gamma: 0.5}}")
    lrs = run_schedule(spec, 3, 6)
    assert per_epoch(lrs, 3) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    assert lrs[:3] == [1.0] * 3  # constant within an epoch


def test_exponential_schedule_is_per_epoch() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {exponential: 0.9}")
    assert run_schedule(spec, 2, 4) == pytest.approx([1, 1, 0.9, 0.9, 0.81, 0.81, 0.729, 0.729])


def cosine(t: int, total: int, base: float, low: float) -> float:
    return low + (base - low) * (1 + math.cos(math.pi * t / total)) / 2


def test_cosine_over_the_whole_run_is_per_step() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {cosine: {min_lr: 0.1}}")
    lrs = run_schedule(spec, 5, 4)
    assert lrs == pytest.approx([cosine(t, 20, 1.0, 0.1) for t in range(20)])


def test_short_cosine_holds_min_lr_instead_of_climbing_back() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {cosine: {epochs: 2, min_lr: 0.05}}")
    lrs = run_schedule(spec, 3, 5)
    assert lrs[:6] == pytest.approx([cosine(t, 6, 1.0, 0.05) for t in range(6)])
    assert lrs[6:] == pytest.approx([0.05] * 9)


def test_fractional_warmup_is_linear_per_step_then_holds() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {warmup: {epochs: 0.5, start_factor: 0.2}}")
    lrs = run_schedule(spec, 8, 2)  # 0.5 epoch = 4 steps
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5:] == pytest.approx([1.0] * 11)


def test_warmup_then_cosine_over_the_rest() -> None:
    spec = spec_of("optimizer: {sgd: 0.5}\nschedule: [{warmup: 2}, {cosine: {min_lr: 0.01}}]")
    lrs = run_schedule(spec, 4, 5)  # 8 warmup steps, cosine over the remaining 12
    warm = [0.5 * (0.01 + 0.99 * t / 8) for t in range(8)]
    assert lrs[:8] == pytest.approx(warm)
    assert lrs[8:] == pytest.approx([cosine(t, 12, 0.5, 0.01) for t in range(12)])


def test_phase_starts_from_the_lr_the_previous_phase_left() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: [{cosine: {epochs: 1, min_lr: 0.2}}, {exponential: 0.5}]")
    lrs = run_schedule(spec, 2, 4)
    # cosine over epoch 0; exponential begins at 0.2 and first acts at the end of epoch 1
    assert per_epoch(lrs, 2) == pytest.approx([1.0, 0.2, 0.1, 0.05])


def test_warmup_then_step_counts_epochs_from_its_own_start() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: [{warmup: {epochs: 1, start_factor: 0.5}}, {step: {every: 2, gamma: 0.1}}]")
    assert per_epoch(run_schedule(spec, 2, 5), 2) == pytest.approx([0.5, 1.0, 1.0, 0.1, 0.1])


def test_plateau_reduces_when_the_metric_stalls() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {plateau: {patience: 1, factor: 0.5}}")
    losses = [1.0, 0.8, 0.9, 0.95, 0.7, 0.75]
    lrs = run_schedule(spec, 1, 6, [{"val_loss": v} for v in losses])
    # bad epochs: 2 (1st), 3 (2nd > patience -> halve); 5 (1st)
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 0.5])


def test_plateau_on_accuracy_maximizes() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: {plateau: {patience: 0, factor: 0.5, monitor: val_accuracy}}")
    accs = [0.5, 0.6, 0.7, 0.65]
    lrs = run_schedule(spec, 1, 5, [{"val_accuracy": v} for v in accs] + [{"val_accuracy": 0.8}])
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5])


def test_plateau_without_its_metric_says_which() -> None:
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: plateau")
    with pytest.raises(ValueError, match="monitors 'val_loss'.*train_loss"):
        run_schedule(spec, 1, 1, [{"train_loss": 1.0}])


def test_a_phase_after_an_open_ended_one_is_refused() -> None:
    spec = raw_spec(optimizer="sgd", schedule=[{"step": 2}, "cosine"])
    opt = build_optimizer(spec, nnspec.build(spec))
    with pytest.raises(ValueError, match="schedule.1 never runs"):
        build_schedule(spec, opt, 4, 3)


@pytest.mark.parametrize("optimizer_first", [True, False])
@pytest.mark.parametrize("stop_after", [3, 10, 14])
def test_resume_continues_the_same_trajectory(optimizer_first: bool, stop_after: int) -> None:
    """Stopping after any step (mid-warmup, mid-cosine, in the step phase) and resuming changes nothing."""
    spec = spec_of("optimizer: {sgd: 1.0}\nschedule: [{warmup: 1.5}, {cosine: {epochs: 1, min_lr: 0.1}}, {step: 1}]")
    spe, epochs = 4, 6
    expected = run_schedule(spec, spe, epochs)

    model = nnspec.build(spec)
    opt = build_optimizer(spec, model)
    schedule = build_schedule(spec, opt, spe, epochs)
    lrs: list[float] = []
    for step in range(spe * epochs):
        if step == stop_after:
            opt_state, schedule_state = opt.state_dict(), schedule.state_dict()
            opt = build_optimizer(spec, model)
            schedule = build_schedule(spec, opt, spe, epochs)
            if optimizer_first:
                opt.load_state_dict(opt_state)
                schedule.load_state_dict(schedule_state)
            else:
                schedule.load_state_dict(schedule_state)
                opt.load_state_dict(opt_state)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.after_step()
        if (step + 1) % spe == 0:
            schedule.after_epoch({})
    assert lrs == pytest.approx(expected)
