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

from nnspec.train import integrity

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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not what it should be."""


def _write_checked(path: str | Path, payload: bytes) -> None:
    """Atomically replace ``path`` and record its checksum (see integrity.py)."""
    integrity.write_checked(Path(path), payload, atomic_write_text,
                            lambda target, data: atomic_write(target, lambda handle: handle.write(data)))


def _read_checked(path: str | Path) -> bytes:
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    try:
        integrity.verify(path, payload)
    except integrity.IntegrityError as exc:
        raise CheckpointError(str(exc)) from None
    return payload


def save_weights(
    path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
) -> None:
    """Write a state_dict as safetensors, atomically; ``metadata`` values are stored as strings."""
    meta = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    _write_checked(path, safetensors_save(_cpu_tensors(state_dict), metadata=meta))


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state_dict on ``device`` (verified against its checksum).

    Raises CheckpointError for a file that is unreadable, corrupted or not safetensors.
    """
    payload = _read_checked(path)
    try:
        tensors = safetensors_load(payload)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError (and others)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({detail[:120]})") from None
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` the resume state, atomically (serialized in memory first, then one write)."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **state}, buffer)
    _write_checked(path, buffer.getvalue())


#: What ``state.pt`` must hold, and the type of each entry.
STATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int, "spec_name": str, "member": (int, type(None)), "world_size": int, "cursor": dict, "model": dict,
    "optimizer": dict, "schedule": dict, "early_stopping": (dict, type(None)), "ranks": list,
}


def load_state(path: str | Path) -> dict[str, Any]:
    """Read ``state.pt`` (tensors, numbers, strings only: ``weights_only`` loading, no pickled code).

    Raises CheckpointError for anything that is not a complete state written by this version.
    """
    payload = _read_checked(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError, ... all mean "not a state"
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (it holds a {type(state).__name__}, not a mapping)")
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {state.get('format')!r}")
    wrong = [key for key, kind in STATE_KEYS.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise CheckpointError(f"{path} is incomplete or damaged: missing or malformed {', '.join(wrong)}")
    return state


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files a kill in the middle of :func:`atomic_write` left behind."""
    removed = []
    for name in (WEIGHTS, STATE, integrity.CHECKSUMS):
        for temp in Path(directory).glob(f".{name}.*.tmp"):
            temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


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
