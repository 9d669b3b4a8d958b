"""How many CPU threads a run uses (``train.threads``, ``--threads``), and why.

PyTorch starts with one intra-op thread per core. Every parallel op then
hands its work to the other threads and waits for all of them at a barrier,
which costs tens of microseconds, and much more when another process holds a
core: the barrier waits until the descheduled thread runs again. A small step
(the textbook ablation's 784-200-10 MLP at one sample per step does about a
million FLOPs) is over long before that pays off: measured on this project's
shared 2-core VM, two threads ran such runs 2.5× slower (and, under heavier
load, 12×) than one. Large steps (convolutions on real batches) do gain from
more threads on a quiet machine.

So ``auto`` decides from the work of one step, known before training from the
compiled plan: ``3 × FLOPs per sample × batch size`` (forward, and a backward
of about twice the forward). Below :data:`SMALL_STEP_FLOPS` it picks one
thread; above, one per core available to this process (divided among the
processes of a ``torchrun``). The choice depends on the spec and the machine
only, never on the moment's load, so the same run on the same machine always
uses the same threads (and rounds the same way). A busy machine gets a
warning instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from nnspec.spec.model import Spec

__all__ = ["SMALL_STEP_FLOPS", "ThreadChoice", "available_cores", "busy_warning", "choose_threads", "step_flops"]

#: Per-step work (FLOPs, forward + backward) below which ``auto`` uses one thread. At the ~10-30
#: GFLOP/s one core does on these models, this is a step of a few milliseconds: long enough that a
#: barrier of tens of microseconds per op is small, short enough that the measured small cases
#: (MLPs at batch 1 to 64) stay on one thread. See docs/training.md ("Threads") for the measurements.
SMALL_STEP_FLOPS = 100e6

#: torch's own default, read once at import (before any run of ours has changed it).
_TORCH_DEFAULT = torch.get_num_threads()


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run uses, the setting it came from, and the reason (all go into summary.json)."""

    threads: int
    setting: int | str
    reason: str

    def to_json(self) -> dict[str, int | str]:
        return {"threads": self.threads, "threads_setting": self.setting, "threads_reason": self.reason}


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def step_flops(spec: Spec, device_type: str = "cpu") -> float:
    """FLOPs of one training step on one process: forward + backward (≈ 3× forward) of a batch."""
    from nnspec.compiler import plan

    return 3.0 * plan(spec, device_type).flops * spec.train.batch_size


def choose_threads(spec: Spec, device_type: str, world_size: int = 1) -> ThreadChoice:
    """The thread count for ``spec`` on this machine (``train.threads`` if it is a number)."""
    setting = spec.train.threads
    if setting != "auto":
        return ThreadChoice(int(setting), setting, "set by train.threads")
    per_process = max(1, min(_TORCH_DEFAULT, available_cores()) // max(1, world_size))
    if device_type != "cpu":
        return ThreadChoice(per_process, setting, f"training on {device_type}: torch's default per process")
    flops = step_flops(spec) / max(1, world_size)
    if flops < SMALL_STEP_FLOPS:
        return ThreadChoice(1, setting, f"small steps ({flops / 1e6:,.1f} MFLOP each, under "
                                        f"{SMALL_STEP_FLOPS / 1e6:,.0f}): one thread avoids the per-op barrier")  # fmt: skip
    return ThreadChoice(per_process, setting, f"large steps ({flops / 1e6:,.0f} MFLOP each): one thread per "
                                              f"available core{' per process' if world_size > 1 else ''}")  # fmt: skip


def busy_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other work already keeps every core busy and the run asks for several threads."""
    if threads <= 1:
        return None
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform
            return None
    cores = cores if cores is not None else available_cores()
    if load <= cores:
        return None
    return (f"warning: the machine is busy (1-minute load average {load:.1f} on {cores} cores) and this run uses "
            f"{threads} threads: each multi-threaded op waits for descheduled threads, which can make steps "
            f"several times slower; --threads 1 is usually faster on a busy machine")  # fmt: skip
