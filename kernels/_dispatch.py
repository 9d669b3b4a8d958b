"""Backend selection, and activation of an op module's Triton kernels on first use.

Nothing in this module imports triton.  The op modules hold their Triton kernels as
deferred stand-ins (see ``_triton``); :func:`load` makes them real - importing triton -
only once a caller has asked for the Triton backend on a device where it can run.  That
keeps ``import nnspec.kernels`` and the whole CPU path triton-free.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

from . import _triton

BACKENDS = ("auto", "triton", "torch")

_TRUTHY = {"1", "true", "on", "yes", "y"}

_loaded: dict[str, ModuleType] = {}
# find_spec locates the package without executing it; doing it once, at import, also keeps
# resolve() free of calls that torch.compile would have to trace.
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUTHY


def triton_installed() -> bool:
    return _HAS_TRITON


def triton_available() -> bool:
    """True when the Triton backend can run in this process: triton is installed and either a
    CUDA device is present or Triton's interpreter is enabled (TRITON_INTERPRET=1).

    Does not import triton.
    """
    if not triton_installed():
        return False
    return interpreter_requested() or torch.cuda.is_available()


def resolve(backend: str, device: torch.device) -> str:
    """Map a user ``backend`` to "triton" or "torch" for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and _HAS_TRITON else "torch"
    if torch.compiler.is_compiling():
        # Tracing: the op re-resolves (and raises if need be) when it actually runs.
        return "triton"
    if not _HAS_TRITON:
        raise RuntimeError("backend='triton' was requested but triton is not installed")
    if device.type != "cuda" and not interpreter_requested():
        raise RuntimeError(
            f"backend='triton' on {device.type} tensors needs Triton's interpreter: set "
            "TRITON_INTERPRET=1 in the environment before nnspec.kernels first uses Triton "
            "(or move the tensors to a CUDA device, or use backend='torch')."
        )
    return "triton"


def load(name: str, device: torch.device) -> ModuleType:
    """The op module ``nnspec.kernels.<name>`` with its Triton kernels activated (once)."""
    mod = _loaded.get(name)
    if mod is None:
        mod = _triton.activate(importlib.import_module(f"{__package__}.{name}"))
        _loaded[name] = mod
    # triton.jit picks compiled-vs-interpreted when the kernels are activated; if that
    # happened before TRITON_INTERPRET was set, CPU tensors cannot be launched on.
    if device.type != "cuda" and not mod.INTERPRET:
        raise RuntimeError(
            f"nnspec.kernels.{name}'s Triton kernels were activated with Triton's interpreter "
            f"off, so they cannot run on {device.type} tensors; set TRITON_INTERPRET=1 before "
            "the first Triton use."
        )
    return mod


def runs_triton(name: str, backend: str, device: torch.device) -> bool:
    """Whether an op call on ``device`` runs the Triton kernels of the op module
    ``nnspec.kernels.<name>`` (activating them, see :func:`load`) rather than its reference."""
    if resolve(backend, device) == "torch":
        return False
    load(name, device)
    return True


def _plain(t) -> bool:
    return t is None or type(t) in (torch.Tensor, torch.nn.Parameter)


def use_custom_op(backend: str, *tensors) -> bool:
    """Whether a call must go through the registered custom op.

    Eager calls on the "torch" backend skip the op and call torch.nn.functional: calling
    any torch.library.custom_op makes PyTorch import torch._dynamo, which imports triton,
    and the CPU path is meant to stay triton-free (and dispatcher-free, which is faster).
    Anything that traces - torch.compile, torch.export, make_fx, fake or functional tensors,
    or any active dispatch/function mode - gets the custom op, so graphs always contain
    the nnspec op whatever the backend.
    """
    if backend == "triton":
        return True
    # is_compiling() first: under dynamo it is constant-folded, so the C-level probes
    # below are never traced.
    if torch.compiler.is_compiling():
        return True
    if torch._C._len_torch_dispatch_stack() > 0 or torch._C._len_torch_function_stack() > 0:
        return True
    return not all(_plain(t) for t in tensors)


def tracing(*tensors) -> bool:
    """Whether any of ``tensors`` is a fake / functional / subclass tensor or a trace is
    running: their values cannot be read, so value checks must be skipped."""
    if torch.compiler.is_compiling():
        return True
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    return not all(_plain(t) for t in tensors)
