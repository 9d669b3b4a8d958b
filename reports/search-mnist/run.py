"""The measurements behind reports/search-mnist.md: four claims of the search method, on MNIST.

Every arm is an ordinary `nnspec search` of specs/search/mnist_mlp.yaml (one epoch on 10,000
training samples, 2,000 held out for validation) with `--set` overrides for the space and the
sampler; three repetitions change the sampler seed and the training seed. Writes
reports/search-mnist/results.json; the prose in reports/search-mnist.md is written from it.

    NNSPEC_DATA=../shared/data python reports/search-mnist/run.py [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE.parents[1] / "specs" / "search" / "mnist_mlp.yaml"
REPS = 3

LR_LOG = "optimizer.lr: {log_uniform: [1.0e-4, 1.0]}"
GRID_SPACE = "{optimizer.lr: {log_uniform: [1.0e-4, 1.0], points: 5}, model.hidden.out: {int: [50, 200], points: 5}}"
RANDOM_SPACE = "{optimizer.lr: {log_uniform: [1.0e-4, 1.0]}, model.hidden.out: {int: [50, 200]}}"
UNIFORM_SPACE = "{optimizer.lr: {uniform: [1.0e-4, 1.0]}}"
LOG_SPACE = "{" + LR_LOG + "}"
REFINE_SPACE = ("{optimizer.lr: {log_uniform: [1.0e-4, 1.0]}, optimizer.betas.0: {one_minus_log_uniform: [0.9, 0.999]},"
                " model.hidden.out: {int: [50, 200]}}")


def search(work: Path, name: str, trials: int, sets: list[str], jobs: int = 1) -> dict:
    out = work / name
    command = [sys.executable, "-m", "nnspec", "search", str(SPEC), "--out", str(out), "--trials", str(trials),
               "--jobs", str(jobs), "-q"]
    for item in sets:
        command += ["--set", item]
    load = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    with open(out / "trials.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["state"] == "complete"]
    summary = json.loads((out / "summary.json").read_text())
    print(f"{name}: {len(rows)} trials, best {summary['best']['value']:.4f}, {wall:.0f} s", flush=True)
    return {"name": name, "wall_s": wall, "rows": rows, "summary": summary, "load": load}


def _best(arm: dict) -> float:
    return max(float(row["value"]) for row in arm["rows"])


def _load(arm: dict) -> str:
    return "/".join(f"{x:.1f}" for x in arm["load"])


def tables(results: dict) -> str:
    """The four measurements as markdown tables (the report's numbers come from here)."""
    out = ["### 1. Grid 5×5 against random 25 (learning rate × hidden width)", "",
           "| rep | grid: distinct lr | grid: best val | random: distinct lr | random: best val |", "|---|---|---|---|---|"]
    for rep, arms in enumerate(results["grid_vs_random"]):
        grid, rand = arms["grid"], arms["random"]
        distinct = [len({row["optimizer.lr"] for row in arm["rows"]}) for arm in (grid, rand)]
        out.append(f"| {rep} | {distinct[0]} | {_best(grid):.4f} | {distinct[1]} | {_best(rand):.4f} |")
    out += ["", "### 2. Learning rate uniform against log-uniform on [1e-4, 1], 20 trials", "",
            "| rep | uniform: share < 0.1 | uniform: best val (at lr) | log: share < 0.1 | log: best val (at lr) |",
            "|---|---|---|---|---|"]
    for rep, arms in enumerate(results["uniform_vs_log"]):
        cells = []
        for arm in (arms["uniform"], arms["log"]):
            lrs = [float(row["optimizer.lr"]) for row in arm["rows"]]
            top = max(arm["rows"], key=lambda row: float(row["value"]))
            cells += [f"{sum(lr < 0.1 for lr in lrs)}/{len(lrs)}", f"{_best(arm):.4f} ({float(top['optimizer.lr']):.2g})"]
        out.append(f"| {rep} | " + " | ".join(cells) + " |")
    out += ["", "### 3. Coarse to fine: 2 rounds of 10 (top 0.25), against 20 random trials", "",
            "| rep | best after round 1 | best after round 2 | median round 1 | median round 2 | random 20: best after 10 | after 20 |",
            "|---|---|---|---|---|---|---|"]
    import statistics

    for rep, arms in enumerate(results["refine"]):
        rows = arms["refine"]["rows"]
        first = [float(r["value"]) for r in rows if r["round"] == "1"]
        second = [float(r["value"]) for r in rows if r["round"] == "2"]
        plain = [float(r["value"]) for r in sorted(arms["random"]["rows"], key=lambda r: int(r["number"]))]
        out.append(f"| {rep} | {max(first):.4f} | {max(first + second):.4f} | {statistics.median(first):.4f} | "
                   f"{statistics.median(second):.4f} | {max(plain[:10]):.4f} | {max(plain):.4f} |")
    out += ["", "### 4. One worker against two, 16 trials", "",
            "| workers | wall time (s) | mean trial time (s) | load average before (1/5/15 min) |", "|---|---|---|---|"]
    for arm in results["jobs"]:
        mean = statistics.mean(float(row["seconds"]) for row in arm["rows"])
        out.append(f"| {arm['name'].split('-')[1]} | {arm['wall_s']:.1f} | {mean:.2f} | {_load(arm)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/search-mnist")
    parser.add_argument("--tables", action="store_true", help="print the tables of results.json and stop")
    args = parser.parse_args()
    if args.tables:
        print(tables(json.loads((HERE / "results.json").read_text())))
        return
    work = Path(args.work)
    results: dict[str, list] = {"grid_vs_random": [], "uniform_vs_log": [], "refine": [], "jobs": []}
    for rep in range(REPS):
        seeds = [f"search.seed={rep}", f"train.seed={rep}", "search.refine=null"]
        results["grid_vs_random"].append({
            "grid": search(work, f"grid-{rep}", 25, seeds + ["search.sampler=grid", f"search.space={GRID_SPACE}"]),
            "random": search(work, f"random-{rep}", 25, seeds + [f"search.space={RANDOM_SPACE}"]),
        })
        results["uniform_vs_log"].append({
            "uniform": search(work, f"uniform-{rep}", 20, seeds + [f"search.space={UNIFORM_SPACE}"]),
            "log": search(work, f"log-{rep}", 20, seeds + [f"search.space={LOG_SPACE}"]),
        })
        results["refine"].append({
            "refine": search(work, f"refine-{rep}", 20, seeds[:2] + [f"search.space={REFINE_SPACE}",
                                                                      "search.refine={rounds: 2, top: 0.25}"]),
            "random": search(work, f"refine-random-{rep}", 20, seeds + [f"search.space={REFINE_SPACE}"]),
        })
    for jobs in (1, 2):
        results["jobs"].append(search(work, f"jobs-{jobs}", 16, ["search.refine=null"], jobs=jobs))
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
