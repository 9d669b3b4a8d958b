"""What a run needs before it starts: the validated spec, the device and the data.

Everything here can fail on the user's input, so it runs before a run directory
exists: a data error must not leave an empty ``runs/…`` folder behind. Problems
with the spec are raised as :class:`~nnspec.errors.SpecError` at their position;
problems found later (data, resuming) as :class:`RunError` with an exit code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from nnspec.data.datasets import DataError, load_dataset, prepare
from nnspec.errors import Diagnostic, SpecError, dotted
from nnspec.spec.model import Spec
from nnspec.spec.overrides import apply_overrides
from nnspec.spec.runnable import one_sample_batch_problem
from nnspec.spec.source import Document, load_document
from nnspec.spec.validate import check_files, validate_document


class RunError(Exception):
    """A run that cannot start (``exit_code`` 2: fix the input) or could not finish (1: it failed)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


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
    validated, base_dir = validate_document(doc), path.resolve().parent
    check_files(validated, base_dir)
    return validated, base_dir


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


def problem(spec: Spec, path: tuple[str | int, ...], message: str) -> Diagnostic:
    return Diagnostic(spec.position_of(path), dotted(path), message)


def check_trainable(spec: Spec) -> None:
    """Refuse, before any work, a spec that cannot be trained as written (all problems at once)."""
    problems = [
        problem(spec, (section,), f"training needs {'an' if section[0] in 'aeiou' else 'a'} '{section}' section")
        for section in ("data", "loss", "optimizer")
        if getattr(spec, section) is None
    ]
    has_val = spec.data is not None and spec.data.val > 0
    stopping = spec.regularization.early_stopping
    if stopping is not None and not has_val:
        problems.append(problem(
            spec, ("regularization", "early_stopping"),
            f"early stopping monitors {stopping.monitor}, which needs a validation split: "
            "set data.val (e.g. --set data.val=5000)",
        ))  # fmt: skip
    phases = spec.schedule if isinstance(spec.schedule, list) else [spec.schedule]
    for i, phase in enumerate(phases):
        monitor = getattr(phase, "monitor", "")
        if monitor.startswith("val_") and not has_val:
            path = ("schedule", i) if isinstance(spec.schedule, list) else ("schedule",)
            problems.append(problem(spec, path, f"plateau monitors {monitor}, which needs data.val > 0"))
    if problems:
        raise SpecError(problems)


def resolve_device_type(spec: Spec) -> str:
    """``auto`` means CUDA when there is a GPU; asking for what the machine lacks is an error."""
    wanted = spec.train.device
    has_cuda = torch.cuda.is_available()
    if wanted == "cuda" and not has_cuda:
        message = "CUDA was asked for but no GPU is available; use device: cpu or auto"
        raise SpecError([problem(spec, ("train", "device"), message)])
    device_type = "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"
    if spec.train.precision == "bf16" and device_type != "cuda":
        message = "bf16 autocast runs on CUDA only; this run is on the CPU (use precision: fp32)"
        raise SpecError([problem(spec, ("train", "precision"), message)])
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


def check_batches(spec: Spec, data: Data) -> None:
    """Refuse batches that training would fail on, now that the training set's size is known.

    Validation checks this where the spec fixes the size (mnist, synthetic); an npz file's is
    known only once loaded, and a traceback from inside the first epoch is no way to learn it.
    """
    message = one_sample_batch_problem(spec, len(data.y_train))
    if message is not None:
        raise SpecError([problem(spec, ("train", "batch_size"), message)])


def _as_input(spec: Spec, x: Tensor, sample_shape: tuple[int, ...]) -> Tensor:
    """Samples shaped as the spec's ``input``: reshaped when only the layout differs ((1,28,28) vs (784,))."""
    wanted = tuple(spec.input)
    if sample_shape == wanted:
        return x
    if math.prod(sample_shape) == math.prod(wanted):
        return x.reshape(len(x), *wanted)
    raise SpecError([problem(
        spec, ("input",), f"the dataset's samples have shape {list(sample_shape)} but input is {list(wanted)}"
    )])  # fmt: skip
