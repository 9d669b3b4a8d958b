"""A one-line progress bar on stderr, redrawn at most ten times a second.

Why throttled: the running loss lives on the device, and reading it forces a
host sync on CUDA. The bar asks for it (through a callable) only when it is
about to redraw, so a fast loop pays for a handful of syncs per second, not one
per step. On a pipe or file (not a TTY) it draws nothing and only prints one
plain line per finished epoch, which is what a log wants.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "format_rate"]

BAR_WIDTH = 24
REDRAW_S = 0.1


def format_rate(samples_per_s: float) -> str:
    """``12,345 samples/s`` — thousands separators so rates are readable at a glance."""
    return f"{samples_per_s:,.0f} samples/s"


class Progress:
    """Per-epoch progress for one training run (``enabled=False`` prints nothing at all)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, world_size: int = 1):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.world_size = world_size  # the bar shows all ranks' throughput from rank 0's count
        self.live = enabled and _is_tty(self.stream)
        self._label = ""
        self._steps = 0
        self._last_draw = 0.0
        self._start = 0.0

    def start_epoch(self, epoch: int, epochs: int, steps: int, member: int | None = None) -> None:
        """``epoch`` is 1-based, as people count epochs."""
        prefix = f"member {member} " if member is not None else ""
        self._label = f"{prefix}epoch {epoch}/{epochs}"
        self._steps = steps
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, step: int, samples: Callable[[], int], loss: Callable[[], float]) -> None:
        """After ``step`` steps (1-based) of this epoch; this rank's ``samples`` and the ``loss`` are read
        only when the bar redraws, since the loop calls this every step."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last_draw < REDRAW_S and step < self._steps:
            return
        self._last_draw = now
        rate = samples() * self.world_size / max(now - self._start, 1e-9)
        filled = BAR_WIDTH * step // max(self._steps, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        line = f"{self._label} [{bar}] {step}/{self._steps} loss {loss():.4f} {format_rate(rate)}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def end_epoch(self, metrics: dict[str, float | int | None]) -> None:
        """Replace the bar with one permanent line of the epoch's metrics."""
        if not self.enabled:
            return
        parts = [self._label]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            value = metrics.get(key)
            if value is not None:
                parts.append(f"{key} {value:.4f}")
        if metrics.get("lr") is not None:
            parts.append(f"lr {metrics['lr']:.3g}")
        if metrics.get("samples_per_s") is not None:
            parts.append(format_rate(float(metrics["samples_per_s"])))  # type: ignore[arg-type]
        self.stream.write(("\r" if self.live else "") + "  ".join(parts) + ("\x1b[K" if self.live else "") + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line for the user (resume notes, early stop), on its own line even mid-bar."""
        if self.enabled:
            self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
            self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or exotic streams
        return False
