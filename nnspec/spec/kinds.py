"""Shorthand forms shared by layers and by every section that names a *kind*.

A layer (or a loss, an optimizer, …) may be written four ways, all equivalent::

    relu                              # bare name
    leaky_relu: 0.02                  # name: main argument
    dropout: {p: 0.2}                 # name: {fields}
    {type: linear, out: 10}           # canonical

plus the convenient mix ``{linear: 10, name: head}`` (the kind's key beside its
other fields). :func:`canonical_kind` turns any of them into the canonical
mapping and says, for each canonical key, where in the written value it came
from, so errors keep pointing at the user's line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Mapping, get_args, get_origin

from pydantic import BaseModel, ConfigDict, WithJsonSchema

from nnspec.errors import did_you_mean, short_repr


class Kind(BaseModel):
    """Base of every model selected by a ``type`` name (layers, losses, optimizers…)."""

    # Non-finite numbers are always a mistake in a spec (`elu: .nan` would build a NaN model).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    #: The field a shorthand value fills (``linear: 200`` sets ``out``); None if it takes none.
    main: ClassVar[str | None] = None

    @classmethod
    def kind_name(cls) -> str:
        return cls.model_fields["type"].default


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the registry is a dict
class KindsOf:
    """Marks a field whose values are kinds from ``registry`` (lives in ``Annotated`` metadata)."""

    registry: Mapping[str, type[Kind]]
    what: str  # "layer", "loss", … — used in messages

    @property
    def schema_name(self) -> str:
        """Name of the JSON Schema definition that accepts every written form of these kinds."""
        return "".join(word.capitalize() for word in self.what.split()) + "Forms"

    def json_schema_ref(self) -> WithJsonSchema:
        return WithJsonSchema({"$ref": f"#/$defs/{self.schema_name}"})


class ShorthandError(ValueError):
    """A value that cannot be read as any form of a kind. ``where`` is relative to that value."""

    def __init__(self, message: str, where: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.where = where


# Origins say where a canonical key's value was written, relative to the raw value.
Origins = dict[str, tuple[str | int, ...]]


def canonical_kind(raw: Any, kinds: KindsOf) -> tuple[dict[str, Any], Origins]:
    """Return ``(canonical mapping, origins)`` for any accepted form of a kind."""
    registry = kinds.registry
    if isinstance(raw, str):
        _check_known(raw, kinds, ())
        return {"type": raw}, {"type": ()}
    if not isinstance(raw, dict):
        raise ShorthandError(
            f"expected a {kinds.what} name or mapping, got {type(raw).__name__} {_short(raw)}"
        )
    if "type" in raw:
        if isinstance(raw["type"], str):
            _check_known(raw["type"], kinds, ("type",))
        return dict(raw), {key: (key,) for key in raw}

    named = [key for key in raw if key in registry]
    if not named:
        unknown = next(iter(raw), None)
        if unknown is None:
            raise ShorthandError(f"empty mapping: name a {kinds.what}")
        raise ShorthandError(
            f"unknown {kinds.what} '{unknown}'{did_you_mean(unknown, registry)}; "
            f"expected one of: {', '.join(sorted(registry))}",
            (unknown,),
        )
    if len(named) > 1:
        raise ShorthandError(f"names two {kinds.what}s ({', '.join(named)}); write one per list item", (named[1],))
    kind = named[0]
    cls = registry[kind]
    value = raw[kind]
    canonical: dict[str, Any] = {"type": kind}
    origins: Origins = {"type": (kind,)}
    if isinstance(value, dict):
        for key, field_value in value.items():
            canonical[key] = field_value
            origins[key] = (kind, key)
    elif value is not None:
        if cls.main is None:
            raise ShorthandError(f"'{kind}' takes no main argument; use '{kind}: {{field: value}}'", (kind,))
        canonical[cls.main] = value
        origins[cls.main] = (kind,)
    for key, field_value in raw.items():
        if key == kind:
            continue
        if key in canonical:
            raise ShorthandError(f"'{key}' is given twice", (key,))
        canonical[key] = field_value
        origins[key] = (key,)
    return canonical, origins


def _check_known(name: str, kinds: KindsOf, where: tuple[str | int, ...]) -> None:
    if name not in kinds.registry:
        raise ShorthandError(
            f"unknown {kinds.what} '{name}'{did_you_mean(name, kinds.registry)}; "
            f"expected one of: {', '.join(sorted(kinds.registry))}",
            where,
        )


def _short(value: Any) -> str:
    return short_repr(value)


def strip_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, a, b]`` -> ``(T, [a, b])`` (nested Annotated flattened); others -> ``(T, [])``.

    The spec walkers (canonicalization, overrides) use it to find the ``KindsOf``
    marker that says a field holds kinds.
    """
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        args = get_args(annotation)
        annotation, metadata = args[0], metadata + list(args[1:])
    return annotation, metadata


def shorthand_validator(kinds: KindsOf):
    """A pydantic BeforeValidator so Python callers may use the shorthands too."""

    def validate(raw: Any) -> Any:
        if isinstance(raw, BaseModel):
            return raw
        try:
            return canonical_kind(raw, kinds)[0]
        except ShorthandError as exc:
            raise ValueError(str(exc)) from None

    return validate
