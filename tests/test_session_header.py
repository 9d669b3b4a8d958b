"""The test session says, in one line at its start, when the real-data tests will skip."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.data.idx import locate_idx_files

ROOT = Path(__file__).resolve().parents[1]


def _collect(env: dict[str, str]) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider", "tests/test_spec_limits.py"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stdout


def test_missing_mnist_is_announced_once_at_the_start(tmp_path: Path):
    env = {**os.environ, "NNSPEC_DATA": str(tmp_path / "empty"), "HOME": str(tmp_path)}
    out = _collect(env)
    lines = [line for line in out.splitlines() if "MNIST files not found" in line]
    assert len(lines) == 1, out
    assert out.splitlines()[0] == lines[0]
    assert f"$NNSPEC_DATA={tmp_path / 'empty'}" in lines[0] and "test_ablation_short.py" in lines[0]


def test_nothing_is_announced_when_the_data_is_there():
    if locate_idx_files("mnist") is None:
        pytest.skip("MNIST files not found: the test above covers that case")
    assert "MNIST files not found" not in _collect(dict(os.environ))
