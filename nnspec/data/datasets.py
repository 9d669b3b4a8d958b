"""Dataset loading and preparation for the nnspec runner.

A spec names its data (``mnist``, ``fashion_mnist``, ``npz`` or ``synthetic``);
this module turns that name into tensors the trainer can use directly.  It is
deliberately independent of the rest of nnspec (no pydantic, no spec types) so
the data path can be tested and reused on its own; the only thing the rest of
the project needs from here besides the loaders is :class:`DataError`, whose
message the CLI prints verbatim.

Design points, each with its reason:

* Everything is whole-array work (``np.frombuffer``, tensor slicing), never a
  Python loop per sample, so loading all of MNIST takes a fraction of a second.
* The MNIST-family files are found, verified and downloaded by
  :mod:`nnspec.data.idx`; npz files and synthetic data are read here.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnspec.data import idx
from nnspec.data.errors import DataError

__all__ = [
    "DATASET_NAMES",
    "SYNTHETIC_DEFAULTS",
    "DataError",
    "Dataset",
    "Splits",
    "load_dataset",
    "prepare",
]

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "npz", "synthetic")

# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: a field-wise == on tensors would raise, identity is meant
class Dataset:
    """A loaded dataset: raw train/test tensors plus what the model needs to know.

    ``x`` tensors are uint8 (pixels) or float32, shaped ``(N, C, H, W)`` or
    ``(N, features)``; ``y`` tensors are int64 class indices of shape ``(N,)``.
    ``sample_shape`` is the shape of one ``x`` sample, which is what the
    compiler needs to size the first layer.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    sample_shape: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        """Refuse inconsistent tensors here, so every consumer can trust them."""
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if tuple(x.shape[1:]) != tuple(self.sample_shape):
                raise DataError(
                    f"dataset '{self.name}': x_{split} samples have shape {tuple(x.shape[1:])} "
                    f"but the dataset declares {tuple(self.sample_shape)}; the loader is inconsistent"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise DataError(
                    f"dataset '{self.name}': y_{split} must be int64 with one label per sample "
                    f"(got dtype {y.dtype}, shape {tuple(y.shape)} for {len(x)} samples)"
                )


@dataclass(frozen=True, eq=False)
class Splits:
    """Training-ready float32 inputs and int64 labels for train, validation and test.

    ``x_val``/``y_val`` are empty (zero rows, same trailing shape) when no
    validation split was asked for, so callers never need a None check.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _load_idx_dataset(name: str, root: str | Path | None, download: bool) -> Dataset:
    """Locate (or download), verify and load an MNIST-family dataset."""
    source = idx.idx_source(name)
    files = idx.locate_idx_files(name, root)
    if files is None:
        if not download:
            raise DataError(idx.missing_message(name, root, "downloading is disabled (download=False)"))
        files = idx.download_idx(name, root)
    x_train, y_train = idx.idx_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"], source)
    x_test, y_test = idx.idx_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"], source)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=idx.NUM_CLASSES,
        sample_shape=(1, idx.IMAGE_SIDE, idx.IMAGE_SIDE),
        name=name,
    )


# --------------------------------------------------------------------------
# npz datasets
# --------------------------------------------------------------------------

NPZ_KEYS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four required arrays from an .npz archive, with clear errors for anything else."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz archive ({exc}); save it with numpy.savez") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive; save it with numpy.savez(x_train=..., ...)")
    with loaded:
        missing = [key for key in NPZ_KEYS if key not in loaded.files]
        if missing:
            raise DataError(
                f"{path} lacks array(s) {', '.join(missing)}; an npz dataset needs {', '.join(NPZ_KEYS)} "
                f"(it has {', '.join(loaded.files) or 'none'})"
            )
        try:
            return {key: loaded[key] for key in NPZ_KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read its arrays ({exc}); re-save it with numpy.savez") from None


def _npz_inputs(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """Validate one x array: uint8 pixels or finite floats, shaped (N, F), (N, H, W) or (N, C, H, W)."""
    if array.dtype == np.uint8:
        converted = array
    elif np.issubdtype(array.dtype, np.floating):
        converted = array.astype(np.float32)
        if not np.isfinite(converted).all():
            raise DataError(f"{key} in {path} contains NaN or infinite values; clean the data before training")
    else:
        raise DataError(
            f"{key} in {path} has dtype {array.dtype}; nnspec expects uint8 pixels or floating-point "
            "features (convert with .astype(np.float32))"
        )
    if converted.ndim == 3:
        converted = converted[:, None]  # (N, H, W) images: add the channel axis
    if converted.ndim not in (2, 4):
        raise DataError(
            f"{key} in {path} has shape {array.shape}; expected (N, features), (N, H, W) or (N, C, H, W)"
        )
    return torch.from_numpy(np.ascontiguousarray(converted))


def _npz_labels(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """Validate one y array: non-negative integer class indices, one per sample."""
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{key} in {path} has dtype {array.dtype}; labels must be integer class indices "
            "(convert one-hot labels with argmax, float labels with .astype(np.int64))"
        )
    if array.ndim != 1:
        raise DataError(f"{key} in {path} has shape {array.shape}; labels must be one-dimensional (N,)")
    if array.size and int(array.min()) < 0:
        raise DataError(f"{key} in {path} contains negative label {int(array.min())}; labels must be 0..classes-1")
    return torch.from_numpy(array.astype(np.int64))


def _load_npz(path: str | Path | None) -> Dataset:
    """Load and validate a user-supplied .npz dataset."""
    if path is None:
        raise DataError(f"dataset 'npz' needs a path to an .npz file holding {', '.join(NPZ_KEYS)}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"npz dataset file {file} does not exist; check the path")
    arrays = _read_npz(file)
    x_train = _npz_inputs(arrays["x_train"], "x_train", file)
    x_test = _npz_inputs(arrays["x_test"], "x_test", file)
    y_train = _npz_labels(arrays["y_train"], "y_train", file)
    y_test = _npz_labels(arrays["y_test"], "y_test", file)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise DataError(f"{file}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
    if len(x_train) == 0:
        raise DataError(f"{file}: x_train is empty; a dataset needs at least one training sample")
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise DataError(
            f"{file}: x_train samples are {x_train.dtype} {tuple(x_train.shape[1:])} but x_test samples are "
            f"{x_test.dtype} {tuple(x_test.shape[1:])}; both splits must match"
        )
    top = max(int(y_train.max()), int(y_test.max()) if len(y_test) else 0)
    return Dataset(x_train, y_train, x_test, y_test, top + 1, tuple(x_train.shape[1:]), "npz")


# --------------------------------------------------------------------------
# synthetic datasets
# --------------------------------------------------------------------------

SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "samples": 512,
    "test_samples": 128,
    "shape": (1, 8, 8),
    "classes": 10,
    "seed": 0,
    "noise": 30.0,  # standard deviation in pixel units (0..255)
}


def _int_setting(config: Mapping[str, Any], key: str, minimum: int) -> int:
    """An integer setting >= minimum (bools are rejected: True is not a sample count)."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"synthetic dataset setting '{key}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _shape_setting(value: Any) -> tuple[int, ...]:
    """The per-sample shape: [features], [channels, length] or [channels, height, width] -
    every input shape a spec can declare."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) in (1, 2, 3)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise DataError(
            f"synthetic dataset setting 'shape' must be [features], [channels, length] or [channels, height, width] "
            f"with positive integers, got {value!r}"
        )
    return tuple(int(v) for v in value)


def _synthetic_config(synthetic: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge user settings over the defaults, rejecting unknown keys and bad values."""
    given = dict(synthetic or {})
    unknown = sorted(set(given) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DataError(
            f"unknown synthetic dataset setting(s) {', '.join(unknown)}; valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    config = {**SYNTHETIC_DEFAULTS, **given}
    noise = config["noise"]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise DataError(f"synthetic dataset setting 'noise' must be a finite number >= 0, got {noise!r}")
    return {
        "samples": _int_setting(config, "samples", 1),
        "test_samples": _int_setting(config, "test_samples", 0),
        "classes": _int_setting(config, "classes", 2),
        "seed": _int_setting(config, "seed", 0),
        "shape": _shape_setting(config["shape"]),
        "noise": float(noise),
    }


def _draw_split(
    templates: torch.Tensor, count: int, noise: float, shape: tuple[int, ...], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced labels in random order, and uint8 samples = class template + Gaussian noise."""
    classes = templates.shape[0]
    labels = (torch.arange(count) % classes)[torch.randperm(count, generator=gen)]
    values = templates[labels] + noise * torch.randn(count, templates.shape[1], generator=gen)
    pixels = values.round().clamp(0, 255).to(torch.uint8).reshape(count, *shape)
    return pixels, labels


def _load_synthetic(synthetic: Mapping[str, Any] | None) -> Dataset:
    """A deterministic, learnable dataset: each class is a random template plus noise.

    Samples are uint8 in 0..255 like real image data, so the same ``prepare``
    defaults apply; the train split does not depend on ``test_samples``.
    """
    config = _synthetic_config(synthetic)
    shape = config["shape"]
    gen = torch.Generator().manual_seed(config["seed"])
    templates = 48.0 + 160.0 * torch.rand(config["classes"], math.prod(shape), generator=gen)
    x_train, y_train = _draw_split(templates, config["samples"], config["noise"], shape, gen)
    x_test, y_test = _draw_split(templates, config["test_samples"], config["noise"], shape, gen)
    return Dataset(x_train, y_train, x_test, y_test, config["classes"], shape, "synthetic")


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _reject_unused(name: str, **options: Any) -> None:
    """Refuse options that the chosen dataset would silently ignore."""
    owners = {"root": "mnist and fashion_mnist", "path": "npz", "synthetic": "synthetic"}
    for option, value in options.items():
        if value is not None:
            raise DataError(
                f"option '{option}' does not apply to dataset '{name}'; it is only used by {owners[option]}"
            )


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    path: str | Path | None = None,
    download: bool = True,
    synthetic: Mapping[str, Any] | None = None,
) -> Dataset:
    """Load dataset ``name`` (``mnist``, ``fashion_mnist``, ``npz`` or ``synthetic``).

    ``root`` is a base directory searched first for the MNIST-family folders
    (and where downloads go); ``path`` is the .npz file for ``npz``;
    ``synthetic`` overrides :data:`SYNTHETIC_DEFAULTS`.  Raises DataError for
    anything the user must fix.
    """
    if name in idx.IDX_DATASETS:
        _reject_unused(name, path=path, synthetic=synthetic)
        return _load_idx_dataset(name, root, download)
    if name == "npz":
        _reject_unused(name, root=root, synthetic=synthetic)
        return _load_npz(path)
    if name == "synthetic":
        _reject_unused(name, root=root, path=path)
        return _load_synthetic(synthetic)
    raise DataError(f"unknown dataset '{name}'; valid datasets: {', '.join(DATASET_NAMES)}")


# --------------------------------------------------------------------------
# Preparation for training
# --------------------------------------------------------------------------

Stat = float | Sequence[float]


def _count(requested: int | None, available: int, option: str, dataset: str, minimum: int) -> int:
    """How many samples to keep: all when None, else a validated prefix length."""
    if requested is None:
        return available
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < minimum:
        raise DataError(f"{option} must be an integer >= {minimum} (or unset for all), got {requested!r}")
    if requested > available:
        raise DataError(
            f"{option}={requested} but dataset '{dataset}' has only {available}; lower {option} or unset it"
        )
    return requested


def _stat_tensor(value: Stat, what: str, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """A mean/std as a tensor broadcastable over a batch: scalar or one value per channel (feature)."""
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float32)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DataError(f"normalize {what} must be a number or a list of numbers, got {value!r}") from None
    channels = sample_shape[0]
    if tensor.numel() not in (1, channels) or not torch.isfinite(tensor).all():
        raise DataError(
            f"normalize {what} must be one finite number or {channels} (one per channel), got {value!r}"
        )
    if tensor.numel() == 1:
        return tensor.reshape(())
    return tensor.reshape(channels, *([1] * (len(sample_shape) - 1)))


def _pixel_transform(
    x: torch.Tensor, scale: float, normalize: tuple[Stat, Stat] | None, sample_shape: tuple[int, ...]
) -> torch.Tensor:
    """float32(x) / scale, then (x - mean) / std; never modifies ``x`` itself."""
    out = x.to(torch.float32, copy=True).div_(scale)  # copy=True: never write into the Dataset
    if normalize is not None:
        mean = _stat_tensor(normalize[0], "mean", sample_shape)
        std = _stat_tensor(normalize[1], "std", sample_shape)
        out.sub_(mean).div_(std)
    return out


def _check_transform(scale: float, normalize: tuple[Stat, Stat] | None, sample_shape: tuple[int, ...]) -> None:
    """Validate scale/normalize before doing any large tensor work."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise DataError(f"scale must be a positive number, got {scale!r}")
    if normalize is None:
        return
    if not isinstance(normalize, (list, tuple)) or len(normalize) != 2:
        raise DataError(f"normalize must be a pair (mean, std), got {normalize!r}")
    if bool((_stat_tensor(normalize[1], "std", sample_shape) <= 0).any()):
        raise DataError(f"normalize std must be positive, got {normalize[1]!r}")
    _stat_tensor(normalize[0], "mean", sample_shape)


def prepare(
    dataset: Dataset,
    *,
    scale: float = 255.0,
    normalize: tuple[Stat, Stat] | None = None,
    train_samples: int | None = None,
    test_samples: int | None = None,
    val: int = 0,
) -> Splits:
    """Turn a Dataset into float32 train/val/test tensors for the trainer.

    Keeps the first ``train_samples`` of the training split and the first
    ``test_samples`` of the test split (prefixes, so runs are comparable);
    the LAST ``val`` of the kept training samples become the validation set.
    Inputs are divided by ``scale`` and then, if given, normalized with
    ``(mean, std)`` expressed in scaled units (scalars or per channel).
    Labels are copied, so the Splits never alias the Dataset.
    """
    _check_transform(scale, normalize, dataset.sample_shape)
    n_train = _count(train_samples, len(dataset.y_train), "train_samples", dataset.name, minimum=1)
    n_test = _count(test_samples, len(dataset.y_test), "test_samples", dataset.name, minimum=0)
    if isinstance(val, bool) or not isinstance(val, int) or val < 0 or val >= n_train:
        raise DataError(
            f"val={val!r} must be an integer from 0 to {n_train - 1}: it is taken from the {n_train} training "
            "samples kept and must leave at least one for training"
        )
    kept = _pixel_transform(dataset.x_train[:n_train], scale, normalize, dataset.sample_shape)
    labels = dataset.y_train[:n_train].clone()
    cut = n_train - val
    return Splits(
        x_train=kept[:cut],
        y_train=labels[:cut],
        x_val=kept[cut:],
        y_val=labels[cut:],
        x_test=_pixel_transform(dataset.x_test[:n_test], scale, normalize, dataset.sample_shape),
        y_test=dataset.y_test[:n_test].clone(),
    )
