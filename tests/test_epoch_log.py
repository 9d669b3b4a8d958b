"""Tests for nnspec.train.epoch_log: the queued per-step metrics and the non-finite check."""

from __future__ import annotations

import math

import pytest
import torch

from nnspec.train import distributed as D
from nnspec.train.epoch_log import EpochLog, NonFinite, check_finite

CPU = torch.device("cpu")


def steps_of(sizes: list[int], classes: int = 5, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(mean loss, outputs, labels) per step, with outputs that still carry an autograd graph, as in training."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for size in sizes:
        weights = torch.randn(classes, classes, generator=gen, requires_grad=True)
        outputs = torch.randn(size, classes, generator=gen) @ weights
        labels = torch.randint(0, classes, (size,), generator=gen)
        loss = torch.nn.functional.cross_entropy(outputs, labels)
        loss.backward()
        steps.append((loss, outputs, labels))
    return steps


@pytest.mark.parametrize("read_losses", [True, False], ids=["losses read (CPU)", "losses queued (accelerator)"])
@pytest.mark.parametrize("known_labels", [True, False])
def test_totals_match_the_direct_computation_across_flushes(known_labels: bool, read_losses: bool) -> None:
    sizes = [7] * 150 + [3]  # more than two flushes and a ragged last batch
    steps = steps_of(sizes)
    all_labels = torch.cat([labels for _, _, labels in steps])
    log = EpochLog(CPU, sum(sizes), len(sizes), 1, labels=all_labels if known_labels else None)
    assert log.read_losses  # on the CPU; an accelerator's log queues the loss tensors instead
    log.read_losses = read_losses
    for step in steps:
        log.add(*step)
    loss, accuracy, count = log.totals(D.Dist())
    expected_loss = sum(float(l.detach()) * len(y) for l, _, y in steps) / sum(sizes)
    predictions = torch.cat([out.argmax(-1) for _, out, _ in steps])
    assert count == sum(sizes)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert accuracy == pytest.approx(float((predictions == all_labels).double().mean()), abs=1e-12)


def test_a_step_queues_no_work_and_a_flush_empties_the_queue() -> None:
    steps = steps_of([4] * 10)
    log = EpochLog(CPU, 40, 10, 1, labels=torch.cat([y for _, _, y in steps]))
    log.add(*steps[0])  # the first step flushes at once: it sets the interval from the outputs' size
    assert log.steps == 1 and log.flush_at == EpochLog.FLUSH_STEPS
    for step in steps[1:]:
        log.add(*step)
    assert log.steps == 1 and len(log.queue) == 9 and log.samples() == 40
    log.flush()
    assert log.steps == 10 and log.queue == [] and log.samples() == 40
    assert not any(t.requires_grad for t in (log.losses, log.predictions))


def test_large_outputs_flush_sooner_so_the_queue_stays_bounded(monkeypatch) -> None:
    monkeypatch.setattr(EpochLog, "FLUSH_ELEMENTS", 100)
    steps = steps_of([8] * 20, classes=5)  # 40 output values a step: flush every 2 steps
    log = EpochLog(CPU, 160, 20, 1, labels=torch.cat([y for _, _, y in steps]))
    most_queued = 0
    for step in steps:
        log.add(*step)
        most_queued = max(most_queued, sum(out.numel() for _, out, _ in log.queue))
    assert log.flush_at == 2 and most_queued <= 100


@pytest.mark.parametrize("read_losses", [True, False])
def test_the_first_non_finite_loss_is_found_with_its_global_step(read_losses: bool) -> None:
    steps = steps_of([4] * 100)
    bad_loss = torch.tensor(math.inf)
    steps[70] = (bad_loss, *steps[70][1:])
    steps[80] = (torch.tensor(math.nan), *steps[80][1:])
    log = EpochLog(CPU, 400, 100, first_step=201, labels=torch.cat([y for _, _, y in steps]))
    log.read_losses = read_losses
    for step in steps[:64]:
        log.add(*step)
    check_finite(log, D.Dist())  # the first 64 are finite
    for step in steps[64:]:
        log.add(*step)
    with pytest.raises(NonFinite) as caught:
        check_finite(log, D.Dist())
    assert (caught.value.global_step, caught.value.value) == (201 + 70, math.inf)


def test_sums_carried_over_a_resume_are_added() -> None:
    steps = steps_of([5] * 4)
    log = EpochLog(CPU, 20, 4, 9, carried={"loss_sum": 10.0, "correct": 3.0, "count": 20.0},
                   labels=torch.cat([y for _, _, y in steps]))  # fmt: skip
    for step in steps:
        log.add(*step)
    state = log.state()
    assert state["count"] == 40.0
    assert state["loss_sum"] == pytest.approx(10.0 + sum(5 * float(l.detach()) for l, _, _ in steps), rel=1e-6)
    assert log.samples() == 40
