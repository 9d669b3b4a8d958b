"""One worker: takes trials from the shared study until it holds the wanted number of finished ones.

Every worker — the ``--jobs`` processes of one machine, and every ``nnspec
search`` on other machines sharing a database — runs this same loop against
the study, so there is no coordinator to lose. Its invariants:

* A trial is started only while fewer than N trials are finished or running;
  when the rest are held by others, the worker waits for them (or for their
  heartbeat to go stale, when the holder died) instead of starting extras.
* Two workers may still pass that check at once (they run on different
  machines); the trial numbers, which the storage hands out in order, settle
  it: a trial with N finished-or-running trials before it is *surplus*, marked
  failed with the attribute ``surplus`` before it trains, and not counted as a
  failure anywhere. So a study ends with exactly N finished trials.
* Each trial is one :func:`optuna.Study.optimize` call with one trial, so
  Optuna's heartbeat thread, stale-trial check and retry run as designed.
"""

from __future__ import annotations

import math
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nnspec.errors import SpecError
from nnspec.search.space import Box, Dimension, dimensions, refine_box
from nnspec.search.storage import SearchError, no_experimental_warnings, open_storage
from nnspec.search.study import (
    DIRECTORY, ERROR, HOST, ROUND, SECONDS, SURPLUS, VALUES, Standing, make_pruner, make_sampler, open_study,
    worker_seed,
)  # fmt: skip
from nnspec.spec.search import SearchSection

#: How often a worker that waits for others' trials looks again, in seconds.
POLL_S = 1.0


@dataclass(frozen=True)
class Job:
    """What a worker needs; plain data, so it crosses into a spawned process."""

    spec: str
    overrides: tuple[str, ...]
    out: str
    storage: str | None
    study: str
    trials: int
    heartbeat: int
    worker: int = 0
    quiet: bool = False
    shared: bool = False  # a database other machines may share


class TrialRejected(Exception):
    """This trial cannot train (its point gives an invalid spec, or the run failed); recorded as failed."""


class _Surplus(Exception):
    """Another worker took the last trial first; this one is marked failed (surplus) without training."""


@dataclass
class _Context:
    job: Job
    section: SearchSection
    epochs: int
    dims: list[Dimension] = field(default_factory=list)


def _round_and_boxes(ctx: _Context, trials: list[FrozenTrial]) -> tuple[int, dict[str, Box]]:
    """This trial's round (by the finished count) and, after the first, the box of each numeric dimension."""
    refine = ctx.section.refine
    if refine is None or refine.rounds == 1:
        return 0, {}
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    current = min(refine.rounds - 1, len(finished) * refine.rounds // ctx.job.trials)
    if current == 0:
        return 0, {}
    earlier = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get(ROUND, 0) < current]
    earlier.sort(key=lambda t: t.value, reverse=ctx.section.direction == "maximize")  # type: ignore[arg-type,return-value]
    best = earlier[: max(1, math.ceil(refine.top * len(earlier)))] if earlier else []
    boxes = {
        dim.path: refine_box(dim, [t.params[dim.param] for t in best if dim.param in t.params], refine.margin)
        for dim in ctx.dims
        if dim.numeric
    }
    return current, boxes


def _suggest(trial: Trial, dim: Dimension, box: Box | None) -> Any:
    distribution = dim.distribution(box)
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(dim.param, distribution.choices)  # type: ignore[arg-type]
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(dim.param, distribution.low, distribution.high, step=distribution.step,
                                 log=distribution.log)  # fmt: skip
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(dim.param, distribution.low, distribution.high, log=distribution.log)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _objective(ctx: _Context, trial: Trial) -> float:
    from nnspec.train import RunError, train
    from nnspec.train.resolve import resolve_spec, with_absolute_paths

    job = ctx.job
    trials = trial.study.get_trials(deepcopy=False)
    ahead = [t for t in trials if t.number < trial.number
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]  # fmt: skip
    if len(ahead) >= job.trials:
        trial.set_user_attr(SURPLUS, True)
        raise _Surplus
    current, boxes = _round_and_boxes(ctx, trials)
    trial.set_user_attr(ROUND, current)
    values = {dim.path: dim.value(_suggest(trial, dim, boxes.get(dim.path))) for dim in ctx.dims}
    trial.set_user_attr(VALUES, values)
    directory = (Path(job.out) / f"trial-{trial.number:04d}").resolve()
    trial.set_user_attr(DIRECTORY, str(directory))
    trial.set_user_attr(HOST, socket.gethostname())
    overrides = list(job.overrides) + [dim.override(values[dim.path]) for dim in ctx.dims]
    try:
        spec, base_dir = resolve_spec(job.spec, overrides)
    except SpecError as exc:
        trial.set_user_attr(ERROR, f"invalid spec: {_first_line(exc)}")
        raise TrialRejected from None
    spec = with_absolute_paths(spec, base_dir).model_copy(update={"search": None})
    objective = ctx.section.objective

    def report(record: dict[str, Any]) -> None:
        value = record.get(objective)
        if value is None or not math.isfinite(value):
            return
        trial.report(float(value), step=int(record["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}")

    start = time.perf_counter()
    try:
        summary = train(spec, out=directory, quiet=True, on_epoch=report, evaluate_test=False, resume_hint=False)
    except (RunError, SpecError) as exc:
        trial.set_user_attr(ERROR, _first_line(exc))
        raise TrialRejected from None
    finally:
        trial.set_user_attr(SECONDS, time.perf_counter() - start)
    value = summary.get(objective)
    if value is None or not math.isfinite(value):
        trial.set_user_attr(ERROR, f"{objective} is {value}")
        raise TrialRejected
    return float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress_line(study: optuna.Study, trial: FrozenTrial, target: int) -> str | None:
    """One line per finished (or failed) trial: number, round, parameters, value, best so far, trials left."""
    if trial.user_attrs.get(SURPLUS):
        return None
    trials = study.get_trials(deepcopy=False)
    standing = Standing.of(trials)
    params = " ".join(f"{path}={_fmt(v)}" for path, v in (trial.user_attrs.get(VALUES) or {}).items())
    round_ = trial.user_attrs.get(ROUND)
    head = f"trial {trial.number}" + (f" (round {round_ + 1})" if round_ else "")
    if trial.state == TrialState.COMPLETE:
        outcome = f"{_fmt(trial.value)}"
    elif trial.state == TrialState.PRUNED:
        last = max(trial.intermediate_values) if trial.intermediate_values else 0
        outcome = f"pruned after epoch {last}"
    else:
        outcome = f"failed: {trial.user_attrs.get(ERROR, 'interrupted or lost')}"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = ""
    if complete:
        direction = study.direction.name.lower()
        top = (max if direction == "maximize" else min)(complete, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
        best = f" | best {_fmt(top.value)} (trial {top.number})"
    left = max(0, target - standing.finished)
    return f"{head}: {params} -> {outcome}{best} | {left} left"


def work(job: Job) -> None:
    """Run trials until the study holds ``job.trials`` finished ones (or too many failed)."""
    import torch

    from nnspec.train.resolve import resolve_spec

    torch.set_num_threads(1)  # each trial is a single-threaded run; parallelism comes from --jobs
    spec, _ = resolve_spec(job.spec, list(job.overrides))
    assert spec.search is not None
    storage = open_storage(job.storage, Path(job.out), job.heartbeat)
    probe = open_study(storage, job.study, spec.search)
    start_count = len(probe.get_trials(deepcopy=False))
    section = spec.search
    with no_experimental_warnings():
        sampler = make_sampler(section, worker_seed(section, start_count, job.worker, job.shared))
    study = open_study(storage, job.study, section, sampler, make_pruner(section, spec.train.epochs))
    ctx = _Context(job, section, spec.train.epochs, dimensions(section))

    def show(study: optuna.Study, trial: FrozenTrial) -> None:
        line = progress_line(study, trial, job.trials)
        if line is not None and not job.quiet:
            print(line, flush=True)

    catch = (TrialRejected, _Surplus)
    while True:
        with no_experimental_warnings():
            optuna.storages.fail_stale_trials(study)
        standing = Standing.of(study.get_trials(deepcopy=False))
        if standing.finished >= job.trials:
            return
        if standing.failed > max(job.trials, 10):
            raise SearchError(
                f"{standing.failed} trials failed, more than the {job.trials} the study asks for; "
                f"see the errors in {Path(job.out) / 'trials.csv'} (narrow the space or fix the spec)"
            )
        if standing.finished + standing.running >= job.trials and standing.waiting == 0:
            time.sleep(POLL_S)  # the rest are held by other workers: wait for them, or for them to go stale
            continue
        with no_experimental_warnings():
            study.optimize(lambda trial: _objective(ctx, trial), n_trials=1, catch=catch, callbacks=[show],
                           gc_after_trial=False)  # fmt: skip


def worker_main(job: Job) -> None:
    """Entry point of a spawned worker process: errors become one line and an exit code."""
    try:
        work(job)
    except KeyboardInterrupt:
        sys.exit(130)
    except SearchError as exc:
        print(f"nnspec search: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except SpecError as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(2)
