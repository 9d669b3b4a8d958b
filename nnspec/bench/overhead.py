"""Benchmark: the runner's training steps/s against a hand-written PyTorch loop on the same work.

Run ``python -m nnspec.bench.overhead`` (``--help`` for options). Both loops
train the same compiled model, from the same initial weights, with the same
optimizer, on the same in-memory batches in the same order (the runner's
permutation generator); the hand loop does nothing else — no metrics, no
checks, no checkpoints — so the difference is what the runner's bookkeeping
costs. A third loop, "tracked", is the hand loop as tutorials write it when
they report what the runner reports: ``loss.item()`` and the argmax accuracy
of every step.

Every run is a fresh process, as real training is. Why: on the CPU, glibc's
heap keeps the history of a process, and where a step's large gradient
buffers land (hot or cold memory) depends on it; two loops timed one after
the other in one process differ by up to ±10% from that alone, depending on
what ran before them. Each repeat runs the runner and then the hand loops back to back, and
the overhead is the median over repeats of the ratio of their median step
times — a paired design, so that changes in the machine's load between
repeats cancel; the interquartile range shows how steady the machine was.

The runner's time is its per-epoch ``seconds`` and ``cpu_seconds`` from
``metrics.jsonl``: the epoch's order, its steps and its train metrics, without
the epoch-end validation and checkpoint (per-epoch costs, not per-step ones).
The first epoch of each run is a warm-up and is not counted. CPU time (the
process's own) is reported beside wall time because on a shared machine it is
much less disturbed by other jobs.

Not a test: timings depend on the machine. The numbers in docs/training.md
come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import Tensor

from nnspec.compiler import build
from nnspec.data.datasets import load_dataset, prepare
from nnspec.train.init import initialize
from nnspec.train.optim import build_optimizer
from nnspec.spec import loads_spec
from nnspec.spec.model import Spec

@dataclass(frozen=True)
class Case:
    """A spec to train, and the loss a hand-written loop would compute for it in plain torch."""

    name: str
    spec: str  # with EPOCHS where the epoch count goes
    hand_loss: Callable[[Tensor, Tensor], Tensor]


def one_hot_mse(outputs: Tensor, labels: Tensor) -> Tensor:
    """The spec's ``mse`` on class labels, as a hand-written loop computes it."""
    return F.mse_loss(outputs, F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype))


def one_hot_bce(outputs: Tensor, labels: Tensor) -> Tensor:
    """The spec's ``bce`` on class labels, as a hand-written loop computes it."""
    return F.binary_cross_entropy(outputs, F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype))


CASES: list[Case] = [
    # The per-step cost of a tiny model is almost all Python and dispatch: the worst case for overhead.
    Case("tiny-mlp 64-32-10, batch 32", """\
nnspec: 1
name: overhead-tiny
input: [1, 8, 8]
model: [flatten, {linear: 32}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: 0.05}
data: {dataset: synthetic, synthetic: {samples: 16384, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 32}
""", F.cross_entropy),
    # The README's MNIST MLP shape: the common case.
    Case("mnist-mlp 784-256-10, batch 64", """\
nnspec: 1
name: overhead-mlp
input: [1, 28, 28]
model: [flatten, {linear: 256}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: 0.05}
data: {dataset: synthetic, synthetic: {samples: 16384, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 64}
""", F.cross_entropy),
    # The ablation's baseline (specs/ablation/baseline.yaml): one sample per step, MSE on one-hot targets.
    Case("ablation 784-200-10, batch 1", """\
nnspec: 1
name: overhead-ablation
input: [1, 28, 28]
model: [flatten, {linear: 200}, sigmoid, {linear: 10}, sigmoid]
loss: mse
optimizer: {sgd: 0.01}
data: {dataset: synthetic, synthetic: {samples: 4096, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 1, shuffle: false}
""", one_hot_mse),
]


@dataclass
class Timing:
    """Per-epoch step rates of one loop, by wall clock and by this process's CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, steps: int, wall_s: float, cpu_s: float) -> None:
        self.wall.append(steps / wall_s)
        self.cpu.append(steps / cpu_s)


def runner_timing(spec: Spec, timing: Timing, overrides: Sequence[str] = ()) -> dict:
    """Train with the runner; record every epoch after the first (from metrics.jsonl); return the summary."""
    from nnspec.train import train

    with tempfile.TemporaryDirectory() as directory:
        summary = train(spec, overrides=overrides, out=Path(directory) / "run", quiet=True)
        lines = [json.loads(line) for line in (Path(directory) / "run" / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:
        timing.add(lines[0]["step"], line["seconds"], line["cpu_seconds"])
    return summary


def hand_timing(spec: Spec, loss_fn: Callable[[Tensor, Tensor], Tensor], timing: Timing, tracked: bool = False) -> None:
    """The textbook loop on the same model, optimizer, data and batch order; records every epoch after the first.

    ``tracked``: also read each step's loss and count its correct predictions
    on the host, the usual way a hand-written loop reports what the runner reports.
    """
    data = load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": list(spec.input)})
    splits = prepare(data, scale=spec.data.scale)
    x, y = splits.x_train, splits.y_train
    torch.manual_seed(spec.train.seed)
    model = build(spec)
    initialize(spec, model, Path.cwd())
    optimizer = build_optimizer(spec, model)
    generator = torch.Generator().manual_seed(spec.train.seed)
    batch, n = spec.train.batch_size, len(y)
    for epoch in range(spec.train.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=generator) if spec.train.shuffle else torch.arange(n)
        loss_sum = correct = 0.0
        for first in range(0, n, batch):
            rows = order[first:first + batch]
            labels = y[rows]
            outputs = model(x[rows])
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if tracked:
                loss_sum += loss.item() * len(rows)
                correct += (outputs.argmax(-1) == labels).sum().item()
        if epoch > 0:
            timing.add(-(-n // batch), time.perf_counter() - wall, time.process_time() - cpu)


#: The loops a worker process can time.
LOOPS = ("runner", "hand", "tracked")


def worker(case: Case, loop: str, epochs: int) -> Timing:
    """Time one loop on one case in this process (a fresh one: see the module docstring)."""
    spec = loads_spec(case.spec.replace("EPOCHS", str(epochs)))
    timing = Timing()
    if loop == "runner":
        runner_timing(spec, timing)
    else:
        hand_timing(spec, case.hand_loss, timing, tracked=loop == "tracked")
    return timing


def in_fresh_process(module: str, case_name: str, loop: str, epochs: int, threads: int) -> dict:
    """``python -m module --worker loop …`` in a new Python process; its result comes back as a JSON line."""
    command = [sys.executable, "-m", module, "--worker", loop, "--case", case_name,
               "--epochs", str(epochs), "--threads", str(threads)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{loop} worker for {case_name!r} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_process(case: Case, loop: str, epochs: int, threads: int) -> Timing:
    """``worker`` in a new Python process (see the module docstring for why)."""
    return Timing(**in_fresh_process("nnspec.bench.overhead", case.name, loop, epochs, threads))


@dataclass
class Pairs:
    """Paired measurements: each repeat times the runner and then the hand loops back to back."""

    timings: dict[str, Timing] = field(default_factory=lambda: {loop: Timing() for loop in LOOPS})
    ratios: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": [], "tracked": []})

    def overhead(self, key: str) -> str:
        """Median over repeats of (runner step time / hand step time - 1), with the middle half's range."""
        ratios = sorted(self.ratios[key])
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        return f"{100 * (statistics.median(ratios) - 1):+.1f}% ({100 * (q1 - 1):+.0f}..{100 * (q3 - 1):+.0f})"


def measure(case: Case, epochs: int, repeats: int, threads: int) -> Pairs:
    """Alternate runner and hand loops; each repeat's ratio compares runs taken under the same load."""
    pairs = Pairs()
    for _ in range(repeats):
        runs = {loop: fresh_process(case, loop, epochs, threads) for loop in LOOPS}
        median = {loop: (statistics.median(t.wall), statistics.median(t.cpu)) for loop, t in runs.items()}
        pairs.ratios["wall"].append(median["hand"][0] / median["runner"][0])
        pairs.ratios["cpu"].append(median["hand"][1] / median["runner"][1])
        pairs.ratios["tracked"].append(median["tracked"][0] / median["runner"][0])
        for loop, timing in runs.items():
            pairs.timings[loop].wall += timing.wall
            pairs.timings[loop].cpu += timing.cpu
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=8, help="runner/hand pairs per case")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadiest)")
    parser.add_argument("--case", default="", help="only the cases whose name contains this")
    parser.add_argument("--worker", choices=LOOPS, help=argparse.SUPPRESS)  # one timed loop, in a fresh process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [case for case in CASES if args.case in case.name]
    if not cases:
        parser.error(f"no case matches {args.case!r}; the cases are: {', '.join(case.name for case in CASES)}")
    if args.worker:
        timing = worker(cases[0], args.worker, args.epochs)
        print(json.dumps({"wall": timing.wall, "cpu": timing.cpu}))
        return
    rows = []
    for case in cases:
        pairs = measure(case, args.epochs, args.repeats, args.threads)
        best = {loop: max(timing.wall) for loop, timing in pairs.timings.items()}
        rows.append([
            case.name, f"{best['hand']:,.0f}", f"{best['tracked']:,.0f}", f"{best['runner']:,.0f}",
            pairs.overhead("wall"), pairs.overhead("cpu"), pairs.overhead("tracked"),
        ])  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s) ({os.cpu_count()} cores, "
          f"load average {load}); {args.repeats} pairs x {args.epochs - 1} timed epochs, one process per run")  # fmt: skip
    print(tabulate(rows, tablefmt="github", headers=[
        "case", "best steps/s: hand", "tracked hand", "runner",
        "overhead vs hand, wall (IQR)", "vs hand, CPU time (IQR)", "vs tracked hand, wall (IQR)",
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
