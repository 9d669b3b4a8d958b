"""THE training loop for one model (:func:`fit`): epochs of steps over an in-memory dataset,
evaluation at epoch ends, checkpoints, resume, Ctrl-C and the non-finite stop.

Design choices that shape the loop, and why:

* The whole dataset sits in memory as tensors (on the GPU when training
  there) and batches are gathered by index from a permutation drawn with a
  ``torch.Generator``: no DataLoader, no per-sample Python, so a small model is
  limited by its own compute, not by the input pipeline.
* Every random stream has its own generator (data order, augmentation, input
  noise, bootstrap) besides torch's global one (initialization, dropout), and
  all of them are checkpointed. Resuming regenerates the interrupted epoch's
  permutation from the order generator's state *at the start of that epoch*
  and skips the steps already taken, so on the CPU a resumed run ends with
  bitwise the same weights as an uninterrupted one.
* A step launches nothing beyond the training math and reads nothing back
  from an accelerator: its outputs are queued by reference and its loss is
  queued too (read at once on the CPU, where a read costs less than holding
  the tensor), and every ``CHECK_EVERY`` steps (and before every checkpoint
  and at each epoch end) the logged losses are checked for NaN/inf in one
  read. A non-finite loss therefore stops the run with its exact step, the
  GPU is never stalled by a per-step sync, and the last good checkpoint on
  disk is never overwritten by a poisoned one.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from nnspec.spec.model import Spec
from nnspec.train import checkpoint as ckpt
from nnspec.train import distributed as D
from nnspec.train import report
from nnspec.train.ensemble import bootstrap_indices
from nnspec.train.epoch_log import EpochClock, EpochLog, NonFinite, check_finite
from nnspec.train.evaluation import evaluate_models
from nnspec.train.learner import Cursor, Learner, Member, Run, make_learner, make_step
from nnspec.train.resolve import RunError
from nnspec.train.resume import load_checkpoint, publish_weights, save_checkpoint


#: Losses are checked for NaN/inf this often, in steps (one host read); several processes also agree
#: on Ctrl-C this often.
CHECK_EVERY = 64


#: The within-epoch curves (metrics.jsonl's ``train_curve``, drawn in curves.png) keeps about this many
#: points over a whole run: up to 200 per epoch, at least 4.
CURVE_POINTS = 400


def curve_points_per_epoch(epochs: int) -> int:
    return max(4, min(200, CURVE_POINTS // max(epochs, 1)))


#: Training batches are gathered from the dataset up to this many steps at a time, and up to this many
#: bytes of inputs (see gathered_batches, and docs/training.md's "Overhead of the runner" for the choice).
GATHER_STEPS = 64


GATHER_BYTES = 1 << 20


def epoch_order(n: int, shuffle: bool, generator: torch.Generator, cursor: Cursor, device: torch.device) -> Tensor:
    """This epoch's sample order; on a mid-epoch resume, the very permutation the run was following."""
    if cursor.step == 0:
        cursor.epoch_order_state = generator.get_state()
    else:
        generator.set_state(cursor.epoch_order_state)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order.to(device)


def rank_batches(order: Tensor, batch_size: int, dist: D.Dist) -> list[tuple[Tensor, float]]:
    """The epoch's steps as (this rank's sample indices, its loss weight), cut once rather than per step.

    The weight is this rank's share of the global batch times the world size
    (1.0 for one process), so that DDP's gradient average is the global batch's mean.
    """
    batches = order.split(batch_size)
    if not dist.enabled:
        return [(batch, 1.0) for batch in batches]
    shards = [(D.shard(batch, dist), batch.shape[0]) for batch in batches]
    return [(mine, mine.shape[0] * dist.world_size / size) for mine, size in shards]


def gathered_batches(x: Tensor, y: Tensor, steps: Sequence[tuple[Tensor, float]]
                     ) -> Iterator[tuple[Tensor, Tensor, float]]:  # fmt: skip
    """Each step's (inputs, labels, loss weight), gathered from the dataset a run of steps at a time.

    Why not ``x[indices]`` per step: indexing is a kernel (a launch on CUDA,
    a dispatch and an allocation on the CPU), two per step with the labels,
    and at batch size 1 that is a visible share of the step. One gather for
    up to ``GATHER_STEPS`` steps, cut into views, costs two kernels per run
    of steps instead. The samples and their order are the same, so a run's
    results do not change. A run holds at most ``GATHER_BYTES`` of inputs
    (or one step's): on the CPU a step then still reads its batch from cache.
    """
    if not steps:
        return
    step_bytes = math.prod(x.shape[1:]) * x.element_size() * max(1, steps[0][0].shape[0])
    per_gather = max(1, min(GATHER_STEPS, GATHER_BYTES // max(1, step_bytes)))
    for start in range(0, len(steps), per_gather):
        group = steps[start:start + per_gather]
        indices = torch.cat([rows for rows, _ in group]) if len(group) > 1 else group[0][0]
        sizes = [rows.shape[0] for rows, _ in group]
        yield from zip(x[indices].split(sizes), y[indices].split(sizes), [weight for _, weight in group])


def fit(run: Run, member: Member) -> tuple[Learner, Cursor]:
    """Train one model to the end (or resume it), leaving its files in ``member.directory``."""
    spec, data, dist = run.spec, run.data, run.dist
    batch_size, epochs = spec.train.batch_size, spec.train.epochs
    rows = _bootstrap_rows(spec, member, len(data.y_train), run.device)
    n = len(rows) if rows is not None else len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    learner = make_learner(run, member, steps_per_epoch)
    if dist.is_main:
        ckpt.remove_stale_temps(member.directory)  # left by a kill in the middle of a checkpoint write
    resuming = (member.directory / ckpt.STATE).exists()
    if not resuming and (member.directory / ckpt.WEIGHTS).exists():
        # Weights without the resume state: state.pt was deleted (or lost).  Training on would
        # silently start over from scratch over a run that may have finished.
        raise RunError(
            f"cannot resume {member.directory}: it has {ckpt.WEIGHTS} but no {ckpt.STATE}, so there is no state "
            "to continue from and training would restart from scratch; start a new run (--out) instead",
            exit_code=2,
        )
    cursor = load_checkpoint(run, member, learner) if resuming else Cursor()
    run.histories[member.index] = cursor.history
    if cursor.finished(epochs):
        publish_weights(run, member, learner)
        return learner, cursor
    if resuming:
        run.progress.message(f"resuming {member.directory} at epoch {cursor.epoch + 1}, step {cursor.step}")
    learner.net = D.wrap(learner.model, dist, run.device)
    step = make_step(run, learner)
    x_train, y_train, progress = data.x_train, data.y_train, run.progress
    # One process reads its Ctrl-C flag every step; several must agree, so they do it with the checks.
    poll_stop, every = not dist.enabled, spec.train.checkpoint_every
    try:
        for epoch in range(cursor.epoch, epochs):
            clock = EpochClock(cursor.spent)
            order = epoch_order(n, spec.train.shuffle, learner.generators["order"], cursor, run.device)
            if rows is not None:
                order = rows[order]  # a bootstrap member draws its epoch from its resample
            # One process sees the epoch's samples in order: their labels are known now, in one gather.
            ahead = None if dist.enabled else y_train[order[cursor.step * batch_size:]]
            log = EpochLog(run.device, n, steps_per_epoch, cursor.global_step + 1, cursor.tally, labels=ahead)
            learner.model.train()
            progress.start_epoch(epoch + 1, epochs, steps_per_epoch, member.index)
            steps = rank_batches(order, batch_size, dist)[cursor.step:]
            for x, y, weight in gathered_batches(x_train, y_train, steps):
                loss, outputs = step(x, y, weight)
                log.add(loss, outputs, y)
                cursor.step += 1
                cursor.global_step += 1
                done = cursor.global_step
                if done % CHECK_EVERY == 0 or (every and done % every == 0) or (poll_stop and run.stop.requested):
                    _between_steps(run, member, learner, cursor, log, clock, steps_per_epoch)
                if progress.enabled:
                    progress.update(cursor.step, log.samples, log.mean_loss)
            check_finite(log, dist)
            stop = _end_epoch(run, member, learner, cursor, log, clock)
            if stop:
                stopper = learner.stopper
                assert stopper is not None
                run.progress.message(f"early stopping after epoch {cursor.epoch}: no better {stopper.monitor} "
                                     f"since epoch {stopper.best_epoch}")  # fmt: skip
                break
            if run.stop.agreed(run.device):
                _interrupt(run, member, learner, cursor, None, clock, saved=True)
    except NonFinite as bad:
        raise _diverged(run, member, cursor, steps_per_epoch, bad) from None
    publish_weights(run, member, learner)
    return learner, cursor


def _between_steps(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog, clock: EpochClock,
                   steps_per_epoch: int) -> None:  # fmt: skip
    """What runs at some step boundaries only: the non-finite check, Ctrl-C, the periodic checkpoint.

    Every rank calls this at the same steps (the stop flag is polled every
    step only when there is one process), because all three may talk to the
    other ranks.
    """
    done, dist, every = cursor.global_step, run.dist, run.spec.train.checkpoint_every
    if done % CHECK_EVERY == 0:
        check_finite(log, dist)
    if (done % CHECK_EVERY == 0 or not dist.enabled) and run.stop.agreed(run.device):
        check_finite(log, dist)
        _interrupt(run, member, learner, cursor, log, clock)
    if every and done % every == 0 and cursor.step < steps_per_epoch:
        check_finite(log, dist)
        cursor.spent = clock.spent()
        save_checkpoint(run, member, learner, cursor, log)


def _end_epoch(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog, clock: EpochClock) -> bool:
    """Epoch bookkeeping: metrics, validation, schedule, early stopping, checkpoint. True = stop now."""
    train_loss, train_accuracy, samples = log.totals(run.dist)  # reads the device: the GPU has finished the epoch
    seconds, cpu_seconds = clock.spent()  # the epoch's training, its order and its metrics; not validation
    record: dict[str, Any] = {"epoch": cursor.epoch + 1}
    if member.index is not None:
        record["member"] = member.index
    record.update(step=cursor.global_step, train_loss=train_loss, train_accuracy=train_accuracy)
    if run.spec.data.val > 0:  # type: ignore[union-attr]
        val_loss, val_accuracy = evaluate_models([learner.model], learner.loss_fn, run.data.x_val, run.data.y_val,
                                                 spec=run.spec, dist=run.dist, bf16=run.bf16)  # fmt: skip
        record.update(val_loss=val_loss, val_accuracy=val_accuracy)
    record.update(lr=learner.schedule.lrs()[0], seconds=seconds, cpu_seconds=cpu_seconds, samples=samples,
                  samples_per_s=samples / max(seconds, 1e-9))
    # Within the epoch: [epoch + fraction done, mean loss, accuracy] of each bin of steps. After a
    # mid-epoch resume it covers the steps taken since (the earlier ones were summed, not kept).
    per_epoch, done_before = log.losses.numel(), log.losses.numel() - log.steps
    record["train_curve"] = [
        [round(cursor.epoch + (done_before + end) / per_epoch, 6), loss, accuracy]
        for end, loss, accuracy in log.curve(curve_points_per_epoch(run.spec.train.epochs))
    ]
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    metrics = {key: record[key] for key in keys if key in record}
    try:
        learner.schedule.after_epoch(metrics)
    except ValueError as exc:
        raise RunError(str(exc), exit_code=2) from None
    stop = learner.stopper.update(cursor.epoch + 1, metrics, learner.model) if learner.stopper else False
    cursor.history.append(record)
    cursor.epoch, cursor.step, cursor.spent, cursor.stopped_early = cursor.epoch + 1, 0, (0.0, 0.0), stop
    cursor.tally = {}
    save_checkpoint(run, member, learner, cursor, None)
    if run.dist.is_main:
        all_records = [r for history in run.histories.values() for r in history]
        report.write_metrics(run.directory, all_records)
    run.progress.end_epoch(record)
    if run.on_epoch is not None:
        run.on_epoch(dict(record))
    return stop


def _interrupt(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog | None,
               clock: EpochClock, saved: bool = False) -> None:  # fmt: skip
    """Ctrl-C: leave a resumable checkpoint of exactly this step, then re-raise KeyboardInterrupt."""
    if not saved:
        cursor.spent = clock.spent()
        save_checkpoint(run, member, learner, cursor, log)
    if run.dist.is_main and run.resume_hint:  # printed even when quiet: it says how to get the work back
        print(f"nnspec: interrupted at epoch {cursor.epoch + 1}, step {cursor.step}; checkpoint saved. "
              f"Continue with: {run.resume_hint}", file=sys.stderr, flush=True)  # fmt: skip
    raise KeyboardInterrupt


def _diverged(run: Run, member: Member, cursor: Cursor, steps_per_epoch: int, bad: NonFinite) -> RunError:
    epoch, step = (bad.global_step - 1) // steps_per_epoch + 1, (bad.global_step - 1) % steps_per_epoch + 1
    what = "non-finite" if bad.value is None else "NaN" if math.isnan(bad.value) else str(bad.value)
    where = f"member {member.index}, " if member.index is not None else ""
    kept = (f"the last good checkpoint (global step {cursor.saved_step}) is kept in {member.directory}"
            if cursor.saved_step is not None else "no checkpoint had been written yet")  # fmt: skip
    return RunError(
        f"loss became {what} at {where}epoch {epoch}, step {step} (global step {bad.global_step}); "
        f"training stopped and {kept}. Lower the learning rate, add clip_grad_norm, or check the data."
    )


def _bootstrap_rows(spec: Spec, member: Member, n: int, device: torch.device) -> Tensor | None:
    """A bagging member's resample of the training set (None: train on all of it, in order)."""
    if spec.ensemble is None or not spec.ensemble.bootstrap:
        return None
    generator = torch.Generator().manual_seed(member.seed + 3)
    return bootstrap_indices(n, generator).to(device)
