"""The runner end to end on small synthetic data: run directory, the loop's math, failures, ensembles, seeds.

Every training here is a few hundred tiny steps on ``data: {dataset: synthetic}``
and runs in well under a second; one test trains on real MNIST briefly and
skips when the files are absent.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from nnspec.compiler import build
from nnspec.errors import SpecError
from nnspec.train import RunError, evaluate, train
from nnspec.train import checkpoint as ckpt
from nnspec.train import loop
from nnspec.data.datasets import load_dataset, prepare
from nnspec.data.idx import locate_idx_files
from nnspec.train.init import initialize
from nnspec.train.progress import Progress
from nnspec.spec import load_spec, loads_spec

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
train: {epochs: 2, batch_size: 32}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC)
    return path


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_weights(directory / ckpt.WEIGHTS)


def metrics(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


# -- the run directory -------------------------------------------------------------------------


def test_run_directory_holds_everything(spec_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    summary = train(spec_file, overrides=["data.val=32", "train.epochs=3"], out=out, quiet=True)

    assert sorted(p.name for p in out.iterdir()) == [
        "checksums.json", "curves.png", "metrics.jsonl", "model.safetensors", "spec.yaml", "state.pt", "summary.json",
    ]  # fmt: skip
    # spec.yaml is the resolved spec: it loads, and the override is in it.
    resolved = load_spec(out / "spec.yaml")
    assert resolved.train.epochs == 3 and resolved.data.val == 32
    # metrics.jsonl: one strict-JSON line per epoch with the documented keys.
    lines = metrics(out)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for line in lines:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s"):
            assert isinstance(line[key], float), key
    # summary.json is what train() returned, with the environment recorded.
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("test_accuracy", "test_loss", "train_loss", "val_accuracy", "epochs_run", "wall_time_s",
                "samples_per_s", "seed", "threads", "device", "versions", "name"):  # fmt: skip
        assert key in summary, key
    assert summary["epochs_run"] == 3 and summary["threads"] == 1 and summary["device"] == "cpu"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The weights load into a freshly built model.
    model = build(resolved)
    model.load_state_dict(weights(out))


def test_default_run_directory_is_named_after_the_spec(spec_file: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = train(spec_file, overrides=["train.epochs=1"], quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-20") and summary["run_dir"] == str(Path("runs") / run.name)


def test_refuses_to_train_over_an_existing_run(spec_file: Path, tmp_path: Path):
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    with pytest.raises(RunError) as info:
        train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    assert info.value.exit_code == 2 and "--resume" in str(info.value)


def test_learns_the_synthetic_task(spec_file: Path, tmp_path: Path):
    summary = train(spec_file, overrides=["train.epochs=4"], out=tmp_path / "run", quiet=True)
    assert summary["test_accuracy"] >= 0.9  # chance is 0.1
    losses = [line["train_loss"] for line in metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]


# -- the loop is the textbook loop -------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
def test_runner_matches_a_hand_written_loop_bit_for_bit(spec_file: Path, tmp_path: Path, shuffle: bool):
    """Same seed, same batches, same steps: the runner adds bookkeeping, never math."""
    overrides = [f"train.shuffle={str(shuffle).lower()}", "train.seed=7"]
    train(spec_file, overrides=overrides, out=tmp_path / "run", quiet=True)

    spec = load_spec(tmp_path / "run" / "spec.yaml")
    data = load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": [1, 8, 8]})
    splits = prepare(data, scale=255.0)
    torch.manual_seed(7)
    model = build(spec)
    initialize(spec, model, tmp_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    order_generator = torch.Generator().manual_seed(7)
    n, batch = len(splits.y_train), spec.train.batch_size
    for _ in range(spec.train.epochs):
        order = torch.randperm(n, generator=order_generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            loss = F.cross_entropy(model(splits.x_train[rows]), splits.y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    saved = weights(tmp_path / "run")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_runner_matches_a_hand_written_loop_with_schedule_and_clipping(spec_file: Path, tmp_path: Path):
    """As above, with a per-step cosine schedule and both kinds of gradient clipping: the
    runner must clip before the optimizer step and step the schedule after it (stepping it
    before, or not clipping, changes the weights)."""
    overrides = ["train.seed=3", "optimizer={sgd: {lr: 0.5, momentum: 0.9}}", "schedule={cosine: 2}",
                 "regularization={clip_grad_norm: 0.5, clip_grad_value: 0.02}"]
    train(spec_file, overrides=overrides, out=tmp_path / "run", quiet=True)

    spec = load_spec(tmp_path / "run" / "spec.yaml")
    data = load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": [1, 8, 8]})
    splits = prepare(data, scale=255.0)
    torch.manual_seed(3)
    model = build(spec)
    initialize(spec, model, tmp_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, fused=True)  # as the runner
    n, batch = len(splits.y_train), spec.train.batch_size
    steps_per_epoch = math.ceil(n / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2 * steps_per_epoch)
    order_generator = torch.Generator().manual_seed(3)
    clipped_norms = 0
    for _ in range(spec.train.epochs):
        order = torch.randperm(n, generator=order_generator)
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            loss = F.cross_entropy(model(splits.x_train[rows]), splits.y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            clipped_norms += bool(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5) > 0.5)
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.02)
            optimizer.step()
            scheduler.step()
    assert clipped_norms > 0  # the clipping really bit

    saved = weights(tmp_path / "run")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), name


@pytest.mark.parametrize("gather_bytes", [1, 3 * (4 * 5 * 4), 1 << 20], ids=["one step", "three steps", "all"])
def test_gathered_batches_are_the_steps_own_samples(monkeypatch, gather_bytes: int):
    """Gathering a run of steps at once hands every step exactly x[indices], y[indices] and its weight."""
    monkeypatch.setattr(loop, "GATHER_BYTES", gather_bytes)
    x = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    steps = [(rows, 1.0 + i) for i, rows in enumerate(order[:39].split(4))]  # a ragged last batch of 3
    steps.append((order[39:39], 0.0))  # a rank's empty shard of a tiny last batch (DDP)
    gathered = list(loop.gathered_batches(x, y, steps))
    assert len(gathered) == len(steps)
    for (xb, yb, weight), (rows, expected_weight) in zip(gathered, steps):
        assert torch.equal(xb, x[rows]) and torch.equal(yb, y[rows]) and weight == expected_weight
    assert list(loop.gathered_batches(x, y, [])) == []


def test_same_seed_same_result_other_seed_differs(spec_file: Path, tmp_path: Path):
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "a", quiet=True)
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "b", quiet=True)
    train(spec_file, overrides=["train.epochs=1", "train.seed=1"], out=tmp_path / "c", quiet=True)
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_augmentation_and_noise_touch_training_batches_only(spec_file: Path, tmp_path: Path):
    plain = train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "plain", quiet=True)
    augmented = ["train.epochs=1", "regularization.input_noise=0.3", "data.augment=[{random_shift: 1}]"]
    noisy = train(spec_file, overrides=augmented, out=tmp_path / "noisy", quiet=True)
    assert plain["train_loss"] != noisy["train_loss"]  # training saw different inputs...
    # ...but evaluation is deterministic: evaluating the saved weights reproduces the summary exactly.
    again = evaluate(spec_file, checkpoint=tmp_path / "noisy", overrides=["train.epochs=1"], quiet=True)
    assert again["test_loss"] == noisy["test_loss"] and again["test_accuracy"] == noisy["test_accuracy"]


def test_eval_uses_eval_mode_and_argmax_accuracy(spec_file: Path, tmp_path: Path):
    """Dropout off at evaluation: the reported accuracy is argmax(model(x)) == y of the saved weights."""
    overrides = ["model=[flatten, {linear: 32}, relu, {dropout: 0.5}, {linear: 10}]", "train.epochs=2"]
    summary = train(spec_file, overrides=overrides, out=tmp_path / "run", quiet=True)
    spec = load_spec(tmp_path / "run" / "spec.yaml")
    model = build(spec).eval()
    model.load_state_dict(weights(tmp_path / "run"))
    data = prepare(load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": [1, 8, 8]}))
    with torch.no_grad():
        outputs = model(data.x_test)
    assert summary["test_accuracy"] == pytest.approx((outputs.argmax(1) == data.y_test).float().mean().item())
    assert summary["test_loss"] == pytest.approx(F.cross_entropy(outputs, data.y_test).item(), rel=1e-6)


# -- failures ------------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(spec_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises(RunError) as info:
        train(spec_file, overrides=["optimizer={sgd: 1e10}", "train.checkpoint_every=2"], out=out, quiet=True)
    message = str(info.value)
    assert info.value.exit_code == 1
    assert "epoch 1, step 3" in message and "last good checkpoint (global step 2)" in message
    state = ckpt.load_state(out / ckpt.STATE)
    assert state["cursor"]["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in weights(out).values())
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_non_finite_loss_exits_1_from_the_cli(spec_file: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "nnspec", "train", str(spec_file), "--set", "optimizer={sgd: 1e10}", "-q",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("nnspec: loss became") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "where", "fragment"),
    [
        (["regularization.early_stopping={patience: 1}"], "regularization.early_stopping", "needs a validation split"),
        (["schedule={plateau: 1}"], "schedule", "needs data.val > 0"),
        (["train.precision=bf16"], "train.precision", "CUDA only"),
    ],
)
def test_impossible_setups_are_refused_before_training(spec_file: Path, tmp_path: Path, overrides, where, fragment):
    if "bf16" in overrides[0] and torch.cuda.is_available():
        pytest.skip("bf16 is allowed where CUDA is")
    with pytest.raises(SpecError) as info:
        train(spec_file, overrides=overrides, out=tmp_path / "run", quiet=True)
    assert f"--set {overrides[0]}:1:" in str(info.value) and where in str(info.value)
    assert fragment in str(info.value)
    assert not (tmp_path / "run").exists()


def test_spec_without_loss_is_refused(tmp_path: Path):
    spec = loads_spec(SPEC.replace("loss: cross_entropy\n", ""))
    with pytest.raises(SpecError, match="training needs a 'loss' section"):
        train(spec, out=tmp_path / "run", quiet=True)


def test_data_problems_exit_2(spec_file: Path, tmp_path: Path):
    with pytest.raises(RunError) as info:
        train(spec_file, overrides=["data.train_samples=100000"], out=tmp_path / "run", quiet=True)
    assert info.value.exit_code == 2 and "train_samples" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_output_width_must_cover_the_classes(spec_file: Path, tmp_path: Path):
    with pytest.raises(SpecError, match="10 outputs"):
        train(spec_file, overrides=["model.3.out=5"], out=tmp_path / "run", quiet=True)


# -- early stopping, ensembles, seeds ----------------------------------------------------------


def test_early_stopping_stops_and_restores_the_best_epoch(spec_file: Path, tmp_path: Path):
    # min_delta 100 makes every epoch after the first "no improvement": stop after 1 + patience epochs
    # and restore epoch 1's weights, which must equal a 1-epoch run's bit for bit.
    common = ["data.val=32"]
    summary = train(spec_file, out=tmp_path / "stop", quiet=True, overrides=common + [
        "train.epochs=10", "regularization.early_stopping={patience: 2, min_delta: 100}"])  # fmt: skip
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    train(spec_file, overrides=common + ["train.epochs=1"], out=tmp_path / "one", quiet=True)
    best, one = weights(tmp_path / "stop"), weights(tmp_path / "one")
    assert all(torch.equal(best[k], one[k]) for k in one)


def test_ensemble_trains_members_on_bootstraps_and_combines(spec_file: Path, tmp_path: Path):
    out = tmp_path / "ens"
    overrides = ["ensemble={members: 3, combine: mean}", "train.epochs=2"]
    summary = train(spec_file, overrides=overrides, out=out, quiet=True)
    member_weights = [weights(out / f"member_{i}") for i in range(3)]
    assert not torch.equal(member_weights[0]["linear_1.weight"], member_weights[1]["linear_1.weight"])
    assert len(summary["members"]) == 3
    assert {line["member"] for line in metrics(out)} == {0, 1, 2}
    # Combined accuracy is computed from the members' averaged probabilities.
    spec = load_spec(out / "spec.yaml")
    data = prepare(load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": [1, 8, 8]}))
    probabilities = []
    for state in member_weights:
        model = build(spec).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            probabilities.append(model(data.x_test).softmax(-1))
    mean = torch.stack(probabilities).mean(0)
    assert summary["test_accuracy"] == pytest.approx((mean.argmax(1) == data.y_test).float().mean().item())
    again = evaluate(spec_file, checkpoint=out, overrides=overrides, quiet=True)
    assert again["test_accuracy"] == summary["test_accuracy"]


def test_vote_ensemble_reports_no_loss_and_the_majority_vote_accuracy(spec_file: Path, tmp_path: Path):
    out = tmp_path / "vote"
    summary = train(spec_file, overrides=["ensemble={members: 3, combine: vote}", "train.epochs=1"],
                    out=out, quiet=True)  # fmt: skip
    assert summary["test_loss"] is None
    # The accuracy of the majority vote, counted by hand: the class two or three members
    # predict, else (all differ) the lowest of the three.
    spec = load_spec(out / "spec.yaml")
    data = prepare(load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": [1, 8, 8]}))
    predictions = []
    for i in range(3):
        model = build(spec).eval()
        model.load_state_dict(weights(out / f"member_{i}"))
        with torch.no_grad():
            predictions.append(model(data.x_test).argmax(1).tolist())
    correct = 0
    for a, b, c, label in zip(*predictions, data.y_test.tolist()):
        vote = a if a in (b, c) else (b if b == c else min(a, b, c))
        correct += vote == label
    assert summary["test_accuracy"] == pytest.approx(correct / len(data.y_test))
    assert len({tuple(p) for p in predictions}) > 1  # the members disagree somewhere, so the vote matters


def test_seeds_report_mean_and_std(spec_file: Path, tmp_path: Path, capsys):
    summary = train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "seeds", seeds=3)
    runs = [json.loads((tmp_path / "seeds" / f"seed_{k}" / "summary.json").read_text()) for k in range(3)]
    assert [run["seed"] for run in runs] == [0, 1, 2]
    values = [run["test_accuracy"] for run in runs]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert summary["test_accuracy"]["mean"] == pytest.approx(mean)
    assert summary["test_accuracy"]["std"] == pytest.approx(std)
    assert "3 seeds" in capsys.readouterr().out


# -- pieces ------------------------------------------------------------------------------------


def test_progress_bar_draws_on_a_tty_only():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(enabled=True, stream=stream)
        bar.start_epoch(1, 2, steps=10)
        for step in range(1, 11):
            bar.update(step, lambda: step * 32, lambda: 0.5)
        bar.end_epoch({"train_loss": 0.5, "samples_per_s": 1234.0})
    assert "\r" in tty.getvalue() and "samples/s" in tty.getvalue() and "[####" in tty.getvalue()
    assert pipe.getvalue() == "epoch 1/2  train_loss 0.5000  1,234 samples/s\n"  # a log line, no bar
    quiet = io.StringIO()
    Progress(enabled=False, stream=quiet).end_epoch({"train_loss": 1.0})
    assert quiet.getvalue() == ""


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path):
    target = tmp_path / "model.safetensors"
    ckpt.save_weights(target, {"w": torch.ones(3)})

    def explode(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.atomic_write(target, explode)
    assert torch.equal(ckpt.load_weights(target)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json", "model.safetensors"]  # no temp file left


def test_resolved_spec_is_canonical_yaml(spec_file: Path, tmp_path: Path):
    train(spec_file, overrides=["train.epochs=1"], out=tmp_path / "run", quiet=True)
    data = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert data["optimizer"] == {"type": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False}
    assert data["model"][1] == {"type": "linear", "out": 32, "bias": True}


# -- real data -----------------------------------------------------------------------------------


MNIST_SPEC = """\
nnspec: 1
name: mnist-short
input: [1, 28, 28]
model: [flatten, {linear: 64}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {adam: 0.002}
data: {dataset: mnist, download: false, train_samples: 2000, test_samples: 1000}
train: {epochs: 1, batch_size: 32}
"""


def test_short_mnist_run_learns(tmp_path: Path):
    if locate_idx_files("mnist") is None:
        pytest.skip("MNIST files not found (set NNSPEC_DATA)")
    spec = loads_spec(MNIST_SPEC)
    summary = train(spec, out=tmp_path / "mnist", quiet=True)
    # 63 Adam steps on 2,000 digits reach ~0.85; a broken loss/optimizer stays near 0.1.
    assert summary["test_accuracy"] > 0.7
