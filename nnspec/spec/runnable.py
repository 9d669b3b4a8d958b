"""Runnability checks: specs that mean something sensible but that training would fail on.

Each of these used to pass ``nnspec validate`` and then stop ``nnspec train`` with a
traceback (or with an unlocated message) after the data was loaded - the worst kind of
error, because the user had been told the spec was fine.  Everything here is knowable
from the spec alone, so it is reported at the line that must change.  Like the meaning
checks, nothing here touches torch or the data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from nnspec.spec.layers import BatchNorm, fmt
from nnspec.spec.model import Spec
from nnspec.spec.shapes import ShapedLayer, infer_shapes, walk

if TYPE_CHECKING:  # meaning imports this module; the Finding type is only for annotations
    from nnspec.spec.meaning import Finding

#: Training-set sizes of the datasets whose size is fixed (npz is known only once loaded).
DATASET_TRAIN_SAMPLES: dict[str, int] = {"mnist": 60_000, "fashion_mnist": 60_000}

#: Augmentations that work on flat (features,) samples; every other one needs (C, H, W).
FLAT_AUGMENTATIONS = ("gaussian_noise",)

#: The most memory a synthetic dataset may take (float32 after preparation, all splits).
MAX_SYNTHETIC_BYTES = 2 << 30

#: Options of ``data`` and the datasets that use them (others would silently ignore them).
_DATA_OPTION_OWNERS = {"root": ("mnist", "fashion_mnist"), "path": ("npz",)}


def _finding(path: tuple[str | int, ...], message: str) -> "Finding":
    from nnspec.spec.meaning import Finding

    return Finding(path, message)


def runnable_findings(spec: Spec, shaped: list[ShapedLayer]) -> list["Finding"]:
    findings = _batch_norm_findings(spec, shaped)
    findings += _data_findings(spec)
    findings += _loss_findings(spec, shaped)
    return findings


def train_samples(spec: Spec) -> int | None:
    """How many samples one epoch trains on, when that is known without loading the data."""
    data = spec.data
    if data is None:
        return None
    total = data.synthetic.samples if data.dataset == "synthetic" else DATASET_TRAIN_SAMPLES.get(data.dataset)
    if total is None:
        return None
    if data.train_samples is not None:
        total = min(total, data.train_samples)
    return total - data.val


def _batch_norm_findings(spec: Spec, shaped: list[ShapedLayer]) -> list["Finding"]:
    """Batch norm on one value per channel cannot train on a batch of one sample."""
    message = _one_sample_batch(spec, shaped, train_samples(spec))
    return [_finding(("train", "batch_size"), message)] if message else []


def one_sample_batch_problem(spec: Spec, samples: int) -> str | None:
    """The same check once the training set is loaded and its size known (an npz file's is not
    before), for ``train.batch_size``; None when the batches are fine."""
    shaped, _ = infer_shapes(spec.model, spec.input)
    return _one_sample_batch(spec, shaped, samples)


def _one_sample_batch(spec: Spec, shaped: list[ShapedLayer], samples: int | None) -> str | None:
    single = [node for node in walk(shaped) if isinstance(node.layer, BatchNorm) and math.prod(node.in_shape[1:]) == 1]
    if not single or spec.data is None:
        return None
    batch = spec.train.batch_size
    layer = f"batch_norm at {'.'.join(map(str, single[0].path))} (input {fmt(single[0].in_shape)})"
    if batch == 1:
        return f"{layer} needs at least 2 samples per training batch; batch_size 1 gives it one value per channel"
    if samples is not None and samples > 0 and samples % batch == 1:
        return (
            f"the last batch of each epoch holds 1 sample ({samples} training samples, batch_size {batch}), "
            f"and {layer} cannot train on one value per channel; pick a batch_size that does not leave one sample"
        )
    return None


def _data_findings(spec: Spec) -> list["Finding"]:
    data = spec.data
    if data is None:
        return []
    findings: list[Finding] = []
    if len(spec.input) != 3:
        for i, step in enumerate(data.augment):
            if step.type not in FLAT_AUGMENTATIONS:
                findings.append(_finding(("data", "augment", i), (
                    f"{step.type} works on images, but input is {fmt(tuple(spec.input))}: it needs a "
                    f"(channels, height, width) input; {', '.join(FLAT_AUGMENTATIONS)} works on any input"
                )))
    for option, owners in _DATA_OPTION_OWNERS.items():
        if getattr(data, option) is not None and "\x00" in getattr(data, option):
            findings.append(_finding(("data", option), "a path cannot contain a NUL byte (\\0)"))
        elif getattr(data, option) is not None and data.dataset not in owners:
            findings.append(_finding(("data", option), (
                f"'{option}' does not apply to dataset '{data.dataset}'; only {' and '.join(owners)} use it"
            )))
    if data.dataset == "synthetic":
        synthetic = data.synthetic
        size = (synthetic.samples + synthetic.test_samples) * math.prod(spec.input) * 4
        if size > MAX_SYNTHETIC_BYTES:
            findings.append(_finding(("data", "synthetic", "samples"), (
                f"synthetic data would take {size / 2**30:,.1f} GiB ({synthetic.samples + synthetic.test_samples:,} "
                f"samples of {fmt(tuple(spec.input))} float32); the limit is {MAX_SYNTHETIC_BYTES >> 30} GiB: "
                "use fewer samples or a smaller input"
            )))
    return findings


def _loss_findings(spec: Spec, shaped: list[ShapedLayer]) -> list["Finding"]:
    weights = getattr(spec.loss, "class_weights", None)
    out = shaped[-1].out_shape if shaped else ()
    if weights is None or len(out) != 1 or len(weights) == out[0]:
        return []
    return [_finding(("loss", "class_weights"), (
        f"{len(weights)} class weights for a model with {out[0]} outputs; give one weight per class ({out[0]})"
    ))]


def file_findings(spec: Spec, base_dir: Path) -> list["Finding"]:
    """Files the spec names that must exist before training (relative paths from ``base_dir``)."""
    pretrained = spec.init.pretrained if spec.init is not None else None
    if pretrained is None:
        return []
    if "\x00" in pretrained.checkpoint:
        return [_finding(("init", "pretrained", "checkpoint"), "a path cannot contain a NUL byte (\\0)")]
    path = Path(pretrained.checkpoint)
    path = path if path.is_absolute() else base_dir / path
    try:
        found = (path / "model.safetensors").is_file() if path.is_dir() else path.is_file()
    except (OSError, ValueError):
        found = False
    if found:
        return []
    return [_finding(("init", "pretrained", "checkpoint"), (
        f"no checkpoint at {path} (give a run directory containing model.safetensors, or a .safetensors file)"
    ))]
