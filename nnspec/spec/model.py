"""The top-level spec: format version, name, input shape, model, and the optional sections.

The file format is a versioned contract: ``nnspec: 1`` is required, unknown keys
are errors everywhere, and new sections arrive as optional keys of this model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, StringConstraints, field_validator, model_validator
from pydantic import BaseModel

from nnspec.errors import Diagnostic, Position, short_repr
from nnspec.spec.layers import MAX_WIDTH, LayerSpec
from nnspec.spec.search import SearchSection
from nnspec.spec.training import (
    DataSection,
    EnsembleSection,
    InitSection,
    LossSpec,
    OptimizerSpec,
    RegularizationSection,
    ScheduleSpec,
    TrainSection,
)

FORMAT_VERSION = 1
SCHEMA_ID = f"https://nnspec.dev/schema/v{FORMAT_VERSION}/spec.json"

Dim = Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]


class Spec(BaseModel):
    """A network and its training recipe (format version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="nnspec spec v1")

    nnspec: Literal[1] = Field(description="format version of this file; this release reads 1")
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]+$", min_length=1, max_length=64)] = Field(
        description="identifier used in reports and run directories"
    )
    description: str | None = Field(None, max_length=4000)
    extends: str | None = Field(
        None, description="path (relative to this file) of a spec to deep-merge this one over; resolved when loading"
    )
    input: tuple[Dim, ...] = Field(
        min_length=1, max_length=3, description="shape of ONE sample: (C, H, W), (C, L) or (features,)"
    )
    model: list[LayerSpec] = Field(min_length=1, description="layers applied in order")

    loss: LossSpec | None = None
    optimizer: OptimizerSpec | None = None
    schedule: ScheduleSpec | None = None
    data: DataSection | None = None
    train: TrainSection = Field(default_factory=TrainSection)
    regularization: RegularizationSection = Field(default_factory=RegularizationSection)
    init: InitSection = Field(default_factory=InitSection)
    ensemble: EnsembleSection | None = None
    search: SearchSection | None = Field(None, description="hyperparameter search for `nnspec search`; `nnspec train` ignores it")

    # Where each value was written (canonical key path -> position); set by the loader.
    _positions: dict[tuple[str | int, ...], Position] = PrivateAttr(default_factory=dict)
    # Warnings from the meaning checks (printed by the CLI; they do not stop anything).
    _warnings: list[Diagnostic] = PrivateAttr(default_factory=list)

    @field_validator("nnspec", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == str(FORMAT_VERSION):
            raise ValueError(f"the format version is the number {FORMAT_VERSION}, not the string {short_repr(value)}: "
                             f"write nnspec: {FORMAT_VERSION} without quotes")  # fmt: skip
        if value != FORMAT_VERSION or isinstance(value, bool):
            raise ValueError(
                f"unsupported format version {short_repr(value)}; this nnspec reads version {FORMAT_VERSION}"
            )
        return value

    @model_validator(mode="after")
    def _extends_is_resolved(self) -> "Spec":
        if self.extends is not None:
            raise ValueError("'extends' is resolved when loading a file; load it with nnspec.load_spec")
        return self

    def __eq__(self, other: object) -> bool:
        # Equal specs are equal however they were written: where each value sat in
        # which file (and the warnings about it) is not part of what a spec means.
        if not isinstance(other, Spec):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @property
    def warnings(self) -> list[Diagnostic]:
        return list(self._warnings)

    def position_of(self, path: tuple[str | int, ...]) -> Position | None:
        """Where ``path`` (or its nearest written ancestor) was written, if loaded from a file."""
        for end in range(len(path), -1, -1):
            found = self._positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return None
