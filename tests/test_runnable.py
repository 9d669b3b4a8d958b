"""Specs that passed ``nnspec validate`` and then failed ``nnspec train`` - with a traceback,
or with a message and no location - are refused in validation, at the line to change."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnspec.errors import SpecError
from nnspec.spec import load_spec, loads_spec
from nnspec.train import train

BASE = {
    "nnspec": 1, "name": "t", "input": [1, 4, 4],
    "model": ["flatten", {"linear": 8}, "batch_norm", "relu", {"linear": 3}],
    "loss": "cross_entropy", "optimizer": {"sgd": 0.1},
    "data": {"dataset": "synthetic", "synthetic": {"samples": 32, "test_samples": 8, "classes": 3}},
    "train": {"epochs": 1, "batch_size": 16},
}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


CASES = {
    "batch-of-one": ({"train": {"batch_size": 1}}, "train.batch_size", "needs at least 2 samples per training batch"),
    "last-batch-of-one": ({"data": {"synthetic": {"samples": 33}}}, "train.batch_size",
                          "the last batch of each epoch holds 1 sample (33 training samples, batch_size 16)"),
    "last-batch-of-one-after-val": ({"data": {"synthetic": {"samples": 40}, "val": 7}}, "train.batch_size",
                                    "(33 training samples, batch_size 16)"),
    "hflip-on-flat": ({"input": [16], "model": [{"linear": 3}], "data": {"augment": ["gaussian_noise", "hflip"]}},
                      "data.augment.1", "hflip works on images, but input is (16,)"),
    "huge-warmup": ({"schedule": {"warmup": 1.0e+308}}, "schedule.epochs", "less than or equal to 100000"),
    "seed-over-62-bits": ({"train": {"seed": 2**64 - 1}}, "train.seed", "less than 4611686018427387904"),
    "negative-seed": ({"train": {"seed": -5}}, "train.seed", "greater than or equal to 0"),
    "class-weights-length": ({"loss": {"cross_entropy": {"class_weights": [1.0, 2.0]}}}, "loss.class_weights",
                             "2 class weights for a model with 3 outputs"),
    "synthetic-too-big": ({"input": [1, 2000, 2000], "model": ["global_avg_pool", {"linear": 3}],
                           "data": {"synthetic": {"samples": 10000}}}, "data.synthetic.samples",
                          "synthetic data would take 149.1 GiB"),
    "prelu-overflows-float32": ({"model": ["flatten", {"prelu": 1.0e+300}, {"linear": 3}]}, "model.1.init",
                                "less than or equal to"),
    "inverted-erase-scale": ({"data": {"augment": [{"random_erase": {"scale": [0.5, 0.1]}}]}}, "data.augment.0",
                             "scale must be [min, max] with 0 < min <= max <= 1, got [0.5, 0.1]"),
    "negative-synthetic-seed": ({"data": {"synthetic": {"seed": -1}}}, "data.synthetic.seed", "greater than or equal to 0"),
    "nan-normalize-mean": ({"data": {"normalize": {"mean": float("nan"), "std": 1.0}}}, "data.normalize.mean",
                           "finite number"),
    "root-with-synthetic": ({"data": {"root": "somewhere"}}, "data.root", "'root' does not apply to dataset 'synthetic'"),
    "path-with-synthetic": ({"data": {"path": "x.npz"}}, "data.path", "'path' does not apply to dataset 'synthetic'"),
    "missing-pretrained": ({"init": {"pretrained": {"checkpoint": "no_such_run"}}}, "init.pretrained.checkpoint",
                           "no checkpoint at"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_validation_at_its_line(case: str, tmp_path: Path):
    change, key, fragment = CASES[case]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, change), sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:") and f": {key}: " in lines[0] and fragment in lines[0], lines[0]


def test_batch_norm_over_spatial_values_trains_on_a_batch_of_one():
    """Only one value per channel is a problem: a (C, H, W) batch norm has H*W values."""
    spec = dict(BASE, model=[{"conv2d": {"out": 2, "kernel": 1}}, "batch_norm", "flatten", {"linear": 3}],
                train={"epochs": 1, "batch_size": 1})
    assert loads_spec(yaml.safe_dump(spec)).train.batch_size == 1


def test_synthetic_channels_by_length_input_trains(tmp_path: Path):
    """(C, L) inputs were refused by the synthetic dataset after validation; they are supported."""
    spec = dict(BASE, input=[2, 8], model=[{"conv1d": {"out": 4, "kernel": 3}}, "flatten", {"linear": 3}])
    path = tmp_path / "cl.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = train(path, out=tmp_path / "run", quiet=True)
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and (tmp_path / "run" / "model.safetensors").is_file()


# -- files and overrides that crashed validation -------------------------------------------


def _extends(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "child.yaml"
    path.write_text(f"extends: {target}\nname: child\n")
    return path


@pytest.mark.parametrize("target, fragment", [
    ("a" * 300 + ".yaml", "is not a usable path: File name too long"),
    ('"a\\0b.yaml"', "is not a usable path: it contains a NUL byte"),
    ("loop1", "is not a usable path"),
    ("/proc/self/mem", "cannot read"),
    ("/proc/self/pagemap", "cannot read"),
    ("fifo", "not a regular file"),
    ("/dev/zero", "is not a regular file"),
    ("nowhere.yaml", "not found"),
])
def test_unusable_extends_targets_are_located_errors(tmp_path: Path, target: str, fragment: str):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    os.mkfifo(tmp_path / "fifo")
    if target.startswith("/proc/") and not Path(target).exists():
        pytest.skip("no /proc here")
    with pytest.raises(SpecError) as info:
        load_spec(_extends(tmp_path, target))
    line = str(info.value)
    assert "\n" not in line and fragment in line, line
    assert len(line) < 400


def test_kmsg_does_not_hang(tmp_path: Path):
    """/proc/kmsg stats as an empty regular file and blocks on read: it must fail, not hang."""
    if not os.access("/proc/kmsg", os.R_OK):
        pytest.skip("/proc/kmsg is not readable here")
    child = _extends(tmp_path, "/proc/kmsg")
    # In a subprocess with a timeout: a regression must fail the test, not hang the suite.
    result = subprocess.run([sys.executable, "-m", "nnspec", "validate", str(child)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot read" in result.stderr + result.stdout, result


def test_endless_file_is_cut_at_the_cap(tmp_path: Path, monkeypatch):
    """The size cap holds on the bytes read, whatever stat says (procfs reports size 0)."""
    import nnspec.spec.source as source

    monkeypatch.setattr(source, "MAX_FILE_BYTES", 64)
    path = tmp_path / "long.yaml"
    path.write_text("nnspec: 1\n" + "# padding\n" * 20)
    real_fstat = os.fstat
    monkeypatch.setattr(source.os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:])))
    with pytest.raises(SpecError, match="larger than 64 bytes"):
        load_spec(path)


def test_superscript_digit_in_an_override_key_is_a_key_not_an_index(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(SpecError) as info:
        train(path, overrides=["model.²=0.5"], out=tmp_path / "run", quiet=True)
    assert "model.²" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override, key", [
    ('data.root="a\\0b"', "data.root"),
    ('init={pretrained: {checkpoint: "run\\0x"}}', "init.pretrained.checkpoint"),
])
def test_nul_byte_in_a_path_override_is_a_located_error(tmp_path: Path, override: str, key: str):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"data": {"dataset": "mnist"}, "input": [1, 28, 28],
                                                 "model": ["flatten", {"linear": 10}]})))
    with pytest.raises(SpecError) as info:
        train(path, overrides=[override], out=tmp_path / "run", quiet=True)
    assert f": {key}: a path cannot contain a NUL byte" in str(info.value), str(info.value)
    assert not (tmp_path / "run").exists()


def test_error_lines_and_echoed_values_are_capped(tmp_path: Path):
    """A key of 200,000 characters (or a secrets file named by extends) never comes back whole."""
    secret = "s3cr3t-" * 40_000
    (tmp_path / "secrets.yaml").write_text(f"api_token_{secret}: {secret}\n")
    for path in (_extends(tmp_path, "secrets.yaml"), tmp_path / "secrets.yaml"):
        with pytest.raises(SpecError) as info:
            load_spec(path)
        for line in str(info.value).splitlines():
            assert len(line) <= 300, len(line)
        assert secret not in str(info.value)


def test_npz_last_batch_of_one_is_refused_at_batch_size_when_the_data_is_loaded(tmp_path: Path):
    """An npz file's size is unknown to validation: train refuses at train.batch_size, no traceback."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(33, 16)).astype("float32"),
             y_train=rng.integers(0, 3, 33), x_test=rng.normal(size=(4, 16)).astype("float32"),
             y_test=rng.integers(0, 3, 4))  # fmt: skip
    spec = dict(BASE, input=[16], model=[{"linear": 8}, "batch_norm", "relu", {"linear": 3}],
                data={"dataset": "npz", "path": str(tmp_path / "d.npz")})  # fmt: skip
    path = tmp_path / "npz.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    load_spec(path)  # validation cannot know the size
    with pytest.raises(SpecError) as info:
        train(path, out=tmp_path / "run", quiet=True)
    message = str(info.value)
    assert "train.batch_size" in message and "(33 training samples, batch_size 16)" in message
    assert f"{path}:" in message
    assert not (tmp_path / "run").exists()  # refused before a run directory was made
