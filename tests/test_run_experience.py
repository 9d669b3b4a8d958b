"""What a person meets around a run: threads, progress and ETA, curves.png, eval's defaults and messages,
the Ctrl-C hint, a closed pipe, and a model called with the wrong shape. All on tiny synthetic data.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nnspec
from nnspec.cli import main
from nnspec.spec import loads_spec
from nnspec.train import evaluate, train
from nnspec.train import threads as T
from nnspec.train.epoch_log import EpochLog
from nnspec.train.progress import LOG_EVERY_S, Progress, format_duration
from nnspec.train.report import curves_figure

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
nnspec: 1
name: tiny
input: [1, 8, 8]
model:
  - flatten
  - linear: 32
  - relu
  - linear: 10
loss: cross_entropy
optimizer: {sgd: 0.1}
data:
  dataset: synthetic
  synthetic: {samples: 256, test_samples: 64}
  val: 32
train: {epochs: 2, batch_size: 32}
"""

CNN = SPEC.replace("input: [1, 8, 8]", "input: [3, 32, 32]").replace(
    "  - flatten\n  - linear: 32\n", "  - conv2d: {out: 64, kernel: 3, padding: 1}\n  - conv2d: {out: 64, kernel: 3, padding: 1}\n  - flatten\n  - linear: 32\n"
).replace("batch_size: 32", "batch_size: 128")  # fmt: skip


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# -- threads ------------------------------------------------------------------------------------


def test_auto_threads_is_one_for_small_steps_and_every_core_for_large_ones(monkeypatch):
    monkeypatch.setattr(T, "_TORCH_DEFAULT", 8)
    monkeypatch.setattr(T, "available_cores", lambda: 8)
    small = T.choose_threads(loads_spec(SPEC), "cpu")
    assert (small.threads, small.setting) == (1, "auto") and "small steps" in small.reason
    large_spec = loads_spec(CNN)
    assert T.step_flops(large_spec) > T.SMALL_STEP_FLOPS
    assert T.choose_threads(large_spec, "cpu").threads == 8
    assert T.choose_threads(large_spec, "cpu", world_size=2).threads == 4  # cores shared by torchrun's processes
    # The textbook ablation (batch 1) and the README's MLP (batch 64) are small steps.
    for path in ("specs/ablation/baseline.yaml", "specs/mlp.yaml"):
        assert T.choose_threads(nnspec.load_spec(REPO / path), "cpu").threads == 1, path
    assert T.choose_threads(nnspec.load_spec(REPO / "specs/mnist_cnn.yaml"), "cpu").threads == 8
    fixed = T.choose_threads(loads_spec(SPEC.replace("batch_size: 32", "batch_size: 32, threads: 3")), "cpu")
    assert (fixed.threads, fixed.setting) == (3, 3)


def test_busy_warning_only_when_the_load_exceeds_the_cores():
    assert T.busy_warning(2, load=3.5, cores=2) is not None and "--threads 1" in T.busy_warning(2, load=3.5, cores=2)
    assert T.busy_warning(2, load=1.5, cores=2) is None
    assert T.busy_warning(1, load=9.0, cores=2) is None  # one thread has no barrier to wait at


def test_threads_are_recorded_and_restored(spec_file, tmp_path, keep_threads):
    torch.set_num_threads(2)
    summary = train(spec_file, out=tmp_path / "auto", quiet=True)
    assert (summary["threads"], summary["threads_setting"]) == (1, "auto") and "small steps" in summary["threads_reason"]
    assert torch.get_num_threads() == 2  # a library call leaves the caller's setting alone
    assert main(["train", str(spec_file), "--threads", "2", "--out", str(tmp_path / "two"), "-q"]) == 0
    on_disk = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (on_disk["threads"], on_disk["threads_setting"]) == (2, 2)
    assert nnspec.load_spec(tmp_path / "two" / "spec.yaml").train.threads == 2  # --threads is a recorded override


def test_bad_threads_is_one_error_at_its_position(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("batch_size: 32", "batch_size: 32, threads: 0"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}:15:36: train.threads: expected 'auto' or a number of threads from 1 to 1024 (got 0)"]
    good = tmp_path / "good.yaml"
    good.write_text(SPEC)
    assert main(["train", str(good), "--threads", "many", "--out", str(tmp_path / "never")]) == 2
    assert "--set train.threads=many:1:15: train.threads: expected 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# -- progress -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_long_epoch_prints_a_line_every_30_s_with_the_time_left():
    clock, log = FakeClock(), io.StringIO()
    bar = Progress(enabled=True, stream=log, clock=clock)
    bar.start_epoch(1, 3, steps=1000)
    for step in range(1, 1001):
        clock.now += 0.1  # 0.1 s per step: 100 s per epoch
        bar.update(step, lambda: step, lambda: 0.25)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3  # at 30, 60 and 90 s
    # 699 steps left in this epoch and 2 epochs of 1000, at 0.1 s each: 270 s.
    assert lines[0] == "epoch 1/3  step 301/1000 (30%)  loss 0.2500  10 samples/s  eta 4m30s"
    bar.end_epoch({"train_loss": 0.25, "seconds": 100.0})
    assert log.getvalue().splitlines()[-1] == "epoch 1/3  train_loss 0.2500  eta 3m20s"


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 42, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_a_quiet_run_prints_no_progress_lines():
    clock, log = FakeClock(), io.StringIO()
    bar = Progress(enabled=False, stream=log, clock=clock)
    bar.start_epoch(1, 1, steps=10)
    clock.now += LOG_EVERY_S * 2
    bar.update(5, lambda: 5, lambda: 0.1)
    assert log.getvalue() == ""


# -- curves.png ------------------------------------------------------------------------------


def test_curves_show_the_loss_within_epochs_integer_epoch_ticks_and_a_title(spec_file, tmp_path):
    summary = train(spec_file, out=tmp_path / "run", quiet=True, overrides=["train.epochs=1"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = records[0]["train_curve"]
    assert len(curve) == 7  # one point per step here (224 samples / 32): fewer steps than points
    assert [x for x, _, _ in curve] == pytest.approx([k / 7 for k in range(1, 8)])
    figure = curves_figure(records, summary)
    loss_ax, accuracy_ax = figure.axes
    within = loss_ax.lines[0]
    assert list(within.get_xdata()) == [x for x, _, _ in curve] and list(within.get_ydata()) == [y for _, y, _ in curve]
    assert list(accuracy_ax.lines[0].get_ydata()) == [a for _, _, a in curve]
    for ax in figure.axes:
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 1  # not 0.96..1.04 around a lone epoch
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    title = figure._suptitle.get_text()
    assert title.startswith("tiny · 1 epoch · test accuracy ") and f"{100 * summary['test_accuracy']:.2f}%" in title


def test_a_50_epoch_history_gets_integer_ticks_and_every_epoch_drawn():
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 1 - 1 / (e + 1), "val_loss": 1.1 / e,
                "train_curve": [[e - 0.5, 1.2 / e, 0.5], [e, 1 / e, 0.6]]} for e in range(1, 51)]  # fmt: skip
    figure = curves_figure(history, {"name": "long", "test_accuracy": 0.9, "test_loss": 0.3})
    loss_ax = figure.axes[0]
    assert len(loss_ax.lines[0].get_xdata()) == 100 and list(loss_ax.lines[1].get_xdata()) == list(range(1, 51))
    assert all(float(t).is_integer() for t in loss_ax.get_xticks())
    assert figure._suptitle.get_text() == "long · 50 epochs · test accuracy 90.00%, loss 0.3000"


# -- nnspec eval --------------------------------------------------------------------------------


def test_eval_defaults_to_the_runs_own_spec_and_q_still_prints_the_metrics(spec_file, tmp_path, capsys):
    wide = ["model.1.out=48"]  # a run trained with an override: the file alone no longer fits its weights
    train(spec_file, out=tmp_path / "run", overrides=wide, quiet=True)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["split", "loss", "accuracy", "samples"] and "test" in out
    assert evaluate(None, checkpoint=tmp_path / "run" / "model.safetensors", quiet=True)["test_samples"] == 64


def test_a_spec_that_does_not_fit_names_the_first_mismatches(spec_file, tmp_path, capsys):
    deeper = "model=[flatten, {linear: 48}, relu, {linear: 16}, relu, {linear: 10}]"
    train(spec_file, out=tmp_path / "run", overrides=[deeper], quiet=True)
    assert main(["eval", str(spec_file), "--checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit this spec's model: " in err
    assert "linear_1.weight is [48, 64] in the file, [32, 64] in the spec's model" in err
    assert "linear_1.bias is [48] in the file, [32] in the spec's model" in err
    assert "linear_3.weight is [16, 48] in the file, [10, 32] in the spec's model; and 3 more" in err


def test_eval_without_a_spec_needs_a_run_directory(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "spec.yaml does not exist" in capsys.readouterr().err


# -- Ctrl-C ---------------------------------------------------------------------------------------


def _interrupt_at(monkeypatch, global_step: int) -> None:
    seen = {"steps": 0}
    original = EpochLog.add

    def add(self, loss, outputs, labels):
        seen["steps"] += 1
        if seen["steps"] == global_step:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, loss, outputs, labels)

    monkeypatch.setattr(EpochLog, "add", add)


def test_the_ctrl_c_hint_is_a_command_that_works(spec_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupt_at(monkeypatch, 3)
    assert main(["train", str(spec_file), "--set", "optimizer.lr=0.05", "--out", str(out), "-q"]) == 130
    monkeypatch.undo()
    err = capsys.readouterr().err
    hint = err.split("Continue with: ")[1].splitlines()[0]
    assert hint == f"nnspec train --resume {out}"  # the run's spec.yaml holds the override
    assert main(hint.split()[1:] + ["-q"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_the_ctrl_c_hint_of_a_seeds_run_names_the_seeds(spec_file, tmp_path, monkeypatch, capsys):
    _interrupt_at(monkeypatch, 3)
    assert main(["train", str(spec_file), "--seeds", "2", "--out", str(tmp_path / "s"), "-q"]) == 130
    assert f"Continue with: nnspec train --resume {tmp_path / 's'} --seeds 2" in capsys.readouterr().err


def test_train_without_a_spec_or_resume_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2 and "--resume DIR" in capsys.readouterr().err


# -- closed pipes -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["specs/deep_mlp.yaml", "specs/mnist_cnn.yaml"])
def test_output_piped_into_head_ends_quietly(spec):
    command = f"{sys.executable} -m nnspec compile {spec} | head -1"
    proc = subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and proc.stderr == "", proc.stderr


class ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone: every write fails as it does after `| head` exits."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        return self.fd


@pytest.mark.parametrize("args", [["compile", "specs/mlp.yaml", "--json"], ["schema"], ["validate", "specs/mlp.yaml"]])
def test_every_command_stops_quietly_when_its_reader_has_gone(args, monkeypatch, capsys):
    """Deterministic where a real pipe races: output that fits the pipe's buffer may never see EPIPE."""
    read_end, write_end = os.pipe()
    try:
        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "stdout", ClosedPipe(write_end))
        assert main(args) == 141
        assert capsys.readouterr().err == ""
        os.write(write_end, b"x")  # stdout's descriptor now points at /dev/null: a late flush cannot fail
    finally:
        os.close(read_end)
        os.close(write_end)


# -- the model's input shape ---------------------------------------------------------------------


@pytest.mark.parametrize("shape, message", [
    ((1, 28, 28), "mnist-cnn: expected input (N, 1, 28, 28), got (1, 28, 28); a single sample needs a batch dimension"),
    ((4, 784), "mnist-cnn: expected input (N, 1, 28, 28), got (4, 784); the values per sample match: reshape with "
               "x.reshape(len(x), 1, 28, 28)"),
    ((4, 3, 28, 28), "mnist-cnn: expected input (N, 1, 28, 28), got (4, 3, 28, 28)"),
])  # fmt: skip
def test_a_model_called_with_the_wrong_shape_says_what_it_expects(shape, message):
    model = nnspec.build(REPO / "specs" / "mnist_cnn.yaml")
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape))
    assert str(error.value).startswith(message)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
