"""Benchmark: the compiled training step (``train.compile: true``) against the eager runner, a
hand-written eager loop, and the hand-derived floor.

Run ``python -m nnspec.bench.compiled_step`` (``--help`` for options). Four loops train each case:

* ``eager`` — the runner as it is by default (``train.compile: false``);
* ``compiled`` — the runner with ``train.compile: true`` (Inductor);
* ``hand`` — the textbook eager loop of :mod:`nnspec.bench.overhead` (same model, optimizer, batches);
* ``floor`` — for the SGD MLP cases, the *hand-derived* step: forward, backward and the SGD
  update written out as matrix products (no autograd, no optimizer object), compiled with
  Inductor. It is what a step of that network costs when nothing but its arithmetic and its
  memory traffic is paid for; every other loop is also reported as a fraction of it.

As in the overhead benchmark, every run is a fresh process and each repeat runs the loops back
to back (an interleaved A/B design: load changes between repeats cancel in the ratios), the
first epoch of each run is a warm-up (for ``compiled`` it holds the compilation, reported
separately from ``summary.json``), and the figures are medians of per-repeat ratios with their
interquartile range. Not a test: timings depend on the machine and its load, which is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import Tensor

from nnspec.bench.overhead import Timing, hand_timing, in_fresh_process, one_hot_bce, one_hot_mse
from nnspec.bench.overhead import runner_timing as overhead_runner_timing
from nnspec.data.datasets import load_dataset, prepare
from nnspec.spec import loads_spec
from nnspec.spec.model import Spec


@dataclass(frozen=True)
class Case:
    name: str
    spec: str  # with EPOCHS where the epoch count goes
    hand_loss: object  # (outputs, labels) -> loss, for the hand loop
    floor: str | None  # "sigmoid-mse" or "relu-ce": the hand-derived step of this MLP; None: no floor


CASES: list[Case] = [
    Case("ablation 784-200-10 sigmoid/MSE, SGD, batch 1", """\
nnspec: 1
name: step-ablation-sgd
input: [1, 28, 28]
model: [flatten, {linear: 200}, sigmoid, {linear: 10}, sigmoid]
loss: mse
optimizer: {sgd: 0.01}
data: {dataset: synthetic, synthetic: {samples: 4096, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 1, shuffle: false}
""", one_hot_mse, "sigmoid-mse"),
    Case("ablation 784-200-10 LeakyReLU+LayerNorm/BCE, Adam, batch 1", """\
nnspec: 1
name: step-ablation-adam-ln
input: [1, 28, 28]
model: [flatten, {linear: 200}, {leaky_relu: 0.02}, layer_norm, {linear: 10}, sigmoid]
loss: bce
optimizer: adam
data: {dataset: synthetic, synthetic: {samples: 4096, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 1, shuffle: false}
""", one_hot_bce, None),
    Case("mlp 784-256-10 ReLU/CE, SGD, batch 64", """\
nnspec: 1
name: step-mlp-64
input: [1, 28, 28]
model: [flatten, {linear: 256}, relu, {linear: 10}]
loss: cross_entropy
optimizer: {sgd: 0.05}
data: {dataset: synthetic, synthetic: {samples: 16384, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 64}
""", F.cross_entropy, "relu-ce"),
    Case("specs/mnist_cnn.yaml model, batch 128", """\
nnspec: 1
name: step-cnn-128
input: [1, 28, 28]
model:
  - conv2d: {out: 32, kernel: 3, padding: 1}
  - batch_norm
  - relu
  - max_pool: 2
  - conv2d: {out: 64, kernel: 3, padding: 1}
  - batch_norm
  - relu
  - max_pool: 2
  - residual:
      - conv2d: {out: 64, kernel: 3, padding: 1}
      - batch_norm
      - relu
      - conv2d: {out: 64, kernel: 3, padding: 1}
      - batch_norm
  - relu
  - flatten
  - dropout: 0.3
  - linear: 128
  - relu
  - dropout: 0.3
  - linear: 10
loss: {cross_entropy: {label_smoothing: 0.05}}
optimizer: {adamw: 0.002}
regularization: {weight_decay: 0.01}
data: {dataset: synthetic, synthetic: {samples: 2048, test_samples: 16}}
train: {epochs: EPOCHS, batch_size: 128}
""", lambda outputs, labels: F.cross_entropy(outputs, labels, label_smoothing=0.05), None),
]
# The CNN case keeps the spec's model, loss, optimizer and decay; its augmentation and schedule are
# left out so that the hand loop (which has neither) does the same work.

LOOPS = ("eager", "compiled", "hand", "floor")


def runner_timing(spec: Spec, compile: bool, timing: Timing) -> float | None:
    """Train with the runner (compiled or not); record every epoch after the first; return the compile seconds."""
    summary = overhead_runner_timing(spec, timing, overrides=[f"train.compile={str(compile).lower()}"])
    return summary["compile"].get("seconds")


def floor_step(kind: str, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, lr: float):
    """The hand-derived SGD step of a one-hidden-layer MLP: no autograd, no optimizer, in place."""

    def step(x: Tensor, labels: Tensor) -> Tensor:
        x = x.flatten(1)
        n = x.shape[0]
        pre = torch.addmm(b1, x, w1.t())
        if kind == "sigmoid-mse":
            h = torch.sigmoid(pre)
            o = torch.sigmoid(torch.addmm(b2, h, w2.t()))
            target = F.one_hot(labels, o.shape[1]).to(o.dtype)
            loss = (o - target).pow(2).mean()
            d_o = (2.0 / o.numel()) * (o - target) * o * (1 - o)
            d_h = (d_o @ w2) * h * (1 - h)
        else:  # relu-ce
            h = torch.relu(pre)
            logits = torch.addmm(b2, h, w2.t())
            p = torch.softmax(logits, dim=1)
            target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
            loss = -(torch.log_softmax(logits, dim=1) * target).sum() / n
            d_o = (p - target) / n
            d_h = (d_o @ w2) * (pre > 0)
        w2.sub_(lr * (d_o.t() @ h))
        b2.sub_(lr * d_o.sum(0))
        w1.sub_(lr * (d_h.t() @ x))
        b1.sub_(lr * d_h.sum(0))
        return loss

    return step


def floor_timing(case: Case, spec: Spec, timing: Timing) -> None:
    """The hand-derived step, compiled, over the same batches; every epoch after the first is recorded."""
    data = load_dataset("synthetic", synthetic={**spec.data.synthetic.model_dump(), "shape": list(spec.input)})
    splits = prepare(data, scale=spec.data.scale)
    x, y = splits.x_train, splits.y_train
    torch.manual_seed(spec.train.seed)
    hidden, classes, features = spec.model[1].out, spec.model[3].out, x[0].numel()
    w1, b1 = torch.randn(hidden, features) * 0.03, torch.zeros(hidden)
    w2, b2 = torch.randn(classes, hidden) * 0.07, torch.zeros(classes)
    step = torch.compile(floor_step(case.floor, w1, b1, w2, b2, spec.optimizer.lr), fullgraph=True, dynamic=False)
    batch, n = spec.train.batch_size, len(y)
    generator = torch.Generator().manual_seed(spec.train.seed)
    for epoch in range(spec.train.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=generator) if spec.train.shuffle else torch.arange(n)
        with torch.no_grad():
            for first in range(0, n, batch):
                rows = order[first:first + batch]
                step(x[rows], y[rows])
        if epoch > 0:
            timing.add(-(-n // batch), time.perf_counter() - wall, time.process_time() - cpu)


def worker(case: Case, loop: str, epochs: int) -> dict:
    spec = loads_spec(case.spec.replace("EPOCHS", str(epochs)))
    timing = Timing()
    compile_s = None
    if loop in ("eager", "compiled"):
        compile_s = runner_timing(spec, loop == "compiled", timing)
    elif loop == "hand":
        hand_timing(spec, case.hand_loss, timing)  # type: ignore[arg-type]
    else:
        floor_timing(case, spec, timing)
    return {"wall": timing.wall, "cpu": timing.cpu, "compile_s": compile_s}


def fresh_process(case: Case, loop: str, epochs: int, threads: int) -> dict:
    return in_fresh_process("nnspec.bench.compiled_step", case.name, loop, epochs, threads)


def _median_iqr(values: list[float]) -> str:
    ordered = sorted(values)
    q1, q3 = ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
    return f"{statistics.median(ordered):.2f} ({q1:.2f}..{q3:.2f})"


def _steps_per_s(rate: float) -> str:
    """A rate for the table: whole steps, or one decimal where whole steps would hide the differences (the CNN)."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def measure(case: Case, epochs: int, repeats: int, threads: int) -> dict:
    """Interleaved repeats of every loop; per-repeat ratios of median epoch rates (wall clock)."""
    loops = [loop for loop in LOOPS if loop != "floor" or case.floor]
    rates: dict[str, list[float]] = {loop: [] for loop in loops}
    ratios: dict[str, list[float]] = {}
    compile_s: list[float] = []
    for _ in range(repeats):
        runs = {loop: fresh_process(case, loop, epochs, threads) for loop in loops}
        median = {loop: statistics.median(run["wall"]) for loop, run in runs.items()}
        for loop in loops:
            rates[loop].append(median[loop])
        compile_s.append(runs["compiled"]["compile_s"])
        for a, b in (("compiled", "eager"), ("compiled", "hand"), ("eager", "hand")):
            ratios.setdefault(f"{a}/{b}", []).append(median[a] / median[b])
        if case.floor:
            for loop in ("compiled", "eager", "hand"):
                ratios.setdefault(f"{loop}/floor", []).append(median[loop] / median["floor"])
    return {"case": case.name, "rates": rates, "ratios": ratios, "compile_s": compile_s}


def in_process(blocks: int, block_steps: int) -> dict:
    """The batch-1 SGD case's three step functions alternated in short blocks in one process.

    A supplement for a loaded machine: each round times ``block_steps`` steps of the eager step
    (the runner's ``make_step`` closure body: forward, loss, zero_grad, backward, fused SGD), the
    compiled step (:class:`CompiledStep`, called as the runner calls it) and the hand-derived
    floor, back to back, so that the three see nearly the same load; the ratios are per round.
    No runner loop around them: this isolates the step.
    """
    from nnspec.compiler import build, build_loss
    from nnspec.train.compiled import CompiledStep
    from nnspec.train.optim import build_optimizer

    case = CASES[0]
    spec = loads_spec(case.spec.replace("EPOCHS", "1"))
    torch.manual_seed(0)
    eager_model, compiled_model = build(spec), build(spec)
    compiled_model.load_state_dict(eager_model.state_dict())
    loss = build_loss(spec).bound()
    eager_opt, compiled_opt = build_optimizer(spec, eager_model), build_optimizer(spec, compiled_model)
    compiled = CompiledStep(spec, compiled_model, loss, compiled_opt)
    w1, b1, w2, b2 = (p.detach().clone() for p in eager_model.parameters())
    floor = torch.compile(floor_step(case.floor, w1, b1, w2, b2, 0.01), fullgraph=True, dynamic=False)
    x = torch.rand(block_steps, 1, 28, 28)
    y = torch.randint(0, 10, (block_steps,))
    batches = list(zip(x.split(1), y.split(1)))

    def eager_block() -> None:
        for xb, yb in batches:
            out = eager_model(xb)
            value = loss(out, yb)
            eager_opt.zero_grad(set_to_none=True)
            value.backward()
            eager_opt.step()

    def compiled_block() -> None:
        for xb, yb in batches:
            compiled(xb, yb)

    def floor_block() -> None:
        with torch.no_grad():
            for xb, yb in batches:
                floor(xb, yb)

    loops = {"eager": eager_block, "compiled": compiled_block, "floor": floor_block}
    for run in loops.values():  # compile and warm up
        run()
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(blocks):
        for name, run in loops.items():
            start = time.perf_counter()
            run()
            rates[name].append(block_steps / (time.perf_counter() - start))
    ratios = {f"{a}/{b}": [ra / rb for ra, rb in zip(rates[a], rates[b])]
              for a, b in (("compiled", "eager"), ("compiled", "floor"), ("eager", "floor"))}  # fmt: skip
    return {"rates": rates, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per case")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--case", default="", help="only the cases whose name contains this")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--in-process", type=int, metavar="ROUNDS",
                        help="instead: the batch-1 SGD step functions alternated in 500-step blocks in one process")
    parser.add_argument("--worker", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.in_process:
        before = os.getloadavg()
        result = in_process(args.in_process, 500)
        print(f"torch {torch.__version__}, CPU, {args.threads} thread(s); load average {before} before, "
              f"{os.getloadavg()} after; {args.in_process} rounds of 500 steps each")  # fmt: skip
        rows = [[name, f"{statistics.median(v):,.0f}"] for name, v in result["rates"].items()]
        rows += [[name, _median_iqr(v)] for name, v in result["ratios"].items()]
        print(tabulate(rows, tablefmt="github", headers=["784-200-10 sigmoid/MSE SGD, batch 1", "steps/s or ratio (IQR)"]))
        if args.json:
            Path(args.json).write_text(json.dumps({"load_before": before, "load_after": os.getloadavg(), **result}))
        return
    cases = [case for case in CASES if args.case in case.name]
    if not cases:
        parser.error(f"no case matches {args.case!r}; the cases are: {', '.join(case.name for case in CASES)}")
    if args.worker:
        print(json.dumps(worker(cases[0], args.worker, args.epochs)))
        return
    loads = [os.getloadavg()]
    results = []
    for case in cases:
        results.append(measure(case, args.epochs, args.repeats, args.threads))
        loads.append(os.getloadavg())
    rows = []
    for r in results:
        rate = {loop: statistics.median(values) for loop, values in r["rates"].items()}
        ratio = r["ratios"]
        rows.append([
            r["case"], _steps_per_s(rate["eager"]), _steps_per_s(rate["hand"]), _steps_per_s(rate["compiled"]),
            _steps_per_s(rate["floor"]) if "floor" in rate else "n/a",
            _median_iqr(ratio["compiled/eager"]), _median_iqr(ratio["compiled/hand"]),
            _median_iqr(ratio["compiled/floor"]) if "compiled/floor" in ratio else "n/a",
            _median_iqr(ratio["eager/floor"]) if "eager/floor" in ratio else "n/a",
            f"{max(r['compile_s']):.1f} / {min(r['compile_s']):.1f}",
        ])  # fmt: skip
    load = "; ".join(", ".join(f"{x:.1f}" for x in triple) for triple in loads)
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s) ({os.cpu_count()} cores); load averages "
          f"(1, 5, 15 min) at start and after each case: {load}; {args.repeats} interleaved repeats x "
          f"{args.epochs - 1} timed epochs, one process per run")  # fmt: skip
    print(tabulate(rows, tablefmt="github", headers=[
        "case", "steps/s eager runner", "hand loop", "compiled", "hand-derived floor",
        "compiled / eager (IQR)", "compiled / hand", "compiled / floor", "eager / floor",
        "compile s (first / cached)",
    ]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"loads": loads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
