"""A table of bad specs: each must fail with every problem located (file:line:col), keyed and explained.

Every row writes one or more files into a temporary directory, loads the first
one, and checks the *complete* list of diagnostics — their file, line, column,
key path and a phrase of the message — so a row fails both when an error is
missed or misplaced and when one mistake cascades into noise.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from nnspec.cli import main
from nnspec.errors import SpecError
from nnspec.spec import load_spec

H = "nnspec: 1\nname: bad\ninput: [4]\nmodel:\n"  # layers start on line 5
IMG = "nnspec: 1\nname: bad\ninput: [3, 8, 8]\nmodel:\n"
JSON_OK = '{\n  "nnspec": 1,\n  "name": "bad",\n  "input": [4],\n  "model": ["relu"]\n}\n'


@dataclass
class Row:
    id: str
    files: dict[str, str | bytes]  # the first is loaded
    #: (file, line, col, key path, phrase of the message), in order
    expected: list[tuple[str, int, int, str, str]]
    extra: dict = field(default_factory=dict)


def row(id: str, text: str | bytes, *expected: tuple[int, int, str, str], name: str = "spec.yaml") -> Row:
    return Row(id, {name: text}, [(name, *e) for e in expected])


ROWS = [
    # -- names that do not exist ----------------------------------------------
    row("unknown-layer", H + "  - linaer: 3\n",
        (5, 5, "model.0.linaer", "unknown layer 'linaer' (did you mean 'linear'?); expected one of: avg_pool")),
    row("unknown-layer-canonical", H + "  - {type: lineer, out: 3}\n",
        (5, 6, "model.0.type", "unknown layer 'lineer' (did you mean 'linear'?)")),
    row("unknown-layer-nested", H + "  - residual:\n      body:\n        - rleu\n",
        (7, 11, "model.0.body.0", "unknown layer 'rleu' (did you mean 'relu'?)")),
    row("unknown-field", H + "  - linear: {out: 3, biass: false}\n",
        (5, 22, "model.0.biass", "unknown field 'biass' of linear (did you mean 'bias'?); allowed: name, out, bias")),
    row("unknown-field-composite", H + "  - residual: {body: [relu], shortcutt: []}\n",
        (5, 30, "model.0.shortcutt", "unknown field 'shortcutt' of residual (did you mean 'shortcut'?)")),
    row("unknown-section", H + "  - relu\noptimiser: adam\n",
        (6, 1, "optimiser", "unknown field 'optimiser' (did you mean 'optimizer'?)")),
    row("unknown-optimizer-field", H + "  - relu\noptimizer: {adam: {lr: 0.1, beta: [0.9, 0.9]}}\n",
        (6, 29, "optimizer.beta", "unknown field 'beta' of adam (did you mean 'betas'?)")),
    row("unknown-loss", H + "  - relu\nloss: crossentropy\n",
        (6, 1, "loss", "unknown loss 'crossentropy' (did you mean 'cross_entropy'?)")),
    row("unknown-field-of-fieldless-kind", H + "  - relu\nloss: {type: mse, dleta: 1}\n",
        (6, 19, "loss.dleta", "unknown field 'dleta' of mse, which takes no fields")),
    # -- required fields and types ---------------------------------------------
    row("missing-required-field", IMG + "  - conv2d: {out: 4}\n",
        (5, 5, "model.0.kernel", "missing required field 'kernel'")),
    row("missing-section", "nnspec: 1\nname: bad\nmodel: [relu]\n",
        (1, 1, "input", "missing required field 'input'")),
    row("wrong-type-string", H + "  - linear: abc\n",
        (5, 5, "model.0.out", "input should be a valid integer")),
    row("wrong-type-bool-as-int", H + "  - linear: true\n",
        (5, 5, "model.0.out", "input should be a valid integer (got True)")),
    row("wrong-type-quoted-number", H + "  - linear: '3'\n",
        (5, 5, "model.0.out", "input should be a valid integer (got '3')")),
    row("wrong-type-flag", H + "  - linear: {out: 3, bias: no}\n",
        (5, 22, "model.0.bias", "input should be a valid boolean (got 'no')")),
    row("wrong-type-model", "nnspec: 1\nname: bad\ninput: [4]\nmodel: relu\n",
        (4, 1, "model", "expected a list (got 'relu')")),
    row("input-not-a-list", "nnspec: 1\nname: bad\ninput: 784\nmodel: [relu]\n",
        (3, 1, "input", "expected a list of 1 to 3 sizes, e.g. [1, 28, 28] or [784] (got 784)")),
    row("empty-model", "nnspec: 1\nname: bad\ninput: [4]\nmodel: []\n",
        (4, 1, "model", "a model needs at least one layer; the list is empty")),
    row("misspelt-required-field-is-one-error", IMG + "  - conv2d: {out: 4, kernal: 3}\n",
        (5, 22, "model.0.kernal", "unknown field 'kernal' of conv2d (did you mean 'kernel'?)")),
    row("wrong-type-kernel", IMG + "  - conv2d: {out: 4, kernel: [3, 3, 3]}\n",
        (5, 22, "model.0.kernel", "takes at most 2 items, got 3")),
    row("layer-not-name-or-mapping", H + "  - 3\n",
        (5, 5, "model.0", "expected a layer name or mapping, got int 3")),
    # -- ranges ----------------------------------------------------------------------
    row("out-of-range-dropout", H + "  - dropout: 1.5\n",
        (5, 5, "model.0.p", "input should be less than 1 (got 1.5)")),
    row("out-of-range-input", "nnspec: 1\nname: bad\ninput: [0]\nmodel: [relu]\n",
        (3, 9, "input.0", "greater than or equal to 1 (got 0)")),
    row("not-finite", H + "  - elu: .nan\n",
        (5, 5, "model.0.alpha", "input should be a finite number")),
    row("integer-out-of-range", H + "  - linear: 123456789012345678901234567890\n",
        (5, 13, "model.0.linear", "integer out of range (more than 64 bits)")),
    row("unsupported-version", "nnspec: 2\nname: bad\ninput: [4]\nmodel: [relu]\n",
        (1, 1, "nnspec", "unsupported format version 2; this nnspec reads version 1")),
    row("version-as-a-string", "nnspec: '1'\nname: bad\ninput: [4]\nmodel: [relu]\n",
        (1, 1, "nnspec", "the format version is the number 1, not the string '1': write nnspec: 1 without quotes")),
    row("bad-spec-name", "nnspec: 1\nname: Bad Name\ninput: [4]\nmodel: [relu]\n",
        (2, 1, "name", "string should match pattern '^[a-z0-9_-]+$' (got 'Bad Name')")),
    row("bad-layer-name", H + "  - {relu: null, name: Head}\n",
        (5, 18, "model.0.name", "string should match pattern '^[a-z0-9_]+$' (got 'Head')")),
    # -- the reader ------------------------------------------------------------------
    row("duplicate-key-yaml", "nnspec: 1\nname: a\nname: b\ninput: [4]\nmodel: [relu]\n",
        (3, 1, "name", "duplicate key 'name' (first written at line 2)")),
    row("duplicate-key-yaml-nested", H + "  - linear:\n      out: 3\n      out: 4\n",
        (7, 7, "model.0.linear.out", "duplicate key 'out' (first written at line 6)")),
    row("duplicate-key-json", '{\n  "nnspec": 1,\n  "name": "a",\n  "name": "b",\n  "input": [4],\n  "model": ["relu"]\n}',
        (4, 3, "", "duplicate key 'name'"), name="spec.json"),
    row("yaml-alias", "nnspec: 1\nname: &n bad\ninput: [4]\nmodel:\n  - *n\n",
        (5, 5, "", "YAML aliases (*n) are not supported; use 'extends'")),
    row("invalid-yaml", "nnspec: 1\nname: [bad\ninput: [4]\n",
        (3, 6, "", "invalid YAML: while parsing a flow sequence expected ',' or ']'")),
    row("invalid-yaml-tab", "nnspec: 1\n\tname: bad\n",
        (2, 1, "", "invalid YAML: while scanning for the next token found character '\\t'")),
    row("invalid-yaml-control-character", "nnspec: 1\nname: b\x07d\n",
        (2, 8, "", "character U+0007 is not allowed")),
    row("invalid-yaml-tag-value", H + "  - linear: !!int three\n",
        (5, 13, "model.0.linear", "invalid YAML: cannot read 'three' as int")),
    row("two-documents", "nnspec: 1\n---\nnnspec: 1\n",
        (2, 1, "", "a spec file holds one YAML document")),
    row("invalid-json", '{\n  "nnspec": 1,\n  "name": "bad",\n  "input": [4]\n  "model": ["relu"]\n}',
        (5, 3, "", "invalid JSON: Expecting ',' delimiter"), name="spec.json"),
    row("invalid-json-trailing-comma", JSON_OK.replace('["relu"]', '["relu"],'),
        (5, 20, "", "invalid JSON: trailing comma after the last item (JSON allows none; remove it)"),
        name="spec.json"),
    row("invalid-json-trailing-comma-in-a-list", JSON_OK.replace('["relu"]', '["relu", ]'),
        (5, 19, "", "invalid JSON: trailing comma after the last item"), name="spec.json"),
    row("json-positions-with-tabs", JSON_OK.replace("  ", "\t").replace('"relu"', '"rleu"'),
        (5, 12, "model.0", "unknown layer 'rleu' (did you mean 'relu'?)"), name="spec.json"),
    row("non-mapping-document", "- relu\n- tanh\n",
        (1, 1, "", "a spec is a mapping of sections; this file is a list")),
    row("scalar-document", "42\n", (1, 1, "", "this file is a number")),
    row("empty-file", "", (1, 1, "", "a spec is a mapping of sections; this file is empty")),
    row("comments-only", "# nothing here\n", (1, 1, "", "this file is empty")),
    row("non-mapping-json", "[1, 2]", (1, 1, "", "this file is a list"), name="spec.json"),
    row("file-too-large", "nnspec: 1\n# " + "x" * (1 << 20) + "\n", (1, 1, "", "specs are limited to 1048576")),
    row("not-utf8", b"nnspec: 1\nname: caf\xe9\n", (2, 1, "", "not UTF-8 text")),
    row("nesting-too-deep", H + "  - " + "[" * 70 + "]" * 70 + "\n",
        (5, 67, "", "nesting deeper than 64 levels")),
    row("nesting-too-deep-json", '{"a": ' + "[" * 70 + "]" * 70 + "}", (1, 1, "", "nesting deeper than 64 levels"),
        name="spec.json"),
    row("mapping-key-not-a-name", "nnspec: 1\n12: bad\n", (2, 1, "", "mapping keys must be names, not int 12")),
    # -- caps -------------------------------------------------------------------------
    row("repeat-times-too-large", H + "  - repeat: {times: 1001, body: [relu]}\n",
        (5, 14, "model.0.times", "less than or equal to 1000 (got 1001)")),
    row("width-over-cap", H + "  - linear: 2000000\n",
        (5, 5, "model.0.out", "less than or equal to 1048576 (got 2000000)")),
    row("parameters-over-cap", "nnspec: 1\nname: big\ninput: [1000000]\nmodel:\n  - linear: 1000000\n",
        (4, 1, "model", "1,000,001,000,000 parameters exceeds the cap of 1,000,000,000")),
    row("unrolled-layers-over-cap", H + "  - repeat: {times: 1000, body: [{repeat: {times: 1000, body: [relu]}}]}\n",
        (4, 1, "model", "more than 20000 layers once repeats are unrolled")),
    # -- shapes -----------------------------------------------------------------------
    row("conv2d-after-flatten", "nnspec: 1\nname: bad\ninput: [1, 8, 8]\nmodel:\n  - flatten\n  - conv2d: {out: 4, kernel: 3}\n",
        (6, 5, "model.1", "conv2d takes (C, H, W) inputs, got (64,)")),
    row("linear-on-3d-input", IMG + "  - linear: 4\n",
        (5, 5, "model.0", "linear takes (features,) or (C, L) inputs, got (3, 8, 8); add 'flatten' before it")),
    row("residual-changes-shape", H + "  - residual: [linear: 3]\n",
        (5, 5, "model.0", "residual body maps (4,) to (3,) but the identity shortcut keeps (4,)")),
    row("residual-wrong-shortcut", H + "  - residual:\n      body: [linear: 3]\n      shortcut: [linear: 2]\n",
        (5, 5, "model.0", "residual body maps (4,) to (3,) but the shortcut gives (2,)")),
    row("parallel-concat-mismatch", IMG + "  - parallel: [[conv2d: {out: 2, kernel: 3}], [identity]]\n",
        (5, 5, "model.0", "parallel merge 'concat' joins channels (the first dimension); the other dimensions must match")),
    row("parallel-add-mismatch", H + "  - parallel: {branches: [[linear: 4], [linear: 3]], merge: add}\n",
        (5, 5, "model.0", "parallel merge 'add' needs equal branch shapes, got (4,), (3,)")),
    row("pool-window-too-large", "nnspec: 1\nname: bad\ninput: [1, 2, 2]\nmodel:\n  - max_pool: 3\n",
        (5, 5, "model.0", "window 3 is larger than the input size 2")),
    row("shape-error-inside-repeat", H + "  - repeat:\n      times: 2\n      body:\n        - linear: 4\n        - flatten\n        - conv1d: {out: 2, kernel: 1}\n",
        (10, 11, "model.0.body.2", "conv1d takes (C, L) inputs, got (4,)")),
    row("conv1d-stride-arity", "nnspec: 1\nname: bad\ninput: [2, 8]\nmodel:\n  - conv1d: {out: 4, kernel: 3, stride: [1, 2]}\n",
        (5, 5, "model.0", "stride needs 1 value, got 2")),
    row("softmax-dim", H + "  - softmax: 3\n", (5, 5, "model.0", "dim 3 is out of range for (4,)")),
    # -- names --------------------------------------------------------------------------
    row("duplicate-layer-names", H + "  - {relu: null, name: act}\n  - {tanh: null, name: act}\n",
        (6, 18, "model.1.name", "name 'act' is already used by model.0")),
    row("duplicate-names-in-branches", H + "  - parallel: [[{relu: null, name: a}], [{tanh: null, name: a}]]\n",
        (5, 55, "model.0.branches.1.0.name", "name 'a' is already used by model.0.branches.0.0")),
    row("name-collides-with-generated", H + "  - {relu: null, name: tanh_1}\n  - tanh\n",
        (5, 18, "model.0.name", "name 'tanh_1' collides with the generated name of model.1")),
    # -- all at once ---------------------------------------------------------------------
    row("three-errors-at-once", H + "  - linaer: 3\n  - dropout: 2\n  - linear: {out: 3, foo: 1}\n",
        (5, 5, "model.0.linaer", "unknown layer 'linaer'"),
        (6, 5, "model.1.p", "input should be less than 1 (got 2)"),
        (7, 22, "model.2.foo", "unknown field 'foo' of linear")),
    row("errors-in-several-sections", "nnspec: 1\nname: Bad\ninput: [4]\nmodel: [relu]\ntrain: {epochs: 0}\noptimizer: {sgd: -1}\n",
        (2, 1, "name", "should match pattern"),
        (5, 9, "train.epochs", "greater than or equal to 1 (got 0)"),
        (6, 13, "optimizer.lr", "greater than 0 (got -1)")),
    # -- extends -------------------------------------------------------------------------
    Row("extends-error-in-base",
        {"child.yaml": "extends: base.yaml\nname: child\n", "base.yaml": H + "  - linear: 8\n  - linaer: 3\n"},
        [("base.yaml", 6, 5, "model.1.linaer", "unknown layer 'linaer' (did you mean 'linear'?)")]),
    Row("extends-error-in-child-override",
        {"child.yaml": "extends: base.yaml\ntrain: {epochs: 0}\n", "base.yaml": H + "  - relu\ntrain: {epochs: 3, batch_size: 8}\n"},
        [("child.yaml", 2, 9, "train.epochs", "greater than or equal to 1 (got 0)")]),
    Row("extends-errors-in-both",
        {"child.yaml": "extends: base.yaml\nname: Child\n", "base.yaml": H + "  - dropout: 2\n"},
        [("base.yaml", 5, 5, "model.0.p", "less than 1"), ("child.yaml", 2, 1, "name", "should match pattern")]),
    Row("extends-syntax-error-in-base",
        {"child.yaml": "extends: base.yaml\nname: child\n", "base.yaml": "nnspec: 1\nname: [x\n"},
        [("base.yaml", 3, 1, "", "invalid YAML")]),
    Row("extends-shape-error-from-child-list",
        {"child.yaml": "extends: base.yaml\nmodel:\n  - flatten\n  - conv2d: {out: 2, kernel: 1}\n",
         "base.yaml": "nnspec: 1\nname: b\ninput: [1, 4, 4]\nmodel: [flatten, linear: 3]\n"},
        [("child.yaml", 4, 5, "model.1", "conv2d takes (C, H, W) inputs")]),
    Row("extends-cycle",
        {"one.yaml": "extends: two.yaml\n", "two.yaml": "extends: one.yaml\n"},
        [("two.yaml", 1, 1, "extends", "closes a cycle of 'extends' (one.yaml -> two.yaml -> one.yaml)")]),
    Row("extends-itself", {"self.yaml": "nnspec: 1\nextends: self.yaml\n"},
        [("self.yaml", 2, 1, "extends", "cycle")]),
    Row("extends-missing-base", {"child.yaml": "nnspec: 1\nextends: nowhere.yaml\n"},
        [("child.yaml", 2, 1, "extends", "'nowhere.yaml' not found")]),
    Row("extends-not-a-path", {"child.yaml": "nnspec: 1\nextends: [a.yaml]\n"},
        [("child.yaml", 2, 1, "extends", "must be a path to another spec file")]),
    Row("extends-base-not-mapping", {"child.yaml": "extends: base.yaml\n", "base.yaml": "- relu\n"},
        [("child.yaml", 1, 1, "extends", "'base.yaml' is not a spec mapping")]),
]  # fmt: skip


def test_the_table_is_big_enough():
    assert len(ROWS) >= 30
    assert len({r.id for r in ROWS}) == len(ROWS)


def write_files(tmp_path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", ROWS, ids=[r.id for r in ROWS])
def test_bad_spec_is_reported_exactly(case: Row, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # positions name files as the user can follow them from here
    write_files(tmp_path, case.files)
    with pytest.raises(SpecError) as caught:
        load_spec(next(iter(case.files)))
    got = [(d.position.file, d.position.line, d.position.col, d.path, d.message) for d in caught.value.diagnostics]
    assert len(got) == len(case.expected), "\n".join(map(str, caught.value.diagnostics))
    for (file, line, col, path, message), (want_file, want_line, want_col, want_path, phrase) in zip(got, case.expected):
        assert (file, line, col, path) == (want_file, want_line, want_col, want_path), message
        assert phrase in message
    for line in str(caught.value).splitlines():
        assert re.match(r"^[^:\n]+:\d+:\d+: ", line), line


def test_parameter_cap_is_checked_without_allocating():
    # A built model of this size would need 4 TB; validation answers at once, from shapes alone.
    text = "nnspec: 1\nname: huge\ninput: [1000000]\nmodel:\n  - linear: 1000000\n  - linear: 1000000\n"
    from nnspec.spec import loads_spec

    start = time.perf_counter()
    with pytest.raises(SpecError, match="parameters exceeds the cap"):
        loads_spec(text)
    assert time.perf_counter() - start < 5


def test_billion_laughs_fails_fast(tmp_path):
    lines = ["nnspec: 1", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "laughs.yaml")
    assert time.perf_counter() - start < 5
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.position.line == 3 and "YAML aliases (*a0) are not supported" in diagnostic.message


def test_error_messages_stay_on_one_line(tmp_path):
    # A message quoting user text with a line break must still print as one line.
    (tmp_path / "s.yaml").write_text('nnspec: 1\nname: "two\\nlines"\ninput: [4]\nmodel: [relu]\n')
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "s.yaml")
    assert len(str(caught.value).splitlines()) == 1
    assert str(caught.value).startswith(f"{tmp_path / 's.yaml'}:2:1: name: ")


# -- the command line ------------------------------------------------------------

THREE_ERRORS = H + "  - linaer: 3\n  - dropout: 2\n  - linear: {out: 3, foo: 1}\n"


def test_cli_validate_prints_one_line_per_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_ERRORS)
    assert main(["validate", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{bad}:5:5", "model.0.linaer"], [f"{bad}:6:5", "model.1.p"], [f"{bad}:7:22", "model.2.foo"],
    ]  # fmt: skip


def test_cli_validate_reports_every_file(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(H + "  - relu\n")
    bad.write_text(H + "  - rleu\n")
    assert main(["validate", str(bad), str(good)]) == 2
    out, err = capsys.readouterr()
    assert out.strip() == f"{good}: ok"
    assert err.count("\n") == 1 and f"{bad}:5:5: model.0" in err
    assert main(["validate", "-q", str(good)]) == 0
    assert capsys.readouterr().out == ""


def test_cli_validate_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_ERRORS)
    weird = tmp_path / "weird.yaml"
    weird.write_text("nnspec: 1\nname: !!timestamp nope\ninput: [0x" + "f" * 5000 + "]\n")
    result = subprocess.run(
        [sys.executable, "-m", "nnspec", "validate", str(bad), str(weird), str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 5, result.stderr
    assert all(re.match(r"^.+:\d+:\d+: ", line) for line in lines)
    assert lines[-1] == f"{tmp_path / 'missing.yaml'}:1:1: no such file"


def test_cli_compile_bad_spec_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(IMG + "  - linear: 4\n")
    assert main(["compile", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"{bad}:5:5: model.0: linear takes")
