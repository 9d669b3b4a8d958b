"""How a callable is timed: CUDA events with the L2 flushed, CUDA graphs, or the CPU timer.

Every timer returns a :class:`Stats` of *per-call* seconds: median, p10, p90, IQR and the
number of samples, plus a short ``method`` string that the report prints next to the row so
that nobody has to guess how a number was obtained.

* CUDA, default: after a warm-up, each rep is ``flush.zero_(); _sleep(); start.record(); fn();
  end.record()`` where ``flush`` is a buffer at least twice the size of the L2 cache, so
  every rep starts with the operands in HBM, not L2, and ``torch.cuda._sleep`` holds the GPU
  for longer than the host takes to enqueue one call, so the events see no launch gaps.
  The median of the reps is reported.
* CUDA graphs, for tiny ops whose time is dominated by kernel launches: ``inner`` calls are
  captured in one graph and the graph is replayed; per-call time = replay time / inner.
  The L2 cannot be flushed inside a graph, so these rows are "L2 warm" - which is also how
  MNIST-sized tensors live during training.
* CPU: ``torch.utils.benchmark.Timer`` with a fixed thread count, in blocks of ``number``
  calls sized to ~1/20 of the row's time budget, so that p10/p90 have ~20 samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Stats:
    """Per-call times in seconds."""

    median: float
    p10: float
    p90: float
    q25: float
    q75: float
    n: int
    method: str

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25

    def to_json_ms(self) -> dict:
        d = asdict(self)
        out = {k: d[k] * 1e3 for k in ("median", "p10", "p90", "q25", "q75")}
        out["iqr"] = self.iqr * 1e3
        out["n"] = self.n
        return out


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def summarize(samples: Sequence[float], method: str) -> Stats:
    s = sorted(float(x) for x in samples)
    return Stats(
        median=quantile(s, 0.5), p10=quantile(s, 0.1), p90=quantile(s, 0.9),
        q25=quantile(s, 0.25), q75=quantile(s, 0.75), n=len(s), method=method,
    )  # fmt: skip


# --------------------------------------------------------------------------- CPU


def time_cpu(fn: Callable[[], object], *, threads: int, budget_s: float = 0.2, min_blocks: int = 10,
             max_blocks: int = 40) -> Stats:  # fmt: skip
    """Time ``fn`` with torch.utils.benchmark.Timer at ``threads`` threads.

    The block size (calls per sample) is calibrated so one block takes ~budget_s / 20; blocks
    are collected until ``budget_s`` has passed and at least ``min_blocks`` were taken (a slow
    op may overrun the budget to reach min_blocks, but never takes more than max_blocks).
    """
    from torch.utils.benchmark import Timer

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    fn()  # warm-up (allocator, lazy init, one-time dispatch work)
    target = max(budget_s / 20.0, 1e-4)
    # Size the blocks from the fastest of a few probes, so that one call delayed by the OS
    # (a busy machine) does not shrink every block to a single call.
    number = 1
    while True:
        per_call = min(timer.timeit(number).times[0] for _ in range(3))
        if per_call * number >= target or number >= 1 << 20:
            break
        number = min(1 << 20, max(number * 2, int(target / max(per_call, 1e-9) * 1.2)))
    samples: list[float] = []
    if per_call * number > budget_s / 5:
        min_blocks = min(min_blocks, 5)  # slow calls: 5 samples rather than blowing the budget
    start = time.perf_counter()
    while len(samples) < max_blocks:
        samples.append(timer.timeit(number).times[0])
        elapsed = time.perf_counter() - start
        if len(samples) >= min_blocks and elapsed >= budget_s:
            break
        if len(samples) >= 3 and elapsed >= 10 * budget_s:  # a machine too busy to honour the budget
            break
    return summarize(samples, f"cpu-timer ({threads} thr, {number}/block)")


def time_cpu_group(fns: dict[str, Callable[[], object]], *, threads: int, budget_s: float = 0.2,
                   rounds: int = 4, min_blocks: int = 10) -> dict[str, Stats]:  # fmt: skip
    """Time several implementations of the same op on the CPU, *interleaved*.

    Each gets ``budget_s`` in total, spent in ``rounds`` turns taken in rotation, so a burst
    of load from other processes lands on all of them rather than on whichever happened to
    be running: the ratios between them (the speedup columns) stay meaningful on a shared
    machine.  Block sizes are calibrated per implementation as in :func:`time_cpu`.
    """
    from torch.utils.benchmark import Timer

    timers, numbers = {}, {}
    target = max(budget_s / 20.0, 1e-4)
    for name, fn in fns.items():
        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        fn()
        number = 1
        while True:
            per_call = min(timer.timeit(number).times[0] for _ in range(3))
            if per_call * number >= target or number >= 1 << 20:
                break
            number = min(1 << 20, max(number * 2, int(target / max(per_call, 1e-9) * 1.2)))
        timers[name], numbers[name] = timer, number
    samples: dict[str, list[float]] = {name: [] for name in fns}
    per_round = budget_s / rounds
    for r in range(rounds):
        for name, timer in timers.items():
            start = time.perf_counter()
            want = -(-min_blocks * (r + 1) // rounds)  # ceil: spread min_blocks over the rounds
            while True:
                samples[name].append(timer.timeit(numbers[name]).times[0])
                elapsed = time.perf_counter() - start
                if (len(samples[name]) >= want and elapsed >= per_round) or elapsed >= 10 * per_round:
                    break
    return {name: summarize(samples[name], f"cpu-timer ({threads} thr, {numbers[name]}/block, interleaved)")
            for name in fns}  # fmt: skip


# --------------------------------------------------------------------------- CUDA


_flush_buffers: dict[int, torch.Tensor] = {}


def l2_flush_buffer(device: torch.device | None = None) -> torch.Tensor:
    """A byte buffer at least twice the L2 cache (>= 64 MiB); zeroing it evicts the L2."""
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else device
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    buf = _flush_buffers.get(idx)
    if buf is None:
        l2 = int(getattr(torch.cuda.get_device_properties(idx), "L2_cache_size", 0) or 0)
        size = max(2 * l2, 64 << 20)
        buf = torch.empty(size, dtype=torch.int8, device=dev)
        _flush_buffers[idx] = buf
    return buf


def time_cuda(fn: Callable[[], object], *, rep_ms: float = 100.0, warmup_ms: float = 25.0, flush: bool = True,
              min_reps: int = 10, max_reps: int = 2000) -> Stats:  # fmt: skip
    """CUDA-event timing of ``fn`` with the L2 flushed before every rep (unless flush=False)."""
    cache = l2_flush_buffer() if flush else None
    fn()
    torch.cuda.synchronize()
    # Estimate one call (flush included) to size the warm-up and the number of reps.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        if cache is not None:
            cache.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    est_ms = max(start.elapsed_time(end) / 5, 1e-3)
    n_warm = max(1, int(warmup_ms / est_ms))
    n_rep = int(min(max(rep_ms / est_ms, min_reps), max_reps))
    for _ in range(n_warm):
        fn()
    # How long the host takes to enqueue one call (no sync inside: the GPU is still busy).
    launches = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        launches.append(time.perf_counter() - t0)
    cycles = sleep_cycles(sorted(launches)[1])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        if cache is not None:
            cache.zero_()
        # Keep the GPU busy while the host enqueues start, fn's kernels and end: otherwise,
        # when enqueueing fn takes longer than the flush, the events time the host's launch
        # gaps rather than the GPU's work.
        torch.cuda._sleep(cycles)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
    return summarize(samples, "cuda-events, L2 flushed" if flush else "cuda-events, L2 warm")


# A GPU clock no H100 / H200 exceeds (1.98 GHz boost): cycles counted at this rate last at
# least as long as intended on any slower clock.
MAX_GPU_HZ = 2.0e9


def sleep_cycles(host_launch_s: float, margin: float = 1.5, floor_s: float = 20e-6, cap_s: float = 0.05) -> int:
    """GPU clock cycles for ``torch.cuda._sleep`` to outlast enqueueing one call that took the
    host ``host_launch_s``: ``margin`` times that, at least ``floor_s``, at most ``cap_s``."""
    seconds = min(max(host_launch_s * margin, floor_s), cap_s)
    return int(seconds * MAX_GPU_HZ)


def time_cuda_graph(fn: Callable[[], object], *, inner: int = 20, rep_ms: float = 100.0, min_reps: int = 10,
                    max_reps: int = 1000) -> Stats:  # fmt: skip
    """Capture ``inner`` back-to-back calls of ``fn`` in a CUDA graph and time its replays.

    Raises whatever graph capture raises (e.g. an op that synchronises with the host); the
    caller falls back to :func:`time_cuda` for that row and says so.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    est_ms = max(start.elapsed_time(end) / 3, 1e-3)
    n_rep = int(min(max(rep_ms / est_ms, min_reps), max_reps))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) * 1e-3 / inner for s, e in zip(starts, ends)]
    del graph
    return summarize(samples, f"cuda-graph x{inner}, L2 warm")


def time_fn(fn: Callable[[], object], device: torch.device, *, threads: int, budget_s: float) -> Stats:
    """The default timer for ``device``: events + L2 flush on CUDA, the CPU timer otherwise."""
    if device.type == "cuda":
        return time_cuda(fn, rep_ms=budget_s * 1e3, warmup_ms=max(budget_s * 250, 10.0))
    return time_cpu(fn, threads=threads, budget_s=budget_s)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
