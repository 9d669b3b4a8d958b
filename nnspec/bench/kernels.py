"""The kernel suite: each nnspec kernel against its peers, forward and forward+backward.

For every (kernel, shape, dtype, direction) *group* the suite

1. draws fresh random inputs (seeded; never zeros),
2. computes a float64 reference with PyTorch eager (when it fits; on the CPU only shapes
   that fit comfortably get one, the rest are checked against PyTorch eager in their own
   dtype and say so),
3. for each implementation - ``nnspec`` (our kernel; on a CPU the PyTorch fallback, labelled
   so), ``eager`` (PyTorch), ``compile`` (``torch.compile(eager, dynamic=False)``, compiled
   once per shape) and ``liger`` (Liger-Kernel's cross-entropy, CUDA only, when importable) -
   runs it once on its own copy of the inputs and checks every output (and every gradient,
   and BatchNorm's running statistics) against the reference.  A wrong or non-finite
   output marks the row ``failed`` and it is *not* timed,
4. times the rows that passed (see :mod:`timing`), re-timing the whole group with CUDA graphs
   when the group is so small that launches dominate,
5. derives TFLOP/s and GB/s from the *minimum* FLOPs / bytes the op needs, the fraction of the
   measured roofline, and each peer's time over ours.

The Triton interpreter is a correctness tool: :func:`interpreter_checks` runs our Triton
kernels through it on tiny shapes (CPU only, optional) and records errors, never times.

One module, a little over 500 lines, because steps 1-5 are one procedure per group whose
decisions feed each other (a row that fails its check is not timed; graph timing is chosen
for the whole group); what is measured - the ops and the shape suites - is kernel_cases.py.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# The cases are re-exported: the suite's callers (suite.py, the tests) read them from here.
from nnspec.bench.kernel_cases import (  # noqa: F401
    BN_EPS,
    BN_MOMENTUM,
    OPS,
    SLOPE,
    SUITES,
    Case,
    Op,
    default_dtypes,
    suite_cases,
)
from nnspec.bench.machine import dtype_of
from nnspec.bench.timing import Stats, synchronize, time_cpu_group, time_cuda_graph, time_fn

DIRECTIONS = ("fwd", "fwd+bwd")
KERNELS = ("linear_leaky_relu", "softmax_cross_entropy", "batch_norm")
PEERS = ("eager", "compile", "liger")
IMPL_ORDER = {"nnspec": 0, "eager": 1, "compile": 2, "liger": 3}

# Pass/fail gate on max|out - ref| / max|ref| over every output and gradient.  The numbers
# themselves are reported; the gate only separates "numerically fine" from "wrong".
TOLERANCE = {"float64": 1e-9, "float32": 2e-3, "float16": 1e-2, "bfloat16": 3e-2}
TOLERANCE_TF32 = 5e-3
# A group is probed for CUDA-graph timing when its probe's event time is under this many
# times --graph-below-us (see retime_with_graphs).
GRAPH_PROBE_FACTOR = 20


def nnspec_kernels():
    """``import nnspec.kernels``, also from a plain checkout on ``PYTHONPATH``.

    The kernels live in the top-level ``kernels/`` folder and are installed as
    ``nnspec.kernels`` (pyproject's package-dir).  Without an install - the GPU hosts run
    ``PYTHONPATH=. python -m nnspec.bench`` - that mapping does not exist, so the folder
    is loaded under its installed name (its relative imports then work unchanged).
    """
    try:
        return importlib.import_module("nnspec.kernels")
    except ModuleNotFoundError as exc:
        if exc.name != "nnspec.kernels":
            raise
        folder = Path(__file__).resolve().parents[2] / "kernels"  # <repo>/nnspec/bench/kernels.py
        init = folder / "__init__.py"
        if not init.is_file():
            raise
        spec = importlib.util.spec_from_file_location("nnspec.kernels", init, submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["nnspec.kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["nnspec.kernels"]
            raise
        sys.modules["nnspec"].kernels = module  # type: ignore[attr-defined]
        return module


# --------------------------------------------------------------------------- checking


def _clone_inputs(inputs: dict) -> dict:
    return {k: v.clone() for k, v in inputs.items() if k != "grad_out"}


def make_call(op: Op, impl: Callable[[dict], torch.Tensor], inputs: dict, direction: str):
    """``(call, args)``: ``call()`` runs one forward (or forward + autograd.grad of every
    differentiable input) on a private copy ``args`` of the inputs and returns the outputs."""
    args = _clone_inputs(inputs)
    if direction == "fwd":

        def call():
            return (impl(args),)

        return call, args
    leaves = []
    for name in op.grad_names:
        args[name] = args[name].detach().requires_grad_(True)
        leaves.append(args[name])
    grad_out = inputs.get("grad_out")

    def call_bwd():
        out = impl(args)
        grads = torch.autograd.grad(out, leaves, grad_out)
        return (out.detach(), *grads)

    return call_bwd, args


def run_once(op: Op, impl, inputs: dict, direction: str) -> tuple[Callable, list[torch.Tensor], float]:
    """Make the call, run it once, return (call, outputs incl. updated state, seconds)."""
    call, args = make_call(op, impl, inputs, direction)
    device = next(iter(inputs.values())).device
    synchronize(device)
    t0 = time.perf_counter()
    outs = list(call())
    synchronize(device)
    seconds = time.perf_counter() - t0
    outs += [args[name].detach().clone() for name in op.state_names]
    return call, outs, seconds


# Elements compared per float64 slice: 2**26 float64 values are 512 MiB, so checking a
# 4096 x 262144 output never holds more than a few such slices besides the tensors.
COMPARE_CHUNK = 1 << 26


def _max_diff(o: torch.Tensor, r: torch.Tensor) -> tuple[float, float, bool]:
    """(max |o - r|, max |r|, all of o finite) for flat tensors, in float64 slices."""
    diff = scale = 0.0
    for start in range(0, o.numel(), COMPARE_CHUNK):
        od = o[start:start + COMPARE_CHUNK].to(torch.float64)
        if not bool(torch.isfinite(od).all()):
            return 0.0, 0.0, False
        rd = r[start:start + COMPARE_CHUNK].to(device=od.device, dtype=torch.float64)
        diff = max(diff, float((od - rd).abs().max()))
        scale = max(scale, float(rd.abs().max()))
        del od, rd
    return diff, scale, True


def compare(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> dict:
    """max |out - ref| and max |out - ref| / max |ref|, over every tensor (worst tensor wins)."""
    if len(outs) != len(refs):
        return {"max_abs": None, "max_rel": None, "finite": False, "detail": f"{len(outs)} outputs, expected {len(refs)}"}
    max_abs = 0.0
    max_rel = 0.0
    finite = True
    for o, r in zip(outs, refs):
        if tuple(o.shape) != tuple(r.shape):
            return {"max_abs": None, "max_rel": None, "finite": False,
                    "detail": f"shape {tuple(o.shape)} != {tuple(r.shape)}"}  # fmt: skip
        if o.numel() == 0:
            continue
        diff, scale, ok = _max_diff(o.detach().reshape(-1), r.detach().reshape(-1))
        if not ok:
            finite = False
            continue
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    if not finite:
        return {"max_abs": None, "max_rel": None, "finite": False, "detail": "non-finite output"}
    return {"max_abs": max_abs, "max_rel": max_rel if math.isfinite(max_rel) else None, "finite": True}


def check(op: Op, outs: list[torch.Tensor], refs: list[torch.Tensor], inputs64: dict | None, direction: str) -> dict:
    """:func:`compare` against the float64 reference - for a fwd+bwd row of an op with a kink,
    the reference recomputed with the implementation's own activation pattern."""
    fixed = op.backward_reference(inputs64, refs, outs) if (inputs64 is not None and direction != "fwd") else None
    if fixed is None:
        return compare(outs, refs)
    err = compare(outs, fixed[0])
    err.update(fixed[1])
    return err


def tolerance(dtype: str, device: torch.device, kernel: str) -> float:
    if dtype == "float32" and device.type == "cuda" and kernel == "linear_leaky_relu":
        from nnspec.bench.machine import tf32_matmul

        if tf32_matmul():
            return TOLERANCE_TF32
    return TOLERANCE[dtype]


# --------------------------------------------------------------------------- implementations


@dataclass
class Impl:
    name: str  # nnspec | eager | compile | liger
    backend: str  # what actually runs, e.g. "triton", "torch fallback", "inductor"
    build: Callable[[Op], Callable[[dict], torch.Tensor]]
    available: str | None = None  # None = available, else why not


def _liger_ce():
    try:
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss
    except ImportError:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    loss = LigerCrossEntropyLoss()
    # Liger overwrites its logits input with the gradient (by design, to save memory); every
    # implementation gets its own copy of the inputs, so that cannot leak into other rows.
    return lambda a: loss(a["logits"], a["target"])


def implementations(device: torch.device, peers: list[str]) -> list[Impl]:
    on_cuda = device.type == "cuda"
    backend = "triton" if on_cuda else "torch"

    def ours(op: Op):
        return op.ours(nnspec_kernels(), backend)

    impls = [Impl("nnspec", "triton" if on_cuda else "torch fallback (Triton is CUDA-only; never timed on CPU)", ours)]
    if "eager" in peers:
        impls.append(Impl("eager", "pytorch eager", lambda op: op.eager))
    if "compile" in peers:
        impls.append(Impl("compile", "torch.compile(dynamic=False)",
                          lambda op: torch.compile(op.eager, dynamic=False, fullgraph=True)))  # fmt: skip
    if "liger" in peers:
        impls.append(Impl("liger", "liger-kernel (triton)", lambda op: _liger_ce(), liger_unavailable(device)))
    return impls


def liger_unavailable(device: torch.device) -> str | None:
    """Why Liger-Kernel's cross-entropy cannot be a peer here (None = it can)."""
    if device.type != "cuda":
        return "liger-kernel runs on CUDA only"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (pip install liger-kernel)"
    return None


def _applies(impl: Impl, op: Op) -> bool:
    return impl.name != "liger" or op.name == "softmax_cross_entropy"


# --------------------------------------------------------------------------- the suite


@dataclass
class KernelContext:
    device: torch.device
    threads: int
    ceilings: dict
    budget_s: float = 0.2
    graph_below_s: float = 50e-6
    graph_inner: int = 20
    seed: int = 0
    peers: list[str] = field(default_factory=lambda: list(PEERS))
    log: Callable[[str], None] = print


def _fp64_fits(op: Op, case: Case, direction: str, ctx: KernelContext) -> bool:
    flops, nbytes = op.fp64_cost(case.shape, direction)
    if ctx.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(ctx.device)
        return nbytes < free / 2
    fp32 = (ctx.ceilings.get("matmul", {}).get("float32") or {}).get("tflops") or 0.05
    # "comfortably": a float64 reference that takes under ~2 s and 1.5 GB on this CPU.
    return flops / (fp32 * 1e12 / 2) < 2.0 and nbytes < 1.5e9


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:300]


def _derive(row: dict, op: Op, case: Case, ctx: KernelContext) -> None:
    t = row["time_ms"]["median"] / 1e3
    peak_bw = ((ctx.ceilings.get("copy") or {}).get("gbps") or 0) * 1e9
    peak_f = ((ctx.ceilings.get("matmul") or {}).get(case.dtype) or {}).get("tflops")
    peak_f = peak_f * 1e12 if peak_f else None
    row["tflops"] = row["flops"] / t / 1e12
    row["gbps"] = row["bytes"] / t / 1e9
    t_mem = row["bytes"] / peak_bw if peak_bw else 0.0
    t_cmp = row["flops"] / peak_f if (op.roof == "matmul" and peak_f) else 0.0
    row["bound"] = "compute" if t_cmp > t_mem else "memory"
    t_min = max(t_mem, t_cmp)
    row["roofline_s"] = t_min if t_min > 0 else None
    row["roofline_fraction"] = t_min / t if t_min > 0 else None


def rederive(rows: list[dict], ceilings: dict) -> None:
    """Recompute the roofline columns of ``rows`` against (updated) ``ceilings``."""
    ctx = KernelContext(device=torch.device("cpu"), threads=1, ceilings=ceilings)
    for row in rows:
        if row.get("status") == "ok" and row.get("time_ms"):
            case = Case(row["kernel"], tuple(row["shape"].values()), row["dtype"], row.get("tag", ""))
            _derive(row, OPS[row["kernel"]], case, ctx)


def _base_row(op: Op, case: Case, direction: str, impl: Impl, ctx: KernelContext) -> dict:
    elt = dtype_of(case.dtype).itemsize
    return {
        "suite": "kernels",
        "kernel": op.name,
        "shape": dict(zip(op.dims, case.shape)),
        "shape_label": op.label(case.shape),
        "size": op.size(case.shape, elt),
        "tag": case.tag,
        "dtype": case.dtype,
        "direction": direction,
        "impl": impl.name,
        "backend": impl.backend,
        "status": "skipped",
        "reason": None,
        "method": None,
        "time_ms": None,
        "time_ms_events": None,
        "first_call_s": None,
        "flops": op.flops(case.shape, direction),
        "bytes": op.bytes(case.shape, elt, direction),
        "bound": None,
        "tflops": None,
        "gbps": None,
        "roofline_s": None,
        "roofline_fraction": None,
        "speedup": {},
        "error": None,
    }


def run_group(case: Case, direction: str, impls: list[Impl], ctx: KernelContext) -> list[dict]:
    op = OPS[case.kernel]
    dev = ctx.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(ctx.seed + zlib.crc32(repr((case.kernel, case.shape, case.dtype)).encode()))
    tol = tolerance(case.dtype, dev, case.kernel)
    applicable = [i for i in impls if _applies(i, op)]
    try:
        inputs = op.make(case.shape, dtype_of(case.dtype), dev, gen)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory: every row of the group says so
        rows = [_base_row(op, case, direction, impl, ctx) for impl in applicable]
        for row in rows:
            row["status"], row["reason"] = "error", "creating the inputs: " + _short(exc)
        return rows

    refs: list[torch.Tensor] | None = None
    ref_kind = "none"
    inputs64 = None
    if _fp64_fits(op, case, direction, ctx):
        try:
            inputs64 = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
            _, refs, _ = run_once(op, op.eager, inputs64, direction)
            ref_kind = "float64"
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: fall back to eager as reference
            inputs64 = refs = None
            ctx.log(f"  no float64 reference for {op.label(case.shape)} {direction}: {_short(exc)}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    rows: list[dict] = []
    calls: dict[str, Callable] = {}
    # PyTorch eager first: without a float64 reference, it is what the others are checked against.
    ordered = sorted(applicable, key=lambda i: i.name != "eager")
    for impl in ordered:
        row = _base_row(op, case, direction, impl, ctx)
        rows.append(row)
        if impl.available is not None:
            row["reason"] = impl.available
            continue
        try:
            fn = impl.build(op)
            call, outs, first_s = run_once(op, fn, inputs, direction)
            row["first_call_s"] = first_s
        except Exception as exc:  # noqa: BLE001 - one broken implementation must not stop the suite
            row["status"] = "error"
            row["reason"] = _short(exc)
            ctx.log(f"  {op.name} {row['shape_label']} {case.dtype} {direction} {impl.name}: {row['reason']}")
            continue
        if refs is None and impl.name == "eager":
            # No float64 reference: eager becomes the reference of the others; itself is only
            # checked for finiteness.
            refs = [o.detach().clone() for o in outs]
            ref_kind = f"pytorch eager {case.dtype} (float64 too large here)"
            err = {"max_abs": None, "max_rel": None, "finite": all(bool(torch.isfinite(o).all()) for o in outs)}
            ok = err["finite"]
        elif refs is None:
            err = {"max_abs": None, "max_rel": None, "finite": False, "detail": "no reference to check against"}
            ok = False
        else:
            try:
                err = check(op, outs, refs, inputs64, direction)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory in the float64 check: this row only
                del outs
                row["status"], row["reason"] = "error", "checking the outputs: " + _short(exc)
                ctx.log(f"  {op.name} {row['shape_label']} {case.dtype} {direction} {impl.name}: {row['reason']}")
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            ok = err["finite"] and err["max_rel"] is not None and err["max_rel"] <= tol
        row["error"] = {"reference": ref_kind if impl.name != "eager" or ref_kind == "float64" else "itself",
                        "max_abs": err["max_abs"], "max_rel": err["max_rel"], "tolerance": tol, "ok": bool(ok)}  # fmt: skip
        for key in ("detail", "activation_flips", "elements"):
            if key in err:
                row["error"][key] = err[key]
        del outs
        if not ok:
            row["status"] = "failed"
            row["reason"] = err.get("detail") or f"max relative error {err['max_rel']:.3g} > tolerance {tol:g}"
            ctx.log(f"  FAILED {op.name} {row['shape_label']} {case.dtype} {direction} {impl.name}: {row['reason']}")
            continue
        calls[impl.name] = call

    # Timing, only for rows whose outputs were checked.  On the CPU the implementations are
    # timed interleaved (bursts of load from other processes hit all of them alike).
    by_impl = {r["impl"]: r for r in rows}
    timed: dict[str, Stats] = {}
    if dev.type == "cpu" and calls:
        try:
            timed = time_cpu_group(calls, threads=ctx.threads, budget_s=ctx.budget_s)
        except Exception as exc:  # noqa: BLE001 - fall back to one at a time, to name the culprit
            ctx.log(f"  interleaved timing failed ({_short(exc)}); timing one at a time")
    for name, call in list(calls.items()):
        row = by_impl[name]
        try:
            stats = timed.get(name) or time_fn(call, dev, threads=ctx.threads, budget_s=ctx.budget_s)
        except Exception as exc:  # noqa: BLE001
            row["status"] = "error"
            row["reason"] = "while timing: " + _short(exc)
            del calls[name]
            continue
        row["status"] = "ok"
        row["method"] = stats.method
        row["time_ms"] = stats.to_json_ms()

    # Launch-bound groups on CUDA: re-time every passing row with CUDA graphs.
    if dev.type == "cuda" and calls:
        retime_with_graphs(rows, calls, ctx)

    for row in rows:
        if row["status"] == "ok":
            _derive(row, op, case, ctx)
    add_speedups(rows)
    del calls, inputs, refs, inputs64
    rows.sort(key=lambda r: IMPL_ORDER.get(r["impl"], 9))
    return rows


def retime_with_graphs(rows: list[dict], calls: dict[str, Callable], ctx: KernelContext) -> None:
    """Re-time a launch-bound group's passing rows with CUDA graphs - all of them or none.

    Whether launches dominate is decided on the probe's (eager's, else the first passing
    row's) *graph* time, its GPU time without launch gaps: its event time includes those gaps,
    so an op of many tiny kernels (eager's fwd+bwd) would look too slow to need graphs exactly
    when it needs them most.  Only groups whose probe takes under ``GRAPH_PROBE_FACTOR`` times
    the threshold with events are probed, so big ops are never captured.  When any row's
    capture fails, every row keeps its event timing (and the failed ones say why): rows timed
    by different methods are never compared with each other.
    """
    ok = [r for r in rows if r["status"] == "ok" and r["impl"] in calls]
    if not ok:
        return
    probe = next((r for r in ok if r["impl"] == "eager"), ok[0])
    if probe["time_ms"]["median"] / 1e3 >= GRAPH_PROBE_FACTOR * ctx.graph_below_s:
        return
    graphed: dict[str, Stats] = {}
    failed: dict[str, str] = {}
    for row in [probe] + [r for r in ok if r is not probe]:
        try:
            graphed[row["impl"]] = time_cuda_graph(calls[row["impl"]], inner=ctx.graph_inner,
                                                   rep_ms=ctx.budget_s * 1e3)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - e.g. a host sync inside the op
            failed[row["impl"]] = _short(exc)
        if row is probe and (row["impl"] in failed or graphed[row["impl"]].median >= ctx.graph_below_s):
            return  # not launch-bound (or cannot tell): every row stays on events
    if failed:
        for row in ok:
            why = failed.get(row["impl"])
            row["reason"] = (f"CUDA graph capture failed ({why}), so the whole group is timed with events"
                             if why else "timed with events: another row of this group could not be captured "
                             f"in a CUDA graph ({', '.join(failed)})")  # fmt: skip
        return
    for row in ok:
        stats = graphed[row["impl"]]
        row["time_ms_events"] = row["time_ms"]
        row["time_ms"] = stats.to_json_ms()
        row["method"] = stats.method


def timing_kind(method: str | None) -> str | None:
    """How a row was timed, without per-row details (calls per CPU block, graph length):
    CUDA events with the L2 flushed or warm, CUDA graphs, or the CPU timer."""
    if method is None:
        return None
    for kind in ("cpu-timer", "cuda-graph"):
        if method.startswith(kind):
            return kind
    return method


def add_speedups(rows: list[dict]) -> None:
    """Each peer's median over ours on our row, between rows timed the same way only."""
    ours = next((r for r in rows if r["impl"] == "nnspec" and r["status"] == "ok"), None)
    if ours is None:
        return
    for r in rows:
        if r is not ours and r["status"] == "ok" and timing_kind(r["method"]) == timing_kind(ours["method"]):
            ours["speedup"][r["impl"]] = r["time_ms"]["median"] / ours["time_ms"]["median"]


def run_kernels(cases: list[Case], ctx: KernelContext) -> list[dict]:
    # A peer that cannot run on this machine gets one note in the report (see suite.py), not
    # a skipped row per shape.
    impls = [i for i in implementations(ctx.device, ctx.peers) if i.available is None]
    rows: list[dict] = []
    for i, case in enumerate(cases):
        op = OPS[case.kernel]
        ctx.log(f"[{i + 1}/{len(cases)}] {case.kernel} {op.label(case.shape)} {case.dtype}")
        if any(impl.name == "compile" for impl in impls):
            torch._dynamo.reset()  # compile once per shape: fresh caches, no recompile limit
        for direction in DIRECTIONS:
            rows.extend(run_group(case, direction, impls, ctx))
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- interpreter


def interpreter_checks(ctx: KernelContext) -> list[dict]:
    """Run our Triton kernels through Triton's CPU interpreter on the tiny shapes and record
    their errors against float64.  Correctness only: nothing here is timed."""
    K = nnspec_kernels()
    out = []
    for kernel, shapes in SUITES["tiny"].items():
        op = OPS[kernel]
        for shape, _ in shapes:
            case = Case(kernel, shape, "float32")
            gen = torch.Generator()
            gen.manual_seed(ctx.seed)
            inputs = op.make(shape, torch.float32, torch.device("cpu"), gen)
            for direction in DIRECTIONS:
                rec = {"kernel": kernel, "shape_label": op.label(shape), "dtype": "float32", "direction": direction,
                       "backend": "triton (interpreter)", "max_abs": None, "max_rel": None, "ok": False,
                       "reason": None}  # fmt: skip
                try:
                    inputs64 = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
                    _, refs, _ = run_once(op, op.eager, inputs64, direction)
                    _, outs, _ = run_once(op, op.ours(K, "triton"), inputs, direction)
                    fixed = op.backward_reference(inputs64, refs, outs) if direction != "fwd" else None
                    err = compare(outs, fixed[0] if fixed else refs)
                    rec["max_abs"], rec["max_rel"] = err["max_abs"], err["max_rel"]
                    rec["ok"] = bool(err["finite"] and err["max_rel"] is not None
                                     and err["max_rel"] <= TOLERANCE[case.dtype])  # fmt: skip
                    if not rec["ok"]:
                        rec["reason"] = err.get("detail") or "error over tolerance"
                except Exception as exc:  # noqa: BLE001
                    rec["reason"] = _short(exc)
                out.append(rec)
    return out
