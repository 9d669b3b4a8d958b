"""The runner: a spec in, a trained model and a run directory out.

Reading order, top to bottom of the call tree:

* :func:`train` resolves the spec (file + ``--set`` overrides), the device and
  the data once, then runs one seed or several (``--seeds N``).
* :func:`run_once` fills one run directory: every ensemble member (or the one
  model), then the final evaluation, ``summary.json`` and the table.
* :func:`fit` is THE training loop for one model: epochs of steps over an
  in-memory dataset, evaluation at epoch ends, checkpoints, resume.
* :func:`make_step` builds the function that takes one optimizer step.

Design choices that shape the loop, and why:

* The whole dataset sits in memory as tensors (on the GPU when training
  there) and batches are gathered by index from a permutation drawn with a
  ``torch.Generator``: no DataLoader, no per-sample Python, so a small model is
  limited by its own compute, not by the input pipeline.
* Every random stream has its own generator (data order, augmentation, input
  noise, bootstrap) besides torch's global one (initialization, dropout), and
  all of them are checkpointed. Resuming regenerates the interrupted epoch's
  permutation from the order generator's state *at the start of that epoch*
  and skips the steps already taken, so on the CPU a resumed run ends with
  bitwise the same weights as an uninterrupted one.
* A step launches nothing beyond the training math and reads nothing back
  from an accelerator: its outputs are queued by reference and its loss is
  queued too (read at once on the CPU, where a read costs less than holding
  the tensor), and every ``CHECK_EVERY`` steps (and before every checkpoint
  and at each epoch end) the logged losses are checked for NaN/inf in one
  read. A non-finite loss therefore stops the run with its exact step, the
  GPU is never stalled by a per-step sync, and the last good checkpoint on
  disk is never overwritten by a poisoned one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnspec.compiler import SpecLoss, build, build_loss
from nnspec.errors import Diagnostic, SpecError, dotted
from nnspec.runner import checkpoint as ckpt
from nnspec.runner import distributed as D
from nnspec.runner import report
from nnspec.runner.augment import AugmentFn, build_augment
from nnspec.runner.datasets import DataError, load_dataset, prepare
from nnspec.runner.ensemble import bootstrap_indices, combine
from nnspec.runner.epoch_log import EpochClock, EpochLog, NonFinite, check_finite
from nnspec.runner.init import initialize
from nnspec.runner.optim import Schedule, build_optimizer, build_schedule
from nnspec.runner.progress import Progress
from nnspec.runner.regularize import EarlyStopping, clip_gradients, fgsm_loss, noisy_inputs, penalty
from nnspec.spec.model import Spec
from nnspec.spec.overrides import apply_overrides
from nnspec.spec.source import Document, load_document
from nnspec.spec.validate import validate_document

__all__ = ["RunError", "train", "evaluate", "resolve_spec", "fit", "make_step", "evaluate_models"]

#: Losses are checked for NaN/inf this often, in steps (one host read); several processes also agree
#: on Ctrl-C this often.
CHECK_EVERY = 64
#: Training batches are gathered from the dataset up to this many steps at a time, and up to this many
#: bytes of inputs (see gathered_batches, and docs/training.md's "Overhead of the runner" for the choice).
GATHER_STEPS = 64
GATHER_BYTES = 1 << 20
#: Seeds of different ranks / members are this far apart, so their random streams never coincide.
SEED_STRIDE = 1_000_003
#: Losses whose models output (log-)probabilities up to a softmax: ensembles average softmax(outputs).
SOFTMAX_LOSSES = frozenset({"cross_entropy", "nll"})


class RunError(Exception):
    """A run that cannot start (``exit_code`` 2: fix the input) or could not finish (1: it failed)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# =============================================================================================
# Resolving the spec, the device and the data
# =============================================================================================


def resolve_spec(spec: Spec | str | Path, overrides: Sequence[str] = ()) -> tuple[Spec, Path]:
    """The validated spec with ``overrides`` applied, and the directory relative paths start from."""
    if isinstance(overrides, str):
        raise TypeError("overrides is a list of 'key.path=value' strings, not one string")
    if isinstance(spec, Spec):
        if not overrides:
            return spec, Path.cwd()
        doc = Document(spec.model_dump(mode="json", exclude_none=True), "<spec>", {})
        return validate_document(apply_overrides(doc, list(overrides))), Path.cwd()
    path = Path(spec)
    doc = apply_overrides(load_document(path), list(overrides))
    return validate_document(doc), path.resolve().parent


def _absolute(value: str | None, base_dir: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def with_absolute_paths(spec: Spec, base_dir: Path) -> Spec:
    """Relative file paths resolved against the spec's directory.

    The run directory's ``spec.yaml`` must mean the same thing wherever it is
    read from (``--resume``, ``nnspec eval``), so it records absolute paths.
    """
    updates: dict[str, Any] = {}
    if spec.data is not None:
        updates["data"] = spec.data.model_copy(
            update={"path": _absolute(spec.data.path, base_dir), "root": _absolute(spec.data.root, base_dir)}
        )
    if spec.init.pretrained is not None:
        pretrained = spec.init.pretrained.model_copy(
            update={"checkpoint": _absolute(spec.init.pretrained.checkpoint, base_dir)}
        )
        updates["init"] = spec.init.model_copy(update={"pretrained": pretrained})
    return spec.model_copy(update=updates) if updates else spec


def _problem(spec: Spec, path: tuple[str | int, ...], message: str) -> Diagnostic:
    return Diagnostic(spec.position_of(path), dotted(path), message)


def check_trainable(spec: Spec) -> None:
    """Refuse, before any work, a spec that cannot be trained as written (all problems at once)."""
    problems = [
        _problem(spec, (section,), f"training needs {'an' if section[0] in 'aeiou' else 'a'} '{section}' section")
        for section in ("data", "loss", "optimizer")
        if getattr(spec, section) is None
    ]
    has_val = spec.data is not None and spec.data.val > 0
    stopping = spec.regularization.early_stopping
    if stopping is not None and not has_val:
        problems.append(_problem(
            spec, ("regularization", "early_stopping"),
            f"early stopping monitors {stopping.monitor}, which needs a validation split: "
            "set data.val (e.g. --set data.val=5000)",
        ))  # fmt: skip
    phases = spec.schedule if isinstance(spec.schedule, list) else [spec.schedule]
    for i, phase in enumerate(phases):
        monitor = getattr(phase, "monitor", "")
        if monitor.startswith("val_") and not has_val:
            path = ("schedule", i) if isinstance(spec.schedule, list) else ("schedule",)
            problems.append(_problem(spec, path, f"plateau monitors {monitor}, which needs data.val > 0"))
    if problems:
        raise SpecError(problems)


def resolve_device_type(spec: Spec) -> str:
    """``auto`` means CUDA when there is a GPU; asking for what the machine lacks is an error."""
    wanted = spec.train.device
    has_cuda = torch.cuda.is_available()
    if wanted == "cuda" and not has_cuda:
        message = "CUDA was asked for but no GPU is available; use device: cpu or auto"
        raise SpecError([_problem(spec, ("train", "device"), message)])
    device_type = "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"
    if spec.train.precision == "bf16" and device_type != "cuda":
        message = "bf16 autocast runs on CUDA only; this run is on the CPU (use precision: fp32)"
        raise SpecError([_problem(spec, ("train", "precision"), message)])
    return device_type


@dataclass(frozen=True)
class Data:
    """Training-ready tensors on the training device (``x_val``/``y_val`` empty when ``data.val`` is 0)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


def load_data(spec: Spec, device: torch.device) -> Data:
    """Load, prepare and move the spec's dataset; data problems become exit-code-2 errors."""
    section = spec.data
    assert section is not None  # check_trainable ran
    synthetic = None
    if section.dataset == "synthetic":
        synthetic = {**section.synthetic.model_dump(), "shape": list(spec.input)}
    normalize = (section.normalize.mean, section.normalize.std) if section.normalize else None
    try:
        dataset = load_dataset(
            section.dataset, root=section.root, path=section.path, download=section.download, synthetic=synthetic
        )
        splits = prepare(
            dataset, scale=section.scale, normalize=normalize,
            train_samples=section.train_samples, test_samples=section.test_samples, val=section.val,
        )  # fmt: skip
    except DataError as exc:
        raise RunError(str(exc), exit_code=2) from None
    tensors = [splits.x_train, splits.x_val, splits.x_test]
    tensors = [_as_input(spec, x, tuple(dataset.sample_shape)) for x in tensors]
    labels = [splits.y_train, splits.y_val, splits.y_test]
    moved = [t.to(device) for t in tensors], [t.to(device) for t in labels]
    (x_train, x_val, x_test), (y_train, y_val, y_test) = moved
    return Data(x_train, y_train, x_val, y_val, x_test, y_test, dataset.num_classes)


def _as_input(spec: Spec, x: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
    """Samples shaped as the spec's ``input``: reshaped when only the layout differs ((1,28,28) vs (784,))."""
    wanted = tuple(spec.input)
    if sample_shape == wanted:
        return x
    if math.prod(sample_shape) == math.prod(wanted):
        return x.reshape(len(x), *wanted)
    raise SpecError([_problem(
        spec, ("input",), f"the dataset's samples have shape {list(sample_shape)} but input is {list(wanted)}"
    )])  # fmt: skip


def _check_outputs(spec: Spec, model: nn.Module, data: Data) -> None:
    """The model must output one score per class: (N, C) with C >= the dataset's classes."""
    with torch.inference_mode():
        was_training = model.training
        model.eval()
        out_shape = tuple(model(data.x_train[:1]).shape[1:])
        model.train(was_training)
    if len(out_shape) != 1 or out_shape[0] < data.num_classes:
        raise SpecError([_problem(
            spec, ("model", len(spec.model) - 1),
            f"the model outputs shape {list(out_shape)} per sample, but the data has {data.num_classes} classes: "
            f"the last layer needs {data.num_classes} outputs",
        )])  # fmt: skip


# =============================================================================================
# The pieces of one model's training
# =============================================================================================


@dataclass(frozen=True)
class Member:
    """One model to train: the only model of a plain run, or one ensemble member."""

    index: int | None  # None when the spec has no ensemble
    seed: int
    directory: Path  # where its model.safetensors and state.pt go


@dataclass
class Run:
    """What every member of one run directory shares."""

    spec: Spec
    base_dir: Path
    directory: Path
    device: torch.device
    dist: D.Dist
    data: Data
    progress: Progress
    stop: "StopSignal"
    histories: dict[int | None, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def bf16(self) -> bool:
        return self.spec.train.precision == "bf16"


@dataclass
class Learner:
    """A model and everything that updates it."""

    model: nn.Module  # the bare model: weights, evaluation, checkpoints
    net: nn.Module  # what training steps call: the DDP wrapper, or the model itself
    loss_fn: SpecLoss
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    stopper: EarlyStopping | None
    augment: AugmentFn
    generators: dict[str, torch.Generator]


@dataclass
class Cursor:
    """Where training stands; everything in it goes into ``state.pt``."""

    epoch: int = 0  # finished epochs
    step: int = 0  # finished steps of the current epoch
    global_step: int = 0
    epoch_order_state: Tensor | None = None  # the order generator at the start of the current epoch
    tally: dict[str, float] = field(default_factory=dict)  # this rank's sums of the epoch in progress
    spent: tuple[float, float] = (0.0, 0.0)  # (wall, CPU) seconds of training already spent in this epoch
    stopped_early: bool = False
    saved_step: int | None = None  # global step of the last checkpoint written
    history: list[dict[str, Any]] = field(default_factory=list)

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "epoch_order_state": self.epoch_order_state, "spent": self.spent,
            "stopped_early": self.stopped_early, "history": self.history,
        }  # fmt: skip


def member_seed(seed: int, index: int | None) -> int:
    return seed if not index else seed + SEED_STRIDE * index


def make_generators(seed: int, rank: int, device: torch.device) -> dict[str, torch.Generator]:
    """One stream per purpose, so e.g. turning on augmentation does not change the data order.

    The order stream is the same on every rank (they must agree on the global
    batches) and lives on the CPU, so a run draws the same batches on any
    device. Augmentation and noise differ per rank like their samples do, and
    draw on the training device so a GPU step never waits for a host copy.
    """
    offset = SEED_STRIDE * rank
    return {
        "order": torch.Generator().manual_seed(seed),
        "augment": torch.Generator(device=device).manual_seed(seed + 1 + offset),
        "noise": torch.Generator(device=device).manual_seed(seed + 2 + offset),
    }


def make_learner(run: Run, member: Member, steps_per_epoch: int) -> Learner:
    """Build, initialize and wire up a fresh model (its random init comes from ``member.seed``)."""
    spec, device = run.spec, run.device
    torch.manual_seed(member.seed)
    model = build(spec, device, spec.train.kernels)
    initialize(spec, model, run.base_dir)
    _check_outputs(spec, model, run.data)
    if run.dist.rank > 0:
        torch.manual_seed(member.seed + SEED_STRIDE * run.dist.rank)  # own dropout masks per rank
    loss_fn = build_loss(spec, device, spec.train.kernels)
    try:
        optimizer = build_optimizer(spec, model)
        schedule = build_schedule(spec, optimizer, steps_per_epoch, spec.train.epochs)
        augment = build_augment([(step.type, step.model_dump(exclude={"type"})) for step in spec.data.augment])
    except ValueError as exc:
        raise RunError(str(exc), exit_code=2) from None
    return Learner(
        model=model, net=model, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule,
        stopper=EarlyStopping.from_spec(spec), augment=augment,
        generators=make_generators(member.seed, run.dist.rank, device),
    )  # fmt: skip


class StopSignal:
    """Ctrl-C asks the loop to stop at the next step boundary (it then checkpoints and re-raises).

    Why not let KeyboardInterrupt fly: it could land inside ``optimizer.step()``
    and leave half-updated weights to be checkpointed. A second Ctrl-C
    interrupts immediately, for when the user really means it.
    """

    def __init__(self, dist: D.Dist):
        self.dist = dist
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (all ranks must stop at the same step)."""
        if not self.dist.enabled:
            return self.requested
        flag = torch.tensor(int(self.requested), device=device)
        return bool(D.all_reduce_max(flag, self.dist))


# =============================================================================================
# One step, evaluation, checkpoints
# =============================================================================================


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


#: ``step(x, y, weight) -> (data loss, outputs)``: one optimizer step on a batch (see :func:`make_step`).
StepFn = Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]


def make_step(run: Run, learner: Learner) -> StepFn:
    """The function that takes one optimizer step on a batch; it returns the data loss and the outputs.

    Why a closure built once: a small model's step is a few hundred
    microseconds, so every attribute chain and feature check paid per step
    shows up in the runner's overhead against a hand-written loop. The spec's
    choices (augmentation, input noise, bf16, adversarial loss, penalties,
    clipping, per-rank weighting) are decided here, and the step touches only
    locals. Nothing in it reads a value back from the device; a non-finite
    loss is caught by the epoch log's periodic check, before any checkpoint.

    ``weight`` rescales this rank's mean loss so that DDP's gradient average
    equals the gradient of the global batch's mean even when shards differ in size.
    """
    spec, reg = run.spec, run.spec.regularization
    net, model, loss_fn, optimizer = learner.net, learner.model, learner.loss_fn, learner.optimizer
    compute_loss = loss_fn.bound()  # the loss as a plain function: no nn.Module call per step
    after_step = learner.schedule.after_step
    augment = learner.augment if spec.data.augment else None  # type: ignore[union-attr]
    augment_generator, noise_generator = learner.generators["augment"], learner.generators["noise"]
    noise = reg.input_noise
    adversarial = reg.adversarial
    penalized = bool(reg.l1 or reg.l2)
    clipped = reg.clip_grad_norm is not None or reg.clip_grad_value is not None
    autocast = _autocast(run.bf16)  # one context object, entered once per step (torch's autocast allows that)
    sharded = run.dist.enabled

    def step(x: Tensor, y: Tensor, weight: float) -> tuple[Tensor, Tensor]:
        if augment is not None:
            x = augment(x, augment_generator)
        if noise:
            x = noisy_inputs(x, noise, noise_generator)
        with autocast:
            outputs = net(x)
            if sharded and y.shape[0] == 0:  # a rank's empty shard of a tiny last batch: contribute zero
                loss = outputs.sum() * 0.0
            else:
                loss = compute_loss(outputs, y)
                if adversarial is not None:
                    loss = fgsm_loss(net, loss_fn, x, y, adversarial.fgsm, adversarial.weight, loss)
        objective = loss * weight if weight != 1.0 else loss
        if penalized:
            objective = objective + penalty(spec, model)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if clipped:
            clip_gradients(spec, model)
        optimizer.step()
        after_step()
        return loss, outputs

    return step


def _ensemble_loss(spec: Spec, loss_fn: nn.Module, combined: Tensor, y: Tensor) -> Tensor | None:
    """The loss of combined outputs: NLL of the averaged probabilities, the spec's loss on averaged
    raw outputs, and none for majority votes (a vote has no likelihood)."""
    assert spec.ensemble is not None and spec.loss is not None
    if spec.ensemble.combine == "vote":
        return None
    if spec.loss.type in SOFTMAX_LOSSES:
        return F.nll_loss(combined.clamp_min(1e-12).log(), y)
    return loss_fn(combined, y)


@torch.inference_mode()
def evaluate_models(models: Sequence[nn.Module], loss_fn: nn.Module, x: Tensor, y: Tensor, *, spec: Spec,
                    dist: D.Dist = D.Dist(), bf16: bool = False) -> tuple[float | None, float | None]:  # fmt: skip
    """(mean loss, accuracy) of a model, or of an ensemble's combined outputs, in eval mode.

    Each rank evaluates its contiguous slice; the sums are added over ranks.
    """
    if len(y) == 0:
        return None, None
    x, y = D.shard(x, dist), D.shard(y, dist)
    for model in models:
        model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    correct = torch.zeros((), dtype=torch.float64, device=y.device)
    has_loss = True
    for start in range(0, len(y), spec.train.eval_batch_size):
        xb, yb = x[start:start + spec.train.eval_batch_size], y[start:start + spec.train.eval_batch_size]
        with _autocast(bf16):
            outputs = [model(xb) for model in models]
            if len(models) == 1:
                out, loss = outputs[0], loss_fn(outputs[0], yb)
            else:
                assert spec.ensemble is not None and spec.loss is not None
                out = combine([o.float() for o in outputs], spec.ensemble.combine, spec.loss.type in SOFTMAX_LOSSES)
                loss = _ensemble_loss(spec, loss_fn, out, yb)
        if loss is None:
            has_loss = False
        else:
            loss_sum += loss.double() * len(yb)
        correct += (out.argmax(dim=-1) == yb).sum()
    count = torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)
    loss_sum, correct, count = D.all_reduce_sum(torch.stack([loss_sum, correct, count]), dist).tolist()
    return (loss_sum / count if has_loss else None), correct / count


def _rank_state(learner: Learner, log: EpochLog | None, run: Run) -> list[dict[str, Any]]:
    """Every rank's own random streams and partial sums (a collective call under DDP)."""
    sums = log.state() if log is not None else {}
    return D.all_gather({"rng": ckpt.capture_rng(learner.generators), "tally": sums}, run.dist)


def save_checkpoint(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog | None) -> None:
    """Weights first, then the self-contained resume state (see checkpoint.py for why both hold weights).

    ``log`` holds the partial sums of an epoch in progress (None at an epoch's end).
    """
    ranks = _rank_state(learner, log, run)
    cursor.saved_step = cursor.global_step
    if not run.dist.is_main:
        return
    weights = learner.model.state_dict()
    meta = {"spec": run.spec.name, "epoch": cursor.epoch, "step": cursor.step, "global_step": cursor.global_step}
    ckpt.save_weights(member.directory / ckpt.WEIGHTS, weights, meta)
    ckpt.save_state(member.directory / ckpt.STATE, {
        "spec_name": run.spec.name,
        "member": member.index,
        "world_size": run.dist.world_size,
        "cursor": cursor.to_state(),
        "model": {name: tensor.detach().cpu() for name, tensor in weights.items()},
        "optimizer": learner.optimizer.state_dict(),
        "schedule": learner.schedule.state_dict(),
        "early_stopping": learner.stopper.state_dict() if learner.stopper is not None else None,
        "ranks": ranks,
    })  # fmt: skip


def load_checkpoint(run: Run, member: Member, learner: Learner) -> Cursor:
    """Put a learner back exactly where a checkpoint left it; returns the cursor to continue from."""
    path = member.directory / ckpt.STATE
    try:
        state = ckpt.load_state(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise RunError(f"cannot resume from {path}: {exc}", exit_code=2) from None
    if state["spec_name"] != run.spec.name:
        raise RunError(f"{path} belongs to spec '{state['spec_name']}', not '{run.spec.name}'", exit_code=2)
    if state["world_size"] != run.dist.world_size:
        raise RunError(
            f"{path} was written by {state['world_size']} process(es); resume it with the same number "
            f"(this is {run.dist.world_size})", exit_code=2,
        )  # fmt: skip
    learner.model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.schedule.load_state_dict(state["schedule"])
    if learner.stopper is not None and state["early_stopping"] is not None:
        learner.stopper.load_state_dict(state["early_stopping"])
    mine = state["ranks"][run.dist.rank]
    ckpt.restore_rng(mine["rng"], learner.generators)
    cursor = Cursor(**state["cursor"], tally=mine["tally"])
    cursor.saved_step = cursor.global_step
    return cursor


def publish_weights(run: Run, member: Member, learner: Learner) -> None:
    """The final weights in ``model.safetensors`` (the best epoch's when early stopping restores them)."""
    if learner.stopper is not None and learner.stopper.restore_best and learner.stopper.restore(learner.model):
        if run.dist.is_main:
            meta = {"spec": run.spec.name, "epoch": learner.stopper.best_epoch, "restored_best": True}
            ckpt.save_weights(member.directory / ckpt.WEIGHTS, learner.model.state_dict(), meta)


# =============================================================================================
# THE loop
# =============================================================================================


def epoch_order(n: int, shuffle: bool, generator: torch.Generator, cursor: Cursor, device: torch.device) -> Tensor:
    """This epoch's sample order; on a mid-epoch resume, the very permutation the run was following."""
    if cursor.step == 0:
        cursor.epoch_order_state = generator.get_state()
    else:
        generator.set_state(cursor.epoch_order_state)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order.to(device)


def rank_batches(order: Tensor, batch_size: int, dist: D.Dist) -> list[tuple[Tensor, float]]:
    """The epoch's steps as (this rank's sample indices, its loss weight), cut once rather than per step.

    The weight is this rank's share of the global batch times the world size
    (1.0 for one process), so that DDP's gradient average is the global batch's mean.
    """
    batches = order.split(batch_size)
    if not dist.enabled:
        return [(batch, 1.0) for batch in batches]
    shards = [(D.shard(batch, dist), batch.shape[0]) for batch in batches]
    return [(mine, mine.shape[0] * dist.world_size / size) for mine, size in shards]


def gathered_batches(x: Tensor, y: Tensor, steps: Sequence[tuple[Tensor, float]]
                     ) -> Iterator[tuple[Tensor, Tensor, float]]:  # fmt: skip
    """Each step's (inputs, labels, loss weight), gathered from the dataset a run of steps at a time.

    Why not ``x[indices]`` per step: indexing is a kernel (a launch on CUDA,
    a dispatch and an allocation on the CPU), two per step with the labels,
    and at batch size 1 that is a visible share of the step. One gather for
    up to ``GATHER_STEPS`` steps, cut into views, costs two kernels per run
    of steps instead. The samples and their order are the same, so a run's
    results do not change. A run holds at most ``GATHER_BYTES`` of inputs
    (or one step's): on the CPU a step then still reads its batch from cache.
    """
    if not steps:
        return
    step_bytes = math.prod(x.shape[1:]) * x.element_size() * max(1, steps[0][0].shape[0])
    per_gather = max(1, min(GATHER_STEPS, GATHER_BYTES // max(1, step_bytes)))
    for start in range(0, len(steps), per_gather):
        group = steps[start:start + per_gather]
        indices = torch.cat([rows for rows, _ in group]) if len(group) > 1 else group[0][0]
        sizes = [rows.shape[0] for rows, _ in group]
        yield from zip(x[indices].split(sizes), y[indices].split(sizes), [weight for _, weight in group])


def fit(run: Run, member: Member) -> tuple[Learner, Cursor]:
    """Train one model to the end (or resume it), leaving its files in ``member.directory``."""
    spec, data, dist = run.spec, run.data, run.dist
    batch_size, epochs = spec.train.batch_size, spec.train.epochs
    rows = _bootstrap_rows(spec, member, len(data.y_train), run.device)
    n = len(rows) if rows is not None else len(data.y_train)
    steps_per_epoch = math.ceil(n / batch_size)
    learner = make_learner(run, member, steps_per_epoch)
    resuming = (member.directory / ckpt.STATE).exists()
    cursor = load_checkpoint(run, member, learner) if resuming else Cursor()
    run.histories[member.index] = cursor.history
    if cursor.finished(epochs):
        publish_weights(run, member, learner)
        return learner, cursor
    if resuming:
        run.progress.message(f"resuming {member.directory} at epoch {cursor.epoch + 1}, step {cursor.step}")
    learner.net = D.wrap(learner.model, dist, run.device)
    step = make_step(run, learner)
    x_train, y_train, progress = data.x_train, data.y_train, run.progress
    # One process reads its Ctrl-C flag every step; several must agree, so they do it with the checks.
    poll_stop, every = not dist.enabled, spec.train.checkpoint_every
    try:
        for epoch in range(cursor.epoch, epochs):
            clock = EpochClock(cursor.spent)
            order = epoch_order(n, spec.train.shuffle, learner.generators["order"], cursor, run.device)
            if rows is not None:
                order = rows[order]  # a bootstrap member draws its epoch from its resample
            # One process sees the epoch's samples in order: their labels are known now, in one gather.
            ahead = None if dist.enabled else y_train[order[cursor.step * batch_size:]]
            log = EpochLog(run.device, n, steps_per_epoch, cursor.global_step + 1, cursor.tally, labels=ahead)
            learner.model.train()
            progress.start_epoch(epoch + 1, epochs, steps_per_epoch, member.index)
            steps = rank_batches(order, batch_size, dist)[cursor.step:]
            for x, y, weight in gathered_batches(x_train, y_train, steps):
                loss, outputs = step(x, y, weight)
                log.add(loss, outputs, y)
                cursor.step += 1
                cursor.global_step += 1
                done = cursor.global_step
                if done % CHECK_EVERY == 0 or (every and done % every == 0) or (poll_stop and run.stop.requested):
                    _between_steps(run, member, learner, cursor, log, clock, steps_per_epoch)
                if progress.live:
                    progress.update(cursor.step, log.samples, log.mean_loss)
            check_finite(log, dist)
            stop = _end_epoch(run, member, learner, cursor, log, clock)
            if stop:
                stopper = learner.stopper
                assert stopper is not None
                run.progress.message(f"early stopping after epoch {cursor.epoch}: no better {stopper.monitor} "
                                     f"since epoch {stopper.best_epoch}")  # fmt: skip
                break
            if run.stop.agreed(run.device):
                _interrupt(run, member, learner, cursor, None, clock, saved=True)
    except NonFinite as bad:
        raise _diverged(run, member, cursor, steps_per_epoch, bad) from None
    publish_weights(run, member, learner)
    return learner, cursor


def _between_steps(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog, clock: EpochClock,
                   steps_per_epoch: int) -> None:  # fmt: skip
    """What runs at some step boundaries only: the non-finite check, Ctrl-C, the periodic checkpoint.

    Every rank calls this at the same steps (the stop flag is polled every
    step only when there is one process), because all three may talk to the
    other ranks.
    """
    done, dist, every = cursor.global_step, run.dist, run.spec.train.checkpoint_every
    if done % CHECK_EVERY == 0:
        check_finite(log, dist)
    if (done % CHECK_EVERY == 0 or not dist.enabled) and run.stop.agreed(run.device):
        check_finite(log, dist)
        _interrupt(run, member, learner, cursor, log, clock)
    if every and done % every == 0 and cursor.step < steps_per_epoch:
        check_finite(log, dist)
        cursor.spent = clock.spent()
        save_checkpoint(run, member, learner, cursor, log)


def _end_epoch(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog, clock: EpochClock) -> bool:
    """Epoch bookkeeping: metrics, validation, schedule, early stopping, checkpoint. True = stop now."""
    train_loss, train_accuracy, samples = log.totals(run.dist)  # reads the device: the GPU has finished the epoch
    seconds, cpu_seconds = clock.spent()  # the epoch's training, its order and its metrics; not validation
    record: dict[str, Any] = {"epoch": cursor.epoch + 1}
    if member.index is not None:
        record["member"] = member.index
    record.update(step=cursor.global_step, train_loss=train_loss, train_accuracy=train_accuracy)
    if run.spec.data.val > 0:  # type: ignore[union-attr]
        val_loss, val_accuracy = evaluate_models([learner.model], learner.loss_fn, run.data.x_val, run.data.y_val,
                                                 spec=run.spec, dist=run.dist, bf16=run.bf16)  # fmt: skip
        record.update(val_loss=val_loss, val_accuracy=val_accuracy)
    record.update(lr=learner.schedule.lrs()[0], seconds=seconds, cpu_seconds=cpu_seconds, samples=samples,
                  samples_per_s=samples / max(seconds, 1e-9))
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    metrics = {key: record[key] for key in keys if key in record}
    try:
        learner.schedule.after_epoch(metrics)
    except ValueError as exc:
        raise RunError(str(exc), exit_code=2) from None
    stop = learner.stopper.update(cursor.epoch + 1, metrics, learner.model) if learner.stopper else False
    cursor.history.append(record)
    cursor.epoch, cursor.step, cursor.spent, cursor.stopped_early = cursor.epoch + 1, 0, (0.0, 0.0), stop
    cursor.tally = {}
    save_checkpoint(run, member, learner, cursor, None)
    if run.dist.is_main:
        all_records = [r for history in run.histories.values() for r in history]
        report.write_metrics(run.directory, all_records)
    run.progress.end_epoch(record)
    return stop


def _interrupt(run: Run, member: Member, learner: Learner, cursor: Cursor, log: EpochLog | None,
               clock: EpochClock, saved: bool = False) -> None:  # fmt: skip
    """Ctrl-C: leave a resumable checkpoint of exactly this step, then re-raise KeyboardInterrupt."""
    if not saved:
        cursor.spent = clock.spent()
        save_checkpoint(run, member, learner, cursor, log)
    if run.dist.is_main:  # printed even when quiet: it says how to get the work back
        print(f"nnspec: interrupted at epoch {cursor.epoch + 1}, step {cursor.step}; checkpoint saved. "
              f"Continue with: nnspec train SPEC --resume {run.directory}", file=sys.stderr, flush=True)  # fmt: skip
    raise KeyboardInterrupt


def _diverged(run: Run, member: Member, cursor: Cursor, steps_per_epoch: int, bad: NonFinite) -> RunError:
    epoch, step = (bad.global_step - 1) // steps_per_epoch + 1, (bad.global_step - 1) % steps_per_epoch + 1
    what = "non-finite" if bad.value is None else "NaN" if math.isnan(bad.value) else str(bad.value)
    where = f"member {member.index}, " if member.index is not None else ""
    kept = (f"the last good checkpoint (global step {cursor.saved_step}) is kept in {member.directory}"
            if cursor.saved_step is not None else "no checkpoint had been written yet")  # fmt: skip
    return RunError(
        f"loss became {what} at {where}epoch {epoch}, step {step} (global step {bad.global_step}); "
        f"training stopped and {kept}. Lower the learning rate, add clip_grad_norm, or check the data."
    )


def _bootstrap_rows(spec: Spec, member: Member, n: int, device: torch.device) -> Tensor | None:
    """A bagging member's resample of the training set (None: train on all of it, in order)."""
    if spec.ensemble is None or not spec.ensemble.bootstrap:
        return None
    generator = torch.Generator().manual_seed(member.seed + 3)
    return bootstrap_indices(n, generator).to(device)


# =============================================================================================
# Run directories, seeds, the public API
# =============================================================================================


def _members(spec: Spec, directory: Path) -> list[Member]:
    seed = spec.train.seed
    if spec.ensemble is None:
        return [Member(None, seed, directory)]
    return [Member(i, member_seed(seed, i), directory / f"member_{i}") for i in range(spec.ensemble.members)]


def run_once(spec: Spec, base_dir: Path, directory: Path, device: torch.device, dist: D.Dist, data: Data,
             quiet: bool) -> dict[str, Any]:  # fmt: skip
    """Train every member of one run directory, evaluate, and write the summary."""
    wall = time.perf_counter()
    progress = Progress(enabled=not quiet and dist.is_main, world_size=dist.world_size)
    if dist.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        report.write_spec(directory, spec)
    with StopSignal(dist) as stop:
        run = Run(spec, base_dir, directory, device, dist, data, progress, stop)
        try:
            fitted = [fit(run, member) for member in _members(spec, directory)]
        except RunError as exc:
            if dist.is_main:
                report.write_summary(directory, {"name": spec.name, "status": "failed", "error": str(exc),
                                                 "seed": spec.train.seed})  # fmt: skip
            raise
    summary = _summarize(run, fitted, time.perf_counter() - wall)
    if dist.is_main:
        records = [r for history in run.histories.values() for r in history]
        report.write_metrics(directory, records)
        report.write_summary(directory, summary)
        report.plot_curves(directory, records)
        if not quiet:
            print(f"\n{spec.name} (seed {spec.train.seed}) -> {directory}\n{report.final_table(summary)}")
    return summary


def _summarize(run: Run, fitted: list[tuple[Learner, Cursor]], wall_s: float) -> dict[str, Any]:
    spec, data = run.spec, run.data
    learners = [learner for learner, _ in fitted]
    models = [learner.model for learner in learners]
    loss_fn = learners[0].loss_fn
    metrics: dict[str, Any] = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val),
                        ("test", data.x_test, data.y_test)):  # fmt: skip
        if split == "val" and len(y) == 0:
            continue
        loss, accuracy = evaluate_models(models, loss_fn, x, y, spec=spec, dist=run.dist, bf16=run.bf16)
        metrics.update({f"{split}_loss": loss, f"{split}_accuracy": accuracy})
    records = [r for history in run.histories.values() for r in history]
    train_s = sum(r["seconds"] for r in records)
    samples = sum(r["samples"] for r in records)
    summary: dict[str, Any] = {
        "name": spec.name,
        "status": "finished",
        "seed": spec.train.seed,
        "run_dir": str(run.directory),
        "epochs": spec.train.epochs,
        "epochs_run": max((r["epoch"] for r in records), default=0),
        "steps": max((r["step"] for r in records), default=0),
        "stopped_early": any(cursor.stopped_early for _, cursor in fitted),
        **metrics,
        "wall_time_s": wall_s,
        "train_time_s": train_s,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        "batch_size": spec.train.batch_size,
        "precision": spec.train.precision,
        "kernels": spec.train.kernels,
        **report.environment(run.device, run.dist.world_size),
    }
    best = [learner.stopper.best_epoch for learner in learners if learner.stopper is not None]
    if best:
        summary["best_epoch"] = best[0] if len(best) == 1 else best
    if spec.ensemble is not None:
        summary["members"] = [_member_metrics(run, learner) for learner in learners]
    return summary


def _member_metrics(run: Run, learner: Learner) -> dict[str, Any]:
    loss, accuracy = evaluate_models([learner.model], learner.loss_fn, run.data.x_test, run.data.y_test,
                                     spec=run.spec, dist=run.dist, bf16=run.bf16)  # fmt: skip
    return {"test_loss": loss, "test_accuracy": accuracy}


def _new_run_dir(spec: Spec, out: str | Path | None, dist: D.Dist) -> Path:
    """``out``, or ``runs/<name>-<time>``; refuses to train over an existing run."""
    if out is not None:
        path = Path(out)
        if (path / report.SPEC).exists() or (path / ckpt.STATE).exists():  # checked on every rank alike
            raise RunError(f"{path} already holds a run; continue it with --resume {path} or pick another --out",
                           exit_code=2)  # fmt: skip
    chosen: str | None = None
    if dist.is_main:
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{spec.name}-{stamp}"
            suffix = 1
            while path.exists():
                suffix += 1
                path = Path("runs") / f"{spec.name}-{stamp}-{suffix}"
        path.mkdir(parents=True, exist_ok=True)
        chosen = str(path)
    return Path(D.broadcast_text(chosen, dist) or "")


#: What may change when resuming: how long to train and how often to checkpoint/evaluate, nothing that
#: would make the resumed steps differ from the ones the run was taking.
RESUMABLE_CHANGES = frozenset({"train.epochs", "train.checkpoint_every", "train.eval_batch_size"})


def _check_resume(spec: Spec, directory: Path) -> None:
    """Resuming continues *that* run: the spec given (with overrides) must match the one it recorded."""
    stored_path = directory / report.SPEC
    if not stored_path.exists():
        raise RunError(f"cannot resume: {directory} has no {report.SPEC} (is it a run directory?)", exit_code=2)
    stored, _ = resolve_spec(stored_path)
    dump = {"mode": "json", "exclude_none": True}
    keys = _differences(spec.model_dump(**dump), stored.model_dump(**dump))
    changed = [key for key in keys if key not in RESUMABLE_CHANGES]
    phases = spec.schedule if isinstance(spec.schedule, list) else [spec.schedule]
    if "train.epochs" in keys and any(getattr(p, "type", "") == "cosine" and p.epochs is None for p in phases):
        changed.append("train.epochs (a cosine schedule without 'epochs' was sized for the original length)")
    if changed:
        raise RunError(
            f"cannot resume {directory}: the spec differs from the run's {report.SPEC} at {', '.join(changed[:8])}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming. "
            f"Resume with the run's own spec ({stored_path}) or start a new run", exit_code=2,
        )  # fmt: skip


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for key in keys for d in _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}.{i}")]
    return [] if a == b else [path or "(root)"]


def _seeded(spec: Spec, seed: int) -> Spec:
    return spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})


def _print_warnings(spec: Spec, quiet: bool, dist: D.Dist) -> None:
    if not quiet and dist.is_main:
        for warning in spec.warnings:
            print(warning, file=sys.stderr)


def train(spec: Spec | str | Path, *, overrides: Sequence[str] = (), out: str | Path | None = None,
          resume: str | Path | None = None, seeds: int = 1, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train ``spec`` (a path or a Spec) and return the run's summary.

    ``seeds=N`` trains N runs (seeds ``train.seed``, ``+1``, …) in ``seed_<k>``
    subdirectories and returns mean ± std over them. ``resume`` continues the
    stopped run in that directory. Raises SpecError for a bad spec or override,
    RunError (with ``exit_code``) for data problems and failed runs, and
    KeyboardInterrupt after checkpointing when interrupted.
    """
    if seeds < 1:
        raise RunError(f"--seeds must be at least 1, got {seeds}", exit_code=2)
    if out is not None and resume is not None:
        raise RunError("give either --out (a new run) or --resume (an existing one), not both", exit_code=2)
    resolved, base_dir = resolve_spec(spec, overrides)
    resolved = with_absolute_paths(resolved, base_dir)
    check_trainable(resolved)
    if resume is not None:
        _check_resume(resolved, Path(resume))
    device_type = resolve_device_type(resolved)
    dist = D.setup(device_type)
    try:
        device = D.device_for(dist, device_type)
        _print_warnings(resolved, quiet, dist)
        data = load_data(resolved, device)  # before creating a directory that a data error would leave empty
        directory = Path(resume) if resume is not None else _new_run_dir(resolved, out, dist)
        seed_dirs = sorted(directory.glob("seed_*")) if resume is not None else []
        if resume is not None and len(seed_dirs) != (seeds if seeds > 1 else 0):
            raise RunError(
                f"{directory} holds {len(seed_dirs) or 'a single'} seed run(s); resume it with "
                + (f"--seeds {len(seed_dirs)}" if seed_dirs else "no --seeds"), exit_code=2,
            )  # fmt: skip
        if seeds == 1:
            summary = run_once(resolved, base_dir, directory, device, dist, data, quiet)
        else:
            summary = _train_seeds(resolved, base_dir, directory, device, dist, data, seeds, quiet)
        D.barrier(dist)  # no rank leaves the group while another still talks to it
        return summary
    finally:
        D.teardown(dist)


def _train_seeds(spec: Spec, base_dir: Path, directory: Path, device: torch.device, dist: D.Dist, data: Data,
                 seeds: int, quiet: bool) -> dict[str, Any]:  # fmt: skip
    """N independent runs, one per seed, then mean ± std of their metrics."""
    if dist.is_main:
        report.write_spec(directory, spec)
    summaries = [
        run_once(_seeded(spec, spec.train.seed + k), base_dir, directory / f"seed_{k}", device, dist, data, quiet)
        for k in range(seeds)
    ]
    aggregate = {"name": spec.name, "status": "finished", "run_dir": str(directory)}
    aggregate.update(report.aggregate_seeds(summaries))
    if dist.is_main:
        report.write_summary(directory, aggregate)
        if not quiet:
            print(f"\n{spec.name}: {seeds} seeds -> {directory}\n{report.seeds_table(aggregate)}")
    return aggregate


# =============================================================================================
# Evaluating a saved run
# =============================================================================================


def _weight_files(spec: Spec, checkpoint: Path) -> list[Path]:
    """The weights file(s) a checkpoint argument points at: one per ensemble member."""
    if checkpoint.is_file():
        if spec.ensemble is not None:
            raise RunError(f"{checkpoint}: an ensemble needs its run directory (member_*/{ckpt.WEIGHTS})", exit_code=2)
        return [checkpoint]
    if not checkpoint.is_dir():
        raise RunError(f"checkpoint {checkpoint} does not exist", exit_code=2)
    seed_dirs = sorted(checkpoint.glob("seed_*"))
    if seed_dirs and not (checkpoint / ckpt.WEIGHTS).exists():
        raise RunError(f"{checkpoint} holds {len(seed_dirs)} seed runs; evaluate one of them, e.g. {seed_dirs[0]}",
                       exit_code=2)  # fmt: skip
    if spec.ensemble is None:
        files = [checkpoint / ckpt.WEIGHTS]
    else:
        files = [checkpoint / f"member_{i}" / ckpt.WEIGHTS for i in range(spec.ensemble.members)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise RunError(f"no weights at {', '.join(missing)}", exit_code=2)
    return files


def _load_model(spec: Spec, path: Path, device: torch.device) -> nn.Module:
    model = build(spec, device, spec.train.kernels)
    try:
        model.load_state_dict(ckpt.load_weights(path, device))
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{path} does not fit this spec's model: {first}", exit_code=2) from None
    return model


def evaluate(spec: Spec | str | Path, *, checkpoint: str | Path, overrides: Sequence[str] = (),
             quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluate saved weights (a run directory or a .safetensors file) on the spec's test (and val) data."""
    resolved, base_dir = resolve_spec(spec, overrides)
    resolved = with_absolute_paths(resolved, base_dir)
    if resolved.data is None or resolved.loss is None:
        raise SpecError([_problem(resolved, (s,), f"evaluation needs a '{s}' section")
                         for s in ("data", "loss") if getattr(resolved, s) is None])  # fmt: skip
    device = torch.device(resolve_device_type(resolved))
    files = _weight_files(resolved, Path(checkpoint))
    data = load_data(resolved, device)
    models = [_load_model(resolved, path, device) for path in files]
    loss_fn = build_loss(resolved, device, resolved.train.kernels)
    bf16 = resolved.train.precision == "bf16"
    result: dict[str, Any] = {"name": resolved.name, "checkpoint": str(checkpoint)}
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if len(y):
            loss, accuracy = evaluate_models(models, loss_fn, x, y, spec=resolved, bf16=bf16)
            result.update({f"{split}_loss": loss, f"{split}_accuracy": accuracy, f"{split}_samples": len(y)})
    result.update(report.environment(device, 1))
    if not quiet:
        rows = [[s, f"{result.get(f'{s}_loss') or float('nan'):.4f}", f"{result[f'{s}_accuracy']:.4f}",
                 result[f"{s}_samples"]] for s in ("val", "test") if f"{s}_accuracy" in result]  # fmt: skip
        from tabulate import tabulate

        print(tabulate(rows, headers=["split", "loss", "accuracy", "samples"], tablefmt="simple"))
    return result
