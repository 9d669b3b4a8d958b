"""Crash-safe checkpoint files: the weights (``model.safetensors``) and the resume state (``state.pt``).

Why every write goes through :func:`atomic_write`: a run may be killed at any
instant (``kill -9``, a pre-empted node, Ctrl-C twice). Writing to a temporary
file in the same directory, flushing, ``fsync``-ing and then ``os.replace``-ing
it over the old file means a reader only ever sees the old complete file or
the new complete file, never half of one. The directory is fsynced too, so the
rename itself survives a power cut.

Why ``state.pt`` carries its own copy of the weights: the two files are
replaced one after the other, and a kill between the two renames would pair
new weights with an old optimizer state (or the reverse). Resuming reads
``state.pt`` alone, which is always self-consistent; ``model.safetensors`` is
the published artifact that ``nnspec eval`` and users load, written first, so
it is never older than the state that describes it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

__all__ = [
    "WEIGHTS",
    "STATE",
    "atomic_write",
    "atomic_write_text",
    "save_weights",
    "load_weights",
    "save_state",
    "load_state",
    "capture_rng",
    "restore_rng",
]

WEIGHTS = "model.safetensors"
STATE = "state.pt"
STATE_FORMAT = 1


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry is only durable once the directory is synced."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` via a temp file in the same directory: flush, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave temp files behind, keep the old file.
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _cpu_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own, contiguous CPU copies: safetensors refuses tensors that share storage (views, ties)."""
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state_dict.items()}


def save_weights(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write a state_dict as safetensors, atomically; ``metadata`` values are stored as strings."""
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    payload = safetensors_save(_cpu_tensors(state_dict), metadata=meta)
    atomic_write(path, lambda handle: handle.write(payload))


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state_dict on ``device``."""
    tensors = safetensors_load(Path(path).read_bytes())
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` the resume state, atomically (serialized in memory first, then one write)."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    atomic_write(path, lambda handle: handle.write(payload))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read ``state.pt`` (tensors, numbers, strings only: ``weights_only`` loading, no pickled code)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {state.get('format')!r}")
    return state


# -- random number generators ------------------------------------------------


def capture_rng(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG stream training draws from: torch's global CPU/CUDA ones (dropout) and ours."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Put every stream back exactly where :func:`capture_rng` found it."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])
