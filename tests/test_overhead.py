"""The runner-overhead benchmark runs end to end (its numbers are for docs/training.md, not for tests)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from nnspec.bench import overhead


def test_every_loop_times_its_epochs_after_the_warm_up() -> None:
    """(That the hand loop does the runner's math, bit for bit, is tests/test_train.py's job.)"""
    case = next(case for case in overhead.CASES if case.name.startswith("tiny"))
    for loop in overhead.LOOPS:
        timing = overhead.worker(case, loop, epochs=2)
        assert len(timing.wall) == len(timing.cpu) == 1 and timing.wall[0] > 0  # the warm-up epoch is dropped


@pytest.mark.slow
def test_the_benchmark_prints_its_table(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nnspec.bench.overhead", "--case", "tiny", "--repeats", "1", "--epochs", "2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tiny-mlp"))
    assert len(re.findall(r"[+-]\d+\.\d%", row)) == 3  # wall, CPU and tracked overheads
    assert "one process per run" in done.stdout


def test_an_unknown_case_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        overhead.main(["--case", "no such case"])
    assert exited.value.code == 2
    assert "the cases are: tiny-mlp" in capsys.readouterr().err
