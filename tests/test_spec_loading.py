"""Reading spec files: YAML 1.2 scalars, JSON, ``extends`` deep merge with per-file positions, ``loads_spec``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from nnspec.errors import Position, SpecError
from nnspec.spec import Spec, load_spec, loads_spec
from nnspec.spec.source import parse_json, parse_yaml

SPECS = Path(__file__).resolve().parents[1] / "specs"
MLP = SPECS / "mlp.yaml"


# -- YAML 1.2 scalars -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("3e-4", 0.0003),
        ("1e3", 1000.0),
        ("-2.5E+2", -250.0),
        (".5", 0.5),
        ("1.", 1.0),
        ("010", 10),  # YAML 1.2: decimal, not octal eight
        ("0o17", 15),
        ("0x1F", 31),
        ("+1", 1),
        ("-0", 0),
        ("true", True),
        ("False", False),
        ("~", None),
        ("null", None),
        ("no", "no"),  # YAML 1.1 read these as booleans
        ("off", "off"),
        ("yes", "yes"),
        ("On", "On"),
        ("Y", "Y"),
        ("1_000", "1_000"),  # YAML 1.1 read this as 1000
        ("0b101", "0b101"),
        ("2020-01-01", "2020-01-01"),  # YAML 1.1 read this as a date
        ("12:30", "12:30"),  # YAML 1.1 read this as a sexagesimal 750
        ("'010'", "010"),
    ],
)
def test_yaml_1_2_scalars(text: str, value):
    data = parse_yaml(f"key: {text}\n", "f.yaml").data["key"]
    assert data == value and type(data) is type(value)


def test_yaml_special_floats():
    data = parse_yaml("a: .inf\nb: -.Inf\nc: .NaN\n", "f").data
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


def test_scalars_in_a_spec():
    spec = loads_spec(
        """
nnspec: 1
name: off
input: [010]
model:
  - {linear: 010, name: no}
  - {relu: null, name: yes}
  - {dropout: 1e-1, name: on}
optimizer: {adam: 3e-4}
"""
    )
    assert spec.name == "off"
    assert spec.input == (10,)
    assert spec.model[0].out == 10 and spec.model[0].name == "no"
    assert spec.model[1].name == "yes"
    assert spec.model[2].p == 0.1 and spec.model[2].name == "on"
    assert isinstance(spec.optimizer.lr, float) and spec.optimizer.lr == 3e-4


def test_positions_of_keys_and_items():
    doc = parse_yaml("a:\n  b: 1\n  c: [x, {d: 2}]\n", "f.yaml")
    assert doc.positions[("a",)] == Position("f.yaml", 1, 1)
    assert doc.positions[("a", "b")] == Position("f.yaml", 2, 3)
    assert doc.positions[("a", "c", 0)] == Position("f.yaml", 3, 7)
    assert doc.positions[("a", "c", 1, "d")] == Position("f.yaml", 3, 11)
    assert doc.position_of(("a", "c", 1, "d", "missing")) == Position("f.yaml", 3, 11)
    assert doc.position_of(("zzz",)) == Position("f.yaml", 1, 1)


def test_crlf_and_bom_files(tmp_path):
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"\xef\xbb\xbfnnspec: 1\r\nname: x\r\ninput: [4]\r\nmodel:\r\n  - relu\r\n  - rleu\r\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.position.line, diagnostic.position.col) == (6, 5)


# -- JSON ------------------------------------------------------------------------------


def test_json_spec_equals_yaml_spec(tmp_path):
    yaml_spec = load_spec(MLP)
    data = yaml.load(MLP.read_text(), Loader=yaml.SafeLoader)
    path = tmp_path / "mlp.json"
    path.write_text(json.dumps(data, indent=2))
    json_spec = load_spec(path)
    assert json_spec == yaml_spec
    assert json_spec.position_of(("model", 1)).file == str(path)
    # Positions of JSON values are exact too.
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"linear": 200' in text)
    assert json_spec.position_of(("model", 1, "out")).line == line
    assert loads_spec(json.dumps(data), fmt="json") == yaml_spec


def test_json_positions():
    doc = parse_json('{\n  "a": {\n    "b": [1, {"c": 2}]\n  }\n}', "f.json")
    assert doc.data == {"a": {"b": [1, {"c": 2}]}}
    assert doc.positions[("a", "b")] == Position("f.json", 3, 5)
    assert doc.positions[("a", "b", 1, "c")] == Position("f.json", 3, 15)


def test_json_is_strict_json():
    # YAML-only syntax in a .json file is a JSON error, not silently accepted.
    with pytest.raises(SpecError, match="invalid JSON"):
        loads_spec("nnspec: 1\nname: x\n", fmt="json")
    with pytest.raises(SpecError, match="invalid JSON"):
        loads_spec("{'nnspec': 1}", fmt="json")


def test_json_extension_selects_the_json_reader(tmp_path):
    path = tmp_path / "spec.JSON"
    path.write_text('{"nnspec": 1, "name": "x", "input": [4], "model": ["relu"]}')
    assert load_spec(path).name == "x"
    yaml_named = tmp_path / "spec.yml"
    yaml_named.write_text("nnspec: 1\nname: y\ninput: [4]\nmodel: [relu]\n")
    assert load_spec(yaml_named).name == "y"


# -- extends ------------------------------------------------------------------------

BASE = """\
nnspec: 1
name: base
description: the base
input: [1, 28, 28]
model:
  - flatten
  - linear: 64
  - relu
  - linear: 10
loss: cross_entropy
optimizer:
  adam:
    lr: 0.01
    betas: [0.8, 0.9]
schedule: [warmup, {cosine: 5}]
train:
  epochs: 3
  batch_size: 32
regularization: {l2: 0.001}
"""


@pytest.fixture
def family(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "common").mkdir()
    (tmp_path / "exp").mkdir()
    (tmp_path / "common" / "base.yaml").write_text(BASE)
    return tmp_path


def test_extends_deep_merge(family):
    (family / "exp" / "child.yaml").write_text(
        """\
extends: ../common/base.yaml
name: child
optimizer:
  adam:
    eps: 1.0e-6
schedule: [{step: 2}]
train: {epochs: 7}
model:
  - flatten
  - linear: 10
"""
    )
    spec = load_spec("exp/child.yaml")
    base = load_spec("common/base.yaml")
    # scalars replace
    assert spec.name == "child" and spec.description == "the base"
    # mappings merge key by key, at every depth
    assert spec.optimizer.type == "adam"
    assert spec.optimizer.lr == 0.01 and spec.optimizer.betas == (0.8, 0.9) and spec.optimizer.eps == 1e-6
    assert spec.train.epochs == 7 and spec.train.batch_size == 32
    assert spec.regularization == base.regularization and spec.loss == base.loss
    # lists replace wholesale
    assert [layer.type for layer in spec.model] == ["flatten", "linear"]
    assert [phase.type for phase in spec.schedule] == ["step"]
    assert spec.extends is None
    # positions stay with the file that wrote each value
    child, parent = "exp/child.yaml", "common/base.yaml"
    assert spec.position_of(("name",)) == Position(child, 2, 1)
    assert spec.position_of(("description",)) == Position(parent, 3, 1)
    assert spec.position_of(("optimizer", "lr")) == Position(parent, 13, 5)
    assert spec.position_of(("optimizer", "eps")) == Position(child, 5, 5)
    assert spec.position_of(("train", "epochs")) == Position(child, 7, 9)
    assert spec.position_of(("train", "batch_size")) == Position(parent, 18, 3)
    assert spec.position_of(("model", 1)) == Position(child, 10, 5)
    assert spec.position_of(("loss",)) == Position(parent, 10, 1)


def test_extends_replaces_a_mapping_by_a_scalar_and_clears_with_null(family):
    (family / "exp" / "child.yaml").write_text(
        "extends: ../common/base.yaml\noptimizer: sgd\nloss: null\nschedule: null\n"
    )
    spec = load_spec("exp/child.yaml")
    assert spec.optimizer.type == "sgd" and spec.optimizer.lr == 0.01  # sgd's own default, nothing merged
    assert spec.loss is None and spec.schedule is None


def test_extends_chain(family):
    (family / "exp" / "mid.yaml").write_text("extends: ../common/base.yaml\ntrain: {batch_size: 16}\n")
    (family / "exp" / "leaf.yaml").write_text("extends: mid.yaml\ntrain: {epochs: 1}\nname: leaf\n")
    spec = load_spec("exp/leaf.yaml")
    assert (spec.train.epochs, spec.train.batch_size, spec.name) == (1, 16, "leaf")
    assert spec.position_of(("train", "batch_size")).file == "exp/mid.yaml"
    assert spec.position_of(("train", "epochs")).file == "exp/leaf.yaml"
    assert spec.position_of(("model", 0)).file == "common/base.yaml"


def test_extends_json_child_of_yaml_base(family):
    (family / "exp" / "child.json").write_text(json.dumps({"extends": "../common/base.yaml", "train": {"epochs": 2}}))
    spec = load_spec("exp/child.json")
    assert spec.train.epochs == 2 and spec.train.batch_size == 32
    assert spec.position_of(("train", "epochs")).file == "exp/child.json"


def test_extends_chain_length_is_bounded(tmp_path):
    (tmp_path / "s0.yaml").write_text(BASE)
    for i in range(1, 20):
        (tmp_path / f"s{i}.yaml").write_text(f"extends: s{i - 1}.yaml\n")
    assert load_spec(tmp_path / "s10.yaml").name == "base"
    with pytest.raises(SpecError, match="more than 16 files chained by 'extends'"):
        load_spec(tmp_path / "s19.yaml")


def test_loads_spec_does_not_resolve_extends():
    with pytest.raises(SpecError, match="'extends' is resolved when loading a file"):
        loads_spec("extends: base.yaml\nnnspec: 1\nname: x\ninput: [4]\nmodel: [relu]\n")


# -- loads_spec and load_spec ---------------------------------------------------------


def test_loads_spec_names_its_source():
    text = "nnspec: 1\nname: x\ninput: [4]\nmodel: [rleu]\n"
    with pytest.raises(SpecError) as caught:
        loads_spec(text)
    assert str(caught.value).startswith("<string>:4:9: model.0: unknown layer 'rleu'")
    with pytest.raises(SpecError) as caught:
        loads_spec(text, file="inline.yaml")
    assert caught.value.diagnostics[0].position == Position("inline.yaml", 4, 9)


def test_loads_spec_equals_load_spec(tmp_path):
    text = MLP.read_text()
    assert loads_spec(text) == load_spec(MLP)
    line = next(i for i, written in enumerate(text.splitlines(), 1) if "linear: 200" in written)
    assert loads_spec(text).position_of(("model", 1)) == Position("<string>", line, 5)


def test_load_spec_accepts_str_and_path():
    assert load_spec(str(MLP)) == load_spec(MLP)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not a file"):
        load_spec(tmp_path)


def test_loaded_spec_is_frozen():
    spec = load_spec(MLP)
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]


def test_spec_equality_ignores_positions_only():
    a = loads_spec("nnspec: 1\nname: x\ninput: [4]\nmodel: [relu]\n")
    b = loads_spec("nnspec: 1\nname: x\ninput: [4]\nmodel:\n  - {type: relu}\n")
    c = loads_spec("nnspec: 1\nname: x\ninput: [5]\nmodel: [relu]\n")
    assert a == b and a != c
    assert a == Spec.model_validate({"nnspec": 1, "name": "x", "input": [4], "model": ["relu"]})


# -- the examples ---------------------------------------------------------------------

EXAMPLES = sorted(p for p in SPECS.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def test_there_are_examples():
    assert MLP in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(SPECS)) for p in EXAMPLES])
def test_example_validates(path: Path):
    spec = load_spec(path)
    assert spec.model


def test_mlp_example_content():
    spec = load_spec(MLP)
    assert spec.name == "mnist-mlp" and spec.input == (1, 28, 28)
    assert [layer.type for layer in spec.model] == ["flatten", "linear", "leaky_relu", "layer_norm", "dropout", "linear"]
    line = next(i for i, written in enumerate(MLP.read_text().splitlines(), 1) if "{type: linear, out: 10}" in written)
    assert spec.position_of(("model", 5)) == Position(str(MLP), line, 5)
