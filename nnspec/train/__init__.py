"""Training: train a spec (``nnspec train``) and evaluate saved weights (``nnspec eval``).

``train``, ``evaluate`` and ``RunError`` are imported on first use (PEP 562), so
that importing one standalone part (``nnspec.train.optim``, ``checkpoint``, …)
does not pull in the compiler and the whole training stack. Where to read on:
:mod:`nnspec.train.trainer` gives the reading order of the modules.

This package is also callable: ``nnspec.train(spec, …)`` is the public API
(``nnspec.train.train``). Python binds a loaded subpackage over the parent's
attribute of the same name, so without this ``nnspec.train`` would stop being
the function as soon as anything imported ``nnspec.train.<module>``.

See docs/training.md for the run directory layout, resuming, multi-process
training and the measured overhead.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["RunError", "evaluate", "train"]

_HOME = {"RunError": "nnspec.train.resolve", "evaluate": "nnspec.train.evaluation", "train": "nnspec.train.trainer"}

if TYPE_CHECKING:  # pragma: no cover
    from nnspec.train.evaluation import evaluate
    from nnspec.train.resolve import RunError
    from nnspec.train.trainer import train


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(_HOME[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnspec.train' has no attribute {name!r}")


class _CallablePackage(ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``nnspec.train(spec, …)``: see :func:`nnspec.train.trainer.train`."""
        return self.train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
