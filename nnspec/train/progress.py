"""A one-line progress bar on stderr, redrawn at most ten times a second, with the time left.

Why throttled: the running loss lives on the device, and reading it forces a
host sync on CUDA. The bar asks for it (through a callable) only when it is
about to redraw, so a fast loop pays for a handful of syncs per second, not one
per step. On a pipe or file (not a TTY) it draws no bar: it prints one plain
line per finished epoch, which is what a log wants, and a plain progress line
at least every :data:`LOG_EVERY_S` seconds within an epoch, so that a long
epoch (60,000 steps at batch size 1) does not look like a hung job for minutes.

The time left (``eta``) is the run's remaining steps, this epoch's and the
later epochs', at this epoch's pace so far; evaluation time is not in it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["LOG_EVERY_S", "Progress", "format_duration", "format_rate"]

BAR_WIDTH = 24
REDRAW_S = 0.1
#: Off a terminal, a progress line at least this often (seconds) while an epoch runs.
LOG_EVERY_S = 30.0


def format_rate(samples_per_s: float) -> str:
    """``12,345 samples/s`` — thousands separators so rates are readable at a glance."""
    return f"{samples_per_s:,.0f} samples/s"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Per-epoch progress for one training run (``enabled=False`` prints nothing at all)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, world_size: int = 1,
                 clock: Callable[[], float] = time.perf_counter):  # fmt: skip
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.world_size = world_size  # the bar shows all ranks' throughput from rank 0's count
        self.live = enabled and _is_tty(self.stream)
        self._clock = clock
        self._label = ""
        self._steps = 0
        self._epochs_after = 0  # epochs still to run after this one
        self._last_draw = 0.0
        self._start = 0.0
        self._first_step: int | None = None  # steps already done when this epoch's timing began (resume)

    def start_epoch(self, epoch: int, epochs: int, steps: int, member: int | None = None) -> None:
        """``epoch`` is 1-based, as people count epochs."""
        prefix = f"member {member} " if member is not None else ""
        self._label = f"{prefix}epoch {epoch}/{epochs}"
        self._steps = steps
        self._epochs_after = max(0, epochs - epoch)
        self._start = self._clock()
        self._last_draw = self._start
        self._first_step = None

    def eta(self, step: int, now: float) -> float | None:
        """Seconds left in the run at this epoch's pace (None until a step has been timed)."""
        if self._first_step is None or step <= self._first_step or now <= self._start:
            return None
        per_step = (now - self._start) / (step - self._first_step)
        return per_step * ((self._steps - step) + self._epochs_after * self._steps)

    def update(self, step: int, samples: Callable[[], int], loss: Callable[[], float]) -> None:
        """After ``step`` steps (1-based) of this epoch; this rank's ``samples`` and the ``loss`` are read
        only when a line is drawn, since the loop calls this every step."""
        if not self.enabled:
            return
        if self._first_step is None:
            self._first_step = step - 1
            return
        now = self._clock()
        if self.live:
            if now - self._last_draw < REDRAW_S and step < self._steps:
                return
        elif now - self._last_draw < LOG_EVERY_S:
            return
        self._last_draw = now
        rate = samples() * self.world_size / max(now - self._start, 1e-9)
        eta = self.eta(step, now)
        left = f"{' ' if self.live else '  '}eta {format_duration(eta)}" if eta is not None else ""
        if self.live:
            filled = BAR_WIDTH * step // max(self._steps, 1)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            line = f"{self._label} [{bar}] {step}/{self._steps} loss {loss():.4f} {format_rate(rate)}{left}"
            self.stream.write("\r" + line + "\x1b[K")
        else:
            percent = 100 * step // max(self._steps, 1)
            self.stream.write(f"{self._label}  step {step}/{self._steps} ({percent}%)  loss {loss():.4f}  "
                              f"{format_rate(rate)}{left}\n")  # fmt: skip
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
        if self._epochs_after and metrics.get("seconds") is not None:
            parts.append(f"eta {format_duration(self._epochs_after * float(metrics['seconds']))}")  # type: ignore[arg-type]
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
