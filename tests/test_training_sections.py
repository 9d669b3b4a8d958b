"""The training sections read scalars strictly, like the layers: no YAML-1.1 booleans or numeric strings."""

from __future__ import annotations

import pytest

import nnspec

HEAD = "nnspec: 1\nname: x\ninput: [4]\nmodel: [relu]\n"


@pytest.mark.parametrize(
    ("line", "path", "phrase"),
    [
        ("train: {shuffle: no}", "train.shuffle", "valid boolean"),
        ("optimizer: {sgd: '0.01'}", "optimizer.lr", "valid number"),
        ("train: {epochs: true}", "train.epochs", "valid integer"),
        ("regularization: {l2: yes}", "regularization.l2", "valid number"),
        ("data: {dataset: mnist, val: '5000'}", "data.val", "valid integer"),
    ],
)
def test_scalars_are_strict(line: str, path: str, phrase: str) -> None:
    with pytest.raises(nnspec.SpecError) as caught:
        nnspec.loads_spec(HEAD + line)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.path == path
    assert phrase in diagnostic.message
    assert diagnostic.position is not None and diagnostic.position.line == 5


def test_integers_still_fill_float_fields_and_lists_fill_tuples() -> None:
    spec = nnspec.loads_spec(HEAD + "optimizer: {adam: {lr: 1, betas: [0.9, 0.99]}}")
    assert spec.optimizer.lr == 1.0
    assert spec.optimizer.betas == (0.9, 0.99)
