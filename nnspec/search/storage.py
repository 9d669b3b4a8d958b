"""Where a study lives: a journal file beside the trials (one machine), or a database (many).

Why these two: a study is shared by every process that works on it, so its
storage is what makes a search parallel. Optuna's journal file takes writers
from several processes of one machine (it appends under a file lock); a
PostgreSQL database takes them from several machines. SQLite is refused with
several workers: it locks the whole file per write and breaks under
concurrent writers.

Killed workers: a worker records a heartbeat while it holds a trial; a trial
whose heartbeat is older than the grace period is marked failed by the next
worker that looks (Optuna's ``fail_stale_trials``) and re-queued once with the
same parameters (``RetryHeartbeatStaleTrialCallback``). Optuna's RDB storage
has heartbeats built in; its journal storage does not, so
:class:`HeartbeatJournalStorage` adds them — the heartbeat is a trial system
attribute holding the machine's clock, which every process of one machine
shares — and Optuna's own heartbeat thread, stale check and retry do the rest.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nnspec.errors import Position, SpecError

JOURNAL = "study.journal"
HEARTBEAT_ATTR = "nnspec:heartbeat"
#: A trial held by a lost worker is retried this many times, then left failed.
MAX_RETRY = 2



@contextlib.contextmanager
def no_experimental_warnings() -> Iterator[None]:
    """Heartbeats and retries are marked experimental in Optuna; that is Optuna's note, not the user's problem."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class SearchError(Exception):
    """A search that cannot start (``exit_code`` 2: fix the input) or could not finish (1)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat interface its RDB storage has."""

    def __init__(self, path: Path, heartbeat_interval: int, grace_period: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:  # fmt: skip
        super().__init__(JournalFileBackend(str(path)))
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            started = trial.datetime_start.timestamp() if trial.datetime_start else None
            if beat is None or (started is not None and float(beat) < started - 1.0):
                continue  # no beat of its own yet (a retried trial inherits its original's attributes)
            if now - float(beat) > self._grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


SCHEMA_ATTEMPTS = 5


def _lost_schema_race(exc: BaseException) -> bool:
    text = str(exc)
    return "duplicate key value" in text or "already exists" in text


def _storage_flag(url: str) -> Position:
    return Position(f"--storage {url}", 1, 1)


def check_storage_url(url: str, jobs: int) -> None:
    """Refuse, before any work, a ``--storage`` that is not a database URL (exit 2, located on the flag)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise SpecError.single(
            f"not a database URL ({first}); give e.g. postgresql://user:password@host:5432/db, "
            "or leave --storage out for a journal file in --out",
            position=_storage_flag(url),
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and jobs > 1:
        raise SpecError.single(
            "SQLite breaks under several writers; with --jobs > 1 use PostgreSQL, or leave --storage out "
            "(a journal file in --out takes the processes of one machine)",
            position=_storage_flag(url),
        )


def open_storage(url: str | None, out: Path, heartbeat: int) -> BaseStorage:
    """The study's storage: the journal file in ``out`` when ``url`` is None, else the database at ``url``.

    Raises SearchError (exit 1) when the database cannot be reached or its driver is missing.
    """
    with no_experimental_warnings():
        return _open_storage(url, out, heartbeat)


def _open_storage(url: str | None, out: Path, heartbeat: int) -> BaseStorage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    grace = 3 * heartbeat
    if url is None:
        out.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(out / JOURNAL, heartbeat, grace, retry)
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat,
                                  grace_period=grace, heartbeat_stale_trial_callback=retry)  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                # Machines started together on a fresh database race to create Optuna's tables; the
                # loser's CREATE fails on a name the winner just took. The tables exist now: try again.
                if not _lost_schema_race(exc) or attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 + random.random())
        raise AssertionError("unreachable")
    except ImportError as exc:
        raise SearchError(
            f"cannot open {shown}: its database driver is not installed ({exc}); "
            'for PostgreSQL: pip install "nnspec[postgres]" (psycopg 3)'
        ) from None
    except Exception as exc:  # noqa: BLE001 — sqlalchemy's errors for an unreachable server vary by driver
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if first.startswith("(") and ")" in first:
            first = first.split(")", 1)[1].strip()
        raise SearchError(f"cannot reach the study's database at {shown}: {first}") from None
