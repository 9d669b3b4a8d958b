"""The compiled-step benchmark's yardstick is right: its hand-derived floor does autograd's SGD step.

The floor is what every other loop is reported as a fraction of; a floor that skipped part of the
backward would be faster than any real step and make every ratio look worse (or, with a wrong
sign, train nothing). Its timings are for reports/, not for tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnspec.bench.compiled_step import CASES, _steps_per_s, floor_step


def autograd_sgd_step(kind: str, params: list[torch.Tensor], x: torch.Tensor, labels: torch.Tensor, lr: float) -> torch.Tensor:
    w1, b1, w2, b2 = params
    hidden = F.linear(x.flatten(1), w1, b1)
    if kind == "sigmoid-mse":
        outputs = torch.sigmoid(F.linear(torch.sigmoid(hidden), w2, b2))
        loss = F.mse_loss(outputs, F.one_hot(labels, outputs.shape[1]).to(outputs.dtype))
    else:
        loss = F.cross_entropy(F.linear(torch.relu(hidden), w2, b2), labels)
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)
    return loss.detach()


@pytest.mark.parametrize("kind, batch", [("sigmoid-mse", 1), ("sigmoid-mse", 7), ("relu-ce", 1), ("relu-ce", 64)])
def test_the_floor_takes_autograds_sgd_step(kind: str, batch: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    shapes = [(20, 12), (20,), (5, 20), (5,)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    floor_params = [p.clone() for p in start]
    autograd_params = [p.clone().requires_grad_() for p in start]
    step = floor_step(kind, *floor_params, lr=0.5)
    for _ in range(5):
        x = torch.rand(batch, 3, 4, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 5, (batch,), generator=generator)
        with torch.no_grad():
            floor_loss = step(x, labels)
        autograd_loss = autograd_sgd_step(kind, autograd_params, x, labels, lr=0.5)
        torch.testing.assert_close(floor_loss, autograd_loss)
    for floor_param, autograd_param in zip(floor_params, autograd_params):
        torch.testing.assert_close(floor_param, autograd_param.detach())


def test_every_sgd_mlp_case_has_a_floor_and_the_others_do_not() -> None:
    floors = {case.name: case.floor for case in CASES}
    assert [name for name, floor in floors.items() if floor] == [
        "ablation 784-200-10 sigmoid/MSE, SGD, batch 1", "mlp 784-256-10 ReLU/CE, SGD, batch 64"]


def test_slow_rates_keep_a_decimal() -> None:
    """The CNN runs a few steps per second: whole steps would print 4, 4, 4 for 3.5, 4.0 and 3.8."""
    assert [_steps_per_s(rate) for rate in (3.49, 99.94, 1797.2)] == ["3.5", "99.9", "1,797"]
