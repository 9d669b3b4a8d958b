"""Evaluating models: one model or an ensemble's combined outputs on a split
(:func:`evaluate_models`, also used at every epoch's end), and ``nnspec eval`` on saved weights
(:func:`evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnspec.compiler import build, build_loss
from nnspec.errors import SpecError
from nnspec.spec.model import Spec
from nnspec.train import checkpoint as ckpt
from nnspec.train import distributed as D
from nnspec.train import report
from nnspec.train.ensemble import combine
from nnspec.train.learner import bf16_autocast
from nnspec.train.resolve import RunError, load_data, problem, resolve_device_type, resolve_spec, with_absolute_paths


#: Losses whose models output (log-)probabilities up to a softmax: ensembles average softmax(outputs).
SOFTMAX_LOSSES = frozenset({"cross_entropy", "nll"})


def _ensemble_loss(spec: Spec, loss_fn: nn.Module, combined: Tensor, y: Tensor) -> Tensor | None:
    """The loss of combined outputs: NLL of the averaged probabilities, the spec's loss on averaged
    raw outputs, and none for majority votes (a vote has no likelihood)."""
    assert spec.ensemble is not None and spec.loss is not None
    if spec.ensemble.combine == "vote":
        return None
    if spec.loss.type in SOFTMAX_LOSSES:
        return F.nll_loss(combined.clamp_min(1e-12).log(), y)
    return loss_fn(combined, y)


@torch.inference_mode()
def evaluate_models(models: Sequence[nn.Module], loss_fn: nn.Module, x: Tensor, y: Tensor, *, spec: Spec,
                    dist: D.Dist = D.Dist(), bf16: bool = False) -> tuple[float | None, float | None]:  # fmt: skip
    """(mean loss, accuracy) of a model, or of an ensemble's combined outputs, in eval mode.

    Each rank evaluates its contiguous slice; the sums are added over ranks.
    """
    if len(y) == 0:
        return None, None
    x, y = D.shard(x, dist), D.shard(y, dist)
    for model in models:
        model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    correct = torch.zeros((), dtype=torch.float64, device=y.device)
    has_loss = True
    for start in range(0, len(y), spec.train.eval_batch_size):
        xb, yb = x[start:start + spec.train.eval_batch_size], y[start:start + spec.train.eval_batch_size]
        with bf16_autocast(bf16):
            outputs = [model(xb) for model in models]
            if len(models) == 1:
                out, loss = outputs[0], loss_fn(outputs[0], yb)
            else:
                assert spec.ensemble is not None and spec.loss is not None
                out = combine([o.float() for o in outputs], spec.ensemble.combine, spec.loss.type in SOFTMAX_LOSSES)
                loss = _ensemble_loss(spec, loss_fn, out, yb)
        if loss is None:
            has_loss = False
        else:
            loss_sum += loss.double() * len(yb)
        correct += (out.argmax(dim=-1) == yb).sum()
    count = torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)
    loss_sum, correct, count = D.all_reduce_sum(torch.stack([loss_sum, correct, count]), dist).tolist()
    return (loss_sum / count if has_loss else None), correct / count


def _weight_files(spec: Spec, checkpoint: Path) -> list[Path]:
    """The weights file(s) a checkpoint argument points at: one per ensemble member."""
    if checkpoint.is_file():
        if checkpoint.name == ckpt.STATE or checkpoint.suffix != ".safetensors":
            hint = (f"{ckpt.STATE} is the resume state, not the published weights; "
                    if checkpoint.name == ckpt.STATE else "")  # fmt: skip
            raise RunError(f"{checkpoint}: {hint}give the run directory ({checkpoint.parent}) or its "
                           f"{ckpt.WEIGHTS}", exit_code=2)  # fmt: skip
        if spec.ensemble is not None:
            raise RunError(f"{checkpoint}: an ensemble needs its run directory (member_*/{ckpt.WEIGHTS})", exit_code=2)
        return [checkpoint]
    if not checkpoint.is_dir():
        raise RunError(f"checkpoint {checkpoint} does not exist", exit_code=2)
    seed_dirs = sorted(checkpoint.glob("seed_*"))
    if seed_dirs and not (checkpoint / ckpt.WEIGHTS).exists():
        raise RunError(f"{checkpoint} holds {len(seed_dirs)} seed runs; evaluate one of them, e.g. {seed_dirs[0]}",
                       exit_code=2)  # fmt: skip
    if spec.ensemble is None:
        files = [checkpoint / ckpt.WEIGHTS]
    else:
        files = [checkpoint / f"member_{i}" / ckpt.WEIGHTS for i in range(spec.ensemble.members)]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise RunError(f"no weights at {', '.join(missing)}", exit_code=2)
    return files


#: How many mismatched tensors a "does not fit" message names before it says how many more there are.
SHOWN_MISMATCHES = 3


def state_dict_mismatches(expected: dict[str, Tensor], found: dict[str, Tensor]) -> list[str]:
    """Every difference between the model's tensors and the file's, in the model's order, as short phrases.

    torch's own message starts with a line that names no tensor ("Error(s) in
    loading state_dict for SpecModel:"), which is all a one-line error keeps.
    """
    problems = []
    for key, tensor in expected.items():
        if key not in found:
            problems.append(f"{key} missing from the file")
        elif tuple(found[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} is {list(found[key].shape)} in the file, {list(tensor.shape)} in the spec's model")
    problems += [f"{key} in the file is not in the spec's model" for key in found if key not in expected]
    return problems


def _load_model(spec: Spec, path: Path, device: torch.device) -> nn.Module:
    model = build(spec, device, spec.train.kernels)
    try:
        weights = ckpt.load_weights(path, device)
    except ckpt.CheckpointError as exc:
        raise RunError(f"cannot evaluate: {exc}", exit_code=2) from None
    problems = state_dict_mismatches(model.state_dict(), weights)
    if problems:
        shown = "; ".join(problems[:SHOWN_MISMATCHES])
        more = f"; and {len(problems) - SHOWN_MISMATCHES} more" if len(problems) > SHOWN_MISMATCHES else ""
        raise RunError(f"{path} does not fit this spec's model: {shown}{more}", exit_code=2)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"{path} does not fit this spec's model: {first}", exit_code=2) from None
    return model


def result_table(result: dict[str, Any]) -> str:
    """The evaluation's loss and accuracy per split, as ``nnspec eval`` prints them."""
    from tabulate import tabulate

    rows = [[s, f"{result.get(f'{s}_loss') or float('nan'):.4f}", f"{result[f'{s}_accuracy']:.4f}",
             result[f"{s}_samples"]] for s in ("val", "test") if f"{s}_accuracy" in result]  # fmt: skip
    return tabulate(rows, headers=["split", "loss", "accuracy", "samples"], tablefmt="simple")


def evaluate(spec: Spec | str | Path | None, *, checkpoint: str | Path, overrides: Sequence[str] = (),
             quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluate saved weights (a run directory or a .safetensors file) on the spec's test (and val) data.

    ``spec=None`` uses the run's own ``spec.yaml`` (beside the weights): a run
    trained with overrides is evaluated as it was trained.
    """
    if spec is None:
        from nnspec.train.trainer import run_spec_file

        spec = run_spec_file(checkpoint, "--checkpoint")
    resolved, base_dir = resolve_spec(spec, overrides)
    resolved = with_absolute_paths(resolved, base_dir)
    if resolved.data is None or resolved.loss is None:
        raise SpecError([problem(resolved, (s,), f"evaluation needs a '{s}' section")
                         for s in ("data", "loss") if getattr(resolved, s) is None])  # fmt: skip
    device = torch.device(resolve_device_type(resolved))
    files = _weight_files(resolved, Path(checkpoint))
    data = load_data(resolved, device)
    models = [_load_model(resolved, path, device) for path in files]
    loss_fn = build_loss(resolved, device, resolved.train.kernels)
    bf16 = resolved.train.precision == "bf16"
    result: dict[str, Any] = {"name": resolved.name, "checkpoint": str(checkpoint)}
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if len(y):
            loss, accuracy = evaluate_models(models, loss_fn, x, y, spec=resolved, bf16=bf16)
            result.update({f"{split}_loss": loss, f"{split}_accuracy": accuracy, f"{split}_samples": len(y)})
    result.update(report.environment(device, 1))
    if not quiet:
        print(result_table(result))
    return result
