"""Helpers of tools/gpu-check.sh (standard library, plus torch for the machine record).

    python tools/gpu_check_report.py machine OUT/machine.json   record the machine
    python tools/gpu_check_report.py summary OUT WORK           OUT/report.md + OUT/report.json

Runs before nnspec is installed and after any step failed, so it imports nothing of nnspec
and treats every input file as possibly missing or cut short.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata

PACKAGES = ("torch", "triton", "numpy", "pydantic", "PyYAML", "tabulate", "safetensors", "pytest",
            "hypothesis", "pytest-timeout", "matplotlib", "setuptools", "nnspec")  # fmt: skip
SMI_FIELDS = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,power.limit,"
              "temperature.gpu,persistence_mode,memory.used,memory.total")  # fmt: skip


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _smi() -> dict | str:
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,nounits"],
                              capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi unavailable: {exc}"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        return f"nvidia-smi failed (rc {proc.returncode}): {proc.stderr.strip()[:200]}"
    keys = [k.strip() for k in lines[0].split(",")]
    return dict(zip(keys, (v.strip() for v in lines[1].split(","))))


def machine(path: str) -> int:
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                  "cpu_count": os.cpu_count(), "packages": {p: _version(p) for p in PACKAGES}}  # fmt: skip
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {k: getattr(p, k, None) for k in (
                "name", "major", "minor", "multi_processor_count", "total_memory", "L2_cache_size",
                "shared_memory_per_block_optin", "regs_per_multiprocessor", "warp_size")}  # fmt: skip
            matmul = torch.backends.cuda.matmul
            info["fp32_matmul_precision"] = getattr(matmul, "fp32_precision", None)
            info["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:  # noqa: BLE001 - the record is written whatever fails
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    info["nvidia_smi"] = _smi()
    with open(path, "w") as f:
        json.dump(info, f, indent=1, default=str)
    print(json.dumps(info, indent=1, default=str))
    return 0


# --------------------------------------------------------------------------- summary


def _read_steps(out: str) -> list[dict]:
    try:
        with open(os.path.join(out, "steps.tsv")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    keys = lines[0].split("\t") if lines else []
    return [dict(zip(keys, line.split("\t"))) for line in lines[1:] if line.strip()]


def _junit(path: str) -> dict:
    res = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    for case in root.iter("testcase"):
        kinds = {child.tag: child for child in case}
        test = f"{case.get('classname')}::{case.get('name')}"
        if "failure" in kinds or "error" in kinds:
            bad = kinds.get("failure", kinds.get("error"))
            res["failed" if "failure" in kinds else "errors"] += 1
            res["failures"].append({"test": test, "message": " ".join((bad.get("message") or "").split())[:400]})
        elif "skipped" in kinds:
            res["skipped"] += 1
        else:
            res["passed"] += 1
    return res


def _bench(path: str) -> dict:
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{type(exc).__name__}: {exc}"}
    rows = []
    for r in report.get("kernels") or []:
        t = r.get("time_ms") or {}
        err = r.get("error") or {}
        rows.append({"kernel": r.get("kernel"), "shape": r.get("shape_label"), "dtype": r.get("dtype"),
                     "direction": r.get("direction"), "impl": r.get("impl"), "status": r.get("status"),
                     "reason": r.get("reason"), "method": r.get("method"), "median_ms": t.get("median"),
                     "gbps": r.get("gbps"), "tflops": r.get("tflops"), "roofline": r.get("roofline_fraction"),
                     "speedup": r.get("speedup"), "max_rel_err": err.get("max_rel"),
                     "reference": err.get("reference")})  # fmt: skip
    models = [{k: m.get(k) for k in ("name", "variant", "batch_size", "status", "reason", "speedup_vs_torch")}
              | {"samples_per_s": (m.get("samples_per_s") or {}).get("median")} for m in report.get("models") or []]
    ceilings = report.get("ceilings") or {}
    return {"ceilings": {"copy_gbps": (ceilings.get("copy") or {}).get("gbps"),
                         "matmul_tflops": {k: v.get("tflops") for k, v in (ceilings.get("matmul") or {}).items()}},
            "kernels": rows, "models": models, "notes": report.get("notes")}  # fmt: skip


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def summary(out: str, work: str) -> int:
    rep: dict = {"steps": _read_steps(out), "machine": None, "tests": {}, "bench": {}, "precompile": None}
    try:
        with open(os.path.join(out, "machine.json")) as f:
            rep["machine"] = json.load(f)
    except (OSError, ValueError):
        pass
    for xml in sorted(glob.glob(os.path.join(work, "*.xml"))):
        rep["tests"][os.path.basename(xml)[:-4]] = _junit(xml)
    for rj in sorted(glob.glob(os.path.join(work, "bench-*", "report.json"))):
        rep["bench"][os.path.basename(os.path.dirname(rj))] = _bench(rj)
    try:
        with open(os.path.join(work, "precompile.json")) as f:
            rows = json.load(f)
        rep["precompile"] = {"compiled": len(rows), "spilling": [r for r in rows if r.get("spill_stores")],
                             "failed": [r for r in rows if r.get("error")]}  # fmt: skip
    except (OSError, ValueError):
        pass
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1, default=str)

    m = rep["machine"] or {}
    gpu = m.get("gpu") or {}
    pk = m.get("packages") or {}
    md = ["# nnspec GPU check", "",
          f"- device: {gpu.get('name') or 'no CUDA device'}; nvidia-smi: {m.get('nvidia_smi')}",
          f"- python {m.get('python')}, torch {pk.get('torch')} (CUDA {m.get('torch_cuda')}), triton {pk.get('triton')}, "
          f"numpy {pk.get('numpy')}, pydantic {pk.get('pydantic')}", "",
          "## Steps", "", "| step | status | rc | seconds | timeout |", "|---|---|---|---|---|"]  # fmt: skip
    md += [f"| {s.get('step')} | {s.get('status')} | {s.get('rc')} | {s.get('seconds')} | {s.get('timeout')} |"
           for s in rep["steps"]]  # fmt: skip
    ran = [s.get("step") for s in rep["steps"] if s.get("status") not in ("skipped", "running")]
    md += ["", f"Steps that ran: {', '.join(ran) or 'none'}. Logs: gpu-check.log; everything else: artifacts.tar.gz.", ""]
    md += ["## Tests", ""]
    for name, res in rep["tests"].items():
        if "unreadable" in res:
            md.append(f"- {name}: {res['unreadable']}")
            continue
        md.append(f"- {name}: {res['passed']} passed, {res['failed']} failed, {res['errors']} errors, "
                  f"{res['skipped']} skipped")  # fmt: skip
        md += [f"  - `{f['test']}`: {f['message']}" for f in res["failures"]]
    if rep["precompile"]:
        pc = rep["precompile"]
        md += ["", f"Pre-compiled {pc['compiled']} kernels; spilling: {len(pc['spilling'])}; failed: {len(pc['failed'])}"]
    md += ["", "## Bench", ""]
    for name, b in rep["bench"].items():
        if "unreadable" in b:
            md += [f"- {name}: {b['unreadable']}"]
            continue
        c = b["ceilings"]
        md += [f"### {name}", "", f"ceilings: copy {_fmt(c['copy_gbps'], 4)} GB/s; matmul "
               + ", ".join(f"{k} {_fmt(v, 4)} TFLOP/s" for k, v in c["matmul_tflops"].items()), ""]  # fmt: skip
        if b["kernels"]:
            md += ["| kernel | shape | dtype | dir | impl | status | median ms | GB/s | TFLOP/s | roofline | speedups "
                   "| max rel err | method |", "|" + "---|" * 13]  # fmt: skip
            for r in b["kernels"]:
                roof = "—" if r["roofline"] is None else f"{100 * r['roofline']:.0f}%"
                sp = ", ".join(f"{k} {v:.2f}x" for k, v in (r["speedup"] or {}).items()) or "—"
                md.append(f"| {r['kernel']} | {r['shape']} | {r['dtype']} | {r['direction']} | {r['impl']} | "
                          f"{r['status']} | {_fmt(r['median_ms'])} | {_fmt(r['gbps'], 4)} | {_fmt(r['tflops'])} | "
                          f"{roof} | {sp} | {_fmt(r['max_rel_err'])} | {r['method'] or r['reason'] or ''} |")  # fmt: skip
        for mo in b["models"]:
            md.append(f"- model {mo['name']} {mo['variant']} batch {mo['batch_size']}: {mo['status']}, "
                      f"{_fmt(mo['samples_per_s'], 4)} samples/s, vs torch {_fmt(mo['speedup_vs_torch'])} "
                      f"{mo['reason'] or ''}")  # fmt: skip
        md.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "machine":
        sys.exit(machine(sys.argv[2]))
    if len(sys.argv) >= 4 and sys.argv[1] == "summary":
        sys.exit(summary(sys.argv[2], sys.argv[3]))
    sys.exit(f"usage: {sys.argv[0]} machine OUT/machine.json | summary OUT WORK")
