"""``nnspec bench compare A.json B.json``: what changed from report A to report B.

Rows are matched by identity - kernels by (kernel, shape, dtype, direction, impl), models by
(spec name, variant, batch size), accuracy by (spec, kernels) - and compared on their
headline number: median time for kernels (lower is better), median samples/s for models
(higher is better), test accuracy for accuracy rows (a drop of more than ``threshold``
percentage points counts).  A row that passed in A and failed or errored in B is a regression
whatever its numbers.  A change is flagged only beyond ``threshold``; the p10-p90 spreads are
shown so that a flagged change can be told apart from noise.

Speed changes are shown as ratios ("350× faster", "1.25× slower"), not as percentages: a
percentage of the time saved squashes every large speedup towards +100% (350× reads "+99.7%").

A report is named by its ``report.json`` or by its folder (what ``nnspec bench`` prints);
anything else — a missing path, the ``report.md`` beside it, a file that is not JSON — is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from nnspec.bench.report import FORMAT_VERSION, fmt_time, table


@dataclass
class Change:
    key: str
    a: str
    b: str
    change: float | None  # relative change of the "goodness" (negative = worse)
    regression: bool
    improvement: bool
    note: str = ""
    ratio: float | None = None  # speed rows: how many times faster B is than A (< 1: slower)


class ReportError(ValueError):
    """A path that is not a readable bench report; the message is the one line the user sees."""


REPORT_FILE = "report.json"


def report_path(path: str | Path) -> Path:
    """The ``report.json`` that ``path`` names: the file itself, or the one in a report folder."""
    path = Path(path)
    if path.is_dir():
        inside = path / REPORT_FILE
        if not inside.is_file():
            raise ReportError(f"{path}: a folder without a {REPORT_FILE}; pass a report folder or its {REPORT_FILE}")
        return inside
    if not path.exists():
        raise ReportError(f"{path}: no such file or folder")
    if path.suffix.lower() != ".json" and (path.parent / REPORT_FILE).is_file():
        raise ReportError(f"{path}: compare reads {REPORT_FILE}, not {path.name}; "
                          f"pass {path.parent / REPORT_FILE} or the folder {path.parent}")  # fmt: skip
    return path


def load(path: str | Path) -> dict:
    file = report_path(path)
    try:
        data = json.loads(file.read_text())
    except UnicodeDecodeError:
        raise ReportError(f"{file}: not a text file, so not an nnspec bench report") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{file}:{exc.lineno}:{exc.colno}: not JSON ({exc.msg}), so not an nnspec bench report"
                          ) from None  # fmt: skip
    except OSError as exc:
        raise ReportError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise ReportError(f"{file}: not an nnspec bench report (no format_version)")
    if not isinstance(data["format_version"], int):
        raise ReportError(f"{file}: format_version should be a whole number, got {data['format_version']!r}")
    if data["format_version"] > FORMAT_VERSION:
        raise ReportError(f"{path}: format_version {data['format_version']} is newer than this nnspec reads "
                         f"({FORMAT_VERSION})")  # fmt: skip
    return data


def _kernel_key(r: dict) -> str:
    return f"{r['kernel']} {r['shape_label']} {r['dtype']} {r['direction']} {r['impl']}"


def _model_key(r: dict) -> str:
    return f"model {r.get('name')} {r.get('variant')} batch {r.get('batch_size')}"


def _acc_key(r: dict) -> str:
    return f"accuracy {Path(str(r.get('spec'))).stem} kernels={r.get('kernels')}"


def _status_change(key: str, ra: dict, rb: dict, a_text: str, b_text: str) -> Change | None:
    if ra["status"] == "ok" and rb["status"] != "ok":
        return Change(key, a_text, rb["status"].upper(), None, True, False, rb.get("reason") or "")
    if ra["status"] != "ok" and rb["status"] == "ok":
        return Change(key, ra["status"].upper(), b_text, None, False, True, "now passes")
    if ra["status"] != "ok":
        return Change(key, ra["status"].upper(), rb["status"].upper(), None, False, False)
    return None


def compare_reports(a: dict, b: dict, threshold: float) -> tuple[list[Change], list[str]]:
    """All matched rows with their change, plus notes (unmatched rows, machine differences)."""
    changes: list[Change] = []
    notes: list[str] = []
    ma, mb = a.get("machine", {}), b.get("machine", {})
    if ma.get("device_name") != mb.get("device_name"):
        notes.append(f"different devices: A ran on {ma.get('device_name')!r}, B on {mb.get('device_name')!r}")
    for field in ("torch", "triton", "threads"):
        if ma.get(field) != mb.get(field):
            notes.append(f"{field} differs: A {ma.get(field)}, B {mb.get(field)}")

    def index(rows, keyf):
        out = {}
        for r in rows:
            if r.get("variant", "") is None:
                continue
            out[keyf(r)] = r
        return out

    for section, keyf in (("kernels", _kernel_key), ("models", _model_key), ("accuracy", _acc_key)):
        ia, ib = index(a.get(section, []), keyf), index(b.get(section, []), keyf)
        only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
        if only_a:
            notes.append(f"{len(only_a)} {section} row(s) only in A, e.g. {only_a[0]}")
        if only_b:
            notes.append(f"{len(only_b)} {section} row(s) only in B, e.g. {only_b[0]}")
        for key in [k for k in ia if k in ib]:
            ra, rb = ia[key], ib[key]
            if section == "kernels":
                ta, tb = (ra.get("time_ms") or {}), (rb.get("time_ms") or {})
                a_text = f"{fmt_time(ta.get('median'))} ({fmt_time(ta.get('p10'))}–{fmt_time(ta.get('p90'))})"
                b_text = f"{fmt_time(tb.get('median'))} ({fmt_time(tb.get('p10'))}–{fmt_time(tb.get('p90'))})"
                st = _status_change(key, ra, rb, a_text, b_text)
                if st:
                    changes.append(st)
                    continue
                change = -(tb["median"] / ta["median"] - 1.0)  # -0.10 = B takes 10% longer
                ratio = ta["median"] / tb["median"] if tb["median"] else None
                noise = not (tb["p10"] > ta["p90"] or tb["p90"] < ta["p10"])
            elif section == "models":
                sa, sb = (ra.get("samples_per_s") or {}), (rb.get("samples_per_s") or {})
                a_text = f"{sa.get('median', 0):.0f}/s" if sa else "—"
                b_text = f"{sb.get('median', 0):.0f}/s" if sb else "—"
                st = _status_change(key, ra, rb, a_text, b_text)
                if st:
                    changes.append(st)
                    continue
                change = sb["median"] / sa["median"] - 1.0
                ratio = sb["median"] / sa["median"] if sa["median"] else None
                noise = not (sb["p10"] > sa["p90"] or sb["p90"] < sa["p10"])
            else:
                aa, ab = ra.get("test_accuracy"), rb.get("test_accuracy")
                a_text = "—" if aa is None else f"{100 * aa:.2f}%"
                b_text = "—" if ab is None else f"{100 * ab:.2f}%"
                st = _status_change(key, ra, rb, a_text, b_text)
                if st:
                    changes.append(st)
                    continue
                change = ab - aa  # absolute (fraction), compared with threshold as percentage points
                ratio = None
                noise = False
            regression = change < -threshold
            improvement = change > threshold
            note = "within p10–p90 spread" if noise and (regression or improvement) else ""
            changes.append(Change(key, a_text, b_text, change, regression, improvement, note, ratio))
    return changes, notes


def fmt_ratio(ratio: float) -> str:
    """``350× faster``, ``1.25× slower``, ``same speed``: how B's speed compares with A's."""
    if not ratio > 0:
        return "—"
    times = ratio if ratio >= 1 else 1 / ratio
    digits = f"{times:,.0f}" if times >= 100 else f"{times:.1f}" if times >= 10 else f"{times:.2f}"
    if digits == "1.00":
        return "same speed"
    return f"{digits}× {'faster' if ratio >= 1 else 'slower'}"


def _fmt_change(c: Change, is_acc: bool) -> str:
    if c.change is None:
        return "—"
    if is_acc:
        return f"{100 * c.change:+.2f} pp"
    if c.ratio is not None:
        return fmt_ratio(c.ratio)
    return f"{100 * c.change:+.1f}%"


def main(path_a: str, path_b: str, threshold_pct: float = 5.0, fail_on_regression: bool = False,
         show_all: bool = False, out=print) -> int:  # fmt: skip
    """Print what changed from A to B; 1 on a regression with ``fail_on_regression``, 2 on unreadable input."""
    try:
        a, b = load(path_a), load(path_b)
    except ReportError as exc:
        print(f"nnspec bench compare: {exc}", file=sys.stderr)
        return 2
    changes, notes = compare_reports(a, b, threshold_pct / 100.0)
    regressions = [c for c in changes if c.regression]
    improvements = [c for c in changes if c.improvement]
    out(f"A: {path_a} ({a.get('machine', {}).get('device_name')}, {a.get('machine', {}).get('date')})")
    out(f"B: {path_b} ({b.get('machine', {}).get('device_name')}, {b.get('machine', {}).get('date')})")
    out(f"{len(changes)} rows matched; threshold {threshold_pct:g}% (speed: time or samples/s; accuracy: "
        f"percentage points); speed as B vs A: '2.00× faster' = B takes half the time")  # fmt: skip
    for n in notes:
        out(f"note: {n}")
    shown = changes if show_all else [c for c in changes if c.regression or c.improvement]
    if shown:
        rows = [["REGRESSION" if c.regression else ("improved" if c.improvement else ""), c.key, c.a, c.b,
                 _fmt_change(c, c.key.startswith("accuracy")), c.note] for c in shown]  # fmt: skip
        out(table(rows, ["", "row", "A", "B", "B vs A", "note"]))
    out(f"{len(regressions)} regression(s), {len(improvements)} improvement(s) beyond {threshold_pct:g}%")
    return 1 if (fail_on_regression and regressions) else 0
