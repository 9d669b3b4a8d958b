"""Writing a bench report: report.json (every number), report.md (tables), PNG plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

FORMAT_VERSION = 1
IMPL_ORDER = {"nnspec": 0, "eager": 1, "compile": 2, "liger": 3}
PEER_COLUMNS = ("eager", "compile", "liger")
METHOD_CODES = (("cuda-graph", "G"), ("cuda-events", "E"), ("cpu-timer", "C"))


# --------------------------------------------------------------------------- JSON


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(clean(report), indent=1, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- formatting


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured pipe table (tabulate when installed; the same layout without it)."""
    try:
        from tabulate import tabulate

        return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    except ImportError:  # the GPU hosts may lack tabulate; the table must not depend on it
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
        lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
        return "\n".join(lines)


def fmt_time(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1:
        return f"{ms * 1e3:.1f} µs"
    if ms < 1000:
        return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms / 1e3:.2f} s"


def fmt_spread(t: dict | None) -> str:
    if not t:
        return "—"
    return f"{fmt_time(t['p10'])} – {fmt_time(t['p90'])}"


def fmt_num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%" if x >= 0.1 else f"{100 * x:.1f}%"


def fmt_x(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def fmt_err(x: float | None) -> str:
    return "—" if x is None else ("0" if x == 0 else f"{x:.1e}")


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def method_code(method: str | None) -> str:
    if not method:
        return "—"
    for key, code in METHOD_CODES:
        if method.startswith(key):
            return code
    return method


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _impl_label(row: dict, device: str) -> str:
    if row["impl"] == "nnspec" and device != "cuda":
        return "nnspec (torch fallback)"
    return row["impl"]


# --------------------------------------------------------------------------- markdown


def _reading_guide(report: dict) -> list[str]:
    cpu = report["machine"]["device"] != "cuda"
    lines = [
        "## How to read this report",
        "",
        "- One row = one implementation of one op at one shape, dtype and direction. `fwd` = forward only "
        "(inputs without grad); `fwd+bwd` = forward + `torch.autograd.grad` of every differentiable input.",
        "- **median**, **p10–p90**: per-call wall time on the device; lower is better.",
        "- **TFLOP/s**, **GB/s**: the *minimum* work the op needs (multiply-add = 2 FLOPs; bytes = each input "
        "read once + each output written once) divided by the median time — not what the implementation "
        "actually moves, so a kernel that re-reads its input scores lower, by design.",
        "- **roofline**: the time the op would take at this machine's *measured* ceilings (copy bandwidth; "
        "dense matmul for the linear kernel; measured at the start and the end of the run, the better kept, each at "
        "its fastest 10%, since interference only slows) "
        "divided by the median time. 100% = at the hardware limit; above 100% means the ceiling "
        "measurement was disturbed or the op beat a plain copy / mm on this machine.",
        "- **vs eager / vs compile / vs liger** (on the nnspec row): that peer's median / ours; >1 = nnspec "
        "is faster.",
        "- **max abs / max rel err**: worst |out − ref| and worst |out − ref| / max|ref| over the output, every "
        "gradient and BatchNorm's running statistics, against a float64 PyTorch reference computed from the "
        "same inputs. A row over the tolerance is **FAILED** and not timed.",
        "- **timing**: E = CUDA events with the L2 flushed before every call; G = CUDA graph of 20 calls "
        "(L2 warm; used when launches dominate, the event time is kept in report.json); C = "
        "`torch.utils.benchmark` on the CPU at a fixed thread count.",
    ]
    if cpu:
        lines.append(
            "- **This is a CPU run.** The `nnspec` rows time the PyTorch fallback that nnspec uses without a "
            "GPU (the Triton kernels are CUDA-only; Triton's interpreter is a correctness tool and is never "
            "timed), so their speedups measure wrapper overhead, not the Triton kernels. CPU caches are not "
            "flushed between calls: an op whose tensors fit in the last-level cache can beat the DRAM copy "
            "ceiling (roofline > 100%)."
        )
    lines.append("")
    return lines


def _machine_section(report: dict) -> list[str]:
    m = report["machine"]
    c = report.get("ceilings") or {}
    rows = [
        ("device", m.get("device_name")),
        ("CPU", f"{m.get('cpu')} ({m.get('cpu_count')} logical CPUs, {_threads(m.get('threads'))} for torch)"),
        ("torch / triton", f"{m.get('torch')} / {m.get('triton') or 'not installed'}"),
        ("python", m.get("python")),
    ]
    if m["device"] == "cuda":
        g = m.get("gpu") or {}
        smi = g.get("nvidia_smi") or {}
        rows += [
            ("CUDA / driver / cuDNN", f"{m.get('cuda')} / {m.get('driver') or 'unknown'} / {m.get('cudnn')}"),
            ("GPU", f"sm_{g.get('capability', '?').replace('.', '')}, {g.get('sm_count')} SMs, "
                    f"{g.get('memory_gib')} GiB, L2 {fmt_bytes(g.get('l2_bytes'))}, "
                    f"TF32 matmul {'on' if g.get('tf32_matmul') else 'off'}"),  # fmt: skip
            ("clocks (MHz, SM/mem now, max)", (f"{smi.get('clocks_sm')}/{smi.get('clocks_mem')}, "
                                               f"{smi.get('clocks_max_sm')}/{smi.get('clocks_max_mem')}")
             if smi else "not readable"),  # fmt: skip
        ]
    rows.append(("liger-kernel", m.get("liger_kernel") or "not installed"))
    git = m.get("git") or {}
    rows.append(("git commit", (git.get("commit", "")[:12] + (" (with local edits)" if git.get("dirty") else ""))
                 if git else "unknown"))  # fmt: skip
    rows.append(("date", m.get("date")))
    if m.get("load_average"):
        end = m.get("load_average_end")
        rows.append(("load average (1/5/15 min)", " / ".join(map(str, m["load_average"])) + " at start"
                     + (f"; {' / '.join(map(str, end))} at end" if end else "")))  # fmt: skip
    rows.append(("command", f"`{m.get('command')}`"))
    def when(entry: dict) -> str:
        return f", best of start/end: {entry['measured']}" if entry.get("measured") else ""

    def statistic(entry: dict) -> str:
        # A ceiling is a p10 (its fastest samples) while the rows are medians: say so where
        # the number is, so a row a little under 100% of it is not read as a shortfall.
        n = (entry.get("time_ms") or {}).get("n")
        return f"; at the p10 time of {n} samples, while rows are medians" if n else "; at the p10 time, rows are medians"

    copy = c.get("copy") or {}
    if copy:
        rows.append(("ceiling: copy bandwidth",
                     f"**{copy['gbps']:.1f} GB/s** ({copy['what']}{when(copy)}{statistic(copy)})"))
    for dt, mm in (c.get("matmul") or {}).items():
        rows.append((f"ceiling: matmul {dt}", f"**{mm['tflops']:.3g} TFLOP/s** ({mm['what']}{when(mm)}{statistic(mm)})"))
    return ["## Machine and measured ceilings", "", table(rows, ["", ""]), ""]


def _headline(report: dict) -> list[str]:
    rows = [r for r in report.get("kernels", []) if r["impl"] == "nnspec"]
    if not rows:
        return []
    device = report["machine"]["device"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["dtype"], r["direction"])].append(r)
    peers = [p for p in PEER_COLUMNS if any(p in r.get("speedup", {}) for r in rows)]
    out_rows = []
    for (kernel, dtype, direction), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        roof = [r["roofline_fraction"] for r in ok if r.get("roofline_fraction") is not None]
        worst_err = max((r["error"]["max_rel"] for r in rs if r.get("error") and r["error"].get("max_rel") is not None),
                        default=None)  # fmt: skip
        line = [kernel, dtype, direction, f"{len(ok)}/{len(rs)}"]
        line += [fmt_x(geomean(r["speedup"].get(p) for r in ok)) for p in peers]
        line += [fmt_pct(max(roof)) if roof else "—", fmt_err(worst_err)]
        out_rows.append(line)
    who = "nnspec (torch fallback)" if device != "cuda" else "nnspec"
    headers = ["kernel", "dtype", "dir", "shapes ok"] + [f"vs {p} (geomean)" for p in peers]
    headers += ["best roofline", "worst rel err"]
    return [f"## Headline: {who} against its peers", "", table(out_rows, headers), ""]


def _kernel_tables(report: dict, plots: dict[str, str]) -> list[str]:
    rows = report.get("kernels", [])
    if not rows:
        return []
    device = report["machine"]["device"]
    lines = ["## Kernels", ""]
    by_kernel: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_kernel[r["kernel"]].append(r)
    peers = [p for p in PEER_COLUMNS if any(r["impl"] == p for r in rows)]
    headers = ["shape", "dtype", "dir", "impl", "median", "p10–p90", "TFLOP/s", "GB/s", "roofline"]
    headers += [f"vs {p}" for p in peers] + ["max abs err", "max rel err", "timing"]
    for kernel, krows in by_kernel.items():
        lines += [f"### {kernel}", ""]
        notes: list[str] = []
        out = []
        for r in krows:  # suite order: shape, then direction, implementations in IMPL_ORDER
            shape = r["shape_label"] + (f" ({r['tag']})" if r.get("tag") else "")
            if r["status"] == "ok":
                med, spread = fmt_time(r["time_ms"]["median"]), fmt_spread(r["time_ms"])
            else:
                med, spread = r["status"].upper(), ""
            if r.get("reason"):
                notes.append(f"{len(notes) + 1}. {shape} {r['dtype']} {r['direction']} {r['impl']}: {r['reason']}")
                med += f" [{len(notes)}]"
            err = r.get("error") or {}
            line = [shape, r["dtype"], r["direction"], _impl_label(r, device), med, spread,
                    fmt_num(r.get("tflops")), fmt_num(r.get("gbps")), fmt_pct(r.get("roofline_fraction"))]  # fmt: skip
            line += [fmt_x(r.get("speedup", {}).get(p)) if r["impl"] == "nnspec" else "" for p in peers]
            line += [fmt_err(err.get("max_abs")), fmt_err(err.get("max_rel")), method_code(r.get("method"))]
            out.append(line)
        lines += [table(out, headers), ""]
        flips = [(r["error"]["activation_flips"], r["error"]["elements"]) for r in krows
                 if (r.get("error") or {}).get("activation_flips") is not None]
        if flips:
            worst = max(flips, key=lambda f: f[0] / max(f[1], 1))
            lines += [f"fwd+bwd rows are checked with each implementation's own activation pattern (LeakyReLU's "
                      f"kink: a pre-activation within rounding of 0 may land on either side); at most "
                      f"{worst[0]} of {worst[1]} elements fell on the other side than in float64.", ""]
        compiled = [r["first_call_s"] for r in krows if r["impl"] == "compile" and r.get("first_call_s") is not None]
        if compiled:
            lines += [f"torch.compile (dynamic=False, once per shape and direction): first call "
                      f"{min(compiled):.1f}–{max(compiled):.1f} s, not included in the times.", ""]
        refs = sorted({(r.get("error") or {}).get("reference") for r in krows} - {None, "itself"})
        if refs and refs != ["float64"]:
            lines += ["Reference: " + "; ".join(refs) + ".", ""]
        if notes:
            lines += ["Notes:", "", *notes, ""]
        if kernel in plots:
            lines += [f"![{kernel}]({plots[kernel]})", ""]
    return lines


def _model_tables(report: dict, plots: dict[str, str]) -> list[str]:
    lines: list[str] = []
    rows = report.get("models", [])
    if rows:
        headers = ["spec", "variant", "batch", "samples/s", "p10–p90", "step", "vs torch", "peak memory",
                   "max rel err", "first step", "loss / optimizer"]  # fmt: skip
        out, notes = [], []
        for r in rows:
            ok = r["status"] == "ok"
            sps = r.get("samples_per_s") or {}
            status = f"{sps['median']:.0f}" if ok else r["status"].upper()
            if r.get("reason"):
                notes.append(f"{len(notes) + 1}. {r.get('name')} {r.get('variant')}: {r['reason']}")
                status += f" [{len(notes)}]"
            out.append([
                r.get("name"), r.get("variant"), r.get("batch_size"), status,
                f"{sps['p10']:.0f} – {sps['p90']:.0f}" if ok else "", fmt_time((r.get("step_ms") or {}).get("median")),
                fmt_x(r.get("speedup_vs_torch")), fmt_bytes(r.get("peak_memory_bytes")) if ok else "",
                fmt_err((r.get("error") or {}).get("max_rel")),
                f"{r['first_step_s']:.2f} s" if r.get("first_step_s") is not None else "—",
                f"{r.get('loss')} / {r.get('optimizer')}" if r.get("loss") else "",
            ])  # fmt: skip
        methods = sorted({r.get("memory_method") for r in rows if r.get("memory_method")})
        lines += ["## Models: training-step throughput", "",
                  "Synthetic batches already on the device (measures compute, not data loading); every variant "
                  "starts from the same weights and is checked against a float64 copy of the model (eval mode) "
                  "before timing. `first step` includes compilation. Peak memory: " + ("; ".join(methods) or "n/a")
                  + ".", "", table(out, headers), ""]  # fmt: skip
        if notes:
            lines += ["Notes:", "", *notes, ""]
        if "models" in plots:
            lines += [f"![models]({plots['models']})", ""]
    acc = report.get("accuracy", [])
    if acc:
        out = [[r.get("spec"), r.get("kernels", "—"), r["status"],
                "—" if r.get("test_accuracy") is None else f"{100 * r['test_accuracy']:.2f}%",
                "—" if r.get("time_to_accuracy_s") is None else f"{r['time_to_accuracy_s']:.1f} s",
                "—" if r.get("wall_s") is None else f"{r['wall_s']:.1f} s",
                r.get("reason") or ""] for r in acc]  # fmt: skip
        target = next((r.get("target_accuracy") for r in acc if r.get("target_accuracy") is not None), None)
        what = (f"training time until validation accuracy first reached {100 * target:.1f}%" if target is not None
                else "wall time of the whole run (no --target-accuracy given)")  # fmt: skip
        lines += ["## Accuracy (full training runs through nnspec.train)", "",
                  f"Time to accuracy = {what}.", "",
                  table(out, ["spec", "kernels", "status", "test accuracy", "time to accuracy", "run wall time",
                              "note"]), ""]  # fmt: skip
    return lines


def _interpreter_section(report: dict) -> list[str]:
    checks = report.get("interpreter_checks") or []
    if not checks:
        return []
    out = [[c["kernel"], c["shape_label"], c["dtype"], c["direction"], fmt_err(c.get("max_abs")),
            fmt_err(c.get("max_rel")), "ok" if c["ok"] else f"FAILED: {c.get('reason')}"] for c in checks]  # fmt: skip
    return ["## Triton kernels under Triton's CPU interpreter (correctness only, not timed)", "",
            table(out, ["kernel", "shape", "dtype", "dir", "max abs err", "max rel err", "status"]), ""]  # fmt: skip


def markdown(report: dict, plots: dict[str, str]) -> str:
    m = report["machine"]
    title = f"# nnspec bench: {m.get('device_name')} ({report.get('suite')} suite)"
    lines = [title, "", f"{m.get('date')} · torch {m.get('torch')} · triton {m.get('triton') or '—'}"
             + (f" · CUDA {m.get('cuda')} · driver {m.get('driver')}" if m["device"] == "cuda" else "")
             + f" · {_threads(m.get('threads'))} · took {report.get('duration_s', 0):.0f} s", ""]  # fmt: skip
    lines += _reading_guide(report)
    lines += _headline(report)
    lines += _machine_section(report)
    lines += _kernel_tables(report, plots)
    lines += _model_tables(report, plots)
    lines += _interpreter_section(report)
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in report["notes"]], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots

_STYLE = {"nnspec": ("C0", "o", "-"), "eager": ("C1", "s", "--"), "compile": ("C2", "^", "--"),
          "liger": ("C3", "D", "--")}  # fmt: skip


def plot_kernels(report: dict, out_dir: Path) -> dict[str, str]:
    """One PNG per kernel: achieved throughput vs problem size, per dtype x direction, with
    the roofline (what the measured ceilings allow at that size) drawn in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("kernels", []) if r["status"] == "ok"]
    device = report["machine"]["device"]
    files = {}
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        krows = [r for r in rows if r["kernel"] == kernel]
        matmul = kernel == "linear_leaky_relu"
        metric, unit = ("tflops", "TFLOP/s") if matmul else ("gbps", "GB/s")
        dtypes = list(dict.fromkeys(r["dtype"] for r in krows))
        dirs = list(dict.fromkeys(r["direction"] for r in krows))
        fig, axes = plt.subplots(len(dtypes), len(dirs), figsize=(5.5 * len(dirs), 3.8 * len(dtypes)), squeeze=False)
        for i, dt in enumerate(dtypes):
            for j, d in enumerate(dirs):
                ax = axes[i][j]
                sel = sorted((r for r in krows if r["dtype"] == dt and r["direction"] == d), key=lambda r: r["size"])
                for impl in sorted({r["impl"] for r in sel}, key=lambda s: IMPL_ORDER.get(s, 9)):
                    pts = [r for r in sel if r["impl"] == impl]
                    color, marker, ls = _STYLE.get(impl, ("C7", "x", ":"))
                    ax.plot([r["size"] for r in pts], [r[metric] for r in pts], color=color, marker=marker,
                            linestyle=ls, label=_impl_label(pts[0], device))  # fmt: skip
                roof = {}
                for r in sel:
                    if r.get("roofline_s"):
                        work = r["flops"] / 1e12 if matmul else r["bytes"] / 1e9
                        roof[r["size"]] = work / r["roofline_s"]
                if roof:
                    xs = sorted(roof)
                    ax.plot(xs, [roof[x] for x in xs], color="black", linestyle=":", linewidth=1.5,
                            label="roofline (measured ceilings)")  # fmt: skip
                ax.set_xscale("log")
                ax.set_xlabel("problem size (FLOPs)" if matmul else "problem size (bytes of main input)")
                ax.set_ylabel(f"achieved {unit} (minimum work / time)")
                ax.set_title(f"{kernel} {dt} {d}", fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                ax.set_ylim(bottom=0)
                ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"{kernel} on {report['machine'].get('device_name')}", fontsize=11)
        fig.tight_layout()
        name = f"{kernel}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files[kernel] = name
    return files


def plot_models(report: dict, out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.get("models", []) if r.get("status") == "ok"]
    if not rows:
        return {}
    names = list(dict.fromkeys(r["name"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 + 0.9 * len(names) * len(variants)), 3.8))
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        xs, ys, err = [], [], [[], []]
        for i, n in enumerate(names):
            r = next((r for r in rows if r["name"] == n and r["variant"] == v), None)
            if r is None:
                continue
            s = r["samples_per_s"]
            xs.append(i + (k - (len(variants) - 1) / 2) * width)
            ys.append(s["median"])
            err[0].append(s["median"] - s["p10"])
            err[1].append(s["p90"] - s["median"])
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=v)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("training samples / s (median, p10–p90)")
    ax.set_title(f"training-step throughput\n{report['machine'].get('device_name')}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "models.png", dpi=110)
    plt.close(fig)
    return {"models": "models.png"}


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    try:
        plots.update(plot_kernels(report, out_dir))
        plots.update(plot_models(report, out_dir))
    except ImportError as exc:  # matplotlib missing: tables and JSON still get written
        report.setdefault("notes", []).append(f"no plots: {exc}")
    report["files"] = {"json": "report.json", "markdown": "report.md", "plots": sorted(plots.values())}
    write_json(report, out_dir / "report.json")
    (out_dir / "report.md").write_text(markdown(report, plots) + "\n")
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md",
            **{k: out_dir / v for k, v in plots.items()}}  # fmt: skip
