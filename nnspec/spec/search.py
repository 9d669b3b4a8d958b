"""The optional ``search:`` section: a hyperparameter search over ``--set`` paths (``nnspec search``).

Each dimension of the space is a *kind*, written like a layer::

    optimizer.lr:      {log_uniform: [1.0e-4, 1.0]}       # name: main argument (the range)
    model.hidden.out:  {int: [50, 200], step: 10}          # the kind beside its other fields
    train.batch_size:  {choice: [32, 64, 128]}

so the same shorthand reader, error positions and JSON Schema forms serve it.
The checks here are the ones a section can fail on its own (a log range that
touches 0, ``int`` bounds that are not integers, an empty choice, a grid
without ``points``); whether a path exists in *this* spec, and whether its
values give a valid spec, is checked by ``nnspec search`` before any trial
runs, by applying each end of the range as a ``--set`` override would be.

``nnspec train`` ignores this section.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from nnspec.spec.kinds import Kind
from nnspec.spec.training import Flag, Section, kinds_union

#: Objectives and whether larger is better; selection reads the validation split only.
OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Points = Annotated[int, Field(strict=True, ge=2, le=1000, description="grid points over the range (sampler: grid)")]


class _Range(Kind):
    """A numeric dimension over ``range: [low, high]``."""

    main: ClassVar[str] = "range"
    range: tuple[Finite, Finite]
    points: Points | None = None

    #: True when the range is sampled (and refined) in log space.
    log_scale: ClassVar[bool] = False

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not low < high:
            raise ValueError(f"the range [{low}, {high}] is empty: its low end must be below its high end")
        return value


class Uniform(_Range):
    """Uniform on ``[low, high]``: for parameters whose effect is linear in their value (dropout p)."""

    type: Literal["uniform"] = "uniform"


class LogUniform(_Range):
    """``10**r`` with ``r`` uniform on ``[log10 low, log10 high]``: each decade gets the same share of trials."""

    type: Literal["log_uniform"] = "log_uniform"
    log_scale: ClassVar[bool] = True

    @field_validator("range")
    @classmethod
    def _positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"a log range must lie above 0, got [{value[0]}, {value[1]}] (the log of 0 is -inf)")
        return value


class OneMinusLogUniform(_Range):
    """``1 - 10**r``: for momentum-like β in [0.9, 0.999], spread evenly over the decades of ``1 - β``."""

    type: Literal["one_minus_log_uniform"] = "one_minus_log_uniform"
    log_scale: ClassVar[bool] = True

    @field_validator("range")
    @classmethod
    def _below_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] >= 1:
            raise ValueError(
                f"one_minus_log_uniform needs a range below 1, got [{value[0]}, {value[1]}] (the log of 1 - 1 is -inf)"
            )
        return value


class IntRange(Kind):
    """Integers in ``[low, high]`` (both included), optionally in log space or in steps."""

    type: Literal["int"] = "int"
    main: ClassVar[str] = "range"
    range: tuple[Annotated[int, Field(strict=True)], Annotated[int, Field(strict=True)]]
    log: Flag = Field(False, description="sample in log space (each doubling gets the same share)")
    step: Annotated[int, Field(strict=True, ge=1)] = 1
    points: Points | None = None

    @property
    def log_scale(self) -> bool:  # type: ignore[override]
        return self.log

    @model_validator(mode="after")
    def _consistent(self) -> "IntRange":
        low, high = self.range
        if not low < high:
            raise ValueError(f"the range [{low}, {high}] is empty: its low end must be below its high end")
        if self.log and low < 1:
            raise ValueError(f"a log range must lie above 0, got [{low}, {high}] (the log of 0 is -inf)")
        if self.log and self.step != 1:
            raise ValueError("log and step do not go together: a log scale has no even steps")
        if (high - low) % self.step:
            raise ValueError(f"with step {self.step} the range [{low}, {high}] does not end on a step")
        return self


class Choice(Kind):
    """One of a list of values, each equally likely (a grid tries every one)."""

    type: Literal["choice"] = "choice"
    main: ClassVar[str] = "values"
    values: list[Union[Annotated[bool, Field(strict=True)], Annotated[int, Field(strict=True)], Finite, str, None]] = Field(
        min_length=1, max_length=1000
    )

    @field_validator("values")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        seen: list[Any] = []
        for item in value:
            if any(type(item) is type(other) and item == other for other in seen):
                raise ValueError(f"{item!r} is listed twice")
            seen.append(item)
        return value


Distribution, DISTRIBUTIONS = kinds_union(Uniform, LogUniform, OneMinusLogUniform, IntRange, Choice, what="distribution")


class Refine(Section):
    """Coarse to fine: later rounds sample inside the box of the best trials so far."""

    rounds: Annotated[int, Field(strict=True, ge=1, le=100)] = 2
    top: Annotated[float, Field(strict=True, gt=0.0, le=1.0)] = Field(
        0.25, description="fraction of the earlier rounds' finished trials whose box the next round samples"
    )
    margin: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = Field(
        0.05, description="the box is widened by this fraction of the original range on each side (then clipped)"
    )


Path = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=200)]


class SearchSection(Section):
    """What ``nnspec search`` tries: the objective, the space, and how to sample it."""

    objective: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="validation metric to optimize; the direction follows from the name"
    )
    trials: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 20
    sampler: Literal["random", "grid", "tpe", "qmc"] = "random"
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    pruner: Literal["none", "median", "hyperband"] = Field("none", description="stops trials by per-epoch validation")
    space: dict[Path, Distribution] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=64, description="--set path -> distribution of its values"
    )
    refine: Refine | None = None

    @field_validator("objective", mode="before")
    @classmethod
    def _validation_only(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("test_"):
            raise ValueError(
                f"objective '{value}' selects on the test set; selection reads the validation split only "
                f"(val_accuracy or val_loss), and the test set is evaluated once, for the best trial"
            )
        return value

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]


def search_problems(section: SearchSection) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks across the section's fields, as (path, message): grid needs points and forbids refine."""
    here: tuple[str | int, ...] = ("search",)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if section.sampler == "grid":
        size = 1
        for path, dimension in section.space.items():
            if isinstance(dimension, Choice):
                size *= len(dimension.values)
            elif dimension.points is None:
                problems.append((here + ("space", path), "sampler grid needs 'points' for a numeric range, e.g. points: 5"))
            else:
                size *= dimension.points
        if section.refine is not None:
            problems.append((here + ("refine",), "sampler grid enumerates a fixed set of points; refine needs random, tpe or qmc"))
        if not problems and section.trials > size:
            problems.append((here + ("trials",), f"the grid has {size} points; trials {section.trials} would repeat them"))
    elif section.refine is not None and section.refine.rounds > section.trials:
        problems.append((here + ("refine", "rounds"), f"{section.refine.rounds} rounds need at least as many trials (trials is {section.trials})"))
    return problems
