"""Checkpoints and resuming: what goes into ``state.pt`` and ``model.safetensors`` at a step or
epoch boundary, how a learner is put back exactly where it stopped, and which spec changes a
resumed run accepts. The file formats and atomic writes are :mod:`nnspec.train.checkpoint`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnspec.spec.model import Spec
from nnspec.train import checkpoint as ckpt
from nnspec.train import distributed as D
from nnspec.train import report
from nnspec.train.epoch_log import EpochLog
from nnspec.train.learner import Cursor, Learner, Member, Run
from nnspec.train.resolve import RunError, resolve_spec


def _rank_state(learner: Learner, log: EpochLog | None, run: Run) -> list[dict[str, Any]]:
    """Every rank's own random streams and partial sums (a collective call under DDP)."""
    sums = log.state() if log is not None else {}
    return D.all_gather({"rng": ckpt.capture_rng(learner.generators), "tally": sums}, run.dist)


def save_checkpoint(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog | None) -> None:
    """Weights first, then the self-contained resume state (see checkpoint.py for why both hold weights).

    ``log`` holds the partial sums of an epoch in progress (None at an epoch's end).
    """
    ranks = _rank_state(learner, log, run)
    cursor.saved_step = cursor.global_step
    if not run.dist.is_main:
        return
    weights = learner.model.state_dict()
    meta = {"spec": run.spec.name, "epoch": cursor.epoch, "step": cursor.step, "global_step": cursor.global_step}
    try:
        _write_checkpoint(member, weights, meta, learner, run, cursor, ranks)
    except OSError as exc:  # a full disk, a read-only or vanished directory: the machine's problem
        raise RunError(
            f"cannot write the checkpoint in {member.directory}: {exc.strerror or exc}; the previous checkpoint "
            "is intact (free some space, then continue with --resume)", exit_code=1,
        ) from None


def _write_checkpoint(member: Member, weights: dict, meta: dict, learner: Learner, run: Run, cursor: Cursor,
                      ranks: list) -> None:  # fmt: skip
    ckpt.save_weights(member.directory / ckpt.WEIGHTS, weights, meta)
    ckpt.save_state(member.directory / ckpt.STATE, {
        "spec_name": run.spec.name,
        "member": member.index,
        "world_size": run.dist.world_size,
        "cursor": cursor.to_state(),
        "model": {name: tensor.detach().cpu() for name, tensor in weights.items()},
        "optimizer": learner.optimizer.state_dict(),
        "schedule": learner.schedule.state_dict(),
        "early_stopping": learner.stopper.state_dict() if learner.stopper is not None else None,
        "ranks": ranks,
    })  # fmt: skip


def load_checkpoint(run: Run, member: Member, learner: Learner) -> Cursor:
    """Put a learner back exactly where a checkpoint left it; returns the cursor to continue from."""
    path = member.directory / ckpt.STATE
    try:
        state = ckpt.load_state(path)
    except ckpt.CheckpointError as exc:
        raise RunError(f"cannot resume: {exc}", exit_code=2) from None
    try:
        return _restore(run, learner, state, path)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise RunError(f"cannot resume from {path}: it does not fit this run ({type(exc).__name__}: {detail})",
                       exit_code=2) from None


def _restore(run: Run, learner: Learner, state: dict, path: Path) -> Cursor:
    if state["spec_name"] != run.spec.name:
        raise RunError(f"{path} belongs to spec '{state['spec_name']}', not '{run.spec.name}'", exit_code=2)
    if state["world_size"] != run.dist.world_size:
        raise RunError(
            f"{path} was written by {state['world_size']} process(es); resume it with the same number "
            f"(this is {run.dist.world_size})", exit_code=2,
        )  # fmt: skip
    learner.model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.schedule.load_state_dict(state["schedule"])
    if learner.stopper is not None and state["early_stopping"] is not None:
        learner.stopper.load_state_dict(state["early_stopping"])
    if len(state["ranks"]) != run.dist.world_size:
        raise RunError(f"cannot resume from {path}: it holds {len(state['ranks'])} rank state(s) for "
                       f"{run.dist.world_size} process(es)", exit_code=2)
    mine = state["ranks"][run.dist.rank]
    ckpt.restore_rng(mine["rng"], learner.generators)
    cursor = Cursor(**state["cursor"], tally=mine["tally"])
    cursor.saved_step = cursor.global_step
    return cursor


def publish_weights(run: Run, member: Member, learner: Learner) -> None:
    """The final weights in ``model.safetensors`` (the best epoch's when early stopping restores them)."""
    if learner.stopper is not None and learner.stopper.restore_best and learner.stopper.restore(learner.model):
        if run.dist.is_main:
            meta = {"spec": run.spec.name, "epoch": learner.stopper.best_epoch, "restored_best": True}
            ckpt.save_weights(member.directory / ckpt.WEIGHTS, learner.model.state_dict(), meta)


#: What may change when resuming: how long to train, how often to checkpoint/evaluate, and whether the
#: step is compiled (the same steps, equal to rounding; the checkpoint does not depend on it), nothing
#: that would make the resumed steps differ from the ones the run was taking.
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.checkpoint_every", "train.eval_batch_size", "train.compile"})


def check_resume(spec: Spec, directory: Path) -> None:
    """Resuming continues *that* run: the spec given (with overrides) must match the one it recorded."""
    stored_path = directory / report.SPEC
    if not stored_path.exists():
        raise RunError(f"cannot resume: {directory} has no {report.SPEC} (is it a run directory?)", exit_code=2)
    stored, _ = resolve_spec(stored_path)
    dump = {"mode": "json", "exclude_none": True}
    keys = _differences(spec.model_dump(**dump), stored.model_dump(**dump))
    changed = [key for key in keys if key not in RESUMABLE_CHANGES]
    phases = spec.schedule if isinstance(spec.schedule, list) else [spec.schedule]
    if "train.epochs" in keys and any(getattr(p, "type", "") == "cosine" and p.epochs is None for p in phases):
        changed.append("train.epochs (a cosine schedule without 'epochs' was sized for the original length)")
    if changed:
        raise RunError(
            f"cannot resume {directory}: the spec differs from the run's {report.SPEC} at {', '.join(changed[:8])}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming. "
            f"Resume with the run's own spec ({stored_path}) or start a new run", exit_code=2,
        )  # fmt: skip


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for key in keys for d in _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}.{i}")]
    return [] if a == b else [path or "(root)"]
