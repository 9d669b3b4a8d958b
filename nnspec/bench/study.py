"""Reproduction studies: train several specs over several seeds and report measured vs published.

    python -m nnspec.bench.study ablation --seeds 3 --jobs 2
    python -m nnspec.bench.study best --seeds 1 --jobs 2

Each (spec, seed) is an ordinary ``nnspec train`` run in its own process — the
same code path a user runs — with ``--set train.seed=S``. Runs go ``--jobs`` at
a time with one intra-op thread each: the textbook ablation takes one sample
per step, where a second thread only adds synchronization (on a 2-core machine
one thread per run is ~16x faster than two threads fighting over the cores).
The report (Markdown + JSON) is rebuilt from the runs' ``summary.json`` files,
so an interrupted study can be resumed and re-reported without re-training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[2]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One row of a study: a spec and the figure it is compared with."""

    variant: str
    spec: str  # relative to the repository root
    change: str
    published: float | None  # accuracy in [0, 1]; a target for the `best` study
    published_text: str


ABLATION_SOURCE = (
    "The setup (784-200-10, 3 epochs, batch size 1, no shuffling, inputs / 255, one-hot targets, "
    "PyTorch default init) and the published accuracies are those given in nnspec's issue for this "
    "study. They match the MNIST-classifier refinements chapter of Tariq Rashid, *Make Your First "
    "GAN With PyTorch* (2020) as we remember it; we could not check the book's text from here, so "
    "treat the attribution as unverified and the figures as quoted."
)

STUDIES: dict[str, tuple[str, list[Entry]]] = {
    "ablation": (
        "ablation-mnist",
        [
            Entry("baseline", "specs/ablation/baseline.yaml", "sigmoid hidden + sigmoid output, MSE loss, SGD lr 0.01", 0.8666, "87% (86.66%)"),
            Entry("bce", "specs/ablation/bce.yaml", "loss BCE", 0.91, "91%"),
            Entry("leaky_relu", "specs/ablation/leaky_relu.yaml", "LeakyReLU(0.02) in place of both sigmoids, MSE, SGD", 0.97, "97%"),
            Entry("adam", "specs/ablation/adam.yaml", "optimizer Adam (defaults), MSE + sigmoid", 0.97, "97%"),
            Entry("layer_norm", "specs/ablation/layer_norm.yaml", "LayerNorm(200) after the hidden sigmoid; MSE + SGD", 0.91, "91%"),
            Entry("combined", "specs/ablation/combined.yaml", "Linear, LeakyReLU(0.02), LayerNorm(200), Linear, Sigmoid; BCE; Adam", 0.9724, "97% (97.24%)"),
        ],
    ),
    "best": (
        "best-specs",
        [
            Entry("mnist_mlp_best", "specs/mnist_mlp_best.yaml", "MLP, MNIST", 0.985, "target >= 98.5%"),
            Entry("mnist_cnn", "specs/mnist_cnn.yaml", "CNN, MNIST", 0.993, "target >= 99.3%"),
            Entry("fashion_mlp", "specs/fashion_mlp.yaml", "MLP, Fashion-MNIST (benchmark's best MLP: 87.1%)", 0.89, "target >= 89%"),
            Entry("fashion_cnn", "specs/fashion_cnn.yaml", "CNN, Fashion-MNIST", 0.925, "target >= 92.5%"),
        ],
    ),
}


def run_dir(runs: Path, entry: Entry, seed: int) -> Path:
    return runs / entry.variant / f"seed{seed}"


def train_one(entry: Entry, seed: int, runs: Path, threads: int, extra: list[str]) -> Path:
    """Train one (spec, seed) unless a finished summary is already there."""
    out = run_dir(runs, entry, seed)
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "finished":
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "nnspec", "train", str(ROOT / entry.spec), "--set", f"train.seed={seed}",
               "--out", str(out), "--quiet", *[arg for pair in extra for arg in ("--set", pair)]]  # fmt: skip
    resume = ["--resume", str(out)] if (out / "state.pt").is_file() else []
    with open(out.parent / f"seed{seed}.log", "w") as log:
        subprocess.run(command + resume, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def _machine(threads: int, jobs: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "threads_per_run": threads, "parallel_runs": jobs,
        "python": platform.python_version(), "torch": torch.__version__, "git_commit": commit or None,
        "platform": platform.platform(),
    }  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(entries: list[Entry], seeds: list[int], runs: Path) -> list[dict]:
    rows = []
    for entry in entries:
        summaries = []
        for seed in seeds:
            path = run_dir(runs, entry, seed) / "summary.json"
            if path.is_file():
                summaries.append(json.loads(path.read_text()))
        finished = [s for s in summaries if s.get("status") == "finished"]
        row = {"variant": entry.variant, "spec": entry.spec, "change": entry.change, "published": entry.published,
               "published_text": entry.published_text, "seeds": [s["seed"] for s in finished], "runs": len(finished)}  # fmt: skip
        if finished:
            accuracy = [s["test_accuracy"] for s in finished]
            row.update(
                test_accuracy=accuracy,
                test_accuracy_mean=_mean_std(accuracy)[0],
                test_accuracy_std=_mean_std(accuracy)[1],
                wall_time_s_mean=statistics.fmean(s["wall_time_s"] for s in finished),
                samples_per_s_mean=statistics.fmean(s["samples_per_s"] for s in finished),
                epochs=finished[0].get("epochs_run"),
                # summaries written before train.compile existed have no "compile": they ran eagerly
                compiled=all(s.get("compile", {}).get("enabled", False) for s in finished),
                compile_s_mean=statistics.fmean(s.get("compile", {}).get("seconds", 0.0) for s in finished),
                delta_points=None if entry.published is None else 100 * (_mean_std(accuracy)[0] - entry.published),
            )
        rows.append(row)
    return rows


def _accuracy_cell(row: dict) -> str:
    mean = f"{100 * row['test_accuracy_mean']:.2f}"
    return f"{mean} ± {100 * row['test_accuracy_std']:.2f} (n={row['runs']})" if row["runs"] > 1 else f"{mean} (n=1)"


def markdown(title: str, rows: list[dict], machine: dict, command: str, notes: str, comparison: tuple[str, str]) -> str:
    """``comparison`` names the second and third columns: what each row is, and what it is measured against."""
    table = []
    for r in rows:
        if not r["runs"]:
            table.append([r["variant"], r["change"], r["published_text"], "not run", "", "", ""])
            continue
        delta = "" if r["delta_points"] is None else f"{r['delta_points']:+.2f}"
        table.append([
            f"[{r['variant']}]({'../' + r['spec']})", r["change"], r["published_text"],
            _accuracy_cell(r),
            delta, f"{r['wall_time_s_mean']:.0f} s", f"{r['samples_per_s_mean']:,.0f}",
        ])  # fmt: skip
    ran = [r for r in rows if r["runs"]]
    modes = {r["compiled"] for r in ran}
    if modes == {True}:
        step = ("Training step: **compiled** (`train.compile: true`, Inductor); compile time per run "
                + ", ".join(f"{r['variant']} {r['compile_s_mean']:.0f} s" for r in ran) + " (included in the wall times).")
    elif modes == {False}:
        step = "Training step: eager (`train.compile: false`)."
    else:
        step = "Training step: mixed — " + ", ".join(f"{r['variant']} {'compiled' if r['compiled'] else 'eager'}" for r in ran) + "."
    headers = ["variant", *comparison, "measured test accuracy % (mean ± std)", "Δ points", "wall time / run", "samples/s"]
    lines = [
        f"# {title}", "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"up to {machine['parallel_runs']} run(s) of this study at a time, {machine['threads_per_run']} intra-op thread each; "
        f"Python {machine['python']}, torch {machine['torch']}, nnspec commit {machine['git_commit']}.", "",
        f"Reproduce: `{command}`", "", step, "",
        tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), "",
        notes,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnspec.bench.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    parser.add_argument("--runs", default="runs/studies", help="where the run directories go")
    parser.add_argument("--out", default="reports", help="where the report goes")
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from existing runs")
    parser.add_argument("--notes", help="a Markdown file whose text is appended to the report")
    parser.add_argument("--set", action="append", default=[], help="extra override for every run (e.g. train.epochs=1)")
    args = parser.parse_args(argv)

    name, entries = STUDIES[args.study]
    chosen = [e for e in entries if not args.only or e.variant in args.only]
    seeds = list(range(args.seeds))
    runs = Path(args.runs) / args.study
    started = time.perf_counter()
    if not args.report_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            jobs = [pool.submit(train_one, e, s, runs, args.threads, args.set) for e in chosen for s in seeds]
            for job in jobs:
                print("done:", job.result(), flush=True)
    rows = collect(entries, seeds, runs)
    machine = _machine(args.threads, args.jobs)
    command = f"python -m nnspec.bench.study {args.study} --seeds {args.seeds} --jobs {args.jobs} --threads {args.threads}"
    command += "".join(f" --set {override}" for override in args.set)
    notes = Path(args.notes).read_text() if args.notes else ""
    if args.study == "ablation":
        notes = f"**Source of the published figures.** {ABLATION_SOURCE}\n\n" + notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study == "ablation":
        title, comparison = "MNIST ablation: published vs measured", ("change from baseline", "published")
    else:
        title, comparison = "Beyond the textbook: our best specs", ("model, data", "target")
    (out / f"{name}.md").write_text(markdown(title, rows, machine, command, notes, comparison))
    report = {"format_version": FORMAT_VERSION, "study": args.study, "machine": machine, "command": command,
              "date": datetime.now(timezone.utc).isoformat(), "rows": rows}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / (name + '.md')} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
