"""Benchmark: the runner's training steps/s against a hand-written PyTorch loop on the same work.

Run ``python -m nnspec.runner.overhead`` (``--help`` for options). Both loops
train the same compiled model, from the same initial weights, on the same
in-memory batches in the same order (the runner's permutation generator); the
hand loop does nothing else — no metrics, no checks, no checkpoints — so the
difference is what the runner's bookkeeping costs. The hand loop runs twice:
with the optimizer the runner builds (the loop's own overhead) and with a
plain one-group ``SGD(model.parameters())`` (what a user would write).

The runner's time is its per-epoch ``seconds`` and ``cpu_seconds`` from
``metrics.jsonl``: the training steps only, without the epoch-end validation
and checkpoint (per-epoch costs, not per-step ones). The first epoch of each
run is a warm-up and is not counted. Each repeat times the runner and then the
hand loops back to back, and the overhead is the median over repeats of the
ratio of their median step times — a paired design, so that changes in the
machine's load between repeats cancel; the interquartile range shows how
steady the machine was. CPU time (this process's) is reported beside wall time
because on a shared machine it is much less disturbed by other jobs.

Not a test: timings depend on the machine. The numbers in docs/training.md
come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

from nnspec.compiler import build
from nnspec.runner.datasets import load_dataset, prepare
from nnspec.runner.init import initialize
from nnspec.runner.optim import build_optimizer
from nnspec.spec import loads_spec
from nnspec.spec.model import Spec

CASES: dict[str, str] = {
    # The per-step cost of a tiny model is almost all Python and dispatch: the worst case for overhead.
    "tiny-mlp 64-32-10, batch 32": """\
nnspec: 1
name: overhead-tiny
input: [1, 8, 8]
model: [flatten, {linear: 32}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: 0.05}
data: {dataset: synthetic, synthetic: {samples: 16384, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 32}
""",
    # The README's MNIST MLP shape: the common case.
    "mnist-mlp 784-256-10, batch 64": """\
nnspec: 1
name: overhead-mlp
input: [1, 28, 28]
model: [flatten, {linear: 256}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: 0.05}
data: {dataset: synthetic, synthetic: {samples: 16384, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 64}
""",
}


@dataclass
class Timing:
    """Per-epoch step rates of one loop, by wall clock and by this process's CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, steps: int, wall_s: float, cpu_s: float) -> None:
        self.wall.append(steps / wall_s)
        self.cpu.append(steps / cpu_s)


def runner_timing(spec: Spec, timing: Timing) -> None:
    """Train with the runner; record every epoch after the first (from metrics.jsonl)."""
    from nnspec.runner import train

    with tempfile.TemporaryDirectory() as directory:
        train(spec, out=Path(directory) / "run", quiet=True)
        lines = [json.loads(line) for line in (Path(directory) / "run" / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:
        timing.add(lines[0]["step"], line["seconds"], line["cpu_seconds"])


def hand_timing(spec: Spec, timing: Timing, same_optimizer: bool) -> None:
    """The textbook loop on the same model, data and batch order; records every epoch after the first.

    ``same_optimizer``: use the optimizer the runner builds (two parameter
    groups, decayed and not) rather than ``SGD(model.parameters())``; the
    difference between the two is the optimizer's cost, not the loop's.
    """
    data = load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": list(spec.input)})
    splits = prepare(data, scale=spec.data.scale)
    x, y = splits.x_train, splits.y_train
    torch.manual_seed(spec.train.seed)
    model = build(spec)
    initialize(spec, model, Path.cwd())
    if same_optimizer:
        optimizer = build_optimizer(spec, model)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr)
    generator = torch.Generator().manual_seed(spec.train.seed)
    batch, n = spec.train.batch_size, len(y)
    for epoch in range(spec.train.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, batch):
            rows = order[first:first + batch]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch > 0:
            timing.add(-(-n // batch), time.perf_counter() - wall, time.process_time() - cpu)


@dataclass
class Pairs:
    """Paired measurements: each repeat times the runner and then the hand loop back to back."""

    ratios: dict[str, list[float]] = field(default_factory=lambda: {"wall": [], "cpu": [], "plain": []})
    runner: Timing = field(default_factory=Timing)
    hand: Timing = field(default_factory=Timing)
    plain: Timing = field(default_factory=Timing)

    def overhead(self, key: str) -> str:
        """Median over repeats of (runner step time / hand step time - 1), with the middle half's range."""
        ratios = sorted(self.ratios[key])
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        return f"{100 * (statistics.median(ratios) - 1):+.1f}% ({100 * (q1 - 1):+.0f}..{100 * (q3 - 1):+.0f})"


def measure(text: str, epochs: int, repeats: int) -> Pairs:
    """Alternate runner and hand loops; each repeat's ratio compares runs taken under the same load."""
    spec = loads_spec(text.replace("EPOCHS", str(epochs)))
    pairs = Pairs()
    for _ in range(repeats):
        runner, hand, plain = Timing(), Timing(), Timing()
        runner_timing(spec, runner)
        hand_timing(spec, hand, same_optimizer=True)
        hand_timing(spec, plain, same_optimizer=False)
        pairs.ratios["wall"].append(statistics.median(hand.wall) / statistics.median(runner.wall))
        pairs.ratios["cpu"].append(statistics.median(hand.cpu) / statistics.median(runner.cpu))
        pairs.ratios["plain"].append(statistics.median(plain.wall) / statistics.median(runner.wall))
        for total, part in ((pairs.runner, runner), (pairs.hand, hand), (pairs.plain, plain)):
            total.wall += part.wall
            total.cpu += part.cpu
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=8, help="runner/hand pairs per case")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadiest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name, text in CASES.items():
        pairs = measure(text, args.epochs, args.repeats)
        rows.append([
            name, f"{max(pairs.plain.wall):,.0f}", f"{max(pairs.hand.wall):,.0f}", f"{max(pairs.runner.wall):,.0f}",
            pairs.overhead("wall"), pairs.overhead("cpu"), pairs.overhead("plain"),
        ])  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s) ({os.cpu_count()} cores, "
          f"load average {load}); {args.repeats} pairs x {args.epochs - 1} timed epochs")  # fmt: skip
    print(tabulate(rows, tablefmt="github", headers=[
        "case", "best steps/s: hand (SGD)", "hand (same opt.)", "runner",
        "overhead, wall (IQR)", "overhead, CPU time (IQR)", "overhead vs 1-group SGD, wall (IQR)",
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
