"""Tests for nnspec.data.datasets: IDX loading and verification, lookup, download, npz, synthetic, prepare.

Most tests build tiny IDX datasets on the fly (with the checksum table
patched to match), so they run in milliseconds and need no real data; the
tests marked as needing real MNIST / Fashion-MNIST skip cleanly when the files
cannot be found.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import struct
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnspec.data import idx
from nnspec.data.datasets import DataError, Dataset, load_dataset, prepare
from nnspec.data.idx import parse_idx

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_fake_idx(n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, bytes]:
    """Uncompressed contents of a tiny, valid MNIST-like dataset."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_train, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_idx_dir(directory: Path, contents: dict[str, bytes], *, gz: bool = True) -> Path:
    """Write the four files (gzipped or plain) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, data in contents.items():
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return directory


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No NNSPEC_DATA, HOME in tmp, no system dirs: nothing outside tmp_path can be found."""
    monkeypatch.delenv(idx.DATA_ENV, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(idx, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    return tmp_path


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """A tiny dataset whose checksums are installed as MNIST's known MD5s."""
    contents = make_fake_idx()
    source = dataclasses.replace(idx.IDX_DATASETS["mnist"], md5={k: md5(v) for k, v in contents.items()})
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", source)
    return contents


def real_idx_dir(name: str) -> dict[str, Path]:
    """The real files if they can be found without downloading, else skip the test."""
    files = idx.locate_idx_files(name)
    if files is None:
        pytest.skip(f"{name} files not found (set {idx.DATA_ENV} or install them)")
    return files


@pytest.fixture(scope="module")
def real_mnist_files() -> dict[str, Path]:
    """Located before any test isolation (module scope is set up first)."""
    return real_idx_dir("mnist")


@pytest.fixture(scope="module")
def real_mnist() -> Dataset:
    if idx.locate_idx_files("mnist") is None:
        pytest.skip(f"MNIST files not found (set {idx.DATA_ENV})")
    return load_dataset("mnist", download=False)


# --------------------------------------------------------------------------
# parse_idx
# --------------------------------------------------------------------------


def test_parse_idx_round_trips_shape_and_values() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(array), "x")
    assert parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, array)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4, "not an unsigned-byte IDX"),  # float type
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an unsigned-byte IDX"),
        (b"\x00\x00\x08\x00", "not an unsigned-byte IDX"),  # zero dimensions
        (b"\x00\x00\x08\x03" + struct.pack(">I", 5), "truncated inside its IDX header"),
    ],
)
def test_parse_idx_rejects_bad_headers(data: bytes, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment) as info:
        parse_idx(data, "some-file")
    assert "some-file" in str(info.value)


@given(n=st.integers(1, 20), cut=st.integers(-30, 30))
@settings(max_examples=40, deadline=None)
def test_parse_idx_detects_any_length_mismatch(n: int, cut: int) -> None:
    """Truncating or padding the payload by any amount is reported; only the exact length parses."""
    data = idx_bytes(np.zeros((n, 3, 3), dtype=np.uint8))
    damaged = data[: len(data) + cut] if cut < 0 else data + b"\x00" * cut
    if cut == 0:
        assert parse_idx(damaged, "f").shape == (n, 3, 3)
    elif len(damaged) >= 16:
        with pytest.raises(DataError, match="truncated or corrupt"):
            parse_idx(damaged, "f")
    else:
        with pytest.raises(DataError, match="truncated"):
            parse_idx(damaged, "f")


# --------------------------------------------------------------------------
# IDX datasets from disk (fake files)
# --------------------------------------------------------------------------


def test_loads_fake_mnist_from_root(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    write_idx_dir(isolated / "data" / "mnist", fake_mnist)
    data = load_dataset("mnist", root=isolated / "data", download=False)
    assert data.name == "mnist"
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (12, 1, 28, 28)
    assert data.x_test.shape == (5, 1, 28, 28)
    assert data.y_train.dtype == torch.int64 and data.y_train.shape == (12,)
    assert data.num_classes == 10 and data.sample_shape == (1, 28, 28)
    expected = np.frombuffer(fake_mnist["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(12, 28, 28)
    assert np.array_equal(data.x_train[:, 0].numpy(), expected)
    labels = np.frombuffer(fake_mnist["t10k-labels-idx1-ubyte"], np.uint8, offset=8)
    assert data.y_test.tolist() == labels.tolist()
    assert data.x_train.numpy().flags.writeable  # tensors own writable memory


def test_plain_files_are_accepted_and_preferred(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    folder = write_idx_dir(isolated / "mnist", fake_mnist, gz=False)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")  # would fail if read
    data = load_dataset("mnist", root=isolated, download=False)
    assert data.x_train.shape == (12, 1, 28, 28)


def test_mixed_plain_and_gz_files(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    folder = write_idx_dir(isolated / "mnist", fake_mnist)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(fake_mnist["t10k-labels-idx1-ubyte"])
    assert len(load_dataset("mnist", root=isolated, download=False).y_test) == 5


def test_checksum_mismatch_is_reported_with_file_name(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    contents = dict(fake_mnist)
    labels = bytearray(contents["train-labels-idx1-ubyte"])
    labels[-1] = (labels[-1] + 1) % 10  # still a structurally valid file
    contents["train-labels-idx1-ubyte"] = bytes(labels)
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="failed its checksum") as info:
        load_dataset("mnist", root=isolated, download=False)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_truncated_idx_file_is_reported_not_loaded(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    contents = dict(fake_mnist)
    contents["t10k-images-idx3-ubyte"] = contents["t10k-images-idx3-ubyte"][:-100]
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_dataset("mnist", root=isolated, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


def test_truncated_gzip_stream_is_reported(isolated: Path, fake_mnist: dict[str, bytes]) -> None:
    folder = write_idx_dir(isolated / "mnist", fake_mnist)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="not a valid gzip file or is truncated") as info:
        load_dataset("mnist", root=isolated, download=False)
    assert str(path) in str(info.value)


def test_image_label_count_mismatch_is_reported(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = make_fake_idx()
    contents["train-labels-idx1-ubyte"] = idx_bytes(np.zeros(11, dtype=np.uint8))
    source = dataclasses.replace(idx.IDX_DATASETS["mnist"], md5={k: md5(v) for k, v in contents.items()})
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", source)
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="12 images but .* has 11 labels"):
        load_dataset("mnist", root=isolated, download=False)


def test_wrong_rank_and_image_size_are_reported(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = make_fake_idx()
    contents["t10k-images-idx3-ubyte"] = idx_bytes(np.zeros((5, 28, 27), dtype=np.uint8))
    contents["train-labels-idx1-ubyte"] = idx_bytes(np.zeros((12, 1), dtype=np.uint8))
    source = dataclasses.replace(idx.IDX_DATASETS["mnist"], md5={k: md5(v) for k, v in contents.items()})
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", source)
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="2-dimensional array but a 1-dimensional"):
        load_dataset("mnist", root=isolated, download=False)
    contents["train-labels-idx1-ubyte"] = idx_bytes(np.zeros(12, dtype=np.uint8))
    monkeypatch.setitem(
        idx.IDX_DATASETS, "mnist", dataclasses.replace(source, md5={k: md5(v) for k, v in contents.items()})
    )
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="expected 28x28"):
        load_dataset("mnist", root=isolated, download=False)


def test_out_of_range_label_is_reported(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = make_fake_idx()
    contents["t10k-labels-idx1-ubyte"] = idx_bytes(np.array([1, 2, 10, 3, 4], dtype=np.uint8))
    source = dataclasses.replace(idx.IDX_DATASETS["mnist"], md5={k: md5(v) for k, v in contents.items()})
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", source)
    write_idx_dir(isolated / "mnist", contents)
    with pytest.raises(DataError, match="contains label 10"):
        load_dataset("mnist", root=isolated, download=False)


# --------------------------------------------------------------------------
# lookup order
# --------------------------------------------------------------------------


def test_search_order_root_env_cache_system(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(idx.DATA_ENV, str(isolated / "env"))
    dirs = idx.search_dirs(isolated / "root")
    assert dirs == [isolated / "root", isolated / "env", isolated / "home" / ".cache" / "nnspec", isolated / "system"]
    assert idx.search_dirs(None)[0] == isolated / "env"


def test_locate_prefers_earlier_directories(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contents = make_fake_idx()
    places = {
        "system": isolated / "system" / "mnist",
        "cache": isolated / "home" / ".cache" / "nnspec" / "mnist",
        "env": isolated / "env" / "mnist",
        "root": isolated / "root" / "mnist",
    }
    monkeypatch.setenv(idx.DATA_ENV, str(isolated / "env"))
    for label in ("system", "cache", "env", "root"):
        write_idx_dir(places[label], contents)
        found = idx.locate_idx_files("mnist", root=isolated / "root")
        assert found is not None
        assert found["train-images-idx3-ubyte"].parent == places[label]


def test_incomplete_directory_is_skipped(isolated: Path) -> None:
    contents = make_fake_idx()
    complete = write_idx_dir(isolated / "system" / "mnist", contents)
    partial = write_idx_dir(isolated / "root" / "mnist", {"train-images-idx3-ubyte": b"x"})
    assert partial.exists()
    found = idx.locate_idx_files("mnist", root=isolated / "root")
    assert found is not None and found["t10k-labels-idx1-ubyte"].parent == complete


@pytest.mark.parametrize("folder", ["fashion-mnist", "fashion_mnist"])
def test_fashion_mnist_folder_spellings(isolated: Path, folder: str) -> None:
    write_idx_dir(isolated / "base" / folder, make_fake_idx())
    found = idx.locate_idx_files("fashion_mnist", root=isolated / "base")
    assert found is not None and found["train-images-idx3-ubyte"].parent.name == folder
    assert idx.locate_idx_files("mnist", root=isolated / "base") is None


def test_missing_without_download_gives_one_complete_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download=False must not touch the network")

    monkeypatch.setattr(idx, "urlopen", no_network)
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", root=isolated / "mine", download=False)
    message = str(info.value)
    assert "\n" not in message
    for stem in idx.IDX_FILES:
        assert stem in message
    assert str(isolated / "mine" / "fashion-mnist") in message
    assert str(isolated / "system" / "fashion_mnist") in message
    assert "download=False" in message and idx.DATA_ENV in message and "root=" in message
    assert "apt-get install dataset-fashion-mnist" in message


# --------------------------------------------------------------------------
# download (network replaced by a fake urlopen)
# --------------------------------------------------------------------------


class FakeNetwork:
    """Stands in for urllib's urlopen: serves registered bytes, fails for everything else."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.requests.append(url)
        if url not in self.files:
            raise urllib.error.URLError("offline")
        return io.BytesIO(self.files[url])


def serve(source: idx.IdxSource, mirror: int, contents: dict[str, bytes]) -> dict[str, bytes]:
    """URLs of mirror number ``mirror`` mapped to gzipped ``contents``."""
    return {f"{source.mirrors[mirror]}{stem}.gz": gzip.compress(data) for stem, data in contents.items()}


def test_download_writes_verified_files_and_is_reused(
    isolated: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = idx.IDX_DATASETS["mnist"]
    network = FakeNetwork(serve(source, 1, fake_mnist))  # first mirror is "down"
    monkeypatch.setattr(idx, "urlopen", network)
    data = load_dataset("mnist")
    target = isolated / "home" / ".cache" / "nnspec" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in idx.IDX_FILES)
    assert data.x_train.shape == (12, 1, 28, 28)
    assert any(url.startswith(source.mirrors[0]) for url in network.requests)
    count = len(network.requests)
    load_dataset("mnist")
    assert len(network.requests) == count  # second load finds the cached files


def test_download_goes_to_root_when_given(
    isolated: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(serve(idx.IDX_DATASETS["mnist"], 0, fake_mnist)))
    load_dataset("mnist", root=isolated / "r")
    assert len(list((isolated / "r" / "mnist").glob("*.gz"))) == 4
    assert not (isolated / "home" / ".cache").exists()


def test_download_rejects_bad_checksum_and_leaves_nothing(
    isolated: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = {stem: data[:-1] + bytes([(data[-1] + 1) % 256]) for stem, data in fake_mnist.items()}
    source = idx.IDX_DATASETS["mnist"]
    served = {}
    for mirror in range(len(source.mirrors)):
        served.update(serve(source, mirror, tampered))
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(served))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("mnist", root=isolated / "r")
    assert not (isolated / "r").exists()  # nothing created before a download succeeds


def test_download_rejects_non_gzip_payload(
    isolated: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = idx.IDX_DATASETS["mnist"]
    served = {f"{m}{stem}.gz": b"<html>not found</html>" for m in source.mirrors for stem in idx.IDX_FILES}
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(served))
    with pytest.raises(DataError, match="not a valid gzip"):
        load_dataset("mnist", root=isolated / "r")
    assert not (isolated / "r").exists()  # nothing created before a download succeeds


def test_offline_download_gives_one_complete_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = FakeNetwork({})
    monkeypatch.setattr(idx, "urlopen", network)
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "MNIST data not found" in message and "offline" in message
    assert all(stem in message for stem in idx.IDX_FILES)
    assert str(isolated / "system" / "mnist") in message and idx.DATA_ENV in message
    assert len(network.requests) == len(idx.IDX_DATASETS["mnist"].mirrors)  # every mirror tried once


def test_failed_write_leaves_no_temporary_file(
    isolated: Path, fake_mnist: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(serve(idx.IDX_DATASETS["mnist"], 0, fake_mnist)))

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idx.os, "replace", failing_replace)
    with pytest.raises(DataError, match="could not write .*No space left on device"):
        load_dataset("mnist", root=isolated / "r")
    assert list((isolated / "r" / "mnist").iterdir()) == []  # the download succeeded, the write failed: no temp file


def test_download_of_real_mnist_bytes(
    real_mnist_files: dict[str, Path], isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real checksums accept the real files when the (fake) network serves them."""
    real = idx.IDX_DATASETS["mnist"]
    served = {f"{real.mirrors[0]}{stem}.gz": _as_gz(path) for stem, path in real_mnist_files.items()}
    monkeypatch.setattr(idx, "urlopen", FakeNetwork(served))
    data = load_dataset("mnist", root=isolated / "dl")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.y_test.shape == (10000,)
    assert len(list((isolated / "dl" / "mnist").glob("*.gz"))) == 4


def _as_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw if path.suffix == ".gz" else gzip.compress(raw, compresslevel=1)


# --------------------------------------------------------------------------
# real data (skipped when not present)
# --------------------------------------------------------------------------


def test_real_mnist_shapes_and_labels(real_mnist: Dataset) -> None:
    assert real_mnist.x_train.shape == (60000, 1, 28, 28) and real_mnist.x_train.dtype == torch.uint8
    assert real_mnist.x_test.shape == (10000, 1, 28, 28)
    assert real_mnist.y_train.dtype == torch.int64
    assert real_mnist.num_classes == 10 and real_mnist.sample_shape == (1, 28, 28)
    assert torch.bincount(real_mnist.y_train).tolist()[:2] == [5923, 6742]  # published class counts
    assert int(real_mnist.x_train.max()) == 255


def test_real_mnist_loads_quickly() -> None:
    real_idx_dir("mnist")
    start = time.perf_counter()
    load_dataset("mnist", download=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"loading MNIST took {elapsed:.2f}s"  # ~0.4 s measured; generous for slow CI


def test_real_fashion_mnist() -> None:
    real_idx_dir("fashion_mnist")
    data = load_dataset("fashion_mnist", download=False)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    assert torch.bincount(data.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def valid_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x_train": rng.integers(0, 256, (20, 1, 4, 4), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 20).astype(np.int32),
        "x_test": rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8),
        "y_test": np.array([0, 1, 2, 3, 1, 0], dtype=np.int64),
    }


def test_npz_loads_images(tmp_path: Path) -> None:
    arrays = valid_arrays()
    data = load_dataset("npz", path=save_npz(tmp_path / "d.npz", **arrays))
    assert data.name == "npz" and data.sample_shape == (1, 4, 4)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.num_classes == 4  # largest label anywhere (3, in the test split) + 1
    assert np.array_equal(data.x_test.numpy(), arrays["x_test"])


def test_npz_float_features_and_channel_axis(tmp_path: Path) -> None:
    flat = {
        "x_train": np.ones((5, 7), dtype=np.float64),
        "y_train": np.zeros(5, dtype=np.int64),
        "x_test": np.ones((2, 7), dtype=np.float16),
        "y_test": np.array([1, 0]),
    }
    data = load_dataset("npz", path=save_npz(tmp_path / "f.npz", **flat))
    assert data.x_train.dtype == torch.float32 and data.sample_shape == (7,) and data.num_classes == 2
    images = valid_arrays()
    images["x_train"] = images["x_train"][:, 0]
    images["x_test"] = images["x_test"][:, 0]
    data = load_dataset("npz", path=save_npz(tmp_path / "hw.npz", **images))
    assert data.sample_shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"y_test": None}, "lacks array"),
        ({"y_train": np.zeros(19, dtype=np.int64)}, "x_train has 20 samples but y_train has 19"),
        ({"y_train": np.zeros(20, dtype=np.float32)}, "labels must be integer"),
        ({"y_train": -np.ones(20, dtype=np.int64)}, "negative label"),
        ({"y_train": np.zeros((20, 1), dtype=np.int64)}, "one-dimensional"),
        ({"x_train": np.zeros((20, 1, 4, 4), dtype=np.int32)}, "dtype int32"),
        ({"x_train": np.full((20, 1, 4, 4), np.nan, dtype=np.float32)}, "NaN"),
        ({"x_train": np.zeros((20, 1, 1, 4, 4), dtype=np.uint8)}, "expected \\(N, features\\)"),
        ({"x_test": np.zeros((6, 1, 5, 5), dtype=np.uint8)}, "both splits must match"),
        ({"x_train": np.zeros((0, 1, 4, 4), dtype=np.uint8), "y_train": np.zeros(0, np.int64)}, "x_train is empty"),
    ],
)
def test_npz_validation(tmp_path: Path, change: dict[str, np.ndarray | None], fragment: str) -> None:
    arrays = valid_arrays()
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=fragment) as info:
        load_dataset("npz", path=path)
    assert str(path) in str(info.value)


def test_npz_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("npz")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("npz", path=tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not numpy data")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("npz", path=garbage)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        load_dataset("npz", path=single)
    pickled = tmp_path / "objects.npz"
    objects = np.array([{"a": 1}], dtype=object)
    np.savez(pickled, x_train=objects, y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="cannot read its arrays"):
        load_dataset("npz", path=pickled)


# --------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------


def test_synthetic_defaults_and_determinism() -> None:
    a = load_dataset("synthetic")
    b = load_dataset("synthetic", synthetic={"seed": 0})
    assert a.x_train.shape == (512, 1, 8, 8) and a.x_test.shape == (128, 1, 8, 8)
    assert a.x_train.dtype == torch.uint8 and a.y_train.dtype == torch.int64
    assert a.num_classes == 10 and a.sample_shape == (1, 8, 8) and a.name == "synthetic"
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert torch.bincount(a.y_train).tolist() == [52, 52] + [51] * 8  # balanced
    c = load_dataset("synthetic", synthetic={"seed": 1})
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_train_split_ignores_test_size() -> None:
    a = load_dataset("synthetic", synthetic={"test_samples": 10})
    b = load_dataset("synthetic", synthetic={"test_samples": 300})
    assert torch.equal(a.x_train, b.x_train) and len(b.y_test) == 300


def test_synthetic_flat_shape() -> None:
    data = load_dataset("synthetic", synthetic={"shape": [20], "classes": 3, "samples": 30, "test_samples": 0})
    assert data.x_train.shape == (30, 20) and data.sample_shape == (20,) and data.num_classes == 3
    assert data.x_test.shape == (0, 20)


def test_synthetic_is_learnable_by_a_tiny_mlp() -> None:
    torch.manual_seed(0)
    splits = prepare(load_dataset("synthetic"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(splits.x_train), splits.y_train).backward()
        optimizer.step()
    accuracy = (model(splits.x_test).argmax(1) == splits.y_test).float().mean().item()
    assert accuracy > 0.6, accuracy  # chance is 0.1


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"sampels": 5}, "unknown synthetic dataset setting"),
        ({"samples": 0}, "'samples' must be an integer >= 1"),
        ({"samples": True}, "'samples' must be an integer"),
        ({"classes": 1}, "'classes' must be an integer >= 2"),
        ({"shape": [1, 2, 3, 4]}, "'shape' must be"),  # (C, L) is supported; four dims are not
        ({"shape": [0]}, "'shape' must be"),
        ({"noise": -1.0}, "'noise' must be"),
        ({"seed": -3}, "'seed' must be"),
    ],
)
def test_synthetic_validation(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_dataset("synthetic", synthetic=config)


# --------------------------------------------------------------------------
# load_dataset dispatch
# --------------------------------------------------------------------------


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion_mnist, npz, synthetic"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    ("name", "kwargs", "option"),
    [
        ("mnist", {"path": "x.npz"}, "path"),
        ("synthetic", {"root": "/tmp"}, "root"),
        ("npz", {"path": "x.npz", "synthetic": {}}, "synthetic"),
    ],
)
def test_options_for_other_datasets_are_refused(name: str, kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(DataError, match=f"option '{option}' does not apply"):
        load_dataset(name, **kwargs)  # type: ignore[arg-type]


def test_dataset_rejects_inconsistent_tensors() -> None:
    x = torch.zeros(4, 3)
    with pytest.raises(DataError, match="declares"):
        Dataset(x, torch.zeros(4, dtype=torch.int64), x, torch.zeros(4, dtype=torch.int64), 2, (4,), "t")
    with pytest.raises(DataError, match="int64"):
        Dataset(x, torch.zeros(4, dtype=torch.int32), x, torch.zeros(4, dtype=torch.int64), 2, (3,), "t")
    with pytest.raises(DataError, match="one label per sample"):
        Dataset(x, torch.zeros(3, dtype=torch.int64), x, torch.zeros(4, dtype=torch.int64), 2, (3,), "t")


# --------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------


def counting_dataset(n_train: int = 10, n_test: int = 4, shape: tuple[int, ...] = (2, 2, 2)) -> Dataset:
    """Sample k is filled with the value k, so slices can be identified by their contents."""
    def split(n: int, offset: int) -> torch.Tensor:
        return (torch.arange(n, dtype=torch.uint8) + offset).reshape(n, *([1] * len(shape))).expand(n, *shape).clone()

    return Dataset(
        split(n_train, 0), torch.arange(n_train) % 3, split(n_test, 100), torch.arange(n_test) % 3, 3, shape, "count"
    )


def test_prepare_defaults_scale_and_keep_everything() -> None:
    data = counting_dataset()
    splits = prepare(data)
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    assert splits.x_train.shape == (10, 2, 2, 2) and splits.x_test.shape == (4, 2, 2, 2)
    assert splits.x_val.shape == (0, 2, 2, 2) and splits.y_val.shape == (0,)
    assert torch.allclose(splits.x_train[:, 0, 0, 0], torch.arange(10) / 255.0)
    assert torch.allclose(splits.x_test[:, 0, 0, 0], (torch.arange(4) + 100) / 255.0)


def test_prepare_subsets_take_prefixes_and_val_takes_the_tail() -> None:
    data = counting_dataset()
    splits = prepare(data, scale=1.0, train_samples=8, test_samples=3, val=3)
    assert splits.x_train[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert splits.x_val[:, 0, 0, 0].tolist() == [5, 6, 7]
    assert splits.y_val.tolist() == [2, 0, 1]
    assert splits.x_test[:, 0, 0, 0].tolist() == [100, 101, 102]


@given(n=st.integers(1, 30), keep=st.integers(1, 30), val=st.integers(0, 30))
@settings(max_examples=60, deadline=None)
def test_prepare_split_sizes_property(n: int, keep: int, val: int) -> None:
    data = counting_dataset(n_train=n)
    if keep > n:
        with pytest.raises(DataError, match="has only"):
            prepare(data, train_samples=keep, val=val)
    elif val >= keep:
        with pytest.raises(DataError, match="must leave at least one"):
            prepare(data, train_samples=keep, val=val)
    else:
        splits = prepare(data, scale=1.0, train_samples=keep, val=val)
        assert len(splits.x_train) == keep - val and len(splits.x_val) == val
        kept = torch.cat([splits.x_train, splits.x_val])[:, 0, 0, 0]
        assert kept.tolist() == list(range(keep))


def test_prepare_normalize_scalar_and_per_channel() -> None:
    data = counting_dataset()
    scalar = prepare(data, scale=1.0, normalize=(2.0, 4.0))
    assert torch.allclose(scalar.x_train[:, 0, 0, 0], (torch.arange(10.0) - 2.0) / 4.0)
    per_channel = prepare(data, scale=10.0, normalize=([0.0, 1.0], [1.0, 0.5]))
    assert torch.allclose(per_channel.x_train[:, 0, 0, 0], torch.arange(10.0) / 10.0)
    assert torch.allclose(per_channel.x_train[:, 1, 1, 1], (torch.arange(10.0) / 10.0 - 1.0) / 0.5)
    assert torch.allclose(per_channel.x_test[:, 1, 0, 0], ((torch.arange(4.0) + 100) / 10.0 - 1.0) / 0.5)


def test_prepare_per_feature_normalize_for_flat_data() -> None:
    data = Dataset(
        torch.ones(3, 2), torch.zeros(3, dtype=torch.int64), torch.ones(1, 2), torch.zeros(1, dtype=torch.int64),
        1, (2,), "flat",
    )
    splits = prepare(data, scale=1.0, normalize=([1.0, 0.0], [1.0, 2.0]))
    assert splits.x_train.tolist() == [[0.0, 0.5]] * 3


def test_prepare_does_not_modify_or_alias_the_dataset() -> None:
    data = Dataset(
        torch.ones(3, 2), torch.zeros(3, dtype=torch.int64), torch.ones(1, 2), torch.zeros(1, dtype=torch.int64),
        1, (2,), "float",
    )
    splits = prepare(data, scale=1.0, val=1)
    splits.x_train.add_(5)
    splits.y_train.add_(5)
    assert torch.equal(data.x_train, torch.ones(3, 2))
    assert torch.equal(data.y_train, torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"scale": 0}, "scale must be a positive"),
        ({"normalize": (0.5,)}, "pair \\(mean, std\\)"),
        ({"normalize": (0.5, 0.0)}, "std must be positive"),
        ({"normalize": ([0.1, 0.2, 0.3], 1.0)}, "one per channel"),
        ({"normalize": ("a", 1.0)}, "list of numbers"),
        ({"train_samples": 0}, "train_samples must be an integer >= 1"),
        ({"test_samples": 5}, "test_samples=5 but dataset 'count' has only 4"),
        ({"val": 10}, "val=10 must be an integer from 0 to 9"),
        ({"val": -1}, "val=-1"),
    ],
)
def test_prepare_validation(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        prepare(counting_dataset(), **kwargs)  # type: ignore[arg-type]


def test_prepare_real_mnist(real_mnist: Dataset) -> None:
    splits = prepare(real_mnist, normalize=(0.1307, 0.3081), train_samples=20000, test_samples=1000, val=2000)
    assert splits.x_train.shape == (18000, 1, 28, 28) and splits.x_val.shape == (2000, 1, 28, 28)
    assert splits.x_test.shape == (1000, 1, 28, 28)
    assert abs(splits.x_train.mean().item()) < 0.05 and abs(splits.x_train.std().item() - 1.0) < 0.05


# -- gzip bombs ----------------------------------------------------------------------------------


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_gzip_bomb_stops_at_the_declared_size(tmp_path: Path) -> None:
    """A small .gz that expands far past what its IDX header declares is refused after reading
    one byte more than declared, not decompressed whole (that ended in a MemoryError)."""
    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as handle:
        handle.write(_idx_header(100))
        zeros = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros; the real one was 4 GiB
            handle.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(DataError, match="decompresses to more than the 108 bytes its IDX header declares"):
        idx._read_content(bomb)


def test_idx_header_declaring_gigabytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(60000, 2000, 2000)))
    with pytest.raises(DataError, match=r"declares dimensions \(60000, 2000, 2000\)"):
        idx._read_content(path)


def test_gzipped_idx_of_the_declared_size_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(5) + bytes([1, 2, 3, 4, 5])))
    assert idx.parse_idx(idx._read_content(path), str(path)).tolist() == [1, 2, 3, 4, 5]


def test_failed_download_creates_no_directories(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.root may point anywhere; nothing is created there until a download succeeded."""
    def offline(url: str) -> bytes:
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(idx, "_fetch", offline)
    root = isolated / "typo" / "deep" / "root"
    with pytest.raises(DataError, match="downloading .* failed"):
        load_dataset("mnist", root=root, download=True)
    assert not (isolated / "typo").exists()
    with pytest.raises(DataError):
        load_dataset("mnist", download=True)  # the default cache under HOME: not created either
    assert not any((isolated / "home").iterdir())
