"""tools/gpu-check.sh, in its dry-run mode: every step on its CPU stand-in, so the script a
GPU session runs blind cannot rot between GPU sessions."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["machine", "install", "precompile", "tests", "bench-ce", "bench-linear", "bench-bn", "models"]
# The device tool brings back at most 8 files from $OUT, no deeper than 2 folders, named in
# letters, digits, '.', '_' and '-'.
OUT_FILES = {"gpu-check.log", "steps.tsv", "machine.json", "report.md", "report.json", "artifacts.tar.gz"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")  # fmt: skip


def _gpu_check(out: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu-check.sh"), "--dry-run"], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def _steps(out: Path) -> dict[str, dict]:
    with open(out / "steps.tsv") as f:
        return {row["step"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    # The last step is given 1 s: a step that times out must still leave a complete report.
    proc = _gpu_check(out, GPU_CHECK_TIMEOUT_MODELS="1")
    return out, proc


def test_dry_run_runs_every_step_and_reports(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _steps(out)
    assert list(steps) == STEPS
    assert {s: steps[s]["status"] for s in STEPS[:-1]} == {s: "ok" for s in STEPS[:-1]}, (out / "gpu-check.log").read_text()[-4000:]
    assert steps["models"]["status"] == "timeout" and steps["models"]["timeout"] == "1"
    report = (out / "report.md").read_text()
    assert "Steps that ran: " + ", ".join(STEPS) in report
    assert "| models | timeout |" in report
    # the bench steps' reports are summarised: a row of each kernel, checked and timed
    for kernel in ("softmax_cross_entropy", "linear_leaky_relu", "batch_norm"):
        assert re.search(rf"\| {kernel} \| \S+ \| float32 \| fwd\+bwd \| nnspec \| ok \|", report), kernel


def test_dry_run_output_fits_what_the_device_tool_brings_back(dry_run):
    out, _ = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == OUT_FILES and all(p.parent == out for p in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        names = tar.getnames()
    for step in STEPS:
        assert f"./logs/{step}.log" in names, names
    assert "./bench-linear/report.json" in names


def test_no_budget_left_skips_every_step_and_still_reports(tmp_path):
    proc = _gpu_check(tmp_path, GPU_CHECK_BUDGET_S="0")
    assert proc.returncode == 0, proc.stderr
    assert {row["status"] for row in _steps(tmp_path).values()} == {"skipped"}
    assert list(_steps(tmp_path)) == STEPS
    assert "Steps that ran: none" in (tmp_path / "report.md").read_text()


def test_unknown_argument_is_refused():
    proc = subprocess.run(["bash", str(REPO / "tools" / "gpu-check.sh"), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu-check.sh: unknown argument '--gpu' (try --help)"
