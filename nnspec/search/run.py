"""``nnspec search``: check everything that can be checked, run the workers, then write what the study holds.

Order matters for the user: every input problem (the spec, the search
section, a path that no value of its range can make valid, a bad
``--storage``) is reported before a directory is made or a trial runs; the
database is reached next (an unreachable one is an environment failure,
exit 1); only then do workers start. After them — finished, interrupted or
failed — the report is written from whatever the study holds.
"""

from __future__ import annotations

import multiprocessing
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import TrialState

from nnspec.errors import Diagnostic, SpecError, dotted
from nnspec.search import report
from nnspec.search.space import Dimension, dimensions, probe_values
from nnspec.search.storage import SearchError, check_storage_url, open_storage
from nnspec.search.study import DIRECTORY, Standing, best_trial, open_study
from nnspec.search.worker import Job, work, worker_main
from nnspec.spec.model import Spec
from nnspec.spec.overrides import apply_overrides
from nnspec.spec.source import Document, load_document
from nnspec.spec.validate import validate_document

#: Study attribute caching the best trial's one test evaluation.
TEST_ATTR = "nnspec:test"


def _problem(spec: Spec, path: tuple[str | int, ...], message: str) -> SpecError:
    return SpecError([Diagnostic(spec.position_of(path), dotted(path), message)])


def _searchable(spec: Spec) -> None:
    """A search needs a search section and held-out validation data to select on."""
    if spec.search is None:
        raise _problem(spec, (), "this spec has no 'search' section; nnspec search needs one (see docs/spec.md, Search)")
    if spec.data is not None and spec.data.val == 0:
        raise _problem(spec, ("data", "val") if ("data", "val") in spec._positions else ("data",),
                       "a search selects on validation data: hold some out with data.val (e.g. data.val: 2000)")  # fmt: skip


def check_space(spec: Spec, doc: Document, dims: Sequence[Dimension]) -> list[str]:
    """Apply each dimension's probe values as ``--set`` overrides; a path no value makes valid is an error.

    Returns warnings for dimensions where only some probes fail (those trials will fail and be recorded).
    """
    problems: list[Diagnostic] = []
    warnings: list[str] = []
    for dim in dims:
        failures: list[tuple[Any, SpecError]] = []
        values = probe_values(dim)
        for value in values:
            try:
                validate_document(apply_overrides(doc, [dim.override(value)]))
            except SpecError as exc:
                failures.append((value, exc))
        where = ("search", "space", dim.path)
        if failures and len(failures) == len(values):
            value, exc = failures[0]
            first = exc.diagnostics[0]
            said = f"{first.path}: {first.message}" if first.path else first.message
            problems.append(Diagnostic(spec.position_of(where), dotted(where),
                                       f"no value of this range gives a valid spec; --set {dim.override(value)}: {said}"))  # fmt: skip
        elif failures:
            value, exc = failures[0]
            first = exc.diagnostics[0]
            position = spec.position_of(where)
            warnings.append(f"{position}: {dotted(where)}: warning: {json_value(value)} gives an invalid spec "
                            f"({first.path}: {first.message}); such trials will fail and be recorded")  # fmt: skip
    if problems:
        raise SpecError(problems)
    return warnings


def json_value(value: Any) -> str:
    import json

    return json.dumps(value)


def default_out(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("searches") / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("searches") / f"{name}-{stamp}-{suffix}"
    return path


def search(spec: str | Path, *, overrides: Sequence[str] = (), trials: int | None = None, jobs: int = 1,
           storage: str | None = None, study: str | None = None, out: str | Path | None = None,
           heartbeat: int = 10, quiet: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) the search of ``spec`` and return its summary (also written to ``summary.json``).

    Raises SpecError for a bad spec, search section, override or storage URL;
    SearchError (with ``exit_code``) for an unreachable database or a search
    whose trials keep failing; KeyboardInterrupt after writing the report of
    what finished.
    """
    if jobs < 1:
        raise SearchError(f"--jobs must be at least 1, got {jobs}", exit_code=2)
    if trials is not None and trials < 1:
        raise SearchError(f"--trials must be at least 1, got {trials}", exit_code=2)
    if heartbeat < 1:
        raise SearchError(f"--heartbeat must be at least 1 second, got {heartbeat}", exit_code=2)
    from nnspec.train.resolve import check_trainable

    overrides = list(overrides) + ([f"search.trials={trials}"] if trials is not None else [])
    doc = apply_overrides(load_document(spec), overrides)
    resolved = validate_document(doc)
    _searchable(resolved)
    check_trainable(resolved)
    section = resolved.search
    assert section is not None
    dims = dimensions(section)
    for warning in check_space(resolved, doc, dims):
        print(warning, file=sys.stderr)
    if storage is not None:
        check_storage_url(storage, jobs)
    out_dir = Path(out) if out is not None else default_out(resolved.name)
    study_name = study or resolved.name
    store = open_storage(storage, out_dir, heartbeat)
    out_dir.mkdir(parents=True, exist_ok=True)
    if storage is None:  # trial directories are named by number, so one --out holds one study
        others = [name for name in optuna.get_all_study_names(store) if name != study_name]
        if others:
            raise SearchError(f"{out_dir} holds the study '{others[0]}'; continue it with --study {others[0]}, "
                              "or give another --out", exit_code=2)  # fmt: skip
    the_study = open_study(store, study_name, section, create=True)
    where = storage_text(storage, out_dir)
    before = Standing.of(the_study.get_trials(deepcopy=False))
    if not quiet:
        resumed = f", continuing at {before.finished} finished" if before.finished else ""
        print(f"searching {resolved.name}: {section.trials} trials of {section.objective} ({section.direction}), "
              f"{jobs} worker(s); study '{study_name}' in {where}{resumed}", flush=True)  # fmt: skip
    job = Job(str(spec), tuple(overrides), str(out_dir), storage, study_name, section.trials, heartbeat,
              quiet=quiet, shared=storage is not None)  # fmt: skip
    interrupted, failure = False, None
    try:
        _run_workers(job, jobs)
    except KeyboardInterrupt:
        interrupted = True
    except SearchError as exc:
        failure = exc  # raised once the report of what finished is written
    the_study = open_study(open_storage(storage, out_dir, heartbeat), study_name, section)
    summary = write_results(the_study, resolved, section, dims, doc, out_dir, where, quiet)
    if interrupted:
        print(f"nnspec search: interrupted; {summary['finished']} finished trials are recorded. Run the same command "
              f"(with --out {out_dir}) to continue.", file=sys.stderr, flush=True)  # fmt: skip
        raise KeyboardInterrupt
    if failure is not None:
        raise failure
    return summary


def storage_text(storage: str | None, out_dir: Path) -> str:
    if storage is None:
        return f"{out_dir / 'study.journal'}"
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def _run_workers(job: Job, jobs: int) -> None:
    """One worker in this process, or ``jobs`` spawned processes; worker failures become a SearchError."""
    if jobs == 1:
        work(job)
        return
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=worker_main, args=(Job(**{**job.__dict__, "worker": i}),), daemon=False)
               for i in range(jobs)]  # fmt: skip
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join()
    except KeyboardInterrupt:
        for process in workers:  # they got the Ctrl-C too: let them record their trials, then make sure they end
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    codes = [process.exitcode for process in workers]
    if any(code == 130 for code in codes):
        raise KeyboardInterrupt
    bad = [code for code in codes if code]
    if bad:
        raise SearchError(f"{len(bad)} of {jobs} workers failed (exit codes {bad}); their messages are above",
                          exit_code=max(c for c in bad if c > 0) if any(c > 0 for c in bad) else 1)  # fmt: skip


def _test_of_best(study: optuna.Study, quiet: bool) -> dict[str, Any] | None:
    """The test evaluation of the best trial: done once per best trial, cached in the study."""
    best = best_trial(study)
    if best is None:
        return None
    cached = study.user_attrs.get(TEST_ATTR)
    if cached and cached.get("trial") == best.number:
        return cached
    directory = Path(best.user_attrs.get(DIRECTORY, ""))
    if not (directory / "model.safetensors").exists() and not any(directory.glob("member_*/model.safetensors")):
        return {"trial": best.number, "note": f"not evaluated here: trial {best.number}'s weights ({directory}) "
                                              "are not on this machine"}  # fmt: skip
    from nnspec.train import evaluate

    result = evaluate(directory / "spec.yaml", checkpoint=directory, quiet=True)
    test = {"trial": best.number, "test_accuracy": result.get("test_accuracy"), "test_loss": result.get("test_loss"),
            "test_samples": result.get("test_samples")}  # fmt: skip
    study.set_user_attr(TEST_ATTR, test)
    return test


def best_spec_text(doc: Document, best_values: dict[str, Any], dims: Sequence[Dimension], spec_dir: Path,
                   header: str) -> str:  # fmt: skip
    """best.yaml: the spec as written (overrides applied) with the best values set, standalone and search-free."""
    import yaml

    best = apply_overrides(doc, [dim.override(best_values[dim.path]) for dim in dims if dim.path in best_values])
    data = {key: value for key, value in best.data.items() if key not in ("search", "extends")}
    data_section = data.get("data")
    if isinstance(data_section, dict):
        for key in ("path", "root"):
            if isinstance(data_section.get(key), str) and not Path(data_section[key]).expanduser().is_absolute():
                data_section[key] = str((spec_dir / data_section[key]).resolve())
    init = data.get("init")
    pretrained = init.get("pretrained") if isinstance(init, dict) else None
    if isinstance(pretrained, dict) and isinstance(pretrained.get("checkpoint"), str):
        if not Path(pretrained["checkpoint"]).expanduser().is_absolute():
            pretrained["checkpoint"] = str((spec_dir / pretrained["checkpoint"]).resolve())
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def write_results(study: optuna.Study, spec: Spec, section: Any, dims: Sequence[Dimension], doc: Document,
                  out_dir: Path, where: str, quiet: bool) -> dict[str, Any]:  # fmt: skip
    trials = study.get_trials(deepcopy=False)
    standing = Standing.of(trials)
    pruned = sum(1 for t in trials if t.state == TrialState.PRUNED)
    counts = {"finished": standing.finished, "complete": standing.complete, "pruned": pruned,
              "failed": standing.failed}  # fmt: skip
    test = _test_of_best(study, quiet)
    report.write_trials_csv(out_dir / report.TRIALS_CSV, trials, dims)
    report.plot_history(out_dir / report.HISTORY, trials, section.objective, section.direction)
    report.plot_parameters(out_dir / report.PARAMETERS, trials, dims, section.objective)
    text = report.report_markdown(name=spec.name, study=study, trials=trials, section=section, dims=dims,
                                  target=section.trials, storage=where, test=test, counts=counts)  # fmt: skip
    (out_dir / report.REPORT).write_text(text)
    best = best_trial(study)
    summary: dict[str, Any] = {
        "name": spec.name, "study": study.study_name, "storage": where, "objective": section.objective,
        "direction": section.direction, "trials": section.trials, **counts,
    }  # fmt: skip
    if best is not None:
        values = best.user_attrs.get("values") or {}
        summary["best"] = {"trial": best.number, "value": best.value, "params": values,
                           "round": (best.user_attrs.get("round") or 0) + 1}  # fmt: skip
        header = (f"# The best trial ({best.number}, {section.objective} {best.value:.4f}) of study "
                  f"'{study.study_name}', written into the searched spec; standalone (no extends, no search).\n")  # fmt: skip
        spec_file = Path(doc.file)
        text = best_spec_text(doc, values, dims, spec_file.resolve().parent, header)
        (out_dir / report.BEST).write_text(text)
    summary["test"] = test
    summary["versions"] = report.versions()
    import json

    (out_dir / report.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        if best is not None:
            test_text = (f"; test accuracy {test['test_accuracy']:.4f} (evaluated once, for this trial)"
                         if test and test.get("test_accuracy") is not None else "")  # fmt: skip
            print(f"best: trial {best.number}, {section.objective} {best.value:.4f}{test_text}", flush=True)
        print(f"report: {out_dir / report.REPORT}", flush=True)
    return summary
