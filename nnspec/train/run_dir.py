"""One run directory: choosing it, training every member into it, and the files that sum it up
(``summary.json``, ``metrics.jsonl``, ``curves.png``; written by :mod:`nnspec.train.report`).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from nnspec.spec.model import Spec
from nnspec.train import checkpoint as ckpt
from nnspec.train import distributed as D
from nnspec.train import report
from nnspec.train.evaluation import evaluate_models
from nnspec.train.learner import Cursor, Learner, Member, Run, StopSignal, member_seed
from nnspec.train.loop import fit
from nnspec.train.progress import Progress
from nnspec.train.resolve import Data, RunError
from nnspec.train.threads import ThreadChoice


def members(spec: Spec, directory: Path) -> list[Member]:
    seed = spec.train.seed
    if spec.ensemble is None:
        return [Member(None, seed, directory)]
    return [Member(i, member_seed(seed, i), directory / f"member_{i}") for i in range(spec.ensemble.members)]


def run_once(spec: Spec, base_dir: Path, directory: Path, device: torch.device, dist: D.Dist, data: Data,
             quiet: bool, resume_hint: str = "", threads: ThreadChoice | None = None, *,
             on_epoch: Callable[[dict[str, Any]], None] | None = None,
             evaluate_test: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train every member of one run directory, evaluate, and write the summary.

    ``resume_hint`` is the command that continues the run, printed on Ctrl-C (none when empty);
    ``threads`` is how its thread count was chosen (recorded in the summary);
    ``on_epoch`` and ``evaluate_test``: see :class:`~nnspec.train.learner.Run`.
    """
    wall = time.perf_counter()
    progress = Progress(enabled=not quiet and dist.is_main, world_size=dist.world_size)
    if dist.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        report.write_spec(directory, spec)
    with StopSignal(dist) as stop:
        run = Run(spec, base_dir, directory, device, dist, data, progress, stop, on_epoch=on_epoch,
                  evaluate_test=evaluate_test, resume_hint=resume_hint)
        try:
            fitted = [fit(run, member) for member in members(spec, directory)]
        except RunError as exc:
            if dist.is_main:
                report.write_summary(directory, {"name": spec.name, "status": "failed", "error": str(exc),
                                                 "seed": spec.train.seed})  # fmt: skip
            raise
    summary = _summarize(run, fitted, time.perf_counter() - wall)
    if threads is not None:
        summary.update(threads.to_json())
    if dist.is_main:
        records = [r for history in run.histories.values() for r in history]
        report.write_metrics(directory, records)
        report.write_summary(directory, summary)
        report.plot_curves(directory, records, summary)
        if not quiet:
            print(f"\n{spec.name} (seed {spec.train.seed}) -> {directory}\n{report.final_table(summary)}")
    return summary


def _summarize(run: Run, fitted: list[tuple[Learner, Cursor]], wall_s: float) -> dict[str, Any]:
    spec, data = run.spec, run.data
    learners = [learner for learner, _ in fitted]
    models = [learner.model for learner in learners]
    loss_fn = learners[0].loss_fn
    metrics: dict[str, Any] = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                        ("test", data.x_test, data.y_test)):  # fmt: skip
        if (split == "val" and len(y) == 0) or (split == "test" and not run.evaluate_test):
            continue
        loss, accuracy = evaluate_models(models, loss_fn, x, y, spec=spec, dist=run.dist, bf16=run.bf16)
        metrics.update({f"{split}_loss": loss, f"{split}_accuracy": accuracy})
    records = [r for history in run.histories.values() for r in history]
    train_s = sum(r["seconds"] for r in records)
    samples = sum(r["samples"] for r in records)
    summary: dict[str, Any] = {
        "name": spec.name,
        "status": "finished",
        "seed": spec.train.seed,
        "run_dir": str(run.directory),
        "epochs": spec.train.epochs,
        "epochs_run": max((r["epoch"] for r in records), default=0),
        "steps": max((r["step"] for r in records), default=0),
        "stopped_early": any(cursor.stopped_early for _, cursor in fitted),
        **metrics,
        "wall_time_s": wall_s,
        "train_time_s": train_s,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        "batch_size": spec.train.batch_size,
        "precision": spec.train.precision,
        "kernels": spec.train.kernels,
        "compile": _compile_record(run),
        **report.environment(run.device, run.dist.world_size),
    }
    best = [learner.stopper.best_epoch for learner in learners if learner.stopper is not None]
    if best:
        summary["best_epoch"] = best[0] if len(best) == 1 else best
    if spec.ensemble is not None and run.evaluate_test:
        summary["members"] = [_member_metrics(run, learner) for learner in learners]
    return summary


def _compile_record(run: Run) -> dict[str, Any]:
    """Whether the step was compiled, and the wall time of each shape's first (compiling) call."""
    if not run.spec.train.compile:
        return {"enabled": False}
    shapes = [{"shape": label, "seconds": seconds} for label, seconds in run.compile_seconds]
    return {"enabled": True, "seconds": sum(s["seconds"] for s in shapes), "shapes": shapes}


def _member_metrics(run: Run, learner: Learner) -> dict[str, Any]:
    loss, accuracy = evaluate_models([learner.model], learner.loss_fn, run.data.x_test, run.data.y_test,
                                     spec=run.spec, dist=run.dist, bf16=run.bf16)  # fmt: skip
    return {"test_loss": loss, "test_accuracy": accuracy}


def new_run_dir(spec: Spec, out: str | Path | None, dist: D.Dist) -> Path:
    """``out``, or ``runs/<name>-<time>``; refuses to train over an existing run."""
    if out is not None:
        path = Path(out)
        if (path / report.SPEC).exists() or (path / ckpt.STATE).exists():  # checked on every rank alike
            raise RunError(f"{path} already holds a run; continue it with --resume {path} or pick another --out",
                           exit_code=2)  # fmt: skip
    chosen: str | None = None
    if dist.is_main:
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{spec.name}-{stamp}"
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path("runs") / f"{spec.name}-{stamp}-{suffix}"
        path.mkdir(parents=True, exist_ok=True)
        chosen = str(path)
    return Path(D.broadcast_text(chosen, dist) or "")
