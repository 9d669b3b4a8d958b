"""What a search leaves behind: trials.csv, report.md with two plots, best.yaml and summary.json.

Everything here is read back from the study (the storage), not from the
workers' memory, so any machine that shares the study writes the same tables;
only the test evaluation of the best trial needs that trial's weights on disk.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from nnspec.search.space import Dimension
from nnspec.search.study import DIRECTORY, ERROR, ROUND, SECONDS, SURPLUS, VALUES
from nnspec.spec.search import SearchSection

TRIALS_CSV, REPORT, HISTORY, PARAMETERS, BEST, SUMMARY = (
    "trials.csv", "report.md", "history.png", "parameters.png", "best.yaml", "summary.json",
)  # fmt: skip
#: How many of the best trials the report's table lists.
TOP = 10


def recorded(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials worth a row: everything but surplus trials, which never trained."""
    return [t for t in trials if not t.user_attrs.get(SURPLUS)]


def ranked(trials: Sequence[FrozenTrial], direction: str) -> list[FrozenTrial]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: t.value, reverse=direction == "maximize")  # type: ignore[arg-type,return-value]


def write_trials_csv(path: Path, trials: Sequence[FrozenTrial], dims: Sequence[Dimension]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "round", *[d.path for d in dims], "value", "state", "seconds", "error", "directory"])
        for t in recorded(trials):
            values = t.user_attrs.get(VALUES) or {}
            round_ = t.user_attrs.get(ROUND)
            seconds = t.user_attrs.get(SECONDS)
            writer.writerow([
                t.number, "" if round_ is None else round_ + 1, *[values.get(d.path, "") for d in dims],
                "" if t.value is None else repr(t.value), t.state.name.lower(),
                "" if seconds is None else f"{seconds:.2f}", t.user_attrs.get(ERROR, ""), t.user_attrs.get(DIRECTORY, ""),
            ])  # fmt: skip


def plot_history(path: Path, trials: Sequence[FrozenTrial], objective: str, direction: str) -> None:
    """The objective of every complete trial by trial number, with the running best as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None), key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(7, 4))
    if complete:
        numbers = [t.number for t in complete]
        values = [t.value for t in complete]
        ax.scatter(numbers, values, s=14, label="trial")
        pick = max if direction == "maximize" else min
        running = [pick(values[: i + 1]) for i in range(len(values))]
        ax.step(numbers, running, where="post", color="C3", label="best so far")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{objective} by trial")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parameters(path: Path, trials: Sequence[FrozenTrial], dims: Sequence[Dimension], objective: str) -> None:
    """One panel per dimension: objective against the sampled value (log axis for log dimensions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    columns = min(3, len(dims))
    rows = math.ceil(len(dims) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    for ax, dim in zip(axes.flat, dims):
        xs = [(t.user_attrs.get(VALUES) or {}).get(dim.path) for t in complete]
        ys = [t.value for t in complete]
        if dim.numeric:
            pairs = [(x, y) for x, y in zip(xs, ys) if isinstance(x, (int, float))]
            ax.scatter([dim.internal(x) if dim.log else x for x, _ in pairs], [y for _, y in pairs], s=14)
            if dim.log:
                ax.set_xscale("log")
            label = f"1 - {dim.path}" if dim.param != dim.path else dim.path
        else:
            choices = [json.dumps(v) for v in dim.spec.values]
            index = {c: i for i, c in enumerate(choices)}
            ax.scatter([index[json.dumps(x)] for x in xs if json.dumps(x) in index],
                       [y for x, y in zip(xs, ys) if json.dumps(x) in index], s=14)  # fmt: skip
            ax.set_xticks(range(len(choices)), choices)
            label = dim.path
        ax.set_xlabel(label + (" (log)" if dim.log else ""))
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _range_text(dim: Dimension) -> str:
    spec = dim.spec
    if not dim.numeric:
        return ", ".join(json.dumps(v) for v in spec.values)
    return f"[{spec.range[0]}, {spec.range[1]}]"


def report_markdown(*, name: str, study: optuna.Study, trials: Sequence[FrozenTrial], section: SearchSection,
                    dims: Sequence[Dimension], target: int, storage: str, test: dict[str, Any] | None,
                    counts: dict[str, int]) -> str:  # fmt: skip
    direction = section.direction
    best = ranked(trials, direction)
    lines = [
        f"# Search: {name}",
        "",
        f"Study `{study.study_name}` in {storage}: {counts['finished']} of {target} trials finished "
        f"({counts['complete']} complete, {counts['pruned']} pruned), {counts['failed']} failed. "
        f"Objective: **{section.objective}** ({direction}), sampler `{section.sampler}` (seed {section.seed}), "
        f"pruner `{section.pruner}`"
        + (f", {section.refine.rounds} rounds coarse to fine (top {section.refine.top:g}, margin {section.refine.margin:g})"
           if section.refine else "") + ".",
        "",
        "Trials were selected on the **validation split only**. The test set was evaluated once, after the "
        "search, for the best trial"
        + (f": test accuracy **{test['test_accuracy']:.4f}** (trial {test['trial']})." if test and "test_accuracy" in test
           else f": {test['note']}." if test else ": no trial completed."),
        "",
        "## Best trials",
        "",
    ]
    if best:
        header = ["trial", "round", *[d.path for d in dims], section.objective, "seconds"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for t in best[:TOP]:
            values = t.user_attrs.get(VALUES) or {}
            seconds = t.user_attrs.get(SECONDS)
            cells = [str(t.number), str((t.user_attrs.get(ROUND) or 0) + 1),
                     *[_cell(values.get(d.path)) for d in dims], f"{t.value:.4f}",
                     "" if seconds is None else f"{seconds:.1f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No trial completed.")
    lines += ["", "## What was sampled, on which scale", "", "| path | distribution | range | scale |", "|---|---|---|---|"]
    for dim in dims:
        lines.append(f"| `{dim.path}` | {dim.spec.type} | {_range_text(dim)} | {dim.scale} |")
    failed = [t for t in recorded(trials) if t.state == TrialState.FAIL]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- trial {t.number}: {t.user_attrs.get(ERROR, 'interrupted, or its worker was lost')}" for t in failed[:20]]
        if len(failed) > 20:
            lines.append(f"- … and {len(failed) - 20} more (trials.csv lists all)")
    lines += [
        "",
        "## Plots",
        "",
        f"![{section.objective} by trial, with the running best]({HISTORY})",
        "",
        f"![{section.objective} against each parameter]({PARAMETERS})",
        "",
        f"`{BEST}` is the spec with the best trial's values written in; `{TRIALS_CSV}` lists every trial.",
        "",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def versions() -> dict[str, str]:
    import torch

    from nnspec.version import __version__

    return {"nnspec": __version__, "optuna": optuna.__version__, "torch": torch.__version__,
            "python": platform.python_version()}  # fmt: skip


def write_yaml(path: Path, data: dict[str, Any], header: str) -> str:
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
    path.write_text(text)
    return text
