"""The kernel suite's checking and timing decisions, exercised on the CPU.

The CUDA timers themselves need a GPU; what is decided around them - which rows get CUDA
graphs, which rows are compared, what one failing check does to the run, how many bytes a
row moved - is plain Python and is checked here with stand-in timers.
"""

from __future__ import annotations

import pytest
import torch

from nnspec.bench import kernels as K
from nnspec.bench import report as R
from nnspec.bench.timing import MAX_GPU_HZ, Stats, sleep_cycles


def _ctx(**kw) -> K.KernelContext:
    return K.KernelContext(device=torch.device("cpu"), threads=1, ceilings={}, budget_s=0.01,
                           log=lambda m: None, **kw)  # fmt: skip


def _stats(seconds: float, method: str) -> Stats:
    return Stats(seconds, seconds, seconds, seconds, seconds, 10, method)


def _row(impl: str, event_s: float) -> dict:
    return {"impl": impl, "status": "ok", "reason": None, "method": "cuda-events, L2 flushed",
            "time_ms": _stats(event_s, "cuda-events, L2 flushed").to_json_ms(), "time_ms_events": None,
            "speedup": {}}  # fmt: skip


def test_linear_mask_counts_the_byte_the_kernel_writes():
    lin = K.OPS["linear_leaky_relu"]
    m, k, n, e = 128, 784, 200, 2
    fwd = e * (m * k + n * k + n + m * n)
    bwd = e * (m * n + m * k + n * k) + e * (m * k + n * k + n)
    assert lin.bytes((m, k, n), e, "fwd+bwd") == fwd + bwd + 2 * m * n  # one byte each way per element


def test_a_failing_check_errors_its_row_and_the_suite_goes_on(monkeypatch):
    real = K.compare

    def compare(outs, refs):
        if any(o.shape == torch.Size([]) and float(o) == 42.0 for o in outs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(outs, refs)

    monkeypatch.setattr(K, "compare", compare)
    huge = K.Impl("nnspec", "runs out of memory while being checked",
                  lambda op: (lambda a: op.eager(a) * 0 + 42.0))  # fmt: skip
    eager = K.Impl("eager", "pytorch eager", lambda op: op.eager)
    case = K.Case("softmax_cross_entropy", (64, 10), "float32")
    for direction in ("fwd", "fwd+bwd"):
        rows = {r["impl"]: r for r in K.run_group(case, direction, [huge, eager], _ctx())}
        assert rows["nnspec"]["status"] == "error" and rows["nnspec"]["time_ms"] is None
        assert "checking the outputs" in rows["nnspec"]["reason"] and "out of memory" in rows["nnspec"]["reason"]
        assert rows["eager"]["status"] == "ok" and rows["eager"]["time_ms"]["median"] > 0


def test_graph_decision_uses_graph_time_not_event_time(monkeypatch):
    # Eager's fwd+bwd of many tiny kernels: 120 us with events (launch gaps), 8 us of GPU work.
    graph = {"eager": 8e-6, "nnspec": 4e-6}
    calls = {name: (lambda name=name: name) for name in graph}
    monkeypatch.setattr(K, "time_cuda_graph", lambda fn, **kw: _stats(graph[fn()], "cuda-graph x20, L2 warm"))
    rows = [_row("nnspec", 60e-6), _row("eager", 120e-6)]
    K.retime_with_graphs(rows, calls, _ctx(graph_below_s=50e-6))
    assert all(r["method"].startswith("cuda-graph") for r in rows)
    assert rows[1]["time_ms"]["median"] == pytest.approx(8e-3)
    assert rows[1]["time_ms_events"]["median"] == pytest.approx(120e-3)

    # Real GPU work above the threshold: no graphs, whatever the events say.
    graph = {"eager": 70e-6, "nnspec": 60e-6}
    rows = [_row("nnspec", 60e-6), _row("eager", 75e-6)]
    K.retime_with_graphs(rows, calls, _ctx(graph_below_s=50e-6))
    assert all(r["method"] == "cuda-events, L2 flushed" for r in rows)


def test_big_groups_are_never_captured(monkeypatch):
    def boom(fn, **kw):
        raise AssertionError("a 5 ms op must not be captured in a graph")

    monkeypatch.setattr(K, "time_cuda_graph", boom)
    rows = [_row("nnspec", 5e-3), _row("eager", 5e-3)]
    K.retime_with_graphs(rows, {"nnspec": lambda: 0, "eager": lambda: 0}, _ctx(graph_below_s=50e-6))
    assert all(r["method"] == "cuda-events, L2 flushed" for r in rows)


def test_one_failed_capture_keeps_the_whole_group_on_events(monkeypatch):
    def timer(fn, **kw):
        if fn() == "nnspec":
            raise RuntimeError("operation not permitted when stream is capturing")
        return _stats(5e-6, "cuda-graph x20, L2 warm")

    monkeypatch.setattr(K, "time_cuda_graph", timer)
    rows = [_row("nnspec", 30e-6), _row("eager", 40e-6), _row("compile", 35e-6)]
    calls = {r["impl"]: (lambda name=r["impl"]: name) for r in rows}
    K.retime_with_graphs(rows, calls, _ctx(graph_below_s=50e-6))
    assert all(r["method"] == "cuda-events, L2 flushed" and r["time_ms_events"] is None for r in rows)
    assert "capture failed" in rows[0]["reason"] and "nnspec" in rows[1]["reason"]
    K.add_speedups(rows)
    assert rows[0]["speedup"] == pytest.approx({"eager": 40 / 30, "compile": 35 / 30})


def test_speedups_only_between_rows_timed_the_same_way():
    ours, eager, comp = _row("nnspec", 10e-6), _row("eager", 40e-6), _row("compile", 20e-6)
    comp["method"] = "cuda-graph x20, L2 warm"
    K.add_speedups([ours, eager, comp])
    assert ours["speedup"] == {"eager": 4.0}
    # the same timer with other per-row details (calls per block) is the same way
    cpu = [_row("nnspec", 1e-3), _row("eager", 2e-3)]
    cpu[0]["method"], cpu[1]["method"] = "cpu-timer (1 thr, 8/block, interleaved)", "cpu-timer (1 thr, 4/block, interleaved)"
    K.add_speedups(cpu)
    assert cpu[0]["speedup"] == pytest.approx({"eager": 2.0})


def test_event_timer_sleep_outlasts_the_host_launch():
    for host in (1e-6, 30e-6, 400e-6):
        assert sleep_cycles(host) / MAX_GPU_HZ >= host  # at the fastest clock, so on any
    assert sleep_cycles(1.0) / MAX_GPU_HZ <= 0.05  # a pathological launch cannot stall the run


def test_ceilings_say_they_are_p10_while_rows_are_medians():
    ceiling = {"gbps": 4300.0, "what": "dst.copy_(src), 1024 MiB each way",
               "time_ms": _stats(1e-3, "cuda-events, L2 warm").to_json_ms()}  # fmt: skip
    lines = R._machine_section({"machine": {"device": "cpu"}, "ceilings": {"copy": ceiling, "matmul": {}}})
    row = next(line for line in lines if "copy bandwidth" in line)
    assert "p10" in row and "median" in row
