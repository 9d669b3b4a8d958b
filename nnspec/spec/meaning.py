"""Meaning checks: specs that type-check but do not mean what their author wants.

Each finding is an error, or a warning where a textbook setup legitimately does
the thing (the caller prints warnings and goes on).
"""

from __future__ import annotations

from dataclasses import dataclass

from nnspec.spec.model import Spec


@dataclass(frozen=True)
class Finding:
    path: tuple[str | int, ...]
    message: str
    warning: bool = False


def meaning_findings(spec: Spec) -> list[Finding]:
    """Every meaning problem of ``spec`` (shapes are already known to be valid)."""
    return []
