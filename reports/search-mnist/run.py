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
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    with open(out / "trials.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["state"] == "complete"]
    summary = json.loads((out / "summary.json").read_text())
    print(f"{name}: {len(rows)} trials, best {summary['best']['value']:.4f}, {wall:.0f} s", flush=True)
    return {"name": name, "wall_s": wall, "rows": rows, "summary": summary, "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/search-mnist")
    args = parser.parse_args()
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
