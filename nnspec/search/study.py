"""The Optuna study of a search: its sampler and pruner, what it records, and where it stands.

A study is created once (by whichever process gets there first) and loaded by
every worker. It records the search it was made for (objective and space), so
that continuing it with a different space is refused instead of mixing two
searches in one table.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler, GridSampler, QMCSampler, RandomSampler, TPESampler
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nnspec.search.space import dimensions
from nnspec.search.storage import SearchError
from nnspec.spec.search import SearchSection

#: User attributes of a trial.
ROUND, VALUES, ERROR, DIRECTORY, HOST, SECONDS, SURPLUS = (
    "round", "values", "error", "directory", "host", "seconds", "surplus",
)  # fmt: skip
#: Study attribute: the search the study was created for.
SEARCH_ATTR = "nnspec:search"

optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from nnspec, not Optuna's log


def search_identity(section: SearchSection) -> dict[str, Any]:
    """What must not change when a study is continued: the objective and the space."""
    return {"objective": section.objective, "space": section.model_dump(mode="json")["space"]}


def make_sampler(section: SearchSection, worker_seed: int) -> BaseSampler:
    """The sampler; QMC shares one seed across workers (its points are indexed by trial number)."""
    if section.sampler == "grid":
        grid = {dim.param: dim.grid() for dim in dimensions(section)}
        return GridSampler(grid, seed=worker_seed)
    if section.sampler == "qmc":
        return QMCSampler(seed=section.seed, warn_independent_sampling=False)
    if section.sampler == "tpe":
        return TPESampler(seed=worker_seed)
    return RandomSampler(seed=worker_seed)


def make_pruner(section: SearchSection, epochs: int) -> BasePruner:
    if section.pruner == "median":
        return MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if section.pruner == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return NopPruner()


def worker_seed(section: SearchSection, trials_at_start: int, worker: int, shared: bool) -> int:
    """A seed per worker and per invocation: two workers, or a continued study, never repeat each other's draws.

    Reproducible on one machine (the same command on a fresh study draws the
    same first points); with a shared database the host and process join in,
    since two machines may start with the same counts.
    """
    parts = [section.seed, trials_at_start, worker]
    if shared:
        import os

        parts += [socket.gethostname(), os.getpid()]
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_study(storage: BaseStorage, name: str, section: SearchSection, sampler: BaseSampler | None = None,
               pruner: BasePruner | None = None, create: bool = False) -> optuna.Study:  # fmt: skip
    """Load (or with ``create``, create if missing) the study, checking it was made for this search."""
    identity = search_identity(section)
    if create:
        study = optuna.create_study(study_name=name, storage=storage, direction=section.direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)  # fmt: skip
        if SEARCH_ATTR not in study.user_attrs:
            study.set_user_attr(SEARCH_ATTR, identity)
    else:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    recorded = study.user_attrs.get(SEARCH_ATTR)
    if recorded is not None and recorded != identity:
        raise SearchError(
            f"study '{name}' was created for another search (objective or space differ); "
            "give another --study or --out, or restore the spec's search section",
            exit_code=2,
        )
    if study.direction.name.lower() != section.direction:
        raise SearchError(f"study '{name}' {study.direction.name.lower()}s; this objective needs {section.direction}",
                          exit_code=2)  # fmt: skip
    return study


@dataclass(frozen=True)
class Standing:
    """Where a study stands: counts by state (surplus trials, see :mod:`.worker`, are not failures)."""

    finished: int  # complete or pruned
    complete: int
    running: int
    waiting: int
    failed: int

    @classmethod
    def of(cls, trials: list[FrozenTrial]) -> "Standing":
        count = {state: 0 for state in TrialState}
        failed = 0
        for trial in trials:
            count[trial.state] += 1
            if trial.state == TrialState.FAIL and not trial.user_attrs.get(SURPLUS):
                failed += 1
        return cls(
            finished=count[TrialState.COMPLETE] + count[TrialState.PRUNED],
            complete=count[TrialState.COMPLETE],
            running=count[TrialState.RUNNING],
            waiting=count[TrialState.WAITING],
            failed=failed,
        )


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None when none has completed."""
    try:
        return study.best_trial
    except ValueError:
        return None
