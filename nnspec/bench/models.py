"""The model suite: training-step throughput of compiled specs, and (optionally) accuracy.

For each spec, every variant starts from the *same* weights:

* ``nnspec-triton`` - ``nnspec.build(spec, "cuda", kernels="triton")`` + its loss (CUDA only;
  on a CPU the row is skipped: the Triton interpreter is never timed),
* ``torch``         - ``kernels="torch"``: the same model on plain PyTorch modules,
* ``torch+compile`` - the torch variant's forward + loss under ``torch.compile(dynamic=False)``.
* ``torch+step-compile`` - the whole training step of the torch variant compiled, as
  ``train.compile: true`` runs it (:class:`nnspec.train.compiled.CompiledStep`: forward,
  loss, backward and the optimizer update in one graph; a CUDA graph on CUDA).

Before timing, each variant's eval-mode outputs and loss on one batch are checked against a
float64 copy of the model; a wrong variant is marked failed and not timed.  The timed loop
is ``zero_grad; loss = loss_fn(model(x), y); loss.backward(); opt.step()`` on synthetic
batches already on the device (random inputs of the spec's shape, random labels), so it
measures compute, not data loading.  Peak memory: ``torch.cuda.max_memory_allocated`` on
CUDA; on a CPU the growth of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) - process-wide and allocator-dependent, so indicative only - or
"n/a" when Linux cannot tell.

``--accuracy`` trains each spec for real with ``nnspec.train`` and records its test
accuracy and the wall time the run took to reach it.

This module needs pydantic (through ``nnspec.spec``); the kernel suite does not.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from nnspec.bench.kernels import compare
from nnspec.bench.timing import summarize, synchronize

VARIANTS = ("nnspec-triton", "torch", "torch+compile", "torch+step-compile")


@dataclass
class ModelContext:
    device: torch.device
    threads: int
    batch_size: int | None = None
    budget_s: float = 1.0
    warmup_steps: int = 3
    seed: int = 0
    log: Callable[[str], None] = print
    overrides: list[str] = field(default_factory=list)
    target_accuracy: float | None = None


# --------------------------------------------------------------------------- memory


def _proc_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class PeakMemory:
    """Peak memory of the code run between start() and stop(), by the best means available."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "n/a"
        self._base: int | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "n/a"
            return
        self._base = _proc_kib("VmRSS")
        self.method = "peak RSS growth (VmHWM - VmRSS at start; process-wide)" if self._base is not None else "n/a"

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._base is None:
            return None
        hwm = _proc_kib("VmHWM")
        return None if hwm is None else max(0, hwm - self._base) * 1024


# --------------------------------------------------------------------------- building


def _optimizer(spec, model) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer ``nnspec train`` would build (same decay rules); SGD when the spec has none."""
    if spec.optimizer is None:
        return torch.optim.SGD(model.parameters(), lr=0.01), "sgd lr=0.01 (spec has no optimizer)"
    from nnspec.train.optim import build_optimizer

    return build_optimizer(spec, model), f"{spec.optimizer.type} lr={spec.optimizer.lr:g}"


def _loss_fn(spec, device: torch.device, kernels: str):
    from nnspec.compiler import build_loss

    if spec.loss is None:
        return (lambda out, y: F.cross_entropy(out, y)), "cross_entropy (spec has no loss)"
    return build_loss(spec, str(device), kernels), spec.loss.type


def _compiled_step(spec, model, loss_fn, opt, bf16: bool, pool_x: list, pool_y: list) -> Callable[[int], None]:
    """The ``torch+step-compile`` step: the training runner's compiled step on this model and optimizer."""
    from nnspec.compiler import SpecLoss
    from nnspec.spec import training as T
    from nnspec.train.compiled import CompiledStep

    if spec.optimizer is None:  # the compiled update is written per spec optimizer kind
        spec = spec.model_copy(update={"optimizer": T.SGD(lr=0.01)})
    loss = loss_fn.bound() if isinstance(loss_fn, SpecLoss) else loss_fn
    compiled = CompiledStep(spec, model, loss, opt, bf16=bf16)

    def step(i: int) -> None:
        compiled(pool_x[i % 4], pool_y[i % 4])

    return step


def _variant_kernels(variant: str) -> str:
    return "triton" if variant == "nnspec-triton" else "torch"


# --------------------------------------------------------------------------- one spec


def _row(path: str, spec, variant: str, bs: int) -> dict:
    return {
        "suite": "models",
        "spec": str(path),
        "name": spec.name,
        "variant": variant,
        "batch_size": bs,
        "status": "skipped",
        "reason": None,
        "precision": "fp32",
        "loss": None,
        "optimizer": None,
        "step_ms": None,
        "samples_per_s": None,
        "first_step_s": None,
        "peak_memory_bytes": None,
        "memory_method": None,
        "error": None,
    }


def bench_spec(path: str, ctx: ModelContext, variants: list[str]) -> list[dict]:
    from nnspec.compiler import build
    from nnspec.spec import load_spec

    dev = ctx.device
    spec = load_spec(path)
    bs = ctx.batch_size or spec.train.batch_size
    torch.manual_seed(ctx.seed)
    base = build(spec, "cpu", kernels="torch")
    state = copy.deepcopy(base.state_dict())
    gen = torch.Generator(device="cpu")
    gen.manual_seed(ctx.seed)
    with torch.no_grad():
        base.eval()
        classes = int(base(torch.randn((2, *spec.input), generator=gen)).shape[-1])
    pool_x = [torch.randn((bs, *spec.input), generator=gen).to(dev) for _ in range(4)]
    pool_y = [torch.randint(0, classes, (bs,), generator=gen).to(dev) for _ in range(4)]
    bf16 = dev.type == "cuda" and getattr(spec.train, "precision", "fp32") == "bf16"

    # float64 reference outputs and loss, eval mode (deterministic: no dropout, running BN stats)
    ref_model = copy.deepcopy(base).double().to(dev).eval()
    ref_loss_fn, _ = _loss_fn(spec, dev, "torch")
    ref_loss_fn = ref_loss_fn.double() if isinstance(ref_loss_fn, torch.nn.Module) else ref_loss_fn
    with torch.no_grad():
        ref_out = ref_model(pool_x[0].double())
        ref_loss = ref_loss_fn(ref_out, pool_y[0]).reshape(1)
    del ref_model
    tol = 5e-2 if bf16 else (1e-2 if dev.type == "cuda" else 2e-3)  # CUDA convs default to TF32

    rows = []
    for variant in variants:
        row = _row(path, spec, variant, bs)
        row["precision"] = "bf16 autocast" if bf16 else "fp32"
        rows.append(row)
        if variant == "nnspec-triton" and dev.type != "cuda":
            row["reason"] = "CUDA only (the Triton interpreter is a correctness tool, never timed)"
            continue
        ctx.log(f"  {spec.name} {variant} batch {bs}")
        mem = PeakMemory(dev)
        model = opt = fwd = loss_fn = fwd_loss = step = out = loss = None
        try:
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if dev.type != "cuda":
                mem.start()  # CPU: RSS growth from before the build (compile memory included)
            kernels = _variant_kernels(variant)
            model = build(spec, str(dev), kernels=kernels)
            model.load_state_dict(state)
            loss_fn, row["loss"] = _loss_fn(spec, dev, kernels)
            opt, row["optimizer"] = _optimizer(spec, model)

            def fwd_loss(x, y, model=model, loss_fn=loss_fn):
                with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
                    out = model(x)
                return loss_fn(out.float(), y)

            fwd = torch.compile(fwd_loss, dynamic=False) if variant == "torch+compile" else fwd_loss

            # correctness before timing (eval mode, outputs and loss vs float64)
            model.eval()
            with torch.no_grad():
                with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
                    out = model(pool_x[0])
                loss = loss_fn(out.float(), pool_y[0]).reshape(1)
            err = compare([out.float(), loss.float()], [ref_out, ref_loss])
            ok = err["finite"] and err["max_rel"] is not None and err["max_rel"] <= tol
            row["error"] = {"reference": "float64 copy of the model, eval mode", "max_abs": err["max_abs"],
                            "max_rel": err["max_rel"], "tolerance": tol, "ok": bool(ok)}  # fmt: skip
            if not ok:
                row["status"] = "failed"
                row["reason"] = err.get("detail") or f"max relative error {err['max_rel']:.3g} > {tol:g}"
                continue
            model.train()

            def step(i: int) -> None:
                opt.zero_grad(set_to_none=True)
                loss = fwd(pool_x[i % 4], pool_y[i % 4])
                loss.backward()
                opt.step()

            if variant == "torch+step-compile":
                step = _compiled_step(spec, model, loss_fn, opt, bf16, pool_x, pool_y)

            synchronize(dev)
            t0 = time.perf_counter()
            step(0)
            synchronize(dev)
            row["first_step_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(1, ctx.warmup_steps + 1):
                step(i)
            synchronize(dev)
            est = max((time.perf_counter() - t0) / ctx.warmup_steps, 1e-6)
            if dev.type == "cuda":
                mem.start()  # CUDA: steady-state peak (params, grads, optimizer state, activations)
            per_block = max(1, round(ctx.budget_s / 10 / est))
            samples: list[float] = []
            start = time.perf_counter()
            i = 0
            while len(samples) < 40:
                synchronize(dev)
                t0 = time.perf_counter()
                for _ in range(per_block):
                    step(i)
                    i += 1
                synchronize(dev)
                samples.append((time.perf_counter() - t0) / per_block)
                if len(samples) >= 5 and time.perf_counter() - start >= ctx.budget_s:
                    break
            stats = summarize(samples, f"wall clock, {per_block} steps/sample")
            row["step_ms"] = stats.to_json_ms()
            row["samples_per_s"] = {"median": bs / stats.median, "p10": bs / stats.p90, "p90": bs / stats.p10}
            row["method"] = stats.method
            row["peak_memory_bytes"] = mem.stop()
            row["memory_method"] = mem.method
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - one broken variant must not stop the suite
            row["status"] = "error"
            row["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            ctx.log(f"  {spec.name} {variant}: {row['reason']}")
        finally:
            # drop every reference to this variant's model before building the next one
            model = opt = fwd = loss_fn = fwd_loss = step = out = loss = None  # noqa: F841
            gc.collect()
            if variant in ("torch+compile", "torch+step-compile"):
                torch._dynamo.reset()

    torch_row = next((r for r in rows if r["variant"] == "torch" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok" and torch_row is not None:
            r["speedup_vs_torch"] = torch_row["step_ms"]["median"] / r["step_ms"]["median"]
    return rows


def run_models(paths: list[str], ctx: ModelContext, variants: list[str] | None = None) -> list[dict]:
    rows = []
    for path in paths:
        ctx.log(f"[model] {path}")
        try:
            rows.extend(bench_spec(path, ctx, list(variants or VARIANTS)))
        except Exception as exc:  # noqa: BLE001 - e.g. a spec that does not load
            rows.append({"suite": "models", "spec": str(path), "name": Path(path).stem, "variant": None,
                         "status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})  # fmt: skip
        gc.collect()
    return rows


# --------------------------------------------------------------------------- accuracy

_WALL_KEYS = ("wall_time_s", "wall_s", "train_time_s", "time_s", "wall_time", "elapsed_s")


def _curve(run_dir: Path) -> list[dict]:
    """Per-epoch (cumulative training seconds, accuracies) from the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    curve: list[dict] = []
    if not path.is_file():
        return curve
    total = 0.0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        total += float(rec.get("seconds") or 0.0)
        curve.append({"epoch": rec.get("epoch"), "train_s": total, "val_accuracy": rec.get("val_accuracy"),
                      "train_accuracy": rec.get("train_accuracy")})  # fmt: skip
    return curve


def run_accuracy(paths: list[str], ctx: ModelContext, out_dir: Path) -> list[dict]:
    """Full training runs through ``nnspec.train``: test accuracy and time to reach it.

    On CUDA each spec is trained twice, with ``train.kernels=triton`` and ``=torch``, so the
    accuracy of our kernels is compared with PyTorch's on the same spec and seed.
    """
    kernel_choices = ["triton", "torch"] if ctx.device.type == "cuda" else ["torch"]
    rows = []
    try:
        from nnspec.train import train
    except ImportError as exc:
        return [{"suite": "accuracy", "spec": str(p), "status": "skipped",
                 "reason": f"nnspec.train is not available: {exc}"} for p in paths]  # fmt: skip
    for path in paths:
        for kernels in kernel_choices:
            row = {"suite": "accuracy", "spec": str(path), "kernels": kernels, "status": "error", "reason": None,
                   "test_accuracy": None, "wall_s": None, "summary_wall_s": None, "time_to_accuracy_s": None,
                   "overrides": None, "run_dir": None}  # fmt: skip
            overrides = [f"train.kernels={kernels}", f"train.device={ctx.device.type}", *ctx.overrides]
            run_dir = out_dir / "runs" / f"{Path(path).stem}-{kernels}"
            row["overrides"], row["run_dir"] = overrides, str(run_dir)
            ctx.log(f"[accuracy] {path} kernels={kernels}")
            t0 = time.perf_counter()
            try:
                summary = train(str(path), overrides=overrides, out=str(run_dir), quiet=True)
            except Exception as exc:  # noqa: BLE001
                row["reason"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                rows.append(row)
                continue
            row["wall_s"] = time.perf_counter() - t0
            summary = summary if isinstance(summary, dict) else {}
            acc = summary.get("test_accuracy")
            row["test_accuracy"] = float(acc) if isinstance(acc, (int, float)) and math.isfinite(acc) else None
            for key in _WALL_KEYS:
                value = summary.get(key)
                if isinstance(value, (int, float)):
                    row["summary_wall_s"] = float(value)
                    break
            row["curve"] = _curve(Path(str(summary.get("run_dir") or run_dir)))
            row["target_accuracy"] = ctx.target_accuracy
            if ctx.target_accuracy is None:
                # No target: the run reaches its final accuracy when it ends.
                row["time_to_accuracy_s"] = row["wall_s"]
            else:
                hit = next((c for c in row["curve"] if (c.get("val_accuracy") if c.get("val_accuracy") is not None
                            else c.get("train_accuracy") or 0) >= ctx.target_accuracy), None)  # fmt: skip
                row["time_to_accuracy_s"] = hit["train_s"] if hit else None
                row["target_reached_epoch"] = hit["epoch"] if hit else None
            row["status"] = "ok" if row["test_accuracy"] is not None else "error"
            if row["test_accuracy"] is None:
                row["reason"] = "the training summary has no test_accuracy"
            rows.append(row)
    return rows
