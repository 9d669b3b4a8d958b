"""Property tests: whatever text arrives, the loader returns a Spec or raises a located SpecError.

Random documents, random text (garbage characters, YAML punctuation, lone
surrogates, undecodable bytes) and random mutations of valid specs are thrown
at the loader. Any exception other than SpecError is a bug, and so is a
diagnostic without a ``file:line:col`` position. A spec that validates must
also plan (shape inference and the compile plan never fail after validation).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.errors import SpecError
from nnspec.spec import Spec, load_spec, loads_spec
from nnspec.spec.layers import LAYER_TYPES
from nnspec.spec.shapes import MAX_PARAMS, infer_shapes
from nnspec.spec.source import _SpecLoader, parse_yaml

POSITIONED = re.compile(r"^.+:\d+:\d+: ")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_text(text: str, fmt: str) -> Spec | None:
    """Load ``text``; only a Spec or a SpecError whose every line is located may come out."""
    try:
        spec = loads_spec(text, fmt=fmt, file="fuzz.spec")
    except SpecError as exc:
        assert exc.diagnostics
        lines = str(exc).splitlines()
        assert len(lines) == len(exc.diagnostics)
        for line in lines:
            assert POSITIONED.match(line), line
            assert line.startswith("fuzz.spec:"), line
        return None
    assert isinstance(spec, Spec)
    plan = nnspec.plan(spec)  # a valid spec always plans: shapes and caps were checked
    shaped, problems = infer_shapes(spec.model, spec.input)
    assert problems == [] and plan.params == sum(node.params for node in shaped) <= MAX_PARAMS
    top_level = {row.path.split(".")[1].split("+")[0] for row in plan.rows if row.path.startswith("model.")}
    assert top_level <= {str(i) for i in range(len(spec.model))} and "0" in top_level
    return spec


class Yaml12Dumper(yaml.SafeDumper):
    """PyYAML's dumper quotes strings by YAML 1.1 rules (leaving ``0E0`` or ``1e3`` plain, which
    YAML 1.2 reads as floats); with the spec reader's resolvers it quotes what 1.2 would not read back."""

    yaml_implicit_resolvers = _SpecLoader.yaml_implicit_resolvers


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=1, ensure_ascii=False)
    # Escaped, not raw: PyYAML writes a raw NEL (U+0085) inside quotes, which reads back as a
    # line break; raw text of every kind is what test_random_text is for.
    return yaml.dump(data, Dumper=Yaml12Dumper, sort_keys=False, default_flow_style=None)


@pytest.mark.parametrize("value", ["0E0", "1e3", "010", "no", "1_000", "2020-01-01", ".5", "true", "~", "=", "<<"])
def test_dump_round_trips_strings(value):
    data = {value: [value, 1.5, 3, None, True, math.inf]}
    assert parse_yaml(dump(data, "yaml"), "f").data == data


# -- strategies -------------------------------------------------------------------------

SPEC_WORDS = [
    "nnspec", "name", "input", "model", "type", "out", "kernel", "stride", "padding", "body", "shortcut",
    "branches", "merge", "times", "p", "dim", "loss", "optimizer", "schedule", "train", "data", "init",
    "regularization", "ensemble", "extends", "lr", "epochs", *LAYER_TYPES,
]  # fmt: skip

keys = st.one_of(st.sampled_from(SPEC_WORDS), st.text(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPEC_WORDS),
    st.text(max_size=20),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=40,
)

YAML_BITS = [
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!!int ", "!!str ", "!!python/object ", "!!binary ",
    "\t", "\n", "\r\n", "  ", "    ", "'", '"', "#", "---", "...", "? ", "|", ">", "%YAML 1.2\n", "<<: ",
    "\\", "\x00", "\x07", "\ufeff", "\u2028", "\x85", "é", "😀", "\ud800",
    "nnspec: 1\n", "name: x\n", "input: [4]\n", "model:\n", "  - linear: 3\n", "  - relu\n",
    "1e400", "0x", "010", "-.inf", ".nan", "null", "true", "no", "9" * 30,
]  # fmt: skip
yamlish = st.lists(st.sampled_from(YAML_BITS), max_size=40).map("".join)
garbage = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=60),
    yamlish,
)


# -- random documents and text ----------------------------------------------------------


@FUZZ
@given(data=documents, fmt=st.sampled_from(["yaml", "json"]))
def test_random_documents(data, fmt):
    check_text(dump(data, fmt), fmt)


@FUZZ
@given(text=garbage, fmt=st.sampled_from(["yaml", "json"]))
def test_random_text(text, fmt):
    check_text(text, fmt)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".json"]))
def test_random_bytes_from_a_file(scratch, raw, suffix):
    path = scratch / f"garbage{suffix}"
    path.write_bytes(raw)
    try:
        load_spec(path)
    except SpecError as exc:
        assert all(POSITIONED.match(line) for line in str(exc).splitlines())
        assert all(d.position.file == str(path) for d in exc.diagnostics)


# -- mutations of valid specs -----------------------------------------------------------

VALID: list[dict[str, Any]] = [
    {
        "nnspec": 1, "name": "mlp", "input": [1, 28, 28],
        "model": ["flatten", {"linear": 32}, {"leaky_relu": 0.02}, "layer_norm", {"dropout": {"p": 0.2}},
                  {"type": "linear", "out": 10, "name": "head"}],
        "loss": "cross_entropy", "optimizer": {"adam": 0.001}, "train": {"epochs": 2, "batch_size": 16},
    },
    {
        "nnspec": 1, "name": "cnn", "input": [3, 16, 16],
        "model": [
            {"conv2d": {"out": 8, "kernel": 3, "padding": 1}}, {"batch_norm": 0.1}, "relu",
            {"residual": {"body": [{"conv2d": {"out": 8, "kernel": 3, "padding": 1}}, "relu"]}},
            {"repeat": {"times": 2, "body": [{"conv2d": {"out": 8, "kernel": 1}}, "tanh"]}},
            {"parallel": {"branches": [[{"conv2d": {"out": 4, "kernel": 1}}], []], "merge": "concat"}},
            {"max_pool": 2}, "global_avg_pool", {"linear": 10},
        ],
        "schedule": ["warmup", {"cosine": {"epochs": 3}}, {"step": 2}],
        "regularization": {"l2": 0.0001, "early_stopping": {"patience": 2}},
    },
    {
        "nnspec": 1, "name": "seq", "input": [4, 12],
        "model": [{"conv1d": {"out": 6, "kernel": [3], "stride": 2}}, {"avg_pool": 2}, "prelu", "silu",
                  {"softmax": {"dim": -1}}, "flatten", {"linear": 3, "bias": False}, "log_softmax"],
        "loss": "nll", "data": {"dataset": "synthetic", "synthetic": {"classes": 3}},
        "init": {"linear": "xavier_uniform", "layers": {"model.0": {"normal": 0.02}}},
    },
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(VALID)))
def test_the_seeds_are_valid(index):
    for fmt in ("yaml", "json"):
        assert check_text(dump(VALID[index], fmt), fmt) is not None


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths_of(value, prefix + (i,))
    return found


def get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def put(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    get(root, path[:-1])[path[-1]] = value
    return root


def deep(value: Any, depth: int, use_lists: bool) -> Any:
    for _ in range(depth):
        value = [value] if use_lists else {"body": value}
    return value


BIG = [10**6, 10**9, 2**31, 2**63 - 1, 2**64, 10**30, -(10**9), 1e308, -1e308, math.inf, -math.inf, math.nan, 0, -1]


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths_of(doc)))
        target = get(doc, path)
        op = draw(st.sampled_from(["delete", "retype", "unknown_key", "swap_layer", "typo", "deep", "big", "duplicate"]))
        if op == "delete" and path:
            parent = get(doc, path[:-1])
            del parent[path[-1]]
        elif op == "retype":
            doc = put(doc, path, draw(st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(keys, scalars, max_size=3))))
        elif op == "unknown_key" and isinstance(target, dict):
            target[draw(keys)] = draw(scalars)
        elif op == "swap_layer":
            doc = put(doc, path, draw(st.sampled_from(sorted(LAYER_TYPES))))
        elif op == "typo" and isinstance(target, str) and target:
            i = draw(st.integers(0, len(target) - 1))
            doc = put(doc, path, target[:i] + draw(st.sampled_from(["", "x", target[i] * 2, "_"])) + target[i + 1:])
        elif op == "deep":
            doc = put(doc, path, deep(target, draw(st.integers(1, 80)), draw(st.booleans())))
        elif op == "big":
            doc = put(doc, path, draw(st.sampled_from(BIG)))
        elif op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(target[draw(st.integers(0, len(target) - 1))]))
    return doc


@FUZZ
@given(doc=mutated(), fmt=st.sampled_from(["yaml", "json"]))
def test_mutated_specs(doc, fmt):
    check_text(dump(doc, fmt), fmt)


@FUZZ
@given(doc=mutated())
def test_mutated_specs_agree_between_yaml_and_json(doc):
    """The same data written as YAML or as JSON is accepted or rejected alike, at the same keys."""
    outcomes = []
    for fmt in ("yaml", "json"):
        try:
            outcomes.append(("ok", loads_spec(dump(doc, fmt), fmt=fmt)))
        except SpecError as exc:
            outcomes.append(("error", sorted({d.path for d in exc.diagnostics})))
    (yaml_kind, yaml_value), (json_kind, json_value) = outcomes
    if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(doc)):
        return  # JSON spells these NaN/Infinity, YAML .nan/.inf: both reject them, maybe at other steps
    if yaml.reader.Reader.NON_PRINTABLE.search(json.dumps(doc, ensure_ascii=False)):
        return  # raw in JSON, not in YAML: JSON positions (and key paths) then come from a cleaned copy
    assert yaml_kind == json_kind
    if yaml_kind == "ok":
        assert yaml_value == json_value
    else:
        assert yaml_value == json_value


def _leaves(node: Any):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node
