"""The one error type users see: a list of located, one-line diagnostics.

Every problem with a spec — YAML syntax, schema, shapes, meaning — ends up as a
:class:`Diagnostic` so that the CLI can print all of them at once, one per line,
as ``file:line:col: key.path: message``, and exit 2 without a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Iterable


#: Everything ``str.splitlines`` (and so a terminal or an editor) may break a line at.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True, order=True)
class Position:
    """Where a value was written: 1-based line and column in ``file``."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where it was written, which key it concerns, and what is wrong."""

    position: Position | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.position}: " if self.position else ""
        key = f"{self.path}: " if self.path else ""
        # Keep the one-line promise even when a message quotes user text (any line break).
        return clip_line(_LINE_BREAKS.sub(" ", f"{where}{key}{self.message}"))


#: The longest error line printed.  Messages quote user values (keys, paths, scalars), and a
#: spec may `extends` any file - a 200,000-character key, or a secrets file's contents,
#: must not come back whole.
MAX_LINE = 300


def clip_line(line: str, limit: int = MAX_LINE) -> str:
    """``line`` cut to ``limit`` characters, saying how much was left out."""
    if len(line) <= limit:
        return line
    cut = len(line) - (limit - 40)
    return f"{line[: limit - 40]}... ({cut:,} more characters)"


class SpecError(Exception):
    """A spec (or an override of one) is invalid. Carries every diagnostic found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(
            diagnostics, key=lambda d: (d.position or Position("", 0, 0), d.path)
        )
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @classmethod
    def single(cls, message: str, *, position: Position | None = None, path: str = "") -> "SpecError":
        return cls([Diagnostic(position, path, message)])


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or an empty string when nothing is close."""
    close = get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def short_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe for integers too long to print."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit integer>"  # repr() may refuse (int_max_str_digits)
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(path: Iterable[object]) -> str:
    """``('model', 3, 'out')`` -> ``model.3.out``: the addressing users write."""
    return ".".join(str(p) for p in path)
