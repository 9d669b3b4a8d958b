"""``nnspec bench compare`` on hand-made reports: ratios, report folders, and one-line errors.

(tests/test_bench.py compares real ``--quick`` reports; these need no bench run, so they are quick.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.bench import compare as C
from nnspec.bench import suite
from nnspec.bench.report import FORMAT_VERSION

REPO = Path(__file__).resolve().parents[1]


def _kernel_row(median_ms: float) -> dict:
    return {"kernel": "batch_norm", "shape_label": "8x4", "dtype": "float32", "direction": "fwd", "impl": "nnspec",
            "status": "ok", "time_ms": {"median": median_ms, "p10": median_ms * 0.99, "p90": median_ms * 1.01}}  # fmt: skip


def _model_row(rate: float) -> dict:
    return {"name": "mnist-mlp", "variant": "torch", "batch_size": 64, "status": "ok",
            "samples_per_s": {"median": rate, "p10": rate * 0.99, "p90": rate * 1.01}}  # fmt: skip


def _report(folder: Path, kernel_ms: float, rate: float) -> Path:
    folder.mkdir(parents=True)
    report = {"format_version": FORMAT_VERSION, "machine": {"device_name": "cpu"}, "kernels": [_kernel_row(kernel_ms)],
              "models": [_model_row(rate)], "accuracy": []}  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text("# a report\n")
    return folder


@pytest.mark.parametrize("ratio, text", [
    (350.0, "350× faster"), (2.0, "2.00× faster"), (0.8, "1.25× slower"), (1 / 12.5, "12.5× slower"), (1.0, "same speed"),
])  # fmt: skip
def test_ratios_read_as_times_faster_or_slower(ratio, text):
    assert C.fmt_ratio(ratio) == text


def test_a_350x_speedup_is_shown_as_a_ratio_not_as_plus_99_7_percent(tmp_path, capsys):
    a = _report(tmp_path / "a", kernel_ms=35.0, rate=1000.0)
    b = _report(tmp_path / "b", kernel_ms=0.1, rate=500.0)
    assert C.main(str(a), str(b)) == 0  # folders are accepted: what `nnspec bench` prints is a folder
    out = capsys.readouterr().out
    assert "350× faster" in out and "99.7%" not in out
    assert "2.00× slower" in out  # the model row: half the samples/s
    assert "1 regression(s), 1 improvement(s)" in out


def test_the_report_json_and_its_folder_compare_alike(tmp_path, capsys):
    a = _report(tmp_path / "a", 1.0, 100.0)
    assert C.main(str(a), str(a / "report.json")) == 0
    assert "0 regression(s)" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.json", "missing.json: no such file or folder"),
    (lambda d: d / "a" / "report.md", "compare reads report.json, not report.md"),
    (lambda d: d, "a folder without a report.json"),
    (lambda d: _write(d / "trailing.json", '{"format_version": 1,}'), "trailing.json:1:22: not JSON"),
    (lambda d: _write(d / "list.json", "[1, 2]"), "not an nnspec bench report"),
    (lambda d: _write(d / "bin.json", b"\xff\xfe\x00"), "not a text file"),
])  # fmt: skip
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, make, message):
    _report(tmp_path / "a", 1.0, 100.0)
    bad = make(tmp_path)
    assert C.main(str(tmp_path / "a"), str(bad)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("nnspec bench compare: ")


def _write(path: Path, content: str | bytes) -> Path:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def test_the_cli_reports_a_bad_path_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nnspec", "bench", "compare", str(tmp_path / "x.json"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no such file or folder" in proc.stderr


def test_compare_piped_into_head_exits_quietly(tmp_path):
    """`nnspec bench compare A B --all | head -1`: a closed pipe ends the command without a traceback."""
    a = _report(tmp_path / "a", 1.0, 100.0)
    for module in (["nnspec", "bench"], ["nnspec.bench"]):
        proc = subprocess.run(f"{sys.executable} -m {' '.join(module)} compare {a} {a} --all | head -1",
                              shell=True, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.stdout.startswith("A: ") and proc.stderr == "", proc.stderr


# -- where reports go -------------------------------------------------------------------------


def test_reports_go_to_bench_reports_in_the_current_directory_not_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = suite.default_out_dir("cpu", None, "quick")
    assert out.parts[0] == "bench-reports" and out.name.startswith("cpu-quick-")
    (out / "report.json").parent.mkdir(parents=True)
    (out / "report.json").write_text("{}")
    assert suite.default_out_dir("cpu", None, "quick").name == out.name + "-2"  # never over an earlier report
    assert "/bench-reports/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_a_model_suite_without_spec_files_says_so_in_the_report(tmp_path, monkeypatch):
    """From an installed wheel there is no specs/ folder: the report must say the model section is missing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(suite, "_specs_dir", lambda: None)
    args = argparse.Namespace(quick=True, suite=None, out=str(tmp_path / "r"), device="cpu", threads=1, budget=0.01,
                              seed=0, quiet=True, only=["batch_norm"], dtypes=None, peers=["eager"],
                              no_compile=True, interpreter_check=False, bench_command=None, specs=None)  # fmt: skip
    suite.run_suite(args, ["nnspec", "bench", "--quick"])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["models"] == []
    assert any("model suite skipped: no specs/ folder" in note for note in report["notes"])
    assert "model suite skipped" in (tmp_path / "r" / "report.md").read_text()
    assert os.listdir(tmp_path) == ["r"]
