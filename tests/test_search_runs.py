"""Real searches on a tiny synthetic task: two workers on one journal, a SIGKILLed worker, pruning,
and best.yaml training back to its trial's value."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_specs import SPEC

from nnspec.cli import main
from nnspec.search.storage import HeartbeatJournalStorage


def spec_file(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def nnspec(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)  # fmt: skip


def trials_of(out: Path, study: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    storage = HeartbeatJournalStorage(out / "study.journal", 10, 30, None)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_two_workers_share_one_journal_and_end_with_exactly_n_finished_trials(tmp_path):
    out = tmp_path / "out"
    done = nnspec("search", str(spec_file(tmp_path)), "--jobs", "2", "--trials", "7", "--out", str(out))
    assert done.returncode == 0, done.stderr
    trials = trials_of(out)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 7
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)  # none left running
    # Every finished trial is recorded: a progress line, a row of trials.csv and a run directory.
    lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1].rstrip(":")) for line in lines) == sorted(t.number for t in finished)
    rows = {int(row["number"]): row for row in csv_rows(out)}
    for trial in finished:
        row = rows[trial.number]
        assert row["state"] == "complete" and float(row["value"]) == pytest.approx(trial.value)
        summary = json.loads((out / f"trial-{trial.number:04d}" / "summary.json").read_text())
        assert summary["val_accuracy"] == pytest.approx(trial.value)
        assert "test_accuracy" not in summary  # trials select on validation only
    # Both worker processes took trials (two hosts of the heartbeat would tell; the seeds differ instead).
    assert len({t.params["optimizer.lr"] for t in finished}) == 7
    for name in ("report.md", "history.png", "parameters.png", "best.yaml", "summary.json", "trials.csv"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    best = max(finished, key=lambda t: t.value)
    assert summary["best"]["trial"] == best.number and summary["finished"] == 7
    assert summary["test"]["trial"] == best.number and 0 <= summary["test"]["test_accuracy"] <= 1
    assert set(summary["versions"]) >= {"nnspec", "optuna", "torch", "python"}
    report = (out / "report.md").read_text()
    assert "validation split only" in report and "evaluated once" in report and "log-uniform" in report

    # best.yaml is standalone: it validates, and trains (same seed) to the value its trial reported.
    best_yaml = out / "best.yaml"
    assert nnspec("validate", str(best_yaml)).returncode == 0
    text = best_yaml.read_text()
    assert "search:" not in text and f"out: {best.params['model.hidden.out']}" in text
    import torch

    from nnspec.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran
    try:
        retrained = train(best_yaml, out=tmp_path / "retrain", quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert retrained["val_accuracy"] == pytest.approx(best.value, abs=1e-6)

    # Running the same command again adds nothing: the study already holds its 7 finished trials.
    again = nnspec("search", str(spec_file(tmp_path)), "--trials", "7", "--out", str(out))
    assert again.returncode == 0 and len(trials_of(out)) == len(trials)
    # ... and asking for more continues it, counting no trial twice.
    more = nnspec("search", str(spec_file(tmp_path)), "--trials", "9", "--out", str(out))
    assert more.returncode == 0, more.stderr
    after = trials_of(out)
    assert sum(t.state == TrialState.COMPLETE for t in after) == 9
    assert [t.number for t in after[: len(trials)]] == numbers


def test_a_worker_killed_mid_trial_is_failed_retried_and_the_study_finishes(tmp_path):
    slow = SPEC.replace("epochs: 2", "epochs: 400").replace("trials: 6", "trials: 3")
    spec = spec_file(tmp_path, slow.replace("samples: 512", "samples: 2048"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nnspec", "search", str(spec), "--out", str(out), "--heartbeat", "1",
               "--set", "train.epochs=100"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        metrics = out / "trial-0001" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # trial 1 is mid-way
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "trial 1 never got going"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    held = {t.number: t.state for t in trials_of(out)}
    assert held[1] == TrialState.RUNNING  # what a lost worker leaves behind
    second = nnspec(*command[3:])
    assert second.returncode == 0, second.stderr
    trials = trials_of(out)
    assert trials[1].state == TrialState.FAIL
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[1].params  # the same point, trained again
    rows = {int(row["number"]): row for row in csv_rows(out)}
    assert rows[1]["state"] == "fail"


def test_the_pruner_sees_every_epochs_validation_value(tmp_path):
    text = SPEC.replace("trials: 6", "trials: 8\n  pruner: median").replace("epochs: 2", "epochs: 3")
    out = tmp_path / "out"
    done = nnspec("search", str(spec_file(tmp_path, text)), "--out", str(out))
    assert done.returncode == 0, done.stderr
    trials = trials_of(out)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 8
    for trial in trials:
        epochs = 3 if trial.state == TrialState.COMPLETE else max(trial.intermediate_values)
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        history = [json.loads(line) for line in (out / f"trial-{trial.number:04d}" / "metrics.jsonl").open()]
        assert [trial.intermediate_values[r["epoch"]] for r in history] == pytest.approx([r["val_accuracy"] for r in history])


def test_a_point_that_breaks_the_spec_is_a_failed_trial_and_the_search_goes_on(tmp_path, capsys):
    # Either width is a valid value for a linear layer; inside a residual block only 8 fits the shortcut.
    text = SPEC.replace(
        "  - {linear: 16, name: hidden}\n  - relu\n",
        "  - {linear: 8}\n  - residual: {body: [relu, {linear: 8, name: hidden}]}\n",
    ).replace("model.hidden.out: {int: [4, 32]}", "model.1.body.hidden.out: {choice: [8, 12]}")
    text = text.replace("trials: 6", "trials: 3")
    out = tmp_path / "out"
    code = main(["search", str(spec_file(tmp_path, text)), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = csv_rows(out)
    complete = [r for r in rows if r["state"] == "complete"]
    assert len(complete) == 3 and all(r["model.1.body.hidden.out"] == "8" for r in complete)
    failed = [r for r in rows if r["state"] == "fail"]
    assert failed and all(r["model.1.body.hidden.out"] == "12" and "invalid spec" in r["error"] for r in failed)
    assert "12 gives an invalid spec" in captured.err  # warned before the search began
    assert f"trial {failed[0]['number']}: " in captured.out and "failed: invalid spec" in captured.out


def test_train_reports_each_epoch_to_a_callback_and_stops_when_it_raises(tmp_path):
    from nnspec.spec import loads_spec
    from nnspec.train import train

    spec = loads_spec(SPEC.replace("epochs: 2", "epochs: 5"))
    seen: list[dict] = []

    class Stop(Exception):
        pass

    def on_epoch(record: dict) -> None:
        seen.append(record)
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(spec, out=tmp_path / "run", quiet=True, on_epoch=on_epoch)
    assert [r["epoch"] for r in seen] == [1, 2] and all("val_accuracy" in r for r in seen)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_ctrl_c_stops_every_worker_and_records_what_finished(tmp_path):
    slow = SPEC.replace("epochs: 2", "epochs: 60").replace("samples: 512", "samples: 1024")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "nnspec", "search", str(spec_file(tmp_path, slow)), "--out", str(out),
               "--jobs", "2", "--trials", "6"]  # fmt: skip
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300

        def finished() -> int:
            return sum('"status": "finished"' in p.read_text() for p in out.glob("trial-*/summary.json"))

        while finished() < 1 or len(list(out.glob("trial-*/metrics.jsonl"))) < 3:
            assert search.poll() is None, search.communicate()
            assert time.monotonic() < deadline, "no trial finished"
            time.sleep(0.2)
        os.killpg(search.pid, signal.SIGINT)  # what Ctrl-C on a terminal does: the whole process group
        _, err = search.communicate(timeout=120)
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
    assert search.returncode == 130, err
    assert "--resume" not in err  # a trial is not resumed by hand: the search is rerun
    summary = json.loads((out / "summary.json").read_text())
    assert f"interrupted; {summary['finished']} finished trials are recorded" in err
    trials = trials_of(out)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == summary["finished"] >= 1
    rows = csv_rows(out)
    assert sorted(int(r["number"]) for r in rows if r["state"] == "complete") == sorted(complete)
    assert (out / "report.md").is_file() and (out / "best.yaml").is_file()
