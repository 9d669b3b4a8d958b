"""The ``nnspec`` command line: version, help of every command, compile tables, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nnspec
from nnspec.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"
MLP = SPECS / "mlp.yaml"
COMMANDS = ["validate", "compile", "schema", "train", "eval"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)``'s exit code (argparse's SystemExit included), stdout and stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0
    assert out.strip() == f"nnspec {nnspec.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(capsys, command):
    code, out, err = run_main(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: nnspec {command}")
    expected = {
        "validate": ["SPEC", "--quiet"],
        "compile": ["SPEC", "--device", "--kernels", "--json"],
        "schema": ["--out"],
        "train": ["SPEC", "--set", "--out", "--resume", "--seeds"],
        "eval": ["SPEC", "--set", "--checkpoint"],
    }[command]
    for word in expected:
        assert word in out


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["compile"], ["compile", str(MLP), "--kernels", "fast"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert "usage: nnspec" in err and "Traceback" not in err


def test_compile_table(capsys):
    code, out, err = run_main(capsys, "compile", str(MLP))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "mnist-mlp on cpu: input (1, 28, 28)"
    table = "\n".join(lines[1:])
    for expected in (
        "model.0 flatten_0",
        "model.1+2 linear_1+leaky_relu_2",
        "linear+leaky_relu",
        "model.3 layer_norm_3",
        "model.4 dropout_4",
        "model.5 linear_5",
    ):
        assert expected in table
    row = next(line for line in lines if line.startswith("model.1+2"))
    line = next(i for i, text in enumerate(MLP.read_text().splitlines(), 1) if "linear: 200" in text)
    assert row.split()[2:8] == [str(line), "linear+leaky_relu", "torch", "(200,)", "157,000", "314,000"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:] == ["159,410", "319,050"]  # the loss row adds 40 (4 per class)
    assert "triton" not in out


def test_compile_for_cuda_without_a_gpu(capsys):
    code, out, err = run_main(capsys, "compile", str(MLP), "--device", "cuda")
    assert code == 0 and err == ""
    assert out.splitlines()[0] == "mnist-mlp on cuda: input (1, 28, 28)"
    row = next(line for line in out.splitlines() if line.startswith("model.1+2"))
    assert "triton:linear_leaky_relu" in row
    code, out, _ = run_main(capsys, "compile", str(MLP), "--device", "cuda", "--kernels", "torch")
    assert code == 0 and "triton" not in out


def test_compile_json_matches_the_table(capsys):
    code, out, _ = run_main(capsys, "compile", str(MLP), "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["params"] == 159_410 and plan["flops_per_sample"] == 319_050
    assert [node["module"] for node in plan["nodes"]] == [
        "flatten_0", "linear_1+leaky_relu_2", "layer_norm_3", "dropout_4", "linear_5", "cross_entropy",
    ]  # fmt: skip


def test_compile_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch):
    code, _, err = run_main(capsys, "compile", str(tmp_path / "missing.yaml"))
    assert code == 2 and err == f"{tmp_path / 'missing.yaml'}:1:1: no such file\n"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, out, err = run_main(capsys, "compile", str(MLP), "--kernels", "triton")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "TRITON_INTERPRET=1" in err


def test_validate_ok(capsys):
    code, out, err = run_main(capsys, "validate", str(MLP))
    assert (code, out) == (0, f"{MLP}: ok\n")


def test_schema_command(capsys, tmp_path):
    code, out, _ = run_main(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["type"] == "object" and "model" in schema["properties"]
    target = tmp_path / "spec.schema.json"
    code, out, _ = run_main(capsys, "schema", "--out", str(target))
    assert code == 0 and out == ""
    assert json.loads(target.read_text()) == schema


def test_console_script_and_module_entry_points():
    script = shutil.which("nnspec")
    commands = [[sys.executable, "-m", "nnspec"]] + ([[script]] if script else [])
    for command in commands:
        result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == f"nnspec {nnspec.__version__}"
    result = subprocess.run(
        [*commands[-1], "compile", str(MLP), "--device", "cuda"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "triton:linear_leaky_relu" in result.stdout and "159,410" in result.stdout
