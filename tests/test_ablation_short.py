"""The textbook ablation, short: every variant trains one epoch on 10,000 MNIST samples.

The full reproduction (60,000 samples, 3 epochs, 3 seeds) is
`python -m nnspec.bench.study ablation` and its report is reports/ablation-mnist.md.
Here each variant must clear a floor far above chance (10%), so a broken loss,
optimizer, activation or normalization fails CI. The floors sit well below what
these runs reached when written (baseline 33%, bce 54%, leaky_relu 86%, adam 90%,
layer_norm 86%, combined 92%), so they do not depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nnspec.train import train
from nnspec.data.idx import locate_idx_files

ABLATION = Path(__file__).resolve().parents[1] / "specs" / "ablation"
FLOORS = {"baseline": 0.20, "bce": 0.35, "leaky_relu": 0.70, "adam": 0.75, "layer_norm": 0.70, "combined": 0.80}
SHORT = ["data.train_samples=10000", "data.test_samples=2000", "train.epochs=1"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(locate_idx_files("mnist") is None, reason="MNIST files not found (set NNSPEC_DATA)"),
]


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # batch size 1: one thread is much faster
    try:
        runs = tmp_path_factory.mktemp("ablation")
        return {
            variant: train(ABLATION / f"{variant}.yaml", overrides=SHORT, out=runs / variant, quiet=True)["test_accuracy"]
            for variant in FLOORS
        }
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("variant", list(FLOORS))
def test_variant_learns(variant: str, accuracies: dict[str, float]) -> None:
    assert accuracies[variant] >= FLOORS[variant], f"{variant}: {accuracies[variant]:.3f} < floor {FLOORS[variant]}"


def test_every_change_beats_the_baseline(accuracies: dict[str, float]) -> None:
    """The ablation's point: each textbook change helps the sigmoid/MSE/SGD baseline."""
    for variant, accuracy in accuracies.items():
        if variant != "baseline":
            assert accuracy > accuracies["baseline"] + 0.1, variant
