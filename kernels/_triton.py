"""Deferred Triton for the op modules, and the helpers they share.  Imports no triton.

Why this exists
---------------
Each op module (cross_entropy_op.py, linear_leaky_relu_op.py, batch_norm_op.py) keeps its Triton
kernels beside its custom-op registration and its PyTorch reference, and the custom ops
are registered when ``nnspec.kernels`` is imported.  The CPU path must never import triton
(it is slow to import and may be absent), so the op modules cannot ``import triton`` at
their top.  Instead they write ordinary Triton::

    from ._triton import tl, triton

    @triton.jit
    def _kernel(x_ptr, BLOCK: tl.constexpr): ...

and get the ``triton`` and ``tl`` defined here.  Until :func:`activate` runs, ``triton`` is
a stand-in whose decorators (``jit``, ``autotune``, ``heuristics``) and ``Config`` only
record their arguments and return :class:`Deferred` objects; ``tl`` refuses every use.
Nothing else is needed at import: ``from __future__ import annotations`` keeps the
``tl.constexpr`` annotations unevaluated strings, and kernel bodies only run when launched.

``activate(module)`` (called by ``_dispatch.load`` before the first Triton launch) imports
the real triton, decides whether its interpreter is on (``INTERPRET``), and rebinds the
module's globals: the stand-ins become the real ``triton`` / ``triton.language``, and every
Deferred global is replayed into the real object (JITFunction, InterpretedFunction,
Autotuner, ...).  A Deferred is built once and cached, so a helper kernel imported by
several modules (``join_f64``) is one JITFunction everywhere.  This works because Triton
reads a kernel's source through ``inspect`` and resolves the names it uses through
``fn.__globals__`` - the module's dict - when the kernel is first compiled or interpreted,
which is after activation.  Rule for op modules: keep Triton objects in module globals.

The shared helpers (fp32-pair scalars, accumulation dtypes, empty gradients) follow.
"""
from __future__ import annotations

import importlib
import struct
import sys
import threading
from types import ModuleType

import torch

# Whether triton.jit builds interpreted functions; None until the first activate().  The
# op modules import this name and activate() rebinds their copy too.
INTERPRET: bool | None = None


class Deferred:
    """``triton.<name>(*args, **kwargs)`` - applied to ``target`` if given - to be run at
    activation.  Arguments may hold other Deferred objects (an autotuner's Configs and the
    kernel it wraps); they are built first."""

    __slots__ = ("name", "args", "kwargs", "target", "built")

    def __init__(self, name, args=(), kwargs=None, target=None):
        self.name, self.args, self.kwargs, self.target = name, tuple(args), dict(kwargs or {}), target
        self.built = None

    def __repr__(self):
        inner = self.target if self.target is not None else (self.args[0] if self.args else None)
        what = getattr(inner, "__qualname__", None) or repr(inner)
        return f"<deferred triton.{self.name} of {what}>"

    def _real(self):
        if self.built is None:
            raise RuntimeError(
                f"{self!r} is used before nnspec.kernels activated its Triton kernels; "
                "go through the public functions, or call nnspec.kernels._triton.activate(module)"
            )
        return self.built

    # A reference kept from before activation still works afterwards.
    def __getitem__(self, grid):
        return self._real()[grid]

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):  # keep hasattr(), copy and inspect probes harmless
            raise AttributeError(name)
        return getattr(self._real(), name)


class _TritonStandIn:
    """Records ``triton.jit`` / ``autotune`` / ``heuristics`` / ``Config``; nothing else."""

    def jit(self, fn=None, **kwargs):
        if fn is None:  # @triton.jit(...)
            return lambda f: Deferred("jit", (f,), kwargs)
        return Deferred("jit", (fn,), kwargs)

    def autotune(self, *args, **kwargs):
        return lambda target: Deferred("autotune", args, kwargs, target)

    def heuristics(self, *args, **kwargs):
        return lambda target: Deferred("heuristics", args, kwargs, target)

    def Config(self, *args, **kwargs):  # noqa: N802 - mirrors triton.Config
        return Deferred("Config", args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"triton.{name} is used before nnspec.kernels imported triton (see _triton.activate)")

    def __repr__(self):
        return "<triton, not imported yet (nnspec.kernels._triton)>"


class _LanguageStandIn:
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"tl.{name} is used before nnspec.kernels imported triton (see _triton.activate)")

    def __repr__(self):
        return "<triton.language, not imported yet (nnspec.kernels._triton)>"


triton = _TritonStandIn()
tl = _LanguageStandIn()

_lock = threading.RLock()


def _build(obj, real):
    """Build obj if it is (or holds) Deferred objects; anything else is returned as is."""
    if isinstance(obj, Deferred):
        if obj.built is None:
            made = getattr(real, obj.name)(*_build(obj.args, real), **_build(obj.kwargs, real))
            if obj.target is not None:
                made = made(_build(obj.target, real))
            obj.built = made
        return obj.built
    if isinstance(obj, (list, tuple)):
        return type(obj)(_build(o, real) for o in obj)
    if isinstance(obj, dict):
        return {k: _build(v, real) for k, v in obj.items()}
    return obj


def activate(module: ModuleType) -> ModuleType:
    """Import triton and turn ``module``'s Triton stand-ins into the real thing (idempotent).

    Rebinds, in ``module``'s globals, the ``triton`` / ``tl`` stand-ins to the real modules,
    ``INTERPRET`` to whether Triton's interpreter is on, and every Deferred to what it
    builds.  This module activates itself first: its own kernels (join_f64) and acc_dtype
    use ``tl`` too.
    """
    global INTERPRET
    with _lock:
        real = importlib.import_module("triton")
        language = importlib.import_module("triton.language")
        if INTERPRET is None:
            # the setting triton.jit consults, read once: every kernel is built the same way
            INTERPRET = bool(real.knobs.runtime.interpret)
        if INTERPRET:
            problem = interpreter_numpy_problem(real.__version__, _numpy_version())
            if problem:
                raise RuntimeError(problem)
        for mod in (_SELF, module) if module is not _SELF else (_SELF,):
            namespace = vars(mod)
            for name, value in list(namespace.items()):
                if isinstance(value, _TritonStandIn):
                    namespace[name] = real
                elif isinstance(value, _LanguageStandIn):
                    namespace[name] = language
                elif isinstance(value, Deferred):
                    namespace[name] = _build(value, real)
            if "INTERPRET" in namespace:
                namespace["INTERPRET"] = INTERPRET
    return module


_SELF = sys.modules[__name__]


def _numpy_version() -> str | None:
    try:
        return importlib.import_module("numpy").__version__
    except ImportError:
        return None


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits or not piece[0].isdigit():
            break
        parts.append(int(digits))
    return tuple(parts)


def interpreter_numpy_problem(triton_version: str, numpy_version: str | None) -> str | None:
    """Why Triton's interpreter cannot run with these versions, or None.

    Triton before 3.7 converts one-element arrays to Python ints in its interpreter, which
    NumPy 2.4 turned into a TypeError ("only 0-dimensional arrays can be converted to Python
    scalars", triton-lang/triton#9171, fixed in 3.7.0).  Packaging cannot pin NumPy for that
    combination only (a requirement marker cannot see which Triton is installed, and torch
    pins its Triton), so the interpreter refuses it up front, with the two ways out.
    """
    if numpy_version is None:
        return None
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter (TRITON_INTERPRET=1) fails with NumPy {numpy_version}: "
                "install 'numpy<2.4' or 'triton>=3.7' (triton-lang/triton#9171)")
    return None


# --------------------------------------------------------------------------- shared helpers


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (so gradcheck works), everything else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """:func:`compute_dtype` as a Triton dtype, for the kernels' ``ACC`` argument."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def empty_grad(ref: torch.Tensor) -> torch.Tensor:
    # Placeholder for a gradient nobody asked for.  Custom ops cannot return None, and a
    # zero-length tensor costs nothing to allocate.
    return ref.new_empty((0,))


def split_f64(value: float) -> tuple[float, float]:
    """Split a Python float into two fp32-representable parts whose sum is the value to ~48
    bits.  Triton passes float scalars as fp32; kernels rejoin the parts in their
    accumulation dtype, so float64 inputs see exact hyper-parameters (slope, eps, ...)."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    lo = struct.unpack("f", struct.pack("f", value - hi))[0]
    return hi, lo


@triton.jit
def join_f64(hi, lo, ACC: tl.constexpr):
    # Start from an ACC zero so that both parts are promoted before they are added.
    return tl.zeros((), ACC) + hi + lo
