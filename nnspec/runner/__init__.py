"""The runner: train a spec (``nnspec train``) and evaluate saved weights (``nnspec eval``).

``train``, ``evaluate`` and ``RunError`` live in :mod:`nnspec.runner.trainer`
and are imported on first use (PEP 562), so that importing one of the
standalone submodules (``nnspec.runner.datasets``, ``augment``, …) does not
pull in the compiler and the whole training stack.

See docs/training.md for the run directory layout, resuming, multi-process
training and the measured overhead.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["RunError", "evaluate", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from nnspec.runner.trainer import RunError, evaluate, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(import_module("nnspec.runner.trainer"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnspec.runner' has no attribute {name!r}")
