"""The exported JSON Schema: valid draft 2020-12, versioned, accepts every shipped spec and every shorthand."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from nnspec.cli import main
from nnspec.spec.jsonschema import spec_json_schema
from nnspec.spec.source import load_document, parse_text

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "specs").rglob("*.yaml")) + sorted((ROOT / "specs").rglob("*.json"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_versioned_draft_2020_12() -> None:
    schema = spec_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "/v1/" in schema["$id"]
    assert schema["properties"]["nnspec"]["const"] == 1


def test_committed_schema_file_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((ROOT / "docs" / "spec.schema.json").read_text()), "run: nnspec schema --out docs/spec.schema.json"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_spec_validates(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    # As written (an `extends` file is partial) and as resolved.
    written = parse_text(path.read_text(), str(path), "json" if path.suffix == ".json" else "yaml").data
    assert list(validator.iter_errors(written)) == []
    assert list(validator.iter_errors(load_document(path).data)) == []


BASE = {"nnspec": 1, "name": "s", "input": [4]}


@pytest.mark.parametrize(
    "layer",
    ["relu", {"leaky_relu": 0.02}, {"dropout": {"p": 0.2}}, {"type": "linear", "out": 3},
     {"linear": 3, "name": "head"}, {"residual": [{"linear": 4}, "relu"]}, {"relu": None}],
    ids=["bare", "main-argument", "fields", "canonical", "mixed", "composite-shorthand", "null-argument"],
)  # fmt: skip
def test_all_written_forms_are_accepted(layer: object, validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors({**BASE, "model": [layer]})) == []


@pytest.mark.parametrize(
    "layer",
    ["linaer", {"linear": {"outt": 3}}, {"type": "linear", "out": 3, "extra": 1}, {"relu": "x", "linear": 3},
     "linear"],
    ids=["unknown-name", "unknown-field", "canonical-extra", "two-kinds", "bare-with-required-field"],
)  # fmt: skip
def test_schema_rejects_bad_layers(layer: object, validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors({**BASE, "model": [layer]})) != []


def test_training_sections_accept_shorthands(validator: jsonschema.Draft202012Validator) -> None:
    spec = {**BASE, "model": ["relu"], "loss": {"cross_entropy": 0.1}, "optimizer": {"adam": {"lr": 0.001}},
            "schedule": [{"warmup": 2}, "cosine"], "init": {"linear": "kaiming_normal"}}  # fmt: skip
    assert list(validator.iter_errors(spec)) == []
    assert list(validator.iter_errors({**spec, "optimizer": "adma"})) != []


def test_missing_required_keys_rejected_unless_extending(validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors({"nnspec": 1, "name": "x"})) != []
    assert list(validator.iter_errors({"extends": "base.yaml", "name": "x"})) == []
