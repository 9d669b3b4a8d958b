"""Compile every autotune configuration of the Linear+LeakyReLU kernels ahead of time.

Two uses, one record of what the autotuner would compile:

* ``--aot`` (any machine, no GPU): compile each launch's every *kept* configuration for an
  NVIDIA target (sm_90 by default) through Triton's real pipeline, with the argument
  specialisation a real launch gets (pointers 16-byte aligned, integers divisible by 16
  marked so, integers equal to 1 folded to constants - Triton's own ``specialize_impl``
  decides), and read registers, spill stores / loads and shared memory from the
  ``ptxas -v`` log of the ptxas bundled with Triton.  A configuration that spills is a
  performance bug that needs no GPU to find: ``--fail-on-spills`` exits 1.
* ``--gpu`` (on a CUDA machine): launch each kept configuration once, in parallel
  processes that share ``TRITON_CACHE_DIR``, with exactly the arguments the autotuner passes
  (``config.all_kwargs()``), so that the later autotuning finds every kernel compiled
  instead of compiling ~20 of them one after another.

What gets launched is recorded by running nnspec's own forward and backward wrappers with
the launch replaced (:func:`record_launches`), so the tool cannot drift from the wrappers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import torch

# H100 / H200 (sm_90): cudaDevAttrMaxSharedMemoryPerBlockOptin.
SM90_SMEM_OPTIN = 232448
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill": re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads"),
    "smem": re.compile(r"(\d+) bytes smem"),
}


@dataclass(frozen=True)
class Job:
    """One shape of the fused layer: x (M, K) @ W.T (K, N), in ``dtype`` at ``precision``."""

    m: int
    k: int
    n: int
    dtype: str
    precision: str = "ieee"  # float32 only: "tf32" when PyTorch's matmuls may use TF32

    @property
    def label(self) -> str:
        p = f" {self.precision}" if self.dtype == "float32" else ""
        return f"{self.m}x{self.k}->{self.n} {self.dtype}{p}"


@dataclass
class Launch:
    """One kernel launch as the wrapper makes it: which kernel, its arguments, kept configs."""

    kernel: str  # fwd | dx | dw
    raw: object  # the JITFunction
    args: tuple
    kwargs: dict
    configs: list  # the configs the autotuner's pruner keeps for these arguments


def _linear_module():
    from nnspec.kernels import _dispatch

    return _dispatch.load("linear_leaky_relu_op", torch.device("cuda"))


@contextlib.contextmanager
def _fp32_precision(precision: str):
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old = matmul.fp32_precision
        matmul.fp32_precision = precision
    else:
        old = matmul.allow_tf32
        matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = old
        else:
            matmul.allow_tf32 = old


def record_launches(job: Job, device: str = "cpu", smem_budget: int = SM90_SMEM_OPTIN) -> list[Launch]:
    """The three launches (forward, dx, dW with bias) nnspec's wrappers make for ``job``,
    each with the configurations the autotuner's pruner keeps.  Nothing is launched."""
    lin = _linear_module()
    names = {id(lin._fwd_tuned): "fwd", id(lin._dx_tuned): "dx", id(lin._dw_tuned): "dw"}
    launches: list[Launch] = []

    def record(tuned, raw, grid_tiles, *args, **kwargs):
        kwargs["FMA"] = False  # float64 takes a fixed config and is not tuned
        named = dict(zip(raw.arg_names, args))
        kept = lin.kept_configs(tuned.configs, named, smem_budget, **kwargs)
        launches.append(Launch(names[id(tuned)], raw, args, dict(kwargs), kept))

    dt = DTYPES[job.dtype]
    x = torch.empty(job.m, job.k, dtype=dt, device=device)
    w = torch.empty(job.n, job.k, dtype=dt, device=device)
    b = torch.empty(job.n, dtype=dt, device=device)
    saved = lin._launch
    lin._launch = record
    try:
        with _fp32_precision(job.precision):
            out, mask = lin.forward(x, w, b, 0.01)
            lin.backward(torch.empty_like(out), mask, x, w, 0.01, True, True, True)
    finally:
        lin._launch = saved
    return launches


# --------------------------------------------------------------------------- ahead of time


@dataclass
class Compiled:
    job: str
    kernel: str
    config: str
    specialisation: str
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)


def _specialise(raw, args, constexprs: dict):
    """(signature, constexprs, attrs, description) the JIT would derive from ``args``."""
    import triton  # noqa: F401 - registers the backends
    from triton.backends.compiler import BaseBackend

    try:
        from triton._C.libtriton import native_specialize_impl as specialize
    except ImportError:  # older Triton: the same rule, spelled out
        specialize = None
    sig, consts, attrs, desc = {}, dict(constexprs), {}, []
    for i, (name, value) in enumerate(zip(raw.arg_names, args)):
        if specialize is not None:
            ty, key = specialize(BaseBackend, value, False, True, True)
        elif isinstance(value, torch.Tensor):
            ty = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
                        torch.int8: "i8"}[value.dtype]  # fmt: skip
            key = "D" if value.data_ptr() % 16 == 0 else ""
        elif isinstance(value, float):
            ty, key = "fp32", None
        else:
            ty, key = ("constexpr", 1) if value == 1 else ("i32" if abs(value) < 2**31 else "i64", "D" if value % 16 == 0 else "")
        if ty == "constexpr":
            sig[name] = "constexpr"
            consts[name] = key
            desc.append(f"{name}=1")
            continue
        sig[name] = ty
        if isinstance(key, str) and "D" in key:
            attrs[(i,)] = [["tt.divisibility", 16]]
            if not ty.startswith("*"):
                desc.append(f"{name}%16")
    for name in raw.arg_names:
        if name in consts and name not in sig:
            sig[name] = "constexpr"
    return {n: sig[n] for n in raw.arg_names}, consts, attrs, " ".join(desc)


def ptxas_stats(log: str) -> dict:
    regs = PTXAS_RE["regs"].findall(log)
    spills = PTXAS_RE["spill"].findall(log)
    smem = PTXAS_RE["smem"].findall(log)
    return {
        "regs": max(map(int, regs)) if regs else None,
        "spill_stores": sum(int(s) for s, _ in spills) if spills else None,
        "spill_loads": sum(int(l) for _, l in spills) if spills else None,
        "shared": max(map(int, smem)) if smem else None,
    }


def _config_label(cfg) -> str:
    k = cfg.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"


def aot_one(job: Job, kernel: str, label: str, arch: int) -> Compiled:
    """Compile launch ``kernel`` of ``job`` with its kept config ``label`` for sm_``arch``."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launch = next(la for la in record_launches(job) if la.kernel == kernel)
    cfg = next(c for c in launch.configs if _config_label(c) == label)
    sig, consts, attrs, desc = _specialise(launch.raw, launch.args, {**launch.kwargs, **cfg.kwargs})
    row = Compiled(job.label, kernel, _config_label(cfg), desc)
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True
        with tempfile.TemporaryDirectory() as cache, contextlib.redirect_stdout(log):
            # a private, empty cache: ptxas runs (and logs) for every config, every time
            triton.knobs.cache.dir = cache
            src = ASTSource(fn=launch.raw, signature=sig, constexprs=consts, attrs=attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        stats = ptxas_stats(log.getvalue())
        for key, value in stats.items():
            setattr(row, key, value)
        row.shared = max(row.shared or 0, int(compiled.metadata.shared))  # Triton's dynamic smem
        if stats["regs"] is None:
            row.error = "no ptxas -v output: " + log.getvalue()[-300:]
    except Exception as exc:  # noqa: BLE001 - reported per config, never fatal for the others
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    row.seconds = round(time.perf_counter() - t0, 2)
    return row


def distinct_work(jobs: list[Job], arch: int = 90) -> list[tuple[str, Job, str, int, int]]:
    """(key, job, kernel, config label, tile area) for every kept config of every launch of
    every job, once per distinct compilation: launches of different jobs with the same
    specialisation share one."""
    work, seen = [], set()
    for job in jobs:
        for launch in record_launches(job):
            for i, cfg in enumerate(launch.configs):
                spec = _specialise(launch.raw, launch.args, {**launch.kwargs, **cfg.kwargs})
                # the JIT's own cache key: the kernel's source, what it calls, Triton's version
                key = "|".join((launch.raw.cache_key, str(arch), launch.kernel, repr(sorted(spec[0].items())),
                                repr(sorted(spec[1].items(), key=str)), repr(sorted(spec[2])), _config_label(cfg),
                                str(cfg.num_warps), str(cfg.num_stages)))  # fmt: skip
                if key not in seen:
                    seen.add(key)
                    work.append((key, job, launch.kernel, _config_label(cfg), cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"]))
    return work


def aot_all(jobs: list[Job], arch: int = 90, processes: int | None = None, log=print,
            cache: str | None = None) -> list[Compiled]:  # fmt: skip
    """Every kept config of every launch of every job, compiled in parallel processes.

    Launches of different jobs with the same specialisation compile once.  ``cache``: a JSON
    file of earlier results, keyed by the kernel's source (with what it calls) and Triton's
    version - the JIT's cache key -, the target, the specialisation and the config, so that
    only what changed is compiled again.
    """
    work = distinct_work(jobs, arch)
    done: dict = {}
    if cache and os.path.exists(cache):
        with open(cache) as f:
            done = json.load(f)
    rows: list[Compiled] = [Compiled(**done[w[0]]) for w in work if w[0] in done]
    todo = sorted((w for w in work if w[0] not in done), key=lambda w: -w[4])  # big tiles compile slowest: first
    if rows:
        log(f"{len(rows)} kernels from {cache}, {len(todo)} to compile")
    processes = processes or max(1, os.cpu_count() or 1)
    with ProcessPoolExecutor(processes) as pool:
        futures = {pool.submit(aot_one, job, kernel, label, arch): key for key, job, kernel, label, _ in todo}
        for fut in as_completed(futures):
            row = fut.result()
            rows.append(row)
            if cache and not row.error:
                done[futures[fut]] = asdict(row)
                os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
                with open(cache + ".tmp", "w") as f:
                    json.dump(done, f)
                os.replace(cache + ".tmp", cache)
            flag = "SPILLS" if row.spills else ("ERROR " + row.error if row.error else "ok")
            log(f"{row.job:32s} {row.kernel:3s} {row.config:18s} regs={row.regs} "
                f"spill={row.spill_stores}/{row.spill_loads} smem={row.shared} {row.seconds}s  {flag}"
                f"  [{row.specialisation}]")
    rows.sort(key=lambda r: (r.job, r.kernel, r.config))
    return rows


# --------------------------------------------------------------------------- on the GPU


def gpu_one(job: Job, kernel: str, label: str) -> str:
    """Launch (and so compile into the shared cache) one kept config of one launch."""
    import triton

    dev = torch.device("cuda")
    budget = torch.cuda.get_device_properties(dev).shared_memory_per_block_optin
    launch = next(la for la in record_launches(job, "cuda", budget) if la.kernel == kernel)
    cfg = next((c for c in launch.configs if _config_label(c) == label), None)
    if cfg is None:
        return f"{job.label} {kernel} {label}: not kept on this GPU (shared memory {budget} B)"
    tiles = {"fwd": ("M", "BLOCK_M", "N", "BLOCK_N"), "dx": ("M", "BLOCK_M", "K", "BLOCK_K"),
             "dw": ("N", "BLOCK_N", "K", "BLOCK_K")}[kernel]  # fmt: skip
    named = dict(zip(launch.raw.arg_names, launch.args))
    grid = (triton.cdiv(named[tiles[0]], cfg.kwargs[tiles[1]]) * triton.cdiv(named[tiles[2]], cfg.kwargs[tiles[3]]),)
    t0 = time.perf_counter()
    launch.raw[grid](*launch.args, **launch.kwargs, **cfg.all_kwargs())
    torch.cuda.synchronize()
    return f"{job.label} {kernel} {_config_label(cfg)}: {time.perf_counter() - t0:.1f}s"


def gpu_all(jobs: list[Job], processes: int, log=print) -> int:
    """Fill TRITON_CACHE_DIR with every kept config of every job; returns the failures."""
    work = sorted(distinct_work(jobs), key=lambda w: -w[4])  # big tiles compile slowest: first
    failures = 0
    # spawned, not forked: a child forked from a process that touched CUDA cannot use it
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(gpu_one, job, kernel, label): (job, kernel, label) for _, job, kernel, label, _ in work}
        for fut in as_completed(futures):
            try:
                log(fut.result())
            except Exception as exc:  # noqa: BLE001
                failures += 1
                job, kernel, label = futures[fut]
                log(f"{job.label} {kernel} {label}: FAILED {type(exc).__name__}: {exc}")
    return failures


# --------------------------------------------------------------------------- command line

# The shapes that get autotuned on a GPU, as (M, K, N): the shipped specs' fused layers at
# their batch sizes (train, the last partial batch of an epoch, eval; the ablation baseline
# trains at batch 1), the bench's (tiny, MNIST, 4096^3) and the CUDA tests'.
DEFAULT_SHAPES = [
    (32, 784, 200), (64, 784, 200), (96, 784, 200), (128, 784, 200), (1000, 784, 200), (10000, 784, 200),
    (1, 784, 200), (1, 200, 10), (10000, 200, 10), (96, 3136, 128), (128, 3136, 128), (1000, 3136, 256),
    (64, 96, 40), (1024, 784, 200), (4096, 4096, 4096),
    (1, 64, 333), (300, 257, 333), (516, 1000, 333), (512, 384, 256), (231, 96, 130),
]


def parse_job_args(shapes: list[str] | None, dtypes: str) -> list[Job]:
    triples = [tuple(int(v) for v in s.split(",")) for s in shapes] if shapes else DEFAULT_SHAPES
    jobs = []
    for m, k, n in triples:
        for d in dtypes.split(","):
            if d == "float32":
                jobs += [Job(m, k, n, d, "ieee"), Job(m, k, n, d, "tf32")]
            else:
                jobs.append(Job(m, k, n, d))
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nnspec.bench.precompile", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--aot", action="store_true", help="compile for --arch without a GPU and report spills")
    mode.add_argument("--gpu", action="store_true", help="launch every kept config once on this machine's GPU")
    mode.add_argument("--list", action="store_true", help="list each launch and its kept configs (sm_90 budget)")
    p.add_argument("--shape", action="append", metavar="M,K,N", help="a layer shape (repeatable; default: the specs')")
    p.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated (float32 means IEEE and TF32)")
    p.add_argument("--arch", type=int, default=90, help="compute capability for --aot (default 90)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write every compiled config's numbers here (--aot)")
    p.add_argument("--fail-on-spills", action="store_true", help="exit 1 when a kept config spills (--aot)")
    p.add_argument("--cache", help="reuse and extend earlier --aot results kept in this JSON file")
    a = p.parse_args(argv)
    jobs = parse_job_args(a.shape, a.dtypes)
    if a.list:
        total = 0
        for job in jobs:
            for la in record_launches(job):
                total += len(la.configs)
                print(f"{job.label:32s} {la.kernel:3s} {len(la.configs)} configs: "
                      + ", ".join(_config_label(c) for c in la.configs))  # fmt: skip
        print(f"{total} kernels to compile for {len(jobs)} jobs")
        return 0
    if a.gpu:
        return 1 if gpu_all(jobs, a.processes) else 0
    t0 = time.perf_counter()
    rows = aot_all(jobs, a.arch, a.processes, cache=a.cache)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    bad = [r for r in rows if r.error or r.spills]
    print(f"{len(rows)} kernels compiled for sm_{a.arch} in {time.perf_counter() - t0:.0f}s: "
          f"{sum(r.spills for r in rows)} spill, {sum(bool(r.error) for r in rows)} failed")  # fmt: skip
    return 1 if bad and (a.fail_on_spills or any(r.error for r in bad)) else 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before anything imports triton
    sys.exit(main())
