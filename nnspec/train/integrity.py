"""Checksums of the checkpoint files, kept beside them in ``checksums.json``.

Why: a bit flipped on disk (or in a copy) in ``model.safetensors`` still loads - the weights
are just silently different - and ``nnspec eval`` would report numbers for a model nobody
trained.  Each checkpoint write records the SHA-256 of the bytes it wrote; resuming and
evaluating recompute it and refuse a file that no longer matches.

Why a list of accepted digests per file, and three writes: the data file and the checksum
file cannot be replaced in one atomic step, and a run may be killed between any two
renames.  So a write first *adds* the new digest (the old file is still accepted), then
replaces the data file, then drops the old digest.  Whatever instant the kill lands on, the
file on disk matches one of the digests recorded.

Runs written before checksums existed have no ``checksums.json`` (or no entry for a file):
those files are read unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

CHECKSUMS = "checksums.json"


class IntegrityError(ValueError):
    """A checkpoint file does not match the checksum recorded when it was written."""


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _read(directory: Path) -> dict[str, list[str]]:
    try:
        recorded = json.loads((directory / CHECKSUMS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{directory / CHECKSUMS} is unreadable ({exc}); the checkpoint cannot be verified") from None
    if not isinstance(recorded, dict) or not all(
        isinstance(v, list) and all(isinstance(d, str) for d in v) for v in recorded.values()
    ):
        raise IntegrityError(f"{directory / CHECKSUMS} is damaged; the checkpoint cannot be verified")
    return recorded


def write_checked(path: Path, payload: bytes, write_text: Callable[[Path, str], None],
                  write_bytes: Callable[[Path, bytes], None]) -> None:
    """Replace ``path`` by ``payload`` and record its digest (see the module docstring for the order)."""
    directory, name = path.parent, path.name
    new = digest(payload)
    recorded = _read(directory) if (directory / CHECKSUMS).exists() else {}
    previous = recorded.get(name, [])
    recorded[name] = [new] + [d for d in previous if d != new][:1]
    write_text(directory / CHECKSUMS, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    write_bytes(path, payload)
    recorded[name] = [new]
    write_text(directory / CHECKSUMS, json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def verify(path: Path, payload: bytes) -> None:
    """Raise IntegrityError when ``payload`` (the bytes of ``path``) is not what was written."""
    accepted = _read(path.parent).get(path.name)
    if accepted is None:
        return  # written before checksums existed, or by hand: nothing to compare with
    if digest(payload) not in accepted:
        raise IntegrityError(
            f"{path} is corrupted: its SHA-256 does not match the one recorded in {CHECKSUMS} when it was "
            "written (a damaged disk or copy?)"
        )
