"""``nnspec bench compare A.json B.json``: what changed from report A to report B.

Rows are matched by identity - kernels by (kernel, shape, dtype, direction, impl), models by
(spec name, variant, batch size), accuracy by (spec, kernels) - and compared on their
headline number: median time for kernels (lower is better), median samples/s for models
(higher is better), test accuracy for accuracy rows (a drop of more than ``threshold``
percentage points counts).  A row that passed in A and failed or errored in B is a regression
whatever its numbers.  A change is flagged only beyond ``threshold``; the p10-p90 spreads are
shown so that a flagged change can be told apart from noise.
"""

from __future__ import annotations

import json
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


def load(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "format_version" not in data:
        raise ValueError(f"{path}: not an nnspec bench report (no format_version)")
    if data["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data['format_version']} is newer than this nnspec reads "
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
                noise = False
            regression = change < -threshold
            improvement = change > threshold
            note = "within p10–p90 spread" if noise and (regression or improvement) else ""
            changes.append(Change(key, a_text, b_text, change, regression, improvement, note))
    return changes, notes


def _fmt_change(c: Change, is_acc: bool) -> str:
    if c.change is None:
        return "—"
    if is_acc:
        return f"{100 * c.change:+.2f} pp"
    return f"{100 * c.change:+.1f}%"


def main(path_a: str, path_b: str, threshold_pct: float = 5.0, fail_on_regression: bool = False,
         show_all: bool = False, out=print) -> int:  # fmt: skip
    a, b = load(path_a), load(path_b)
    changes, notes = compare_reports(a, b, threshold_pct / 100.0)
    regressions = [c for c in changes if c.regression]
    improvements = [c for c in changes if c.improvement]
    out(f"A: {path_a} ({a.get('machine', {}).get('device_name')}, {a.get('machine', {}).get('date')})")
    out(f"B: {path_b} ({b.get('machine', {}).get('device_name')}, {b.get('machine', {}).get('date')})")
    out(f"{len(changes)} rows matched; threshold {threshold_pct:g}% (speed: time or samples/s; accuracy: "
        f"percentage points); positive = B is better")  # fmt: skip
    for n in notes:
        out(f"note: {n}")
    shown = changes if show_all else [c for c in changes if c.regression or c.improvement]
    if shown:
        rows = [["REGRESSION" if c.regression else ("improved" if c.improvement else ""), c.key, c.a, c.b,
                 _fmt_change(c, c.key.startswith("accuracy")), c.note] for c in shown]  # fmt: skip
        out(table(rows, ["", "row", "A", "B", "change", "note"]))
    out(f"{len(regressions)} regression(s), {len(improvements)} improvement(s) beyond {threshold_pct:g}%")
    return 1 if (fail_on_regression and regressions) else 0
