"""The IDX files of the MNIST family: where they are looked for, how they are checked, and the
checksum-verified download.

* The files are checked twice: the header must agree with the payload length
  (catches truncation with a precise message) and the MD5 of the
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
import io
import hashlib
import math
import http.client
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import torch

from nnspec.data.errors import DataError

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

DATA_ENV = "NNSPEC_DATA"
# Searched last; Debian's dataset packages install under /usr/share/datasets.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
FETCH_TIMEOUT_S = 30.0
IMAGE_SIDE = 28
NUM_CLASSES = 10


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
    source = idx_source(name)
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


def idx_source(name: str) -> IdxSource:
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


#: The largest IDX payload accepted (MNIST's training images are 47 MB uncompressed).
MAX_IDX_BYTES = 1 << 30


def _declared_size(header: bytes, source: str) -> int | None:
    """Total bytes (header + data) an IDX header declares; None when it is not an IDX header
    (parse_idx then reports what is wrong)."""
    if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] == 0:
        return None
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", header[4:4 + 4 * ndim])
    data = math.prod(dims)
    if data > MAX_IDX_BYTES:
        raise DataError(
            f"{source} declares dimensions {dims} ({data:,} bytes), more than the {MAX_IDX_BYTES:,} an IDX "
            "dataset file may hold; it is corrupt or not an MNIST-format file"
        )
    return 4 + 4 * ndim + data


def _decompress(raw: bytes, source: str) -> bytes:
    """Gunzip ``raw``, reading no more than the IDX header inside declares (plus one byte).

    Why not gzip.decompress: a small .gz can expand to gigabytes (a "gzip bomb", or plain
    corruption), and decompressing it whole ends in a MemoryError.  The header tells how
    big the file must be, so reading stops one byte past that and reports the excess.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            header = stream.read(4)
            if len(header) == 4 and header[:3] == b"\x00\x00\x08":
                header += stream.read(4 * header[3])
            declared = _declared_size(header, source)
            if declared is None:  # not IDX: keep a bounded prefix for parse_idx's message
                return header + stream.read(64)
            content = header + stream.read(declared - len(header) + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{source} is not a valid gzip file or is truncated ({exc}); delete it and provide a fresh copy"
        ) from None
    if len(content) > declared:
        raise DataError(
            f"{source} decompresses to more than the {declared:,} bytes its IDX header declares "
            "(a damaged file or a gzip bomb); delete it and provide a fresh copy"
        )
    return content


def _read_content(path: Path) -> bytes:
    """The uncompressed bytes of a plain or ``.gz`` file."""
    try:
        size = path.stat().st_size
        if size > MAX_IDX_BYTES:
            raise DataError(f"{path} is {size:,} bytes, more than an IDX dataset file may hold ({MAX_IDX_BYTES:,})")
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


def idx_pair(images_path: Path, labels_path: Path, source: IdxSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one images/labels pair as uint8 (N, 1, 28, 28) and int64 (N,) tensors."""
    images = _read_idx_file(images_path, source.md5[images_path.name.removesuffix(".gz")], rank=3)
    labels = _read_idx_file(labels_path, source.md5[labels_path.name.removesuffix(".gz")], rank=1)
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{images_path} holds images of size {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the two files come from different versions"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{labels_path} contains label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}")
    # np.array copies into writable memory: torch refuses to wrap read-only buffers safely.
    x = torch.from_numpy(np.array(images)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y



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


def _download_file(source: IdxSource, stem: str) -> tuple[bytes | None, list[str]]:
    """One verified file's .gz bytes from the first mirror that has it, or the per-mirror failures."""
    failures: list[str] = []
    for mirror in source.mirrors:
        data, why = _try_mirror(f"{mirror}{stem}.gz", source.md5[stem])
        if data is not None:
            return data, []
        failures.append(why)
    return None, failures


def download_idx(name: str, root: str | Path | None) -> dict[str, Path]:
    """Download the missing files of ``name`` into its folder under root or the cache.

    Nothing is created on disk until every missing file has been downloaded and verified: a
    failed download (no network, a typo in ``root``) must not leave directories behind,
    wherever ``root`` pointed.
    """
    source = idx_source(name)
    target = (Path(root).expanduser() if root is not None else default_cache_dir()) / source.folders[0]
    files: dict[str, Path] = {}
    fetched: dict[str, bytes] = {}
    for stem in IDX_FILES:
        existing = next((p for p in (target / stem, target / f"{stem}.gz") if p.is_file()), None)
        if existing is not None:
            files[stem] = existing
            continue
        data, failures = _download_file(source, stem)
        if data is None:
            reason = f"downloading {stem}.gz failed ({'; '.join(failures) or 'no mirrors configured'})"
            raise DataError(missing_message(name, root, reason))
        fetched[stem] = data
    if not fetched:
        return files
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create download directory {target}: {exc.strerror or exc}; pass a writable root"
        ) from None
    for stem, data in fetched.items():
        path = target / f"{stem}.gz"
        try:
            _write_atomic(path, data)
        except OSError as exc:
            raise DataError(
                f"downloaded {stem}.gz but could not write it to {target}: {exc.strerror or exc}; "
                "make the directory writable or pass another root"
            ) from None
        files[stem] = path
    return files


def missing_message(name: str, root: str | Path | None, reason: str) -> str:
    """One complete sentence: which files, where we looked, why we gave up, how to fix it."""
    source = idx_source(name)
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
