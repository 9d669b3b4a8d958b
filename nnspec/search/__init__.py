"""Hyperparameter search from a spec's ``search:`` section, on Optuna (``nnspec search``).

Reading order: :mod:`.run` (checks, workers, results) → :mod:`.worker` (the
loop every worker runs, and one trial) → :mod:`.space` (distributions, grid,
coarse-to-fine boxes) → :mod:`.study` (sampler, pruner, the study's records)
→ :mod:`.storage` (journal file or database, heartbeats) → :mod:`.report`.

A trial is an ordinary run directory trained by :mod:`nnspec.train`; nothing
but the CLI imports this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchError", "search"]


def __getattr__(name: str) -> Any:
    # Optuna loads on first use, so `import nnspec.search` stays cheap for `nnspec --help`.
    if name == "search":
        from nnspec.search.run import search

        return search
    if name == "SearchError":
        from nnspec.search.storage import SearchError

        return SearchError
    raise AttributeError(f"module 'nnspec.search' has no attribute {name!r}")
