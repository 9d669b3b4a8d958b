"""The spec's hard limits, probed at the limit and one past it: a limit moved by one in
either direction must fail one of these tests."""
from __future__ import annotations

import pytest

from nnspec.errors import SpecError
from nnspec.spec import load_spec, loads_spec
from nnspec.spec.shapes import MAX_PARAMS
from nnspec.spec.source import MAX_EXTENDS_CHAIN


def _linear_spec(features: int, out: int, bias: bool) -> str:
    return f"nnspec: 1\nname: big\ninput: [{features}]\nmodel:\n  - linear: {{out: {out}, bias: {str(bias).lower()}}}\n"


def test_exactly_the_parameter_cap_validates():
    assert MAX_PARAMS == 10**9
    spec = loads_spec(_linear_spec(999_999, 1000, True))  # 1000 * (999_999 + 1) = 10**9
    assert spec is not None


def test_one_parameter_over_the_cap_is_refused():
    # 19019 * 52579 = 10**9 + 1 (no bias)
    with pytest.raises(SpecError, match="1,000,000,001 parameters exceeds the cap of 1,000,000,000"):
        loads_spec(_linear_spec(19_019, 52_579, False))


def _chain(tmp_path, files: int):
    """files spec files, each (but the last) extending the next."""
    for i in range(files - 1):
        (tmp_path / f"s{i}.yaml").write_text(f"extends: s{i + 1}.yaml\n")
    (tmp_path / f"s{files - 1}.yaml").write_text(
        "nnspec: 1\nname: chained\ninput: [4]\nmodel:\n  - linear: 2\n")
    return tmp_path / "s0.yaml"


def test_extends_chain_at_the_limit_validates(tmp_path):
    assert MAX_EXTENDS_CHAIN == 16
    assert load_spec(_chain(tmp_path, MAX_EXTENDS_CHAIN)).name == "chained"


def test_extends_chain_one_past_the_limit_is_refused(tmp_path):
    with pytest.raises(SpecError, match=f"more than {MAX_EXTENDS_CHAIN} files chained by 'extends'"):
        load_spec(_chain(tmp_path, MAX_EXTENDS_CHAIN + 1))
