"""``train.compile: true``: the compiled step matches the eager one, resumes exactly, and refuses what it cannot do.

Which backend runs where: the equivalence tests compile with ``aot_eager``
(``$NNSPEC_COMPILE_BACKEND``): the very graph the real path traces — forward,
loss, penalties, backward, clipping and update — run by eager kernels, without
Inductor's code generation, so covering every optimizer and option costs
seconds. The tests marked ``slow`` use ``inductor``, the real path: generated
C++ for the CPU, its compile time recorded, and a SIGKILLed process resumed
bit-identically.
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

from nnspec.errors import SpecError
from nnspec.spec.validate import load_spec
from nnspec.train import checkpoint as ckpt
from nnspec.train import train

SPEC = """\
nnspec: 1
name: compiled
input: [1, 8, 8]
model:
  - flatten
  - linear: 32
  - relu
  - dropout: 0.0
  - linear: 10
loss: cross_entropy
optimizer: {sgd: 0.05}
data:
  dataset: synthetic
  synthetic: {samples: 416, test_samples: 32}
  val: 16
train: {epochs: 2, batch_size: 16}
"""
# 400 training samples at batch 16: 25 steps an epoch, 50 steps in all, and no partial batch, so a
# second compilation could only be a recompile (which the equivalence tests forbid).

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "compiled.yaml"
    path.write_text(SPEC)
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(directory / ckpt.WEIGHTS)


def assert_close_weights(a: Path, b: Path, atol: float = 2e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=1e-4, msg=f"{name} differs")


# Not Adam with BatchNorm here: the bias of the linear layer before a BatchNorm has an exactly zero
# gradient, which either step computes as rounding noise, and Adam scales any noise up to +-lr.
OPTIONS = {
    "sgd": [],
    "sgd-nesterov-cosine": ["optimizer={sgd: {lr: 0.02, momentum: 0.9, nesterov: true}}", "schedule=cosine"],
    "adam-warmup-step": ["optimizer=adam", "schedule=[{warmup: 0.5}, {step: 1}]"],
    "adamw-l1-l2": ["optimizer=adamw", "regularization.l2=0.001", "regularization.l1=0.0001"],
    "adagrad-decay-clip": ["optimizer=adagrad", "regularization.weight_decay=0.1", "regularization.clip_grad_norm=0.5",
                           "regularization.clip_grad_value=0.05"],
    "adadelta-plateau": ["optimizer=adadelta", "schedule={plateau: {patience: 0, monitor: train_loss}}"],
    "rmsprop-momentum-smoothing": ["optimizer={rmsprop: {lr: 0.001, momentum: 0.5}}", "loss={cross_entropy: 0.1}"],
    "dropout-batchnorm-noise-augment": ["model.3={dropout: 0.3}", "model.2=batch_norm", "regularization.input_noise=0.1",
                                        "data.augment=[{random_shift: 1}]"],
    "triton-kernels": ["train.kernels=triton", "model.2={leaky_relu: 0.02}", "optimizer=adam"],
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_compiled_step_matches_the_eager_step_over_50_steps(spec_file: Path, tmp_path: Path, monkeypatch, options):
    monkeypatch.setenv("NNSPEC_COMPILE_BACKEND", "aot_eager")
    eager = train(spec_file, overrides=options, out=tmp_path / "eager", quiet=True)
    # One graph per shape: a schedule changing the lr every step must not recompile.
    with torch._dynamo.config.patch(recompile_limit=1):
        compiled = train(spec_file, overrides=[*options, "train.compile=true"], out=tmp_path / "compiled", quiet=True)
    assert eager["steps"] == compiled["steps"] == 50
    assert eager["compile"] == {"enabled": False}
    assert compiled["compile"]["enabled"] and [s["shape"] for s in compiled["compile"]["shapes"]] == ["16x1x8x8"]
    assert_close_weights(tmp_path / "eager", tmp_path / "compiled")
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)


def test_the_step_keeps_the_guards_that_can_fail():
    """The step drops most of Dynamo's guards for speed (``step_guards``); the two that must still fire do.

    A new batch shape (the epoch's last, smaller batch) must get its own graph, not the other
    shape's; a model switched to eval mode must run dropout as eval does, not replay training.
    """
    from nnspec.compiler import build, build_loss
    from nnspec.spec import loads_spec
    from nnspec.train.compiled import GUARD_FILTER_SUPPORTED, CompiledStep
    from nnspec.train.optim import build_optimizer

    assert GUARD_FILTER_SUPPORTED, "this torch cannot filter guards: the compiled step pays for all of them"
    spec = loads_spec(SPEC.replace("dropout: 0.0", "dropout: 0.5"))
    torch.manual_seed(0)
    model = build(spec)
    step = CompiledStep(spec, model, build_loss(spec).bound(), build_optimizer(spec, model), backend="aot_eager")
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def expected(inputs: torch.Tensor) -> torch.Tensor:  # the outputs the step reports are before its update
        with torch.no_grad():
            return model(inputs)

    torch.manual_seed(1)
    want = expected(x)
    torch.manual_seed(1)
    _, got = step(x, y)
    torch.testing.assert_close(got, want)  # training mode: the same dropout mask from the same seed
    _, got = step(x[:3], y[:3])
    assert got.shape == (3, 10)  # a new shape, a new graph
    model.eval()
    for inputs, labels in ((x, y), (x[:3], y[:3])):
        want = expected(inputs)
        _, got = step(inputs, labels)
        torch.testing.assert_close(got, want)  # eval mode: no dropout, in either shape's graph


def test_an_option_that_cannot_be_compiled_is_refused_at_its_position(tmp_path: Path):
    path = tmp_path / "fgsm.yaml"
    path.write_text(SPEC.replace("train: {epochs: 2, batch_size: 16}",
                                 "regularization:\n  adversarial: {fgsm: 0.1}\ntrain: {epochs: 2, batch_size: 16, compile: true}"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert f"{path}:17:3: regularization.adversarial: cannot be compiled (train.compile: true)" in message
    assert "\n" not in message.strip()
    # Without compile the same spec is fine.
    path.write_text(path.read_text().replace(", compile: true", ""))
    assert load_spec(path).regularization.adversarial is not None


def test_the_cli_refuses_it_with_exit_2(tmp_path: Path):
    path = tmp_path / "fgsm.yaml"
    path.write_text(SPEC.replace("train: {", "regularization: {adversarial: {fgsm: 0.1}}\ntrain: {"))
    result = subprocess.run([sys.executable, "-m", "nnspec", "train", str(path), "--set", "train.compile=true",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 2
    assert "regularization.adversarial: cannot be compiled" in result.stderr and "Traceback" not in result.stderr


# -- the real path: Inductor ----------------------------------------------------------------------


@pytest.mark.slow
def test_inductor_step_matches_eager_and_records_its_compile_time(spec_file: Path, tmp_path: Path, capsys):
    options = ["model.3={dropout: 0.2}", "optimizer=adam", "schedule=cosine", "data.synthetic.samples=424"]
    eager = train(spec_file, overrides=options, out=tmp_path / "eager", quiet=True)
    compiled = train(spec_file, overrides=[*options, "train.compile=true"], out=tmp_path / "compiled")
    # 408 samples: 25 full batches and one of 8, compiled once each and shown as it happens.
    shapes = [s["shape"] for s in compiled["compile"]["shapes"]]
    assert shapes == ["16x1x8x8", "8x1x8x8"]
    assert compiled["compile"]["seconds"] > 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "compiled the training step for batches of shape 16x1x8x8 in" in out
    assert_close_weights(tmp_path / "eager", tmp_path / "compiled")
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)


LONG = ["train.epochs=2", "data.synthetic.samples=2016", "train.batch_size=4", "train.checkpoint_every=100",
        "model.3={dropout: 0.2}", "optimizer=adam", "regularization.input_noise=0.05", "train.compile=true"]


@pytest.mark.slow
def test_compiled_run_killed_with_sigkill_resumes_bit_identical(spec_file: Path, tmp_path: Path):
    reference = tmp_path / "reference"
    train(spec_file, overrides=[o for o in LONG if "checkpoint_every" not in o], out=reference, quiet=True)
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "nnspec", "train", str(spec_file), "--out", str(killed), "-q"]
    for override in LONG:
        command += ["--set", override]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    state = killed / ckpt.STATE
    try:
        while not state.exists():
            assert process.poll() is None, f"training ended before its first checkpoint: {process.communicate()}"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    saved = ckpt.load_state(state)["cursor"]
    assert saved["global_step"] < 2 * 504, "the process finished before it was killed"
    # The same checkpoint resumed compiled ends bit-identical; resumed eagerly, equal to tolerance.
    eager_copy = tmp_path / "eager-resume"
    subprocess.run(["cp", "-r", str(killed), str(eager_copy)], check=True)
    train(spec_file, overrides=LONG, resume=killed, quiet=True)
    a, b = weights(reference), weights(killed)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resuming"
    train(spec_file, overrides=[*LONG[:-1], "train.compile=false"], resume=eager_copy, quiet=True)
    assert_close_weights(reference, eager_copy, atol=1e-4)


def test_multi_process_training_is_refused_when_compiled():
    from types import SimpleNamespace

    from nnspec.train.learner import make_compiled_step
    from nnspec.train.resolve import RunError

    run = SimpleNamespace(dist=SimpleNamespace(enabled=True), spec=None)
    with pytest.raises(RunError, match="train.compile: true trains one process") as info:
        make_compiled_step(run, None)  # type: ignore[arg-type]
    assert info.value.exit_code == 2


def test_the_study_report_says_which_step_mode_produced_it():
    from nnspec.bench.study import markdown

    machine = {"cpu": "cpu", "logical_cpus": 2, "parallel_runs": 1, "threads_per_run": 1, "python": "3",
               "torch": "2", "git_commit": "abc"}  # fmt: skip

    def row(variant: str, compiled: bool) -> dict:
        return {"variant": variant, "spec": f"specs/{variant}.yaml", "change": "", "published_text": "", "runs": 1,
                "test_accuracy_mean": 0.9, "test_accuracy_std": 0.0, "delta_points": None, "wall_time_s_mean": 1.0,
                "samples_per_s_mean": 1.0, "compiled": compiled, "compile_s_mean": 12.0 if compiled else 0.0}  # fmt: skip

    def text(*rows: dict) -> str:
        return markdown("t", list(rows), machine, "cmd", "", ("change", "published"))

    assert "Training step: eager (`train.compile: false`)." in text(row("a", False), row("b", False))
    assert "Training step: **compiled**" in text(row("a", True)) and "a 12 s" in text(row("a", True))
    assert "mixed — a compiled, b eager" in text(row("a", True), row("b", False))
