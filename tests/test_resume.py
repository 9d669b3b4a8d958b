"""Resuming: a run stopped anywhere (epoch end, mid-epoch, Ctrl-C, kill -9) ends bit-identical on the CPU.

The spec exercises every random stream the runner checkpoints: dropout
(torch's global RNG), augmentation and input noise (their own generators),
shuffling (the order generator), plus Adam's moments, a cosine schedule and
early-stopping bookkeeping. If any of them were not restored exactly, the
final weights would differ.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnspec.train import RunError, train
from nnspec.train import checkpoint as ckpt
from nnspec.train.epoch_log import EpochLog

SPEC = """\
nnspec: 1
name: resumable
input: [1, 8, 8]
model:
  - flatten
  - linear: 32
  - relu
  - dropout: 0.2
  - linear: 10
loss: cross_entropy
optimizer: {adam: 0.003}
schedule: cosine
data:
  dataset: synthetic
  synthetic: {samples: 288, test_samples: 32}
  val: 32
  augment: [{random_shift: 1}]
regularization:
  input_noise: 0.05
  early_stopping: {patience: 50}
train: {epochs: 3, batch_size: 16}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "resumable.yaml"
    path.write_text(SPEC)
    return path


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = ckpt.load_weights(a / ckpt.WEIGHTS), ckpt.load_weights(b / ckpt.WEIGHTS)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs after resuming"


def interrupt_at(monkeypatch, global_step: int) -> None:
    """Deliver a real SIGINT to this process once training reaches ``global_step`` (counted over all epochs)."""
    seen = {"steps": 0}
    original = EpochLog.add

    def add(self, loss, outputs, labels):  # called once per training step
        seen["steps"] += 1
        if seen["steps"] == global_step:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, loss, outputs, labels)

    monkeypatch.setattr(EpochLog, "add", add)


def test_resume_mid_epoch_after_ctrl_c_is_bit_identical(tmp_path: Path, monkeypatch):
    # The final weights must be the ones trained after the interrupt: with restore_best the
    # run would end on the best epoch's weights (epoch 1, before the interrupt), and the
    # test would pass whatever the resume got wrong.
    spec_file = tmp_path / "last-epoch.yaml"
    spec_file.write_text(SPEC.replace("early_stopping: {patience: 50}", "early_stopping: {patience: 50, restore_best: false}"))
    reference = tmp_path / "reference"
    expected = train(spec_file, out=reference, quiet=True)

    stopped = tmp_path / "stopped"
    interrupt_at(monkeypatch, 23)  # epoch 2, step 7 of 16: the loop stops at the end of that step
    with pytest.raises(KeyboardInterrupt):
        train(spec_file, out=stopped, quiet=True)
    monkeypatch.undo()
    state = ckpt.load_state(stopped / ckpt.STATE)
    assert (state["cursor"]["epoch"], state["cursor"]["step"]) == (1, 7)
    at_interrupt = ckpt.load_weights(stopped / ckpt.WEIGHTS)

    resumed = train(spec_file, resume=stopped, quiet=True)
    assert_same_weights(reference, stopped)
    final = ckpt.load_weights(stopped / ckpt.WEIGHTS)
    assert any(not torch.equal(final[name], at_interrupt[name]) for name in final)
    assert resumed["test_loss"] == expected["test_loss"]
    # metrics.jsonl holds each epoch once, the resumed epoch included.
    lines = (stopped / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_resume_at_an_epoch_boundary_with_more_epochs(tmp_path: Path):
    # No schedule here: a cosine's length depends on the epoch count, which this test changes.
    spec_file = tmp_path / "plain.yaml"
    spec_file.write_text(SPEC.replace("schedule: cosine\n", ""))
    train(spec_file, overrides=["train.epochs=4"], out=tmp_path / "reference", quiet=True)
    train(spec_file, overrides=["train.epochs=2"], out=tmp_path / "short", quiet=True)
    summary = train(spec_file, overrides=["train.epochs=4"], resume=tmp_path / "short", quiet=True)
    assert summary["epochs_run"] == 4
    assert_same_weights(tmp_path / "reference", tmp_path / "short")


def test_resume_an_ensemble_interrupted_in_its_second_member(spec_file: Path, tmp_path: Path, monkeypatch):
    overrides = ["ensemble={members: 2}", "train.epochs=2"]
    train(spec_file, overrides=overrides, out=tmp_path / "reference", quiet=True)
    interrupt_at(monkeypatch, 32 + 5)  # member 1, epoch 1, step 5
    with pytest.raises(KeyboardInterrupt):
        train(spec_file, overrides=overrides, out=tmp_path / "stopped", quiet=True)
    monkeypatch.undo()
    assert ckpt.load_state(tmp_path / "stopped" / "member_0" / ckpt.STATE)["cursor"]["epoch"] == 2
    train(spec_file, overrides=overrides, resume=tmp_path / "stopped", quiet=True)
    for member in ("member_0", "member_1"):
        assert_same_weights(tmp_path / "reference" / member, tmp_path / "stopped" / member)


def test_resuming_a_finished_run_changes_nothing(spec_file: Path, tmp_path: Path):
    first = train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / ckpt.WEIGHTS).write_bytes((tmp_path / "run" / ckpt.WEIGHTS).read_bytes())
    again = train(spec_file, overrides=["train.epochs=1"], resume=tmp_path / "run", quiet=True)
    assert_same_weights(tmp_path / "before", tmp_path / "run")
    assert ckpt.load_state(tmp_path / "run" / ckpt.STATE)["cursor"]["global_step"] == 16
    assert again["test_loss"] == first["test_loss"]


def test_resume_refuses_a_different_spec(spec_file: Path, tmp_path: Path):
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    with pytest.raises(RunError) as info:
        train(spec_file, overrides=["train.epochs=1", "optimizer.lr=0.5"], resume=tmp_path / "run", quiet=True)
    assert info.value.exit_code == 2 and "optimizer.lr" in str(info.value)


def test_resume_refuses_to_stretch_an_open_ended_cosine(spec_file: Path, tmp_path: Path):
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    with pytest.raises(RunError, match="cosine schedule without 'epochs'"):
        train(spec_file, overrides=["train.epochs=2"], resume=tmp_path / "run", quiet=True)


def test_resume_needs_a_run_directory(spec_file: Path, tmp_path: Path):
    with pytest.raises(RunError, match="no spec.yaml"):
        train(spec_file, resume=tmp_path, quiet=True)


# -- real processes: kill -9 and Ctrl-C ------------------------------------------------------------

LONG = ["train.epochs=2", "data.synthetic.samples=4128", "train.batch_size=4", "train.checkpoint_every=100"]


def start(spec_file: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "nnspec", "train", str(spec_file), "--out", str(out), "-q"]
    for override in LONG:
        command += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended before its first checkpoint: {process.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    """The uninterrupted run both process tests compare against (trained once, in-process)."""
    directory = tmp_path_factory.mktemp("long")
    spec_file = directory / "resumable.yaml"
    spec_file.write_text(SPEC)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # checkpoint_every changes where files are written, never the weights: leave it out here.
        train(spec_file, overrides=LONG[:-1], out=directory / "reference", quiet=True)
    finally:
        torch.set_num_threads(threads)
    return directory / "reference"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.slow
def test_killed_process_resumes_bit_identical(spec_file: Path, tmp_path: Path, long_reference: Path, how: str):
    out = tmp_path / "killed"
    process = start(spec_file, out)
    wait_for_checkpoint(process, out / ckpt.STATE)
    process.send_signal(getattr(signal, how))
    _, stderr = process.communicate(timeout=120)
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, stderr
        assert "interrupted at epoch" in stderr and "--resume" in stderr
    state = ckpt.load_state(out / ckpt.STATE)
    total_steps = 2 * (4128 - 32) // 4
    assert 0 < state["cursor"]["global_step"] < total_steps, "the signal should land mid-run"
    assert not (out / "summary.json").exists()

    train(spec_file, overrides=LONG, resume=out, quiet=True)
    assert_same_weights(long_reference, out)
