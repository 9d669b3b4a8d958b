"""The search space: each distribution against its definition, grids, and the coarse-to-fine box."""

from __future__ import annotations

import math
from collections import Counter

import optuna
import pytest
from scipy import stats

from nnspec.search.space import Dimension, refine_box
from nnspec.search.worker import _suggest
from nnspec.spec.search import SearchSection

DRAWS = 1500


def dimension(path: str, written: dict) -> Dimension:
    section = SearchSection.model_validate({"space": {path: written}})
    return Dimension(path, section.space[path])


def draws(dim: Dimension, n: int = DRAWS, box=None, seed: int = 0) -> list:
    """Values as a trial would get them: Optuna's random sampler through the dimension's distribution."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    values = []
    for _ in range(n):
        trial = study.ask()
        values.append(dim.value(_suggest(trial, dim, box)))
        study.tell(trial, 0.0)
    return values


def test_uniform_is_uniform_on_its_range():
    values = draws(dimension("regularization.l2", {"uniform": [0.0, 0.5]}))
    assert min(values) >= 0.0 and max(values) <= 0.5
    assert stats.kstest([v / 0.5 for v in values], "uniform").pvalue > 0.001


def test_log_uniform_gives_each_decade_the_same_share():
    values = draws(dimension("optimizer.lr", {"log_uniform": [1.0e-4, 1.0]}))
    assert min(values) >= 1e-4 and max(values) <= 1.0
    exponents = [(math.log10(v) + 4) / 4 for v in values]  # r in [-4, 0] mapped to [0, 1]
    assert stats.kstest(exponents, "uniform").pvalue > 0.001
    # The same test rejects the draws of a uniform distribution over the same range (90% above 0.1),
    # so it can tell the two scales apart.
    linear = draws(dimension("optimizer.lr", {"uniform": [1.0e-4, 1.0]}))
    assert stats.kstest([(math.log10(v) + 4) / 4 for v in linear], "uniform").pvalue < 1e-6
    assert sum(v < 0.1 for v in values) / len(values) == pytest.approx(0.75, abs=0.05)


def test_one_minus_log_uniform_spreads_trials_over_the_decades_of_one_minus_beta():
    values = draws(dimension("optimizer.betas.0", {"one_minus_log_uniform": [0.9, 0.999]}))
    assert min(values) >= 0.9 and max(values) <= 0.999
    exponents = [(math.log10(1 - v) + 3) / 2 for v in values]  # log10(1 - beta) in [-3, -1] -> [0, 1]
    assert stats.kstest(exponents, "uniform").pvalue > 0.001
    assert sum(v > 0.99 for v in values) / len(values) == pytest.approx(0.5, abs=0.05)


def test_int_is_uniform_over_the_integers_of_its_range():
    values = draws(dimension("model.1.out", {"int": [50, 59]}))
    assert all(isinstance(v, int) and 50 <= v <= 59 for v in values)
    counts = Counter(values)
    assert sorted(counts) == list(range(50, 60))
    assert stats.chisquare([counts[v] for v in range(50, 60)]).pvalue > 0.001


def test_int_with_step_stays_on_its_steps_and_log_int_favours_no_decade():
    stepped = draws(dimension("model.1.out", {"int": [50, 200], "step": 10}), n=400)
    assert set(stepped) <= set(range(50, 201, 10)) and len(set(stepped)) > 10
    logged = draws(dimension("model.1.out", {"int": [1, 1000], "log": True}))
    decades = Counter(min(2, int(math.log10(v))) for v in logged)  # [1,10), [10,100), [100,1000]
    # About a third each (Optuna rounds a log draw over [0.5, 1000.5], which gives 1-9 a little more).
    assert all(abs(decades[d] / len(logged) - 1 / 3) < 0.08 for d in range(3))


def test_choice_takes_each_value_equally_often():
    values = draws(dimension("train.batch_size", {"choice": [32, 64, 128]}))
    counts = Counter(values)
    assert set(counts) == {32, 64, 128}
    assert stats.chisquare(list(counts.values())).pvalue > 0.001


def test_grid_points_are_even_on_the_sampled_scale():
    lr = dimension("optimizer.lr", {"log_uniform": [1.0e-4, 1.0], "points": 5})
    assert lr.grid() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    beta = dimension("optimizer.betas.0", {"one_minus_log_uniform": [0.9, 0.999], "points": 3})
    assert sorted(beta.value(v) for v in beta.grid()) == pytest.approx([0.9, 0.99, 0.999])
    width = dimension("model.1.out", {"int": [50, 200], "points": 4})
    assert width.grid() == [50, 100, 150, 200]
    assert dimension("train.batch_size", {"choice": [32, 64]}).grid() == [32, 64]


# -- coarse to fine -------------------------------------------------------------------------------


def test_refine_box_on_a_linear_dimension_is_the_best_values_widened_by_the_margin():
    dim = dimension("x", {"uniform": [0.0, 10.0]})
    assert refine_box(dim, [2.0, 4.0, 3.0], margin=0.1) == pytest.approx((1.0, 5.0))


def test_refine_box_on_a_log_dimension_is_in_decades():
    dim = dimension("optimizer.lr", {"log_uniform": [1.0e-4, 1.0]})
    low, high = refine_box(dim, [1e-3, 1e-2], margin=0.05)  # the margin: 5% of 4 decades
    assert (low, high) == pytest.approx((-3.2, -1.8))
    distribution = dim.distribution((low, high))
    assert distribution.low == pytest.approx(10**-3.2) and distribution.high == pytest.approx(10**-1.8)
    values = draws(dim, n=300, box=(low, high))
    assert all(10**-3.2 * (1 - 1e-9) <= v <= 10**-1.8 * (1 + 1e-9) for v in values)


def test_refine_box_is_clipped_to_the_original_range():
    dim = dimension("optimizer.lr", {"log_uniform": [1.0e-4, 1.0]})
    assert refine_box(dim, [1e-4, 1e-3], margin=0.1) == pytest.approx((-4.0, -2.6))
    assert refine_box(dim, [0.5, 1.0], margin=0.1) == pytest.approx((math.log10(0.5) - 0.4, 0.0))
    linear = dimension("x", {"uniform": [0.0, 1.0]})
    assert refine_box(linear, [0.0, 0.95], margin=0.2) == pytest.approx((0.0, 1.0))


def test_refine_box_of_one_minus_beta_is_on_the_decades_of_one_minus_beta():
    dim = dimension("optimizer.betas.0", {"one_minus_log_uniform": [0.9, 0.999]})
    internal = [dim.internal(0.99), dim.internal(0.995)]  # 1 - beta: 0.01, 0.005
    low, high = refine_box(dim, internal, margin=0.05)  # 5% of 2 decades = 0.1
    assert (low, high) == pytest.approx((math.log10(0.005) - 0.1, -2.0 + 0.1))
    betas = draws(dim, n=300, box=(low, high))
    assert min(betas) >= 1 - 10**high - 1e-12 and max(betas) <= 1 - 10**low + 1e-12


def test_refined_int_range_stays_on_the_original_steps():
    dim = dimension("model.1.out", {"int": [50, 200], "step": 10})
    box = refine_box(dim, [80, 110], margin=0.05)  # pad 7.5 -> (72.5, 117.5)
    distribution = dim.distribution(box)
    assert (distribution.low, distribution.high, distribution.step) == (70, 120, 10)


def test_refine_box_without_finished_trials_is_the_whole_range():
    dim = dimension("optimizer.lr", {"log_uniform": [1.0e-4, 1.0]})
    assert refine_box(dim, [], margin=0.05) == pytest.approx((-4.0, 0.0))
