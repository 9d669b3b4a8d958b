"""What the benchmark ran on, and how fast this machine can go.

:func:`machine_info` records everything needed to interpret (or reproduce) a report:
device and CPU names, driver / CUDA / cuDNN, torch / triton / liger versions, clocks when
``nvidia-smi`` can tell, thread count, git commit, date and command line.  Every probe is
optional: a missing tool gives ``None``, never an error.

:func:`measure_ceilings` measures - on this device, at the start of the run - the two
numbers every row is compared against: copy bandwidth (GB/s, read + write counted) and
dense matmul throughput (TFLOP/s) per dtype.  These are *measured*, not datasheet values,
so "fraction of ceiling" means "fraction of what this machine actually sustains".
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from nnspec.bench.timing import time_cpu, time_cuda

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list[str], timeout: float = 10.0, cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_info() -> dict | None:
    """Commit of the checkout nnspec runs from (or the cwd), and whether it has local edits."""
    here = Path(__file__).resolve().parent
    commit = _run(["git", "rev-parse", "HEAD"], cwd=str(here))
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=str(here))
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


_SMI_FIELDS = ("uuid", "name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
               "power.limit", "temperature.gpu", "persistence_mode")  # fmt: skip


def nvidia_smi(uuid: str | None) -> dict | None:
    """Driver version, current / max clocks (MHz), power limit (W) and temperature (C)."""
    out = _run(["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"])
    if not out:
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    rows = [r for r in rows if len(r) == len(_SMI_FIELDS)]
    if not rows:
        return None
    chosen = rows[0]
    if uuid:
        for r in rows:
            if r[0].lower().removeprefix("gpu-") == uuid.lower().removeprefix("gpu-"):
                chosen = r
                break
        else:
            if len(rows) > 1:
                return None  # cannot tell which GPU is ours
    info: dict = dict(zip(_SMI_FIELDS, chosen))
    for key in ("clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.limit", "temperature.gpu"):
        try:
            info[key] = float(info[key])
        except (TypeError, ValueError):
            info[key] = None
    return {k.replace(".", "_"): v for k, v in info.items()}


def _driver_from_proc() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    m = re.search(r"Kernel Module\s+(\S+)", text)
    return m.group(1) if m else None


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the machine was (other processes skew CPU timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def tf32_matmul() -> bool:
    m = torch.backends.cuda.matmul
    prec = getattr(m, "fp32_precision", None)
    if prec in ("tf32", "ieee"):
        return prec == "tf32"
    try:
        return bool(m.allow_tf32)
    except RuntimeError:
        return False


def machine_info(device: torch.device, threads: int, argv: list[str] | None = None) -> dict:
    info: dict = {
        "device": device.type,
        "device_name": None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "liger_kernel": _version("liger-kernel") or _version("liger_kernel"),
        "numpy": _version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": None,
        "driver": None,
        "gpu": None,
        "git": git_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(argv if argv is not None else sys.argv),
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
                if k in os.environ},  # fmt: skip
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        uuid = str(getattr(props, "uuid", "") or "") or None
        smi = nvidia_smi(uuid)
        info["device_name"] = props.name
        info["cudnn"] = torch.backends.cudnn.version()
        info["driver"] = (smi or {}).get("driver_version") or _driver_from_proc()
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 2),
            "sm_count": props.multi_processor_count,
            "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0) or None,
            "tf32_matmul": tf32_matmul(),
            "nvidia_smi": smi,
        }
    else:
        info["device_name"] = info["cpu"]
    return info


def device_slug(info: dict) -> str:
    """Short lower-case name for report folders: 'cpu', 'nvidia-h100-80gb-hbm3', ..."""
    if info["device"] != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", (info.get("device_name") or "cuda").lower()).strip("-") or "cuda"


# --------------------------------------------------------------------------- ceilings


def measure_ceilings(device: torch.device, dtypes: list[str], *, threads: int, quick: bool) -> dict:
    """Measured copy bandwidth and dense-matmul throughput on ``device``.

    CUDA: ``dst.copy_(src)`` of 1 GiB (2 GiB moved per copy) and square matmuls of 8192 in
    bfloat16 and in every other floating dtype the run uses (float32 follows PyTorch's TF32
    setting, recorded in machine.gpu.tf32_matmul).  CPU: a 256 MiB copy and a 2048 float32
    matmul at the run's thread count.

    A ceiling is the throughput at the p10 time (the fast end of the samples), not the
    median: interference from other processes can only slow a run down, so the faster samples
    are the better estimate of what the hardware sustains.  The rows themselves use medians.
    """
    out: dict = {"copy": None, "matmul": {}}
    if device.type == "cuda":
        n_copy = (1 << 30) // 4
        free, _ = torch.cuda.mem_get_info(device)
        while n_copy * 4 * 2 > free // 2 and n_copy > (1 << 22):
            n_copy //= 2
        src = torch.randn(n_copy, device=device)
        dst = torch.empty_like(src)
        st = time_cuda(lambda: dst.copy_(src), rep_ms=200, flush=False)
        nbytes = 2 * n_copy * 4
        del src, dst
        out["copy"] = {"gbps": nbytes / st.p10 / 1e9, "bytes": nbytes, "time_ms": st.to_json_ms(),
                       "what": f"dst.copy_(src), {n_copy * 4 >> 20} MiB each way"}  # fmt: skip
        wanted = ["bfloat16"] + [d for d in dtypes if d not in ("bfloat16",)]
        n = 8192
        for name in dict.fromkeys(wanted):
            dt = dtype_of(name)
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            st = time_cuda(lambda: torch.mm(a, b), rep_ms=300, flush=False)
            flops = 2 * n**3
            del a, b
            what = f"torch.mm {n}x{n}x{n} {name}"
            if name == "float32":
                what += " (TF32)" if tf32_matmul() else " (IEEE fp32, TF32 off)"
            out["matmul"][name] = {"tflops": flops / st.p10 / 1e12, "flops": flops,
                                   "time_ms": st.to_json_ms(), "what": what}  # fmt: skip
        torch.cuda.empty_cache()
    else:
        n_copy = (256 << 20) // 4
        src = torch.randn(n_copy)
        dst = torch.empty_like(src)
        st = time_cpu(lambda: dst.copy_(src), threads=threads, budget_s=0.3 if quick else 1.0, min_blocks=5)
        nbytes = 2 * n_copy * 4
        del src, dst
        out["copy"] = {"gbps": nbytes / st.p10 / 1e9, "bytes": nbytes, "time_ms": st.to_json_ms(),
                       "what": f"dst.copy_(src), {n_copy * 4 >> 20} MiB each way, {threads} thread(s)"}  # fmt: skip
        n = 2048
        for name in dict.fromkeys(["float32"] + [d for d in dtypes if d != "float32"]):
            dt = dtype_of(name)
            a = torch.randn(n, n, dtype=dt)
            b = torch.randn(n, n, dtype=dt)
            st = time_cpu(lambda: torch.mm(a, b), threads=threads, budget_s=0.5 if quick else 1.0, min_blocks=5)
            flops = 2 * n**3
            out["matmul"][name] = {"tflops": flops / st.p10 / 1e12, "flops": flops, "time_ms": st.to_json_ms(),
                                   "what": f"torch.mm {n}x{n}x{n} {name}, {threads} thread(s)"}  # fmt: skip
    return out


def best_ceilings(first: dict, second: dict) -> dict:
    """Per metric, the higher of two ceiling measurements (interference only lowers them);
    each keeps a ``measured`` field saying which one it came from."""
    out: dict = {"copy": None, "matmul": {}}
    a, b = first.get("copy"), second.get("copy")
    if a or b:
        pick, when = (a, "start") if (b is None or (a and a["gbps"] >= b["gbps"])) else (b, "end")
        out["copy"] = {**pick, "measured": when}
    for dt in dict.fromkeys([*first.get("matmul", {}), *second.get("matmul", {})]):
        a, b = first["matmul"].get(dt), second.get("matmul", {}).get(dt)
        pick, when = (a, "start") if (b is None or (a and a["tflops"] >= b["tflops"])) else (b, "end")
        out["matmul"][dt] = {**pick, "measured": when}
    out["start"], out["end"] = first, second
    return out
