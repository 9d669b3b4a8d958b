"""What a run leaves behind for people and tools: spec.yaml, metrics.jsonl, summary.json, curves.png, a table.

Every file is written atomically (see :mod:`nnspec.train.checkpoint`), so a
killed run never leaves a truncated JSON file that a dashboard would choke on.
``metrics.jsonl`` is rewritten whole from the run's history rather than
appended to: after a resume it then holds exactly one line per finished epoch,
never a duplicate of the epoch that was in flight when the run died.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import yaml
from tabulate import tabulate

from nnspec.version import __version__
from nnspec.train.checkpoint import atomic_write, atomic_write_text
from nnspec.train.progress import format_rate
from nnspec.spec.model import Spec

__all__ = [
    "METRICS",
    "SUMMARY",
    "SPEC",
    "CURVES",
    "spec_text",
    "write_spec",
    "write_metrics",
    "write_summary",
    "environment",
    "final_table",
    "seeds_table",
    "aggregate_seeds",
    "curves_figure",
    "plot_curves",
]

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SPEC = "spec.yaml"
CURVES = "curves.png"


def spec_text(spec: Spec) -> str:
    """The resolved spec in canonical form: what actually ran, loadable with ``nnspec.load_spec``."""
    data = spec.model_dump(mode="json", exclude_none=True)
    header = f"# resolved spec of this run (nnspec {__version__}); canonical form, every default spelled out\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def write_spec(run_dir: Path, spec: Spec) -> None:
    atomic_write_text(run_dir / SPEC, spec_text(spec))


def _json_number(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(record: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _json_number(value) for key, value in record.items()}


def write_metrics(run_dir: Path, history: Iterable[Mapping[str, Any]]) -> None:
    """One strict-JSON line per finished epoch (per member for ensembles)."""
    text = "".join(json.dumps(_clean(record)) + "\n" for record in history)
    atomic_write_text(run_dir / METRICS, text)


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: clean(inner) for key, inner in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(inner) for inner in value]
        return _json_number(value)

    atomic_write_text(run_dir / SUMMARY, json.dumps(clean(summary), indent=2) + "\n")


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """What a result depends on besides the spec: versions, device, threads, processes."""
    name = str(device)
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "device": name,
        "world_size": world_size,
        "threads": torch.get_num_threads(),
        "versions": {"nnspec": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


# -- tables --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def final_table(summary: Mapping[str, Any]) -> str:
    """Loss and accuracy per split, then how long it took."""
    rows = [
        [split, _fmt(summary.get(f"{split}_loss")), _fmt(summary.get(f"{split}_accuracy"))]
        for split in ("train", "val", "test")
        if summary.get(f"{split}_loss") is not None or summary.get(f"{split}_accuracy") is not None
    ]
    metrics = tabulate(rows, headers=["split", "loss", "accuracy"], tablefmt="simple")
    epochs = f"{summary.get('epochs_run')}/{summary.get('epochs')}"
    if summary.get("stopped_early"):
        epochs += " (stopped early)"
    facts = [
        ["epochs", epochs],
        ["wall time", f"{summary.get('wall_time_s', 0.0):.1f} s"],
        ["throughput", format_rate(summary.get("samples_per_s") or 0.0)],
        ["device", summary.get("device", "-")],
    ]
    if summary.get("members"):
        facts.insert(1, ["members", str(len(summary["members"]))])
    return metrics + "\n\n" + tabulate(facts, tablefmt="plain")


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and *sample* standard deviation (n-1): seeds are a sample of possible runs."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else None
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else None
    return {"mean": mean, "std": std, "values": list(values)}


def aggregate_seeds(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every loss/accuracy the runs report."""
    keys = [f"{split}_{what}" for split in ("train", "val", "test") for what in ("loss", "accuracy")]
    result: dict[str, Any] = {"seeds": [s.get("seed") for s in summaries]}
    for key in keys:
        values = [s.get(key) for s in summaries]
        if any(v is not None for v in values):
            result[key] = _mean_std(values)
    return result


def seeds_table(aggregate: Mapping[str, Any]) -> str:
    rows = []
    for split in ("train", "val", "test"):
        loss, accuracy = aggregate.get(f"{split}_loss"), aggregate.get(f"{split}_accuracy")
        if loss is None and accuracy is None:
            continue
        rows.append([split, _pm(loss), _pm(accuracy)])
    n = len(aggregate.get("seeds", []))
    return tabulate(rows, headers=["split", f"loss (mean ± std, {n} seeds)", "accuracy"], tablefmt="simple")


def _pm(stat: Mapping[str, Any] | None) -> str:
    if stat is None or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


# -- curves ------------------------------------------------------------------------------------


def _title(history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None) -> str:
    """``mnist-mlp · 5 epochs · test accuracy 97.63%, loss 0.0760``: the run and its final figures."""
    summary = summary or {}
    epochs = max((int(r["epoch"]) for r in history), default=0)
    parts = [str(summary.get("name") or "run"), f"{epochs} epoch{'s' if epochs != 1 else ''}"]
    figures = []
    for split in ("test", "val"):
        accuracy, loss = summary.get(f"{split}_accuracy"), summary.get(f"{split}_loss")
        if accuracy is not None:
            figures.append(f"{split} accuracy {100 * accuracy:.2f}%" + (f", loss {loss:.4f}" if loss is not None else ""))
            break
    return " · ".join(parts + figures)


def curves_figure(history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> Any:
    """The figure of curves.png: loss and accuracy, train within epochs (bins of steps) and per epoch, val per epoch.

    The x axis counts epochs (integer ticks) from 0, so a one-epoch run shows
    its loss falling within the epoch instead of two dots on an axis from
    0.96 to 1.04. The title names the run and its final figures.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.2), dpi=100)
    axes = {"loss": figure.add_subplot(1, 2, 1), "accuracy": figure.add_subplot(1, 2, 2)}
    members = sorted({record.get("member") for record in history}, key=lambda m: -1 if m is None else m)
    last_epoch = max((int(r["epoch"]) for r in history), default=1)
    for position, member in enumerate(members):
        records = [r for r in history if r.get("member") == member]
        suffix = "" if member is None else f" (member {member})"
        curve = [point for r in records for point in (r.get("train_curve") or [])]
        colors = {"train": f"C{2 * position % 10}", "val": f"C{(2 * position + 1) % 10}"}
        for column, (what, ax) in enumerate(axes.items(), start=1):
            within = [(p[0], p[column]) for p in curve if p[column] is not None and math.isfinite(p[column])]
            if within:
                ax.plot(*zip(*within), "-", color=colors["train"], linewidth=1, alpha=0.45,
                        label=f"train, within epochs{suffix}")  # fmt: skip
            for split, style in (("train", "-"), ("val", "--")):
                points = [(r["epoch"], r.get(f"{split}_{what}")) for r in records]
                points = [(e, v) for e, v in points if v is not None and math.isfinite(v)]
                if points:
                    label = f"{split}{', epoch mean' if split == 'train' else ''}{suffix}"
                    marker = "o" if len(points) <= 20 else None  # 50 dots in a row hide the line
                    ax.plot(*zip(*points), style, color=colors[split], marker=marker, markersize=4, label=label)
    for what, ax in axes.items():
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_xlim(0, last_epoch + 0.05 * max(last_epoch, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_title(f"{what}: train within and per epoch, val per epoch", fontsize="small")
        if ax.lines:
            ax.legend(fontsize="small")
    figure.suptitle(_title(history, summary))
    figure.tight_layout()
    return figure


def plot_curves(run_dir: Path, history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> None:
    """Write curves.png (see :func:`curves_figure`).

    Uses a bare ``Figure`` with the Agg canvas instead of pyplot, so it neither
    needs a display nor changes the matplotlib backend of whoever imported us.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = curves_figure(history, summary)
    FigureCanvasAgg(figure)

    def write(handle: Any) -> None:
        figure.savefig(handle, format="png")

    atomic_write(run_dir / CURVES, write)
