"""nnspec: declarative model specs compiled to PyTorch, with Triton kernels on the hot path.

The public API is imported lazily (PEP 562) so that ``import nnspec.kernels`` —
the Triton kernels, which must run on machines without pydantic — pulls in
nothing but torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from nnspec.version import __version__

_API = {
    "Spec": "nnspec.spec",
    "load_spec": "nnspec.spec",
    "loads_spec": "nnspec.spec",
    "SpecError": "nnspec.errors",
    "build": "nnspec.compiler",
    "build_loss": "nnspec.compiler",
    "plan": "nnspec.compiler",
    "train": "nnspec.train",
    "evaluate": "nnspec.train",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover
    from nnspec.compiler import build, build_loss, plan
    from nnspec.errors import SpecError
    from nnspec.spec import Spec, load_spec, loads_spec
    from nnspec.train import evaluate, train


def __getattr__(name: str) -> Any:
    if name == "train":  # the callable package itself (see nnspec/train/__init__.py)
        return import_module("nnspec.train")
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nnspec' has no attribute {name!r}")
