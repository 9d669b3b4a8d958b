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
* The IDX files are checked twice: the header must agree with the payload
  length (catches truncation with a precise message) and the MD5 of the
  *uncompressed* bytes must match the published files (gzip wrappers differ
  between mirrors and Debian's package, the content does not).  A bad file is
  reported, never trained on and never silently replaced.
* Verification is always done, with no sidecar cache: hashing the 47 MB
  training images costs about 0.07 s, less than decompressing them, so a cache
  would add state (and a way to be wrong) for no noticeable gain.
* Downloads are verified in memory before anything is written, and written via
  a temporary file plus ``os.replace``, so an interrupted or bad download never
  leaves a file that a later run would find.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import torch

__all__ = [
    "DATASET_NAMES",
    "DATA_ENV",
    "IDX_DATASETS",
    "IDX_FILES",
    "SYNTHETIC_DEFAULTS",
    "SYSTEM_DATA_DIRS",
    "DataError",
    "Dataset",
    "IdxSource",
    "Splits",
    "default_cache_dir",
    "load_dataset",
    "locate_idx_files",
    "parse_idx",
    "prepare",
    "search_dirs",
]


class DataError(Exception):
    """A user-facing problem with data: missing, corrupt or misconfigured.

    The message is a complete sentence meant to be printed as-is by the CLI:
    it says what is wrong, which file or setting, and what to do about it.
    """

    exit_code = 2  # bad input, like an invalid spec (see nnspec.cli)


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


# --------------------------------------------------------------------------
# IDX (MNIST-family) datasets: where they live and what they must hash to
# --------------------------------------------------------------------------

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxSource:
    """Everything needed to find, fetch and verify one IDX-format dataset.

    ``folders`` are the sub-folder names accepted under a base directory (the
    first one is used for downloads); ``md5`` maps each file stem to the MD5 of
    its uncompressed content; ``mirrors`` are base URLs serving ``<stem>.gz``.
    """

    title: str
    folders: tuple[str, ...]
    md5: Mapping[str, str]
    mirrors: tuple[str, ...]
    apt_package: str | None = None


IDX_DATASETS: dict[str, IdxSource] = {
    "mnist": IdxSource(
        title="MNIST",
        folders=("mnist",),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion_mnist": IdxSource(
        title="Fashion-MNIST",
        folders=("fashion-mnist", "fashion_mnist"),
        # Computed from Debian's dataset-fashion-mnist package (whose .gz files
        # are recompressed without the embedded file name, hence different .gz
        # hashes from the upstream ones) and cross-checked against independently
        # published MD5s of the uncompressed upstream files.
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
        apt_package="dataset-fashion-mnist",
    ),
}

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "npz", "synthetic")
DATA_ENV = "NNSPEC_DATA"
# Searched last; Debian's dataset packages install under /usr/share/datasets.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
FETCH_TIMEOUT_S = 30.0
_IDX_IMAGE_SIDE = 28
_IDX_NUM_CLASSES = 10


def default_cache_dir() -> Path:
    """Where downloads go when no root is given (resolved per call so HOME changes apply)."""
    return Path.home() / ".cache" / "nnspec"


def search_dirs(root: str | Path | None = None) -> list[Path]:
    """Base directories searched for dataset folders, in priority order.

    The explicit ``root`` wins, then ``$NNSPEC_DATA``, then the download cache,
    then system-wide package locations.  Later entries are fallbacks: the first
    directory holding all four files of a dataset is used.
    """
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    env = os.environ.get(DATA_ENV)
    if env:
        bases.append(Path(env).expanduser())
    bases.append(default_cache_dir())
    bases.extend(SYSTEM_DATA_DIRS)
    unique: list[Path] = []
    for base in bases:
        if base not in unique:
            unique.append(base)
    return unique


def _files_in(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (plain preferred over .gz), or None if any is missing."""
    found: dict[str, Path] = {}
    for stem in IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


def _candidate_dirs(name: str, root: str | Path | None) -> list[Path]:
    """Every directory that may hold the files of IDX dataset ``name``, in search order."""
    source = _idx_source(name)
    return [base / folder for base in search_dirs(root) for folder in source.folders]


def locate_idx_files(name: str, root: str | Path | None = None) -> dict[str, Path] | None:
    """Find the first directory holding all four files of IDX dataset ``name``.

    Returns a mapping from file stem to path, or None when no searched
    directory is complete (a partial directory is skipped rather than mixed
    with files from elsewhere, which could silently combine two versions).
    """
    for directory in _candidate_dirs(name, root):
        found = _files_in(directory)
        if found is not None:
            return found
    return None


def _idx_source(name: str) -> IdxSource:
    """Look up an IDX dataset description, with a clear error for unknown names."""
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise DataError(
            f"'{name}' is not an IDX dataset; known IDX datasets: {', '.join(sorted(IDX_DATASETS))}"
        ) from None


# --------------------------------------------------------------------------
# IDX reading and verification
# --------------------------------------------------------------------------


def _decompress(raw: bytes, source: str) -> bytes:
    """Gunzip ``raw``; a broken stream becomes a DataError naming the file."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{source} is not a valid gzip file or is truncated ({exc}); delete it and provide a fresh copy"
        ) from None


def _read_content(path: Path) -> bytes:
    """The uncompressed bytes of a plain or ``.gz`` file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check that it exists and is readable") from None
    return _decompress(raw, str(path)) if path.suffix == ".gz" else raw


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a read-only uint8 array without copying.

    The header is checked against the payload so that a truncated or padded
    file is reported precisely instead of producing garbage tensors.
    ``source`` names the file in error messages.
    """
    if len(data) < 4:
        raise DataError(
            f"{source} is truncated: {len(data)} bytes is too short to be an IDX file; "
            "delete it and provide a fresh copy"
        )
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] == 0:
        raise DataError(
            f"{source} is not an unsigned-byte IDX file (magic bytes {data[:4].hex()}, expected 000008 "
            "followed by the number of dimensions); it is corrupt or not an MNIST-format file"
        )
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{source} is truncated inside its IDX header; delete it and provide a fresh copy")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = math.prod(dims)
    payload = len(data) - header_len
    if payload != expected:
        raise DataError(
            f"{source} is truncated or corrupt: its header declares dimensions {dims} "
            f"({expected} bytes of data) but it holds {payload}; delete it and provide a fresh copy"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _check_md5(content: bytes, expected: str, source: str) -> None:
    """Reject content whose MD5 differs from the published file's."""
    actual = hashlib.md5(content, usedforsecurity=False).hexdigest()
    if actual != expected:
        raise DataError(
            f"{source} failed its checksum (MD5 of the uncompressed content is {actual}, expected {expected}): "
            "the file is damaged or a different version; delete it and provide a fresh copy"
        )


def _read_idx_file(path: Path, expected_md5: str, rank: int) -> np.ndarray:
    """Read, structurally validate and checksum one IDX file."""
    content = _read_content(path)
    array = parse_idx(content, str(path))
    _check_md5(content, expected_md5, str(path))
    if array.ndim != rank:
        raise DataError(f"{path} holds a {array.ndim}-dimensional array but a {rank}-dimensional one was expected")
    return array


def _idx_pair(images_path: Path, labels_path: Path, source: IdxSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one images/labels pair as uint8 (N, 1, 28, 28) and int64 (N,) tensors."""
    images = _read_idx_file(images_path, source.md5[images_path.name.removesuffix(".gz")], rank=3)
    labels = _read_idx_file(labels_path, source.md5[labels_path.name.removesuffix(".gz")], rank=1)
    if images.shape[1:] != (_IDX_IMAGE_SIDE, _IDX_IMAGE_SIDE):
        raise DataError(f"{images_path} holds images of size {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the two files come from different versions"
        )
    if labels.size and int(labels.max()) >= _IDX_NUM_CLASSES:
        raise DataError(f"{labels_path} contains label {int(labels.max())}, outside 0..{_IDX_NUM_CLASSES - 1}")
    # np.array copies into writable memory: torch refuses to wrap read-only buffers safely.
    x = torch.from_numpy(np.array(images)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _load_idx_dataset(name: str, root: str | Path | None, download: bool) -> Dataset:
    """Locate (or download), verify and load an MNIST-family dataset."""
    source = _idx_source(name)
    files = locate_idx_files(name, root)
    if files is None:
        if not download:
            raise DataError(_missing_message(name, root, "downloading is disabled (download=False)"))
        files = _download_idx(name, root)
    x_train, y_train = _idx_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"], source)
    x_test, y_test = _idx_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"], source)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=_IDX_NUM_CLASSES,
        sample_shape=(1, _IDX_IMAGE_SIDE, _IDX_IMAGE_SIDE),
        name=name,
    )


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def _fetch(url: str) -> bytes:
    """Fetch ``url`` whole; isolated so tests can serve bytes without a network."""
    with urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def _try_mirror(url: str, expected_md5: str) -> tuple[bytes | None, str]:
    """Fetch and verify one URL; returns (gz bytes, "") or (None, why it failed)."""
    try:
        raw = _fetch(url)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{url}: {exc}"
    try:
        _check_md5(_decompress(raw, url), expected_md5, url)
    except DataError:
        return None, f"{url}: checksum mismatch or not a valid gzip file"
    return raw, ""


def _download_file(source: IdxSource, stem: str, target: Path) -> tuple[Path | None, list[str]]:
    """Download one verified file into ``target``; returns its path or the per-mirror failures."""
    failures: list[str] = []
    for mirror in source.mirrors:
        data, why = _try_mirror(f"{mirror}{stem}.gz", source.md5[stem])
        if data is None:
            failures.append(why)
            continue
        path = target / f"{stem}.gz"
        try:
            _write_atomic(path, data)
        except OSError as exc:
            raise DataError(
                f"downloaded {stem}.gz but could not write it to {target}: {exc.strerror or exc}; "
                "make the directory writable or pass another root"
            ) from None
        return path, []
    return None, failures


def _download_idx(name: str, root: str | Path | None) -> dict[str, Path]:
    """Download the missing files of ``name`` into its folder under root or the cache."""
    source = _idx_source(name)
    target = (Path(root).expanduser() if root is not None else default_cache_dir()) / source.folders[0]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create download directory {target}: {exc.strerror or exc}; pass a writable root"
        ) from None
    files: dict[str, Path] = {}
    for stem in IDX_FILES:
        existing = next((p for p in (target / stem, target / f"{stem}.gz") if p.is_file()), None)
        path, failures = (existing, []) if existing is not None else _download_file(source, stem, target)
        if path is None:
            reason = f"downloading {stem}.gz failed ({'; '.join(failures) or 'no mirrors configured'})"
            raise DataError(_missing_message(name, root, reason))
        files[stem] = path
    return files


def _missing_message(name: str, root: str | Path | None, reason: str) -> str:
    """One complete sentence: which files, where we looked, why we gave up, how to fix it."""
    source = _idx_source(name)
    wanted = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
    where = ", ".join(str(d) for d in _candidate_dirs(name, root))
    folder = source.folders[0]
    fixes = [
        f"put the four files in <dir>/{folder}/ and set {DATA_ENV}=<dir>",
        "pass root=<dir>",
        "allow the download" if "download=False" in reason else "retry with network access",
    ]
    if source.apt_package:
        fixes.append(f"run `apt-get install {source.apt_package}` (installs them in /usr/share/datasets/{folder}/)")
    return (
        f"{source.title} data not found: looked for {wanted} in {where}; {reason}. "
        f"To fix: {', or '.join(fixes)}."
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
    """The per-sample shape: [features] or [channels, height, width]."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) in (1, 3)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise DataError(
            f"synthetic dataset setting 'shape' must be [features] or [channels, height, width] "
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
    if name in IDX_DATASETS:
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
