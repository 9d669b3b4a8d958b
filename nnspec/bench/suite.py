"""Running a bench: machine info and ceilings first, then the kernel and model suites, then
the report.  Imports pydantic (through nnspec.spec / nnspec.compiler) only for the model
suite, so ``python -m nnspec.bench kernels`` runs where pydantic is not installed."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

SPECS_DEFAULT = ("mlp.yaml", "cnn_residual.yaml")
SPECS_QUICK = ("mlp.yaml",)


def _log(quiet: bool):
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def _opt(args: argparse.Namespace, name: str, default=None):
    return getattr(args, name, default)


def _specs_dir() -> Path | None:
    here = Path.cwd() / "specs"
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parents[2] / "specs"  # a checkout: <repo>/nnspec/bench/suite.py
    return repo if repo.is_dir() else None


#: Where reports go without --out: a folder of the current directory, never the source tree's reports/
#: (which holds the committed reports; a run there showed up as untracked files in the checkout).
DEFAULT_OUT_ROOT = Path("bench-reports")


def default_out_dir(slug: str, command: str | None, suite: str) -> Path:
    """``bench-reports/<device>[-kernels|-models][-<suite>]-<date>[-N]``, the first that holds no report yet."""
    date = _dt.date.today().isoformat()
    parts = [slug]
    if command in ("kernels", "models"):
        parts.append(command)
    if suite != "default" and command != "models":
        parts.append(suite)
    base = DEFAULT_OUT_ROOT / "-".join(parts + [date])
    out, n = base, 2
    while (out / "report.json").exists():
        out = base.with_name(f"{base.name}-{n}")
        n += 1
    return out


def run_suite(args: argparse.Namespace, command_line: list[str]) -> int:
    import torch

    from nnspec.version import __version__
    from nnspec.bench import kernels as K
    from nnspec.bench.machine import best_ceilings, device_slug, machine_info, measure_ceilings
    from nnspec.bench.report import FORMAT_VERSION, write_report

    started = time.perf_counter()
    log = _log(_opt(args, "quiet", False))
    command = _opt(args, "bench_command")
    want = _opt(args, "device", "auto")
    if want == "cuda" and not torch.cuda.is_available():
        print("nnspec bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if (want == "cuda" or (want == "auto" and torch.cuda.is_available())) else "cpu")
    on_cuda = device.type == "cuda"
    notes: list[str] = []

    suite = "quick" if _opt(args, "quick") else _opt(args, "suite")
    if suite is None:
        if on_cuda:
            suite = "full" if command == "kernels" else "default"
        else:
            suite = "quick"
            notes.append("CPU-only machine: the GPU-sized shapes would take hours here, so the quick shape set "
                         "ran (pass --suite default/full to force the larger ones).")  # fmt: skip

    threads = _opt(args, "threads") or torch.get_num_threads()
    torch.set_num_threads(threads)
    budget = _opt(args, "budget")
    if budget is None:
        budget = 0.1 if on_cuda else {"tiny": 0.05, "quick": 0.15, "default": 0.3, "gpu-check": 0.1, "full": 0.5}[suite]

    interp = _opt(args, "interpreter_check")
    if interp is None:
        interp = not on_cuda and suite == "quick" and command in (None, "kernels")
    interp = bool(interp) and not on_cuda
    if interp and "triton" not in sys.modules:
        # Must be decided before triton is first imported (it reads the setting at import; the
        # kernels are built, interpreted or compiled, when nnspec.kernels first launches one).
        os.environ.setdefault("TRITON_INTERPRET", "1")

    do_kernels = command in (None, "kernels")
    do_models = command in (None, "models")
    dtypes = _opt(args, "dtypes") or K.default_dtypes(device)
    bad = [d for d in dtypes if d not in K.TOLERANCE]
    if bad:
        print(f"nnspec bench: unknown dtype(s) {', '.join(bad)}", file=sys.stderr)
        return 2
    only = _opt(args, "only")
    if only and (unknown := [k for k in only if k not in K.KERNELS]):
        print(f"nnspec bench: unknown kernel(s) {', '.join(unknown)}; known: {', '.join(K.KERNELS)}", file=sys.stderr)
        return 2
    peers = list(_opt(args, "peers") or K.PEERS)
    if _opt(args, "no_compile"):
        peers = [p for p in peers if p != "compile"]

    if command == "models":
        spec_paths = list(args.model_specs)
    elif do_models:
        given = _opt(args, "specs")
        folder = _specs_dir()
        wanted = SPECS_QUICK if suite == "quick" else SPECS_DEFAULT
        if given:
            spec_paths = list(given)
        elif suite == "tiny":
            spec_paths = []
        elif folder is None:
            spec_paths = []
            notes.append(f"model suite skipped: no specs/ folder here or beside the installed package (an "
                         f"installed wheel ships none), so {', '.join(wanted)} could not be found; run from a "
                         f"checkout, or pass --specs SPEC… or use `nnspec bench models SPEC…`.")  # fmt: skip
        else:
            spec_paths = [str(folder / s) for s in wanted]
            missing = [p for p in spec_paths if not Path(p).is_file()]
            if missing:
                were = "it was" if len(missing) == 1 else "they were"
                notes.append(f"model suite: {', '.join(missing)} not found, so {were} skipped; "
                             f"pass --specs SPEC… to choose the specs.")  # fmt: skip
            spec_paths = [p for p in spec_paths if p not in missing]
    else:
        spec_paths = []

    log(f"nnspec bench: {suite} suite on {device.type}, {threads} thread{'s' if threads != 1 else ''}")
    info = machine_info(device, threads, command_line)
    out_dir = Path(_opt(args, "out") or default_out_dir(device_slug(info), command, suite))
    load0 = (info.get("load_average") or [0.0])[0]
    if not on_cuda and threads > 1 and load0 > 0.75 * (os.cpu_count() or 1):
        warning = (f"the machine is busy before the run starts (1-minute load average {load0:.1f} on "
                   f"{os.cpu_count()} CPUs) and {threads} threads were asked for: multi-threaded ops then wait "
                   f"for descheduled threads at every barrier and CPU times can inflate several-fold; "
                   f"--threads 1 gives steadier numbers on a shared machine.")  # fmt: skip
        notes.append(warning)
        log("WARNING: " + warning)
    log("measuring ceilings (copy bandwidth, matmul)...")
    ceilings = measure_ceilings(device, dtypes if do_kernels else ["float32"], threads=threads,
                                quick=suite in ("tiny", "quick"))  # fmt: skip
    copy = ceilings["copy"]
    log(f"  copy {copy['gbps']:.1f} GB/s; " + "; ".join(
        f"matmul {dt} {m['tflops']:.3g} TFLOP/s" for dt, m in ceilings["matmul"].items()))  # fmt: skip

    report: dict = {
        "format_version": FORMAT_VERSION,
        "tool": "nnspec bench",
        "nnspec_version": __version__,
        "suite": suite,
        "command": command or "default",
        "machine": info,
        "ceilings": ceilings,
        "settings": {
            "device": str(device), "threads": threads, "budget_s": budget, "seed": _opt(args, "seed", 0),
            "dtypes": dtypes, "peers": peers, "graph_below_us": _opt(args, "graph_below_us", 50.0),
            "graph_inner": 20, "tolerances": dict(K.TOLERANCE), "tolerance_tf32_linear": K.TOLERANCE_TF32,
            "slope": K.SLOPE, "batch_norm": {"momentum": K.BN_MOMENTUM, "eps": K.BN_EPS},
        },  # fmt: skip
        "kernels": [],
        "models": [],
        "accuracy": [],
        "interpreter_checks": [],
        "notes": notes,
    }

    if do_kernels:
        kctx = K.KernelContext(device=device, threads=threads, ceilings=ceilings, budget_s=budget,
                               graph_below_s=_opt(args, "graph_below_us", 50.0) * 1e-6, seed=_opt(args, "seed", 0),
                               peers=peers, log=log)  # fmt: skip
        cases = K.suite_cases(suite, device, dtypes, only)
        why = K.liger_unavailable(device) if "liger" in peers else None
        if why and any(c.kernel == "softmax_cross_entropy" for c in cases):
            notes.append(f"Liger-Kernel's cross-entropy was not run as a peer: {why}.")
        report["kernels"] = K.run_kernels(cases, kctx)
        # Measure the ceilings again now that the suite is done and keep the better of the two:
        # a burst of load during the first measurement must not make rows look > 100%.
        log("measuring ceilings again...")
        again = measure_ceilings(device, dtypes, threads=threads, quick=suite in ("tiny", "quick"))
        report["ceilings"] = ceilings = best_ceilings(ceilings, again)
        K.rederive(report["kernels"], ceilings)
        if interp:
            log("Triton interpreter correctness checks (not timed)...")
            report["interpreter_checks"] = K.interpreter_checks(kctx)

    if spec_paths:
        try:
            from nnspec.bench import models as M
        except ImportError as exc:  # pragma: no cover - exercised on hosts without pydantic
            notes.append(f"model suite skipped: {exc} (it needs the full nnspec install)")
            M = None
        if M is not None:
            try:
                import nnspec.compiler  # noqa: F401 - needs pydantic
            except ImportError as exc:
                notes.append(f"model suite skipped: {exc} (it needs the full nnspec install, incl. pydantic)")
            else:
                mctx = M.ModelContext(device=device, threads=threads, batch_size=_opt(args, "batch_size"),
                                      budget_s=1.0 if suite != "tiny" else 0.3, seed=_opt(args, "seed", 0),
                                      log=log, overrides=list(_opt(args, "set", []) or []),
                                      target_accuracy=_opt(args, "target_accuracy"))  # fmt: skip
                report["models"] = M.run_models(spec_paths, mctx, _opt(args, "variants"))
                if _opt(args, "accuracy"):
                    report["accuracy"] = M.run_accuracy(spec_paths, mctx, out_dir)

    report["duration_s"] = time.perf_counter() - started
    from nnspec.bench.machine import load_average

    report["machine"]["load_average_end"] = load_average()
    busy = max((info.get("load_average") or [0])[0], (report["machine"]["load_average_end"] or [0])[0])
    if device.type == "cpu" and busy > 1.25 * (os.cpu_count() or 1):
        notes.append(f"the machine was busy (1-minute load average up to {busy:.1f} on {os.cpu_count()} CPUs): "
                     "other processes competed for the cores, so CPU times are noisier and slower than on an "
                     "idle machine; compare spreads, not just medians.")  # fmt: skip
    paths = write_report(report, out_dir)

    rows = report["kernels"] + report["models"]
    failed = [r for r in rows if r.get("status") == "failed"]
    errors = [r for r in rows if r.get("status") == "error"]
    bad_interp = [c for c in report["interpreter_checks"] if not c["ok"]]
    print(f"nnspec bench: {len(rows)} rows ({len(failed)} failed, {len(errors)} errors) "
          f"in {report['duration_s']:.0f} s -> {paths['markdown']}")  # fmt: skip
    for r in failed + errors:
        what = r.get("kernel") or r.get("name")
        print(f"  {r['status'].upper()}: {what} {r.get('shape_label', r.get('variant'))} "
              f"{r.get('dtype', '')} {r.get('direction', '')} {r.get('impl', '')}: {r.get('reason')}")  # fmt: skip
    for c in bad_interp:
        print(f"  INTERPRETER FAILED: {c['kernel']} {c['shape_label']} {c['direction']}: {c.get('reason')}")
    return 1 if (failed or bad_interp) else 0
