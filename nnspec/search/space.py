"""The search space: each ``search.space`` entry as an Optuna distribution, its grid, and its refined box.

Why an *internal* value beside the spec's value: Optuna samples a float in
log space when ``log=True``, which is exactly ``log_uniform``; a
``one_minus_log_uniform`` β is sampled as ``1 - β`` on a log scale (so each
decade of ``1 - β`` gets the same share of trials) and turned back into β
here. The Optuna parameter of such a dimension is therefore named ``1-<path>``
and holds ``1 - β``; everything users read (trials.csv, the report,
best.yaml) shows β itself.

Coarse to fine (:func:`refine_box`) works on the *scaled* value: the log10 of
the internal value for log dimensions, the value itself otherwise, so a box
over learning rates is a box over decades.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from nnspec.spec.search import Choice, IntRange, LogUniform, OneMinusLogUniform, SearchSection, Uniform

Box = tuple[float, float]  # (low, high) on the scaled axis


@dataclass(frozen=True)
class Dimension:
    """One ``search.space`` entry: a ``--set`` path and how its values are drawn."""

    path: str
    spec: Any  # one of the distribution kinds of nnspec.spec.search

    # -- naming and values ------------------------------------------------------------

    @property
    def param(self) -> str:
        """The Optuna parameter name (``1-<path>`` where Optuna holds ``1 - value``)."""
        return f"1-{self.path}" if isinstance(self.spec, OneMinusLogUniform) else self.path

    @property
    def scale(self) -> str:
        """How values are drawn, in words (for the report)."""
        spec = self.spec
        if isinstance(spec, Uniform):
            return "uniform"
        if isinstance(spec, LogUniform):
            return "log-uniform (each decade alike)"
        if isinstance(spec, OneMinusLogUniform):
            return "1 - log-uniform (each decade of 1 - value alike)"
        if isinstance(spec, IntRange):
            return "integer, log scale" if spec.log else ("integer" if spec.step == 1 else f"integer, step {spec.step}")
        return "choice"

    @property
    def numeric(self) -> bool:
        return not isinstance(self.spec, Choice)

    @property
    def log(self) -> bool:
        """Whether the scaled axis is logarithmic (the report plots it on a log axis)."""
        return isinstance(self.spec, (LogUniform, OneMinusLogUniform)) or (isinstance(self.spec, IntRange) and self.spec.log)

    def value(self, internal: Any) -> Any:
        """The spec's value for Optuna's internal one."""
        if isinstance(self.spec, OneMinusLogUniform):
            return 1.0 - internal
        return internal

    def internal(self, value: Any) -> Any:
        return 1.0 - value if isinstance(self.spec, OneMinusLogUniform) else value

    def override(self, value: Any) -> str:
        """``path=value`` exactly as ``--set`` takes it (JSON is YAML, and keeps strings strings)."""
        return f"{self.path}={json.dumps(value)}"

    # -- the scaled axis ----------------------------------------------------------------

    def _internal_range(self) -> tuple[float, float]:
        low, high = self.spec.range
        return (1.0 - high, 1.0 - low) if isinstance(self.spec, OneMinusLogUniform) else (low, high)

    def to_scaled(self, internal: float) -> float:
        return math.log10(internal) if self.log else float(internal)

    def from_scaled(self, scaled: float) -> float:
        return 10.0**scaled if self.log else scaled

    @property
    def full_box(self) -> Box:
        low, high = self._internal_range()
        return self.to_scaled(low), self.to_scaled(high)

    # -- Optuna --------------------------------------------------------------------------

    def distribution(self, box: Box | None = None) -> BaseDistribution:
        """The Optuna distribution, over the whole range or over ``box`` (scaled, from :func:`refine_box`)."""
        spec = self.spec
        if isinstance(spec, Choice):
            return CategoricalDistribution(spec.values)
        low, high = self._internal_range()
        if box is not None:
            low, high = self.from_scaled(box[0]), self.from_scaled(box[1])
        if isinstance(spec, IntRange):
            first, step = spec.range[0], spec.step
            low_i = first + step * math.floor((low - first) / step + 1e-9)
            high_i = first + step * math.ceil((high - first) / step - 1e-9)
            low_i, high_i = max(low_i, spec.range[0]), min(high_i, spec.range[1])
            return IntDistribution(low_i, max(low_i, high_i), log=spec.log, step=step)
        full_low, full_high = self._internal_range()
        low, high = max(low, full_low), min(high, full_high)  # exp(log(x)) may step outside by an ulp
        return FloatDistribution(low, max(low, high), log=self.log)

    def grid(self) -> list[Any]:
        """The internal values a grid tries: every choice, or ``points`` even steps on the scaled axis."""
        spec = self.spec
        if isinstance(spec, Choice):
            return list(spec.values)
        assert spec.points is not None  # the spec's checks require it for a grid
        low, high = self.full_box
        values = [self.from_scaled(s) for s in np.linspace(low, high, spec.points)]
        if isinstance(spec, IntRange):
            first, step = spec.range[0], spec.step
            return sorted({int(min(spec.range[1], max(first, first + step * round((v - first) / step)))) for v in values})
        full_low, full_high = self._internal_range()
        return [min(full_high, max(full_low, float(v))) for v in values]


def dimensions(section: SearchSection) -> list[Dimension]:
    return [Dimension(path, spec) for path, spec in section.space.items()]


def probe_values(dimension: Dimension) -> list[Any]:
    """Values that stand for the whole range when checking that a path can give a valid spec."""
    spec = dimension.spec
    if isinstance(spec, Choice):
        return list(spec.values)
    low, high = spec.range
    if isinstance(spec, IntRange):
        return [low, high]
    box_low, box_high = dimension.full_box
    middle = dimension.value(dimension.from_scaled((box_low + box_high) / 2))
    return [float(low), middle, float(high)]  # the ends as written, and the middle of the sampled axis


def refine_box(dimension: Dimension, best_internal: Sequence[float], margin: float) -> Box:
    """The scaled box spanned by the best trials' values, widened by ``margin`` × the full range, clipped to it.

    ``best_internal`` are Optuna's internal values of this dimension in the best
    trials of the earlier rounds. Log dimensions get their box in log10 space.
    """
    full_low, full_high = dimension.full_box
    if not best_internal:
        return full_low, full_high
    scaled = [dimension.to_scaled(v) for v in best_internal]
    pad = margin * (full_high - full_low)
    return max(full_low, min(scaled) - pad), min(full_high, max(scaled) + pad)
