"""The runner: a spec in, a trained model and a run directory out.

Reading order, top to bottom of the call tree, one module each:

* :func:`train` (here) resolves the spec (file + ``--set`` overrides), the
  device and the data once (:mod:`.resolve`), then runs one seed or several
  (``--seeds N``).
* :func:`~nnspec.train.run_dir.run_once` fills one run directory
  (:mod:`.run_dir`): every ensemble member (or the one model), then the final
  evaluation, ``summary.json`` and the table.
* :func:`~nnspec.train.loop.fit` is THE training loop for one model
  (:mod:`.loop`): epochs of steps over an in-memory dataset, evaluation at
  epoch ends (:mod:`.evaluation`), checkpoints and resume (:mod:`.resume`).
* :func:`~nnspec.train.learner.make_step` builds the function that takes one
  optimizer step (:mod:`.learner`, with the model, optimizer and schedule it
  updates).

Their parts: the optimizers and schedules (:mod:`.optim`), penalties, clipping,
early stopping and adversarial examples (:mod:`.regularize`), initialization
(:mod:`.init`), ensembles (:mod:`.ensemble`), multi-process training
(:mod:`.distributed`), the per-epoch metrics (:mod:`.epoch_log`), progress
lines (:mod:`.progress`), checkpoint files (:mod:`.checkpoint`) and the run
directory's reports (:mod:`.report`). ``nnspec eval`` is :func:`.evaluation.evaluate`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nnspec.spec.model import Spec
from nnspec.train import distributed as D
from nnspec.train import report
from nnspec.train.evaluation import evaluate
from nnspec.train.resolve import (
    Data,
    RunError,
    check_batches,
    check_trainable,
    load_data,
    resolve_device_type,
    resolve_spec,
    with_absolute_paths,
)
from nnspec.train.resume import check_resume
from nnspec.train.run_dir import new_run_dir, run_once
from nnspec.train.threads import ThreadChoice, busy_warning, choose_threads

__all__ = ["RunError", "evaluate", "train"]


def _seeded(spec: Spec, seed: int) -> Spec:
    return spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})


def _print_warnings(spec: Spec, quiet: bool, dist: D.Dist) -> None:
    if not quiet and dist.is_main:
        for warning in spec.warnings:
            print(warning, file=sys.stderr)


def resume_command(directory: Path, seeds: int, dist: D.Dist) -> str:
    """The command that continues this run; the run's own spec.yaml holds its overrides, so none are repeated."""
    command = f"nnspec train --resume {directory}" + (f" --seeds {seeds}" if seeds > 1 else "")
    if dist.enabled:
        command = f"torchrun --standalone --nproc_per_node={dist.world_size} -m {command}"
    return command


def run_spec_file(directory: str | Path, flag: str) -> Path:
    """The spec a run directory was trained with (its resolved ``spec.yaml``), for a command given none."""
    directory = Path(directory)
    folder = directory.parent if directory.is_file() else directory
    path = folder / report.SPEC
    if not path.is_file():
        raise RunError(f"{path} does not exist: give the SPEC explicitly, or a run directory as {flag}", exit_code=2)
    return path


def train(spec: Spec | str | Path | None, *, overrides: Sequence[str] = (), out: str | Path | None = None,
          resume: str | Path | None = None, seeds: int = 1, quiet: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, evaluate_test: bool = True,
          resume_hint: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train ``spec`` (a path or a Spec) and return the run's summary.

    ``seeds=N`` trains N runs (seeds ``train.seed``, ``+1``, …) in ``seed_<k>``
    subdirectories and returns mean ± std over them. ``resume`` continues the
    stopped run in that directory; with ``spec=None`` it continues with the
    run's own ``spec.yaml`` (the spec as it ran, overrides included). Raises
    SpecError for a bad spec or override, RunError (with ``exit_code``) for
    data problems and failed runs, and KeyboardInterrupt after checkpointing
    when interrupted.

    ``on_epoch(record)`` is called after each epoch is saved, with that
    epoch's metrics (an exception it raises stops the run: that is how a
    search prunes a trial); ``evaluate_test=False`` leaves the test split out
    of the summary (a search trial selects on validation only); ``resume_hint=False``
    drops the ``--resume`` suggestion on Ctrl-C (a search is continued by rerunning it).
    """
    if seeds < 1:
        raise RunError(f"--seeds must be at least 1, got {seeds}", exit_code=2)
    if seeds > 1 and (on_epoch is not None or not evaluate_test or not resume_hint):
        raise ValueError("on_epoch, evaluate_test and resume_hint are for one run (seeds=1)")
    if out is not None and resume is not None:
        raise RunError("give either --out (a new run) or --resume (an existing one), not both", exit_code=2)
    if spec is None:
        if resume is None:
            raise RunError("train needs a spec, or resume= a run directory (whose spec.yaml is used)", exit_code=2)
        spec = run_spec_file(resume, "--resume")
    resolved, base_dir = resolve_spec(spec, overrides)
    resolved = with_absolute_paths(resolved, base_dir)
    check_trainable(resolved)
    if resume is not None:
        check_resume(resolved, Path(resume))
    device_type = resolve_device_type(resolved)
    dist = D.setup(device_type)
    threads_before = torch.get_num_threads()
    try:
        device = D.device_for(dist, device_type)
        _print_warnings(resolved, quiet, dist)
        threads = choose_threads(resolved, device_type, dist.world_size)
        torch.set_num_threads(threads.threads)  # restored below: a library call must not leave it changed
        busy = busy_warning(threads.threads) if device_type == "cpu" else None
        if busy and not quiet and dist.is_main:
            print(busy, file=sys.stderr)
        data = load_data(resolved, device)  # before creating a directory that a data error would leave empty
        check_batches(resolved, data)
        directory = Path(resume) if resume is not None else new_run_dir(resolved, out, dist)
        seed_dirs = sorted(directory.glob("seed_*")) if resume is not None else []
        if resume is not None and len(seed_dirs) != (seeds if seeds > 1 else 0):
            raise RunError(
                f"{directory} holds {len(seed_dirs) or 'a single'} seed run(s); resume it with "
                + (f"--seeds {len(seed_dirs)}" if seed_dirs else "no --seeds"), exit_code=2,
            )  # fmt: skip
        hint = resume_command(directory, seeds, dist)
        if seeds == 1:
            summary = run_once(resolved, base_dir, directory, device, dist, data, quiet, hint if resume_hint else "",
                               threads, on_epoch=on_epoch, evaluate_test=evaluate_test)  # fmt: skip
        else:
            summary = _train_seeds(resolved, base_dir, directory, device, dist, data, seeds, quiet, hint, threads)
        D.barrier(dist)  # no rank leaves the group while another still talks to it
        return summary
    finally:
        torch.set_num_threads(threads_before)
        D.teardown(dist)


def _train_seeds(spec: Spec, base_dir: Path, directory: Path, device: torch.device, dist: D.Dist, data: Data,
                 seeds: int, quiet: bool, hint: str, threads: ThreadChoice) -> dict[str, Any]:  # fmt: skip
    """N independent runs, one per seed, then mean ± std of their metrics."""
    if dist.is_main:
        report.write_spec(directory, spec)
    summaries = [
        run_once(_seeded(spec, spec.train.seed + k), base_dir, directory / f"seed_{k}", device, dist, data, quiet,
                 hint, threads)
        for k in range(seeds)
    ]
    aggregate = {"name": spec.name, "status": "finished", "run_dir": str(directory)}
    aggregate.update(report.aggregate_seeds(summaries))
    if dist.is_main:
        report.write_summary(directory, aggregate)
        if not quiet:
            print(f"\n{spec.name}: {seeds} seeds -> {directory}\n{report.seeds_table(aggregate)}")
    return aggregate
