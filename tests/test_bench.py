"""``nnspec bench``: the real ``--quick`` CLI run, its report, ``compare``, and the kernel suite
without pydantic (the GPU hosts have none).

The quick run is the expensive part (~1-2 minutes on 2 cores, mostly torch.compile); it runs
once per session and every report test reads its output.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nnspec.bench import compare as C
from nnspec.bench import kernels as K
from nnspec.bench.report import FORMAT_VERSION, write_json
from nnspec.bench.timing import quantile, summarize

REPO = Path(__file__).resolve().parents[1]
MNIST_SHAPES = {("linear_leaky_relu", "128x784->200"), ("linear_leaky_relu", "1024x784->200"),
                ("softmax_cross_entropy", "128x10"), ("softmax_cross_entropy", "1024x10")}  # fmt: skip


def _no_nan(text: str) -> dict:
    def bad(token):
        raise AssertionError(f"report.json contains {token}")

    return json.loads(text, parse_constant=bad)


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The real CLI path: ``nnspec bench --quick`` (one thread and a shorter per-row timing budget, so that
    a shared CI machine does not stretch it)."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    cmd = [sys.executable, "-m", "nnspec", "bench", "--quick", "--threads", "1", "--budget", "0.03", "--out", str(out)]
    proc = _run(cmd, REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, _no_nan((out / "report.json").read_text()), proc


# --------------------------------------------------------------------------- the quick report


@pytest.mark.slow
def test_quick_report_has_machine_info(quick):
    _, report, _ = quick
    assert report["format_version"] == FORMAT_VERSION
    assert report["suite"] == "quick"
    m = report["machine"]
    for key in ("device", "device_name", "cpu", "torch", "triton", "cuda", "driver", "threads", "git", "date",
                "command", "python", "load_average"):  # fmt: skip
        assert key in m, key
    assert m["torch"] == torch.__version__
    assert m["threads"] >= 1
    assert "bench" in m["command"] and "--quick" in m["command"]
    c = report["ceilings"]
    assert c["copy"]["gbps"] > 0
    assert c["matmul"]["float32"]["tflops"] > 0
    assert report["duration_s"] > 0


@pytest.mark.slow
def test_quick_report_kernel_rows(quick):
    _, report, _ = quick
    rows = report["kernels"]
    cpu = report["machine"]["device"] == "cpu"
    assert {(r["kernel"], r["direction"]) for r in rows} == {(k, d) for k in K.KERNELS for d in K.DIRECTIONS}
    assert MNIST_SHAPES <= {(r["kernel"], r["shape_label"]) for r in rows}
    assert {r["impl"] for r in rows} >= {"nnspec", "eager", "compile"}
    if cpu:  # a peer that cannot run here is one note, not a skipped row per shape
        assert "liger" not in {r["impl"] for r in rows}
        assert any("Liger-Kernel" in n and "CUDA only" in n for n in report["notes"])
    for r in rows:
        where = f"{r['kernel']} {r['shape_label']} {r['direction']} {r['impl']}"
        assert r["status"] == "ok", f"{where}: {r['reason']}"
        t = r["time_ms"]
        assert 0 < t["p10"] <= t["median"] <= t["p90"], where
        assert t["n"] >= 3, where
        assert r["method"].startswith("cpu-timer" if cpu else "cuda-"), where
        assert r["flops"] > 0 and r["bytes"] > 0 and r["gbps"] > 0 and r["tflops"] > 0, where
        assert 0 < r["roofline_fraction"], where
        err = r["error"]
        assert err["ok"] and err["reference"] in ("float64", "itself"), where
        if err["reference"] == "float64":
            assert err["max_rel"] <= err["tolerance"], where
        if cpu and r["impl"] == "nnspec":
            assert "fallback" in r["backend"], where  # labelled: no Triton timing on a CPU
        if r["impl"] == "nnspec":
            assert set(r["speedup"]) >= {"eager", "compile"}, where
            assert all(v > 0 for v in r["speedup"].values()), where


@pytest.mark.slow
def test_quick_report_models_and_interpreter(quick):
    _, report, _ = quick
    rows = {r["variant"]: r for r in report["models"]}
    cpu = report["machine"]["device"] == "cpu"
    assert set(rows) == {"nnspec-triton", "torch", "torch+compile", "torch+step-compile"}
    if cpu:
        assert rows["nnspec-triton"]["status"] == "skipped"
    for v in ("torch", "torch+compile", "torch+step-compile"):
        r = rows[v]
        assert r["status"] == "ok", r["reason"]
        assert r["samples_per_s"]["median"] > 0 and r["step_ms"]["median"] > 0
        assert r["error"]["ok"] and r["error"]["max_rel"] <= r["error"]["tolerance"]
    if cpu:  # the Triton kernels, through the interpreter: correctness only
        checks = report["interpreter_checks"]
        assert {(c["kernel"], c["direction"]) for c in checks} == {(k, d) for k in K.KERNELS for d in K.DIRECTIONS}
        assert all(c["ok"] for c in checks), checks


@pytest.mark.slow
def test_quick_report_files(quick):
    out, report, proc = quick
    md = (out / "report.md").read_text()
    assert "How to read this report" in md and "## Kernels" in md and "| shape" in md
    if report["machine"]["device"] == "cpu":
        assert "torch fallback" in md
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {f"{k}.png" for k in K.KERNELS} | {"models.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "report.md") in proc.stdout


# --------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_identical_reports_pass(quick, capsys):
    out, _, _ = quick
    path = str(out / "report.json")
    assert C.main(path, path, fail_on_regression=True) == 0
    assert "0 regression(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_flags_injected_regression(quick, tmp_path, capsys):
    out, report, _ = quick
    slow = copy.deepcopy(report)
    victim = next(r for r in slow["kernels"] if r["impl"] == "nnspec" and r["status"] == "ok")
    for key in ("median", "p10", "p90", "q25", "q75"):
        victim["time_ms"][key] *= 1.5
    write_json(slow, tmp_path / "slow.json")
    a, b = str(out / "report.json"), str(tmp_path / "slow.json")
    assert C.main(a, b, threshold_pct=5, fail_on_regression=True) == 1
    text = capsys.readouterr().out
    assert "REGRESSION" in text and victim["shape_label"] in text and "1 regression(s)" in text
    assert C.main(a, b, threshold_pct=5) == 0  # reported, but only --fail-on-regression fails
    assert C.main(a, b, threshold_pct=60, fail_on_regression=True) == 0  # +50% is under a 60% threshold
    # the reverse direction is an improvement, not a regression
    assert C.main(b, a, threshold_pct=5, fail_on_regression=True) == 0


@pytest.mark.slow
def test_compare_flags_rows_that_stopped_passing(quick, tmp_path):
    out, report, _ = quick
    broken = copy.deepcopy(report)
    victim = next(r for r in broken["kernels"] if r["impl"] == "nnspec" and r["status"] == "ok")
    victim.update(status="failed", time_ms=None, reason="max relative error 0.5 > tolerance 0.002")
    slow_model = next(r for r in broken["models"] if r["status"] == "ok")
    slow_model["samples_per_s"] = {k: v / 2 for k, v in slow_model["samples_per_s"].items()}
    write_json(broken, tmp_path / "broken.json")
    changes, _ = C.compare_reports(report, broken, 0.05)
    flagged = {c.key for c in changes if c.regression}
    assert C._kernel_key(victim) in flagged
    assert C._model_key(slow_model) in flagged


@pytest.mark.slow
def test_compare_cli(quick, tmp_path):
    out, report, _ = quick
    slow = copy.deepcopy(report)
    for r in slow["kernels"]:
        if r["status"] == "ok":
            r["time_ms"] = {k: (v * 2 if k != "n" else v) for k, v in r["time_ms"].items()}
    write_json(slow, tmp_path / "slow.json")
    a, b = str(out / "report.json"), str(tmp_path / "slow.json")
    proc = _run([sys.executable, "-m", "nnspec", "bench", "compare", a, b, "--fail-on-regression"], REPO)
    assert proc.returncode == 1 and "REGRESSION" in proc.stdout
    proc = _run([sys.executable, "-m", "nnspec", "bench", "compare", a, a, "--fail-on-regression"], REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- without pydantic

_BLOCKER = textwrap.dedent(
    """
    import runpy, sys
    attempts = []

    class BlockPydantic:  # every import of pydantic fails, as on the GPU hosts
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pydantic", "pydantic_core"):
                attempts.append(name)
                raise ImportError("pydantic is not installed here (blocked by the test)")
            return None

    # Also drop the editable install's finder: like `PYTHONPATH=.` on a host without an install.
    sys.meta_path = [BlockPydantic()] + [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    mode, target, *args = sys.argv[1:]
    code = 0
    try:
        if mode in ("module", "alias"):
            module = "nnspec.bench" if mode == "module" else "nnspec.runner.bench"
            sys.path.insert(0, target)
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *args]
            sys.path[0] = str(__import__("pathlib").Path(target).parent)
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    print("PYDANTIC_IMPORTED", "pydantic" in sys.modules, file=sys.stderr)
    print("KERNELS_FROM", sys.modules["nnspec.kernels"].__file__, file=sys.stderr)
    sys.exit(code)
    """
)


def _blocked(tmp_path: Path, mode: str, target: str) -> tuple[subprocess.CompletedProcess, Path]:
    script = tmp_path / "blocked.py"
    script.write_text(_BLOCKER)
    out = tmp_path / "report"
    args = ["kernels", "--suite", "tiny", "--peers", "eager", "--no-interpreter-check", "--threads", "1",
            "--budget", "0.02", "--out", str(out)]
    return _run([sys.executable, str(script), mode, target, *args], cwd=tmp_path, timeout=300), out


def _check_blocked(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PYDANTIC_IMPORTED False" in proc.stderr
    assert f"KERNELS_FROM {REPO / 'kernels' / '__init__.py'}" in proc.stderr
    report = _no_nan((out / "report.json").read_text())
    assert {r["status"] for r in report["kernels"]} == {"ok"}
    assert {r["impl"] for r in report["kernels"]} == {"nnspec", "eager"}
    assert (out / "report.md").is_file()


@pytest.mark.slow
def test_kernel_suite_runs_without_pydantic_as_module(tmp_path):
    """``PYTHONPATH=. python -m nnspec.bench kernels`` with pydantic unimportable.

    This needs every package on the way (nnspec, nnspec.bench) to import nothing that needs
    pydantic at import time: a package ``__init__`` that eagerly imports the trainer breaks it.
    """
    proc, out = _blocked(tmp_path, "module", str(REPO))
    if proc.returncode != 0 and "__init__.py" in proc.stderr and "pydantic" in proc.stderr:
        pytest.fail("a package __init__ imports pydantic at import time (through the trainer), so "
                    "`python -m nnspec.bench` cannot run without pydantic; make its exports lazy "
                    "(PEP 562 __getattr__), as nnspec/__init__.py does.\n" + proc.stderr[-1500:])  # fmt: skip
    _check_blocked(proc, out)


@pytest.mark.slow
def test_old_module_path_still_runs_the_kernel_suite_without_pydantic(tmp_path):
    """``python -m nnspec.runner.bench`` (the 0.1 layout, documented then) still works, for one release."""
    proc, out = _blocked(tmp_path, "alias", str(REPO))
    _check_blocked(proc, out)
    assert "nnspec.runner.bench is now nnspec.bench" in proc.stderr


@pytest.mark.slow
def test_kernel_suite_runs_without_pydantic_as_script(tmp_path):
    """``python nnspec/bench/__main__.py kernels`` with pydantic unimportable."""
    proc, out = _blocked(tmp_path, "script", str(REPO / "nnspec" / "bench" / "__main__.py"))
    _check_blocked(proc, out)


# --------------------------------------------------------------------------- units


def test_wrong_output_is_failed_and_not_timed():
    ctx = K.KernelContext(device=torch.device("cpu"), threads=1, ceilings={}, budget_s=0.01, log=lambda m: None)
    wrong = K.Impl("nnspec", "deliberately wrong", lambda op: (lambda a: op.eager(a) * 1.01))
    nan = K.Impl("compile", "produces nan", lambda op: (lambda a: op.eager(a) * math.nan))
    eager = K.Impl("eager", "pytorch eager", lambda op: op.eager)
    for kernel in K.KERNELS:
        case = K.Case(kernel, K.SUITES["tiny"][kernel][0][0], "float32")
        for direction in K.DIRECTIONS:
            rows = {r["impl"]: r for r in K.run_group(case, direction, [wrong, nan, eager], ctx)}
            assert rows["eager"]["status"] == "ok" and rows["eager"]["time_ms"]["median"] > 0
            for name in ("nnspec", "compile"):
                r = rows[name]
                assert r["status"] == "failed" and r["time_ms"] is None and r["method"] is None, (kernel, r)
                assert r["error"]["ok"] is False
            assert rows["nnspec"]["error"]["max_rel"] > rows["nnspec"]["error"]["tolerance"]
            assert "non-finite" in rows["compile"]["reason"]


def test_minimum_work_counts():
    lin, ce, bn = K.OPS["linear_leaky_relu"], K.OPS["softmax_cross_entropy"], K.OPS["batch_norm"]
    m, k, n = 128, 784, 200
    assert lin.flops((m, k, n), "fwd") == 2 * m * n * k + 2 * m * n
    assert lin.flops((m, k, n), "fwd+bwd") == 6 * m * n * k + 4 * m * n
    assert lin.bytes((m, k, n), 4, "fwd") == 4 * (m * k + n * k + n + m * n)
    assert ce.bytes((1024, 10), 2, "fwd") == 1024 * 10 * 2 + 8 * 1024 + 2
    assert ce.bytes((1024, 10), 2, "fwd+bwd") == 2 * 1024 * 10 * 2 + 8 * 1024 + 2
    s = 128 * 32 * 28 * 28
    assert bn.bytes((128, 32, 28, 28), 4, "fwd") == 2 * s * 4 + 8 * 32 * 4


def test_quantiles_and_summary():
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert quantile([1.0, 2.0], 0.1) == pytest.approx(1.1)
    st = summarize([5.0, 1.0, 3.0, 2.0, 4.0], "x")
    assert (st.median, st.n, st.iqr) == (3.0, 5, 2.0)
    assert st.to_json_ms()["median"] == 3000.0


def test_compare_rejects_non_reports(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="format_version"):
        C.load(p)


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tiny_suite_times_triton_with_graphs(tmp_path):
    out = tmp_path / "cuda"
    proc = _run([sys.executable, "-m", "nnspec", "bench", "kernels", "--suite", "tiny", "--out", str(out)], REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _no_nan((out / "report.json").read_text())
    m = report["machine"]
    assert m["device"] == "cuda" and m["gpu"]["name"] and m["cuda"]
    assert report["ceilings"]["matmul"]["bfloat16"]["tflops"] > 0
    ours = [r for r in report["kernels"] if r["impl"] == "nnspec"]
    assert ours and all(r["backend"] == "triton" and r["status"] == "ok" for r in ours)
    # tiny shapes are launch-bound: re-timed with CUDA graphs, the event timing kept beside
    assert all(r["method"].startswith("cuda-graph") and r["time_ms_events"] for r in ours)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_event_timer_flushes_l2():
    from nnspec.bench.timing import l2_flush_buffer, time_cuda

    buf = l2_flush_buffer()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert buf.numel() >= 2 * l2
    x = torch.randn(1 << 20, device="cuda")
    st = time_cuda(lambda: x.mul_(1.0), rep_ms=20)
    assert st.median > 0 and st.method == "cuda-events, L2 flushed"
