"""Bad search sections, paths and storages: one located line each, exit 2 (1 for an unreachable database)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from nnspec.cli import main
from nnspec.spec import load_spec
from nnspec.spec.overrides import apply_overrides
from nnspec.spec.source import parse_yaml
from nnspec.spec.validate import validate_document

BASE = """\
nnspec: 1
name: tiny
input: [8]
model:
  - {linear: 16, name: hidden}
  - relu
  - linear: 4
loss: cross_entropy
optimizer: {adam: {lr: 0.01, betas: [0.9, 0.999]}}
data: {dataset: synthetic, val: 64, synthetic: {samples: 256, test_samples: 64, classes: 4}}
train: {epochs: 1, batch_size: 32, device: cpu}
"""

SEARCH = """\
search:
  trials: 2
  space:
    optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}
"""

LOCATED = re.compile(r"^[^:]+:\d+:\d+: \S+: .+$")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "section, where, message",
    [
        ("search:\n  trials: 0\n  space: {optimizer.lr: {log_uniform: [0.001, 0.1]}}\n", "search.trials",
         "greater than or equal to 1"),
        ("search:\n  space: {optimizer.lr: {log_uniform: [0, 0.1]}}\n", "search.space.optimizer.lr.range",
         "a log range must lie above 0"),
        ("search:\n  space: {optimizer.lr: {log_uniform: [-1, 0.1]}}\n", "search.space.optimizer.lr.range",
         "a log range must lie above 0"),
        ("search:\n  space: {model.hidden.out: {int: [5.5, 20]}}\n", "search.space.model.hidden.out.range.0",
         "valid integer"),
        ("search:\n  space: {train.batch_size: {choice: []}}\n", "search.space.train.batch_size.values",
         "at least 1 item"),
        ("search:\n  space: {optimizer.lr: {log_uniform: [0.001, 0.1]}}\n  refine: {rounds: 2, top: 0}\n",
         "search.refine.top", "greater than 0"),
        ("search:\n  space: {optimizer.lr: {log_uniform: [0.001, 0.1]}}\n  refine: {rounds: 2, top: 1.5}\n",
         "search.refine.top", "less than or equal to 1"),
        ("search:\n  objective: test_accuracy\n  space: {optimizer.lr: {log_uniform: [0.001, 0.1]}}\n",
         "search.objective", "selects on the test set"),
        ("search:\n  sampler: grid\n  space: {optimizer.lr: {log_uniform: [0.001, 0.1]}}\n",
         "search.space.optimizer.lr", "needs 'points'"),
        ("search:\n  space: {optimizer.lr: {log_uniforn: [0.001, 0.1]}}\n", "search.space.optimizer.lr.log_uniforn",
         "did you mean 'log_uniform'"),
        ("search:\n  space: {optimizer.betas.0: {one_minus_log_uniform: [0.9, 1.0]}}\n",
         "search.space.optimizer.betas.0.range", "below 1"),
        ("search:\n  space: {}\n", "search.space", "at least 1 item"),
    ],
)
def test_a_bad_search_section_is_one_located_line_and_exit_2(tmp_path, capsys, section, where, message):
    spec = write(tmp_path, BASE + section)
    for command in (["validate", str(spec)], ["search", str(spec), "--out", str(tmp_path / "out")]):
        code, _, err = run_cli(capsys, *command)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and LOCATED.match(lines[0]), err
        assert f": {where}: " in lines[0] and message in lines[0], lines[0]
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.parametrize(
    "space, message",
    [
        ("optimizer.lrr: {log_uniform: [0.001, 0.1]}", "unknown field 'lrr'"),
        ("model.hiddn.out: {int: [4, 32]}", "no layer named 'hiddn' (did you mean 'hidden'?)"),
        ("model.7.out: {int: [4, 32]}", "index 7 is out of range"),
        ("model.1.out: {int: [4, 32]}", "unknown field 'out' of relu"),
        ("train.batch_size: {choice: [0, -1]}", "greater than or equal to 1"),
    ],
)
def test_a_path_no_value_makes_valid_is_an_error_at_its_line_before_any_trial(tmp_path, capsys, space, message):
    spec = write(tmp_path, BASE + f"search:\n  trials: 2\n  space:\n    {space}\n")
    code, _, err = run_cli(capsys, "search", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{spec}:15:5: search.space.{space.split(':')[0]}: "), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_search_needs_held_out_validation_data(tmp_path, capsys):
    spec = write(tmp_path, BASE.replace("val: 64, ", "") + SEARCH)
    code, _, err = run_cli(capsys, "search", str(spec), "--out", str(tmp_path / "out"))
    assert code == 2 and re.match(rf"^{re.escape(str(spec))}:10:1: data: .*data\.val", err.strip()), err


def test_a_spec_without_search_section_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "search", str(write(tmp_path, BASE)), "--out", str(tmp_path / "out"))
    assert code == 2 and "no 'search' section" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "url, jobs, message",
    [
        ("not a url", 1, "not a database URL"),
        ("postgresql//host/db", 1, "not a database URL"),
        ("sqlite:///study.db", 2, "SQLite breaks under several writers"),
    ],
)
def test_a_bad_storage_url_is_one_located_line_and_exit_2(tmp_path, capsys, url, jobs, message):
    spec = write(tmp_path, BASE + SEARCH)
    code, _, err = run_cli(capsys, "search", str(spec), "--storage", url, "--jobs", str(jobs),
                           "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"--storage {url}:1:1: ") and message in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_is_one_clear_line_and_exit_1(tmp_path, capsys):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (nnspec[postgres]) is not installed")
    spec = write(tmp_path, BASE + SEARCH)
    url = "postgresql://nobody:secret@127.0.0.1:9/nowhere"  # port 9 (discard): nothing listens
    code, _, err = run_cli(capsys, "search", str(spec), "--storage", url, "--out", str(tmp_path / "out"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnspec: cannot reach the study's database at postgresql://nobody:***@")
    assert "secret" not in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [("--jobs", "0"), ("--trials", "0"), ("--heartbeat", "0")])
def test_counts_below_one_are_input_errors(tmp_path, capsys, flag, value):
    spec = write(tmp_path, BASE + SEARCH)
    code, _, err = run_cli(capsys, "search", str(spec), flag, value, "--out", str(tmp_path / "out"))
    assert code == 2 and f"{flag} must be at least 1" in err


def test_train_and_validate_ignore_a_valid_search_section(tmp_path):
    spec = load_spec(write(tmp_path, BASE + SEARCH))
    assert spec.search is not None and spec.search.direction == "maximize"
    from nnspec.train import train

    summary = train(spec, out=tmp_path / "run", quiet=True)
    assert summary["status"] == "finished"


# -- layers by name in --set paths ------------------------------------------------------------------


def _doc(text: str):
    return parse_yaml(textwrap.dedent(text), "spec.yaml")


def test_set_addresses_a_layer_by_its_name_in_any_written_form():
    doc = _doc(BASE.replace("  - relu\n", "  - relu\n  - {type: linear, out: 12, name: second}\n  - relu\n"))
    spec = validate_document(apply_overrides(doc, ["model.hidden.out=20", "model.second.out=6"]))
    assert [getattr(layer, "out", None) for layer in spec.model] == [20, None, 6, None, 4]


def test_set_by_name_reaches_into_composites():
    text = BASE.replace(
        "  - {linear: 16, name: hidden}\n",
        "  - {linear: 16, name: hidden}\n  - residual: {body: [{linear: 16, name: inner}, relu]}\n",
    )
    spec = validate_document(apply_overrides(_doc(text), ["model.1.body.inner.bias=false"]))
    assert spec.model[1].body[0].bias is False


def test_set_by_an_unknown_name_says_which_names_exist():
    with pytest.raises(Exception) as caught:
        apply_overrides(_doc(BASE), ["model.hiden.out=3"])
    assert "no layer named 'hiden' (did you mean 'hidden'?); its named layers: hidden" in str(caught.value)


def test_one_out_directory_holds_one_study(tmp_path, capsys):
    spec = write(tmp_path, BASE + SEARCH.replace("trials: 2", "trials: 1"))
    out = str(tmp_path / "out")
    assert run_cli(capsys, "search", str(spec), "--out", out)[0] == 0
    code, _, err = run_cli(capsys, "search", str(spec), "--out", out, "--study", "another")
    assert code == 2 and "holds the study 'tiny'; continue it with --study tiny" in err
