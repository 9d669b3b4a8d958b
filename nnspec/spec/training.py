"""The training sections of a spec: loss, optimizer, schedule, data, train, regularization, init, ensemble.

Every section that names a kind takes the same four forms as a layer
(``optimizer: adam``, ``optimizer: {adam: 0.001}`` — an optimizer's main
argument is its learning rate — ``optimizer: {adam: {lr: 0.001}}``,
``optimizer: {type: adam, lr: 0.001}``), so a textbook ablation is a one-line edit.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator, model_validator

from nnspec.spec.kinds import Kind, KindsOf, shorthand_validator

# Scalars are strict, as in the layers: YAML's `no` is not False, nor '0.01' a number.
# (A float field still takes an integer.)
PositiveFloat = Annotated[float, Field(strict=True, gt=0.0)]
NonNegFloat = Annotated[float, Field(strict=True, ge=0.0)]
Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
#: Seeds are offset per generator and per ensemble member; 2**62 leaves room under torch's 64 bits.
MAX_SEED = 1 << 62
Seed = Annotated[int, Field(strict=True, ge=0, lt=MAX_SEED)]
Flag = Annotated[bool, Field(strict=True)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def kinds_union(*classes: type[Kind], what: str):
    """``Annotated[Union[...], discriminator, shorthand reader, marker]`` for a family of kinds."""
    registry = {cls.kind_name(): cls for cls in classes}
    marker = KindsOf(registry, what)
    union = Annotated[
        Union[classes],  # type: ignore[valid-type]
        Field(discriminator="type"),
        BeforeValidator(shorthand_validator(marker)),
        marker,
        marker.json_schema_ref(),
    ]
    return union, registry


# -- loss ------------------------------------------------------------------


class MSELoss(Kind):
    """Mean squared error; class labels become one-hot targets (the textbook setup)."""

    type: Literal["mse"] = "mse"


class BCELoss(Kind):
    """Binary cross-entropy on probabilities (the model must end in sigmoid/softmax); one-hot targets."""

    type: Literal["bce"] = "bce"


class BCEWithLogitsLoss(Kind):
    """Binary cross-entropy on logits (a sigmoid is applied inside, stably); one-hot targets."""

    type: Literal["bce_with_logits"] = "bce_with_logits"


class CrossEntropyLoss(Kind):
    """Softmax + negative log-likelihood on logits; fused into one kernel on CUDA."""

    type: Literal["cross_entropy"] = "cross_entropy"
    main: ClassVar[str] = "label_smoothing"
    label_smoothing: Probability = 0.0
    class_weights: list[PositiveFloat] | None = Field(None, description="one weight per class")


class NLLLoss(Kind):
    """Negative log-likelihood on log-probabilities (the model ends in log_softmax)."""

    type: Literal["nll"] = "nll"


class L1Loss(Kind):
    type: Literal["l1"] = "l1"


class HuberLoss(Kind):
    type: Literal["huber"] = "huber"
    main: ClassVar[str] = "delta"
    delta: PositiveFloat = 1.0


LossSpec, LOSS_TYPES = kinds_union(
    MSELoss, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, NLLLoss, L1Loss, HuberLoss, what="loss"
)

#: Losses whose targets are one-hot vectors when the data has class labels.
ONE_HOT_LOSSES = frozenset({"mse", "bce", "bce_with_logits", "l1", "huber"})


# -- optimizer -------------------------------------------------------------


class _Optimizer(Kind):
    main: ClassVar[str] = "lr"


class SGD(_Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum."""

    type: Literal["sgd"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] = 0.0
    nesterov: Flag = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGD":
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class AdaGrad(_Optimizer):
    type: Literal["adagrad"] = "adagrad"
    lr: PositiveFloat = 0.01
    eps: PositiveFloat = 1e-10


class AdaDelta(_Optimizer):
    type: Literal["adadelta"] = "adadelta"
    lr: PositiveFloat = 1.0
    rho: Annotated[float, Field(strict=True, gt=0.0, lt=1.0)] = 0.9
    eps: PositiveFloat = 1e-6


class RMSProp(_Optimizer):
    type: Literal["rmsprop"] = "rmsprop"
    lr: PositiveFloat = 0.01
    alpha: Annotated[float, Field(strict=True, gt=0.0, lt=1.0)] = 0.99
    eps: PositiveFloat = 1e-8
    momentum: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] = 0.0


class Adam(_Optimizer):
    type: Literal["adam"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[Annotated[float, Field(strict=True, ge=0.0, lt=1.0)], Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8


class AdamW(Adam):
    """Adam with decoupled weight decay (``regularization.weight_decay``, default 0.01), on weights only."""

    type: Literal["adamw"] = "adamw"  # type: ignore[assignment]


OptimizerSpec, OPTIMIZER_TYPES = kinds_union(SGD, AdaGrad, AdaDelta, RMSProp, Adam, AdamW, what="optimizer")


# -- learning-rate schedule --------------------------------------------------


class StepSchedule(Kind):
    """Multiply the learning rate by ``gamma`` every ``every`` epochs."""

    type: Literal["step"] = "step"
    main: ClassVar[str] = "every"
    every: Annotated[int, Field(strict=True, ge=1)] = 10
    gamma: PositiveFloat = 0.1


class ExponentialSchedule(Kind):
    """Multiply the learning rate by ``gamma`` after every epoch."""

    type: Literal["exponential"] = "exponential"
    main: ClassVar[str] = "gamma"
    gamma: PositiveFloat = 0.95


class CosineSchedule(Kind):
    """Cosine decay to ``min_lr`` over ``epochs`` (default: the rest of training), per step."""

    type: Literal["cosine"] = "cosine"
    main: ClassVar[str] = "epochs"
    epochs: Annotated[int, Field(strict=True, ge=1)] | None = None
    min_lr: NonNegFloat = 0.0


class PlateauSchedule(Kind):
    """Multiply by ``factor`` when the monitored validation metric stops improving for ``patience`` epochs."""

    type: Literal["plateau"] = "plateau"
    main: ClassVar[str] = "patience"
    patience: Annotated[int, Field(strict=True, ge=0)] = 5
    factor: Annotated[float, Field(strict=True, gt=0.0, lt=1.0)] = 0.1
    monitor: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"


class WarmupSchedule(Kind):
    """Linear warm-up from ``start_factor`` × lr over ``epochs`` (fractions allowed), per step."""

    type: Literal["warmup"] = "warmup"
    main: ClassVar[str] = "epochs"
    epochs: Annotated[float, Field(strict=True, gt=0.0, le=100_000)] = Field(1.0, description="fractions allowed; at most train.epochs' limit")
    start_factor: Annotated[float, Field(strict=True, gt=0.0, le=1.0)] = 0.01


ScheduleKind, SCHEDULE_TYPES = kinds_union(
    StepSchedule, ExponentialSchedule, CosineSchedule, PlateauSchedule, WarmupSchedule, what="schedule"
)
ScheduleSpec = Union[ScheduleKind, Annotated[list[ScheduleKind], Field(min_length=1, max_length=8)]]


# -- data ------------------------------------------------------------------


class RandomShift(Kind):
    type: Literal["random_shift"] = "random_shift"
    main: ClassVar[str] = "pixels"
    pixels: Annotated[int, Field(strict=True, ge=1, le=64)] = 2


class RandomRotation(Kind):
    type: Literal["random_rotation"] = "random_rotation"
    main: ClassVar[str] = "degrees"
    degrees: Annotated[float, Field(strict=True, gt=0.0, le=180.0)] = 10.0


class HFlip(Kind):
    type: Literal["hflip"] = "hflip"
    main: ClassVar[str] = "p"
    p: Probability = 0.5


class RandomErase(Kind):
    type: Literal["random_erase"] = "random_erase"
    main: ClassVar[str] = "p"
    p: Probability = 0.5
    scale: tuple[Probability, Probability] = Field((0.02, 0.33), description="(min, max) share of the image erased")

    @model_validator(mode="after")
    def _scale_is_a_range(self) -> "RandomErase":
        low, high = self.scale
        if not 0.0 < low <= high:
            raise ValueError(f"scale must be [min, max] with 0 < min <= max <= 1, got [{low}, {high}]")
        return self


class GaussianNoise(Kind):
    type: Literal["gaussian_noise"] = "gaussian_noise"
    main: ClassVar[str] = "std"
    std: PositiveFloat = 0.1


AugmentSpec, AUGMENT_TYPES = kinds_union(
    RandomShift, RandomRotation, HFlip, RandomErase, GaussianNoise, what="augmentation"
)


FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
FinitePositive = Annotated[float, Field(strict=True, gt=0.0, allow_inf_nan=False)]


class Normalize(Section):
    mean: FiniteFloat | list[FiniteFloat]
    std: FinitePositive | list[FinitePositive]


class SyntheticData(Section):
    """A learnable, deterministic toy dataset (class-dependent means plus noise), for tests."""

    samples: Annotated[int, Field(strict=True, ge=2, le=1_000_000)] = 512
    test_samples: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 128
    classes: Annotated[int, Field(strict=True, ge=2, le=1000)] = 10
    seed: Seed = 0


class DataSection(Section):
    dataset: Literal["mnist", "fashion_mnist", "npz", "synthetic"]
    path: str | None = Field(None, description="the .npz file (dataset: npz), relative to the spec")
    root: str | None = Field(None, description="directory holding the dataset files (else $NNSPEC_DATA, ~/.cache/nnspec, /usr/share/datasets)")
    download: Flag = True
    synthetic: SyntheticData = Field(default_factory=SyntheticData)
    scale: PositiveFloat = Field(255.0, description="pixels are divided by this")
    normalize: Normalize | None = None
    val: Annotated[int, Field(strict=True, ge=0)] = Field(0, description="hold out the last N kept training samples for validation")
    train_samples: Annotated[int, Field(strict=True, ge=1)] | None = Field(None, description="use the first N training samples")
    test_samples: Annotated[int, Field(strict=True, ge=1)] | None = Field(None, description="use the first N test samples")
    augment: list[AugmentSpec] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _npz_needs_path(self) -> "DataSection":
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs 'path'")
        return self


# -- train -----------------------------------------------------------------


def _one_threads_error(value: object, handler):
    """One message for a bad ``threads`` rather than one per member of the union ('auto', or 1..1024)."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(f"expected 'auto' or a number of threads from 1 to 1024 (got {value!r})") from None


Threads = Annotated[
    Union[Literal["auto"], Annotated[int, Field(strict=True, ge=1, le=1024)]], WrapValidator(_one_threads_error)
]


class TrainSection(Section):
    epochs: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 10
    batch_size: Annotated[int, Field(strict=True, ge=1, le=1 << 20)] = 64
    eval_batch_size: Annotated[int, Field(strict=True, ge=1, le=1 << 20)] = 1000
    shuffle: Flag = True
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CUDA only)")
    kernels: Literal["auto", "torch", "triton"] = Field("auto", description="auto = Triton on CUDA, PyTorch on CPU")
    checkpoint_every: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="also checkpoint every N steps (an epoch at batch size 1 is 60,000 steps)"
    )
    threads: Threads = Field(
        "auto", description="torch CPU threads; auto = 1 for small steps (threads cost more than they save "
        "there), the machine's cores for large ones"
    )
    compile: Flag = Field(
        False, description="compile the whole training step with torch.compile (a CUDA graph on CUDA); see docs/training.md"
    )


# -- regularization --------------------------------------------------------


class EarlyStopping(Section):
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: Annotated[int, Field(strict=True, ge=0)] = 5
    min_delta: NonNegFloat = 0.0
    restore_best: Flag = True


class Adversarial(Section):
    """FGSM adversarial training: loss = (1 - weight) * clean + weight * adversarial."""

    fgsm: PositiveFloat = Field(description="epsilon, in input units (after scaling)")
    weight: Probability = 0.5


class RegularizationSection(Section):
    l2: NonNegFloat = Field(0.0, description="coefficient of sum(w^2) over weights (never biases or norm parameters)")
    l1: NonNegFloat = Field(0.0, description="coefficient of sum(|w|) over weights")
    weight_decay: NonNegFloat | None = Field(None, description="decoupled decay on weights only")
    clip_grad_norm: PositiveFloat | None = None
    clip_grad_value: PositiveFloat | None = None
    early_stopping: EarlyStopping | None = None
    input_noise: NonNegFloat = Field(0.0, description="std of Gaussian noise added to training inputs")
    adversarial: Adversarial | None = None


# -- init ------------------------------------------------------------------


class _Scheme(Kind):
    pass


class XavierUniform(_Scheme):
    type: Literal["xavier_uniform"] = "xavier_uniform"


class XavierNormal(_Scheme):
    type: Literal["xavier_normal"] = "xavier_normal"


class KaimingUniform(_Scheme):
    """Kaiming/He init; the gain follows the activation after the layer (LeakyReLU slope included)."""

    type: Literal["kaiming_uniform"] = "kaiming_uniform"


class KaimingNormal(_Scheme):
    type: Literal["kaiming_normal"] = "kaiming_normal"


class NormalInit(_Scheme):
    type: Literal["normal"] = "normal"
    main: ClassVar[str] = "std"
    std: PositiveFloat = 0.01


class Orthogonal(_Scheme):
    type: Literal["orthogonal"] = "orthogonal"


class Zeros(_Scheme):
    type: Literal["zeros"] = "zeros"


class DefaultInit(_Scheme):
    """PyTorch's own initialization for the layer."""

    type: Literal["default"] = "default"


InitScheme, INIT_TYPES = kinds_union(
    XavierUniform, XavierNormal, KaimingUniform, KaimingNormal, NormalInit, Orthogonal, Zeros, DefaultInit,
    what="init scheme",
)


class Pretrained(Section):
    checkpoint: str = Field(description="a run directory or a .safetensors file, relative to the spec")
    layers: list[str] | None = Field(None, description="layer names or paths to copy (default: every layer that matches)")
    freeze: Flag = False


class InitSection(Section):
    """Weight init per layer kind (biases start at zero when a scheme is set)."""

    linear: InitScheme | None = None
    conv1d: InitScheme | None = None
    conv2d: InitScheme | None = None
    layers: dict[str, InitScheme] = Field(default_factory=dict, description="per layer, by name or path; wins over the kind")
    pretrained: Pretrained | None = None


# -- ensemble ----------------------------------------------------------------


class EnsembleSection(Section):
    members: Annotated[int, Field(strict=True, ge=2, le=64)]
    bootstrap: Flag = True
    combine: Literal["mean", "vote"] = "mean"
