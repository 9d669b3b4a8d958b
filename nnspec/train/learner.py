"""The pieces of one model's training: who is trained (:class:`Member`), what they share
(:class:`Run`), what updates the weights (:class:`Learner`), where training stands
(:class:`Cursor`), and the function that takes one optimizer step (:func:`make_step`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from nnspec.compiler import SpecLoss, build, build_loss
from nnspec.data.augment import AugmentFn, build_augment
from nnspec.errors import SpecError
from nnspec.spec.model import Spec
from nnspec.train import distributed as D
from nnspec.train.init import initialize
from nnspec.train.optim import Schedule, build_optimizer, build_schedule
from nnspec.train.progress import Progress
from nnspec.train.regularize import EarlyStopping, clip_gradients, fgsm_loss, noisy_inputs, penalty
from nnspec.train.resolve import Data, RunError, problem


#: Seeds of different ranks / members are this far apart, so their random streams never coincide.
SEED_STRIDE = 1_000_003


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
    #: Called with each epoch's record once it is saved (a search reports validation to its pruner here;
    #: an exception it raises stops the run).
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    #: False: the final evaluation leaves the test split alone (a search trial selects on validation only).
    evaluate_test: bool = True
    #: The command that continues this run, printed on Ctrl-C; empty: no hint (a search trial is
    #: continued by rerunning the search).
    resume_hint: str = ""
    #: with train.compile: seconds of each first call per batch shape, over every member ("8x1x28x28": s)
    compile_seconds: list[tuple[str, float]] = field(default_factory=list)

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


def _check_outputs(spec: Spec, model: nn.Module, data: Data) -> None:
    """The model must output one score per class: (N, C) with C >= the dataset's classes."""
    with torch.inference_mode():
        was_training = model.training
        model.eval()
        out_shape = tuple(model(data.x_train[:1]).shape[1:])
        model.train(was_training)
    if len(out_shape) != 1 or out_shape[0] < data.num_classes:
        raise SpecError([problem(
            spec, ("model", len(spec.model) - 1),
            f"the model outputs shape {list(out_shape)} per sample, but the data has {data.num_classes} classes: "
            f"the last layer needs {data.num_classes} outputs",
        )])  # fmt: skip


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


def bf16_autocast(bf16: bool) -> contextlib.AbstractContextManager:
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
    if run.spec.train.compile:
        return make_compiled_step(run, learner)
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
    autocast = bf16_autocast(run.bf16)  # one context object, entered once per step (torch's autocast allows that)
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


#: ``torch.compile`` backend of the compiled step: ``inductor`` (generated code, what runs are for) unless
#: $NNSPEC_COMPILE_BACKEND names another (``aot_eager``: the same traced graph run by eager kernels, used by
#: tests and to tell a tracing problem from a code-generation one).
def compile_backend() -> str:
    return os.environ.get("NNSPEC_COMPILE_BACKEND", "inductor")


def uses_custom_ops(spec: Spec, device: torch.device) -> bool:
    """Whether the model and loss call nnspec's Triton kernels (custom ops), which torch.func cannot differentiate."""
    kernels = spec.train.kernels
    return kernels == "triton" or (kernels == "auto" and device.type == "cuda")


def make_compiled_step(run: Run, learner: Learner, backend: str | None = None) -> StepFn:
    """:func:`make_step` for ``train.compile: true``: the same step as one compiled graph (:mod:`.compiled`).

    Each new batch shape's compile time is shown as a progress message and
    kept in ``run.compile_seconds`` for ``summary.json``.
    """
    from nnspec.train.compiled import CompiledStep  # imports torch._dynamo: only runs that compile pay for it

    if run.dist.enabled:
        raise RunError("train.compile: true trains one process; multi-process (DDP) training runs eagerly: "
                       "set train.compile: false", exit_code=2)  # fmt: skip
    spec = run.spec

    def on_compile(shape: tuple[int, ...], seconds: float) -> None:
        label = "x".join(map(str, shape))
        run.compile_seconds.append((label, seconds))
        run.progress.message(f"compiled the training step for batches of shape {label} in {seconds:.1f} s")

    return CompiledStep(
        spec, learner.model, learner.loss_fn.bound(), learner.optimizer,
        noise_generator=learner.generators["noise"],
        augment=learner.augment if spec.data.augment else None,  # type: ignore[union-attr]
        augment_generator=learner.generators["augment"], backend=backend or compile_backend(), bf16=run.bf16,
        autograd_in_graph=not uses_custom_ops(spec, run.device), after_step=learner.schedule.after_step,
        on_compile=on_compile,
    )  # fmt: skip
