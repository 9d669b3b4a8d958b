"""Damaged checkpoints: every bad ``state.pt`` / ``model.safetensors`` is one clear line (exit 2),
bit flips are caught by the checksums recorded at write time, and failures while writing
(a full disk, a kill) leave the previous checkpoint usable."""
from __future__ import annotations

import errno
import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from nnspec.cli import main
from nnspec.train import RunError, train
from nnspec.train import checkpoint as ckpt
from nnspec.train import integrity

SPEC = """\
nnspec: 1
name: tiny
input: [1, 4, 4]
model:
  - flatten
  - linear: 8
  - relu
  - linear: 3
loss: cross_entropy
optimizer: {sgd: 0.1}
data:
  dataset: synthetic
  synthetic: {samples: 64, test_samples: 16, classes: 3}
train: {epochs: 1, batch_size: 16}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    spec = root / "tiny.yaml"
    spec.write_text(SPEC)
    train(spec, out=root / "run", quiet=True)
    return spec, root / "run"


@pytest.fixture
def run_copy(finished, tmp_path: Path) -> tuple[Path, Path]:
    spec, run = finished
    shutil.copytree(run, tmp_path / "run")
    return spec, tmp_path / "run"


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class NotAllowed:  # a pickled class: weights_only loading must refuse it
    pass


def _bad_states(good: dict) -> dict[str, bytes]:
    wrong_shapes = dict(good, model={name: torch.zeros(2, 2) for name in good["model"]})
    return {
        "empty": b"",
        "garbage": b"\x00garbage, not a checkpoint\xff" * 10,
        "a-list": _torch_bytes([1, 2, 3]),
        "missing-keys": _torch_bytes({"format": ckpt.STATE_FORMAT, "spec_name": "tiny"}),
        "refused-pickle": pickle.dumps({"format": 1, "evil": NotAllowed()}, protocol=2),
        "wrong-shapes": _torch_bytes(wrong_shapes),
        "empty-ranks": _torch_bytes(dict(good, ranks=[])),
        "wrong-types": _torch_bytes(dict(good, cursor=[1, 2])),
    }


@pytest.mark.parametrize("variant", ["empty", "garbage", "a-list", "missing-keys", "refused-pickle",
                                     "wrong-shapes", "empty-ranks", "wrong-types"])
def test_bad_state_on_resume_is_one_line_exit_2(run_copy, variant: str, capsys):
    spec, run = run_copy
    good = ckpt.load_state(run / ckpt.STATE)
    good["cursor"]["epoch"] = 0  # not finished, so the resume really restores it
    payload = _bad_states(good)[variant]
    ckpt._write_checked(run / ckpt.STATE, payload)  # recorded as written: the parse itself must refuse it
    code = main(["train", str(spec), "--resume", str(run), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(run / ckpt.STATE) in err and err.startswith("nnspec: cannot resume"), err


def _flip_a_bit(path: Path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def test_bit_flip_in_state_is_caught_on_resume(run_copy):
    spec, run = run_copy
    _flip_a_bit(run / ckpt.STATE, 200)
    with pytest.raises(RunError, match="is corrupted: its SHA-256 does not match") as info:
        train(spec, resume=run, quiet=True)
    assert info.value.exit_code == 2


def test_bit_flip_in_weights_is_caught_on_eval(run_copy, capsys):
    spec, run = run_copy
    _flip_a_bit(run / ckpt.WEIGHTS)  # inside the tensor data: safetensors would load it happily
    assert main(["eval", str(spec), "--checkpoint", str(run), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is corrupted" in err, err


@pytest.mark.parametrize("payload", [b"", b"not safetensors at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_unreadable_weights_on_eval_are_one_line(run_copy, payload: bytes, capsys):
    spec, run = run_copy
    ckpt._write_checked(run / ckpt.WEIGHTS, payload)
    assert main(["eval", str(spec), "--checkpoint", str(run), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a readable safetensors file" in err and "Traceback" not in err, err


def test_eval_of_state_pt_names_the_right_file(run_copy, capsys):
    spec, run = run_copy
    assert main(["eval", str(spec), "--checkpoint", str(run / ckpt.STATE), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "state.pt is the resume state" in err and str(run) in err, err


def test_resume_without_state_refuses_instead_of_retraining(run_copy):
    spec, run = run_copy
    before = (run / ckpt.WEIGHTS).read_bytes()
    (run / ckpt.STATE).unlink()
    with pytest.raises(RunError, match="no state.pt, so there is no state to continue from") as info:
        train(spec, resume=run, quiet=True)
    assert info.value.exit_code == 2 and (run / ckpt.WEIGHTS).read_bytes() == before


def test_resume_removes_temp_files_left_by_a_kill(run_copy):
    spec, run = run_copy
    stale = [run / ".model.safetensors.abc123.tmp", run / ".state.pt.xyz.tmp", run / ".checksums.json.q.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    train(spec, resume=run, quiet=True)
    assert not any(path.exists() for path in stale)


def test_full_disk_while_checkpointing_is_exit_1_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC.replace("epochs: 1", "epochs: 2"))
    writes = {"n": 0}
    real = ckpt.atomic_write

    def full_after_first_checkpoint(path, write):
        if Path(path).name in (ckpt.WEIGHTS, ckpt.STATE):
            writes["n"] += 1
            if writes["n"] > 2:  # epoch 1's weights and state went through
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(ckpt, "atomic_write", full_after_first_checkpoint)
    code = main(["train", str(spec), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert "the previous checkpoint is intact" in err
    monkeypatch.undo()
    state = ckpt.load_state(tmp_path / "run" / ckpt.STATE)  # verified against its checksum
    assert state["cursor"]["epoch"] == 1


@pytest.mark.parametrize("crash_at", ["before-data", "before-final-checksums"])
def test_a_kill_between_the_writes_leaves_a_verifiable_file(tmp_path: Path, crash_at: str):
    """The checksum file and the data file are replaced one after the other; a kill between
    any two renames must leave the file on disk matching a recorded digest."""
    path = tmp_path / ckpt.WEIGHTS
    ckpt.save_weights(path, {"w": torch.ones(3)})
    calls = {"text": 0}

    def write_text(target, text):
        calls["text"] += 1
        if crash_at == "before-final-checksums" and calls["text"] == 2:
            raise KeyboardInterrupt  # killed after the data file was replaced
        ckpt.atomic_write_text(target, text)

    def write_bytes(target, data):
        if crash_at == "before-data":
            raise KeyboardInterrupt  # killed after the new digest was added
        ckpt.atomic_write(target, lambda handle: handle.write(data))

    from safetensors.torch import save
    with pytest.raises(KeyboardInterrupt):
        integrity.write_checked(path, save({"w": torch.zeros(3)}), write_text, write_bytes)
    expected = torch.ones(3) if crash_at == "before-data" else torch.zeros(3)
    assert torch.equal(ckpt.load_weights(path)["w"], expected)
