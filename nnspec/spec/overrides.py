"""``--set key.path=value`` overrides, applied to a parsed document before validation.

Why on the *document* and not on a validated Spec: the overridden file must go
through exactly the same validation as a file written by hand (shorthands,
shapes, meaning checks), and every error must still say where the offending
value was written. An override's values are given positions in a pseudo-file
named after the override itself, so a bad value reads::

    --set train.epochs=x:1:14: train.epochs: input should be a valid integer (got 'x')

Paths follow the spec's own addressing (``model.3.out``): list items by index,
mapping keys by name, and a layer also by its ``name`` (``model.hidden.out``), so
a path survives inserting a layer before it. Walking *into* a kind written in shorthand
(``optimizer: adam`` then ``--set optimizer.lr=0.1``) first rewrites it into
its canonical mapping, so the override adds a field instead of clobbering the
kind. Mappings missing on the way are created; list indices must exist.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from typing import Any, Annotated, Sequence, Union, get_args, get_origin

from pydantic import BaseModel

from nnspec.errors import Diagnostic, Position, SpecError, did_you_mean, dotted
from nnspec.spec.kinds import KindsOf, ShorthandError, canonical_kind, strip_annotated
from nnspec.spec.layers import LAYERS
from nnspec.spec.model import Spec
from nnspec.spec.source import Document, KeyPath, parse_yaml

__all__ = ["Override", "apply_overrides", "parse_override"]


@dataclass(frozen=True)
class Override:
    """One parsed ``key.path=value``: the path, the raw value text, and where the value starts."""

    text: str
    path: KeyPath
    value_text: str
    value_col: int  # 1-based column of the value within ``text``

    @property
    def file(self) -> str:
        """The pseudo-file name diagnostics use, so messages name the override the user typed."""
        return f"--set {self.text}"

    def position(self, col: int = 1) -> Position:
        return Position(self.file, 1, col)


def _malformed(text: str, why: str) -> SpecError:
    return SpecError.single(
        f"malformed override: {why}; expected KEY.PATH=VALUE, e.g. train.epochs=5",
        position=Position(f"--set {text}", 1, 1),
    )


def parse_override(text: str) -> Override:
    """Split ``key.path=value`` into a key path and a value text (value parsed later as YAML)."""
    if "=" not in text:
        raise _malformed(text, "no '='")
    key, value = text.split("=", 1)
    if not key.strip():
        raise _malformed(text, "empty key")
    parts = key.strip().split(".")
    if any(not part for part in parts):
        raise _malformed(text, f"empty component in key '{key.strip()}'")
    # ASCII digits only: str.isdigit() is also true for "²" and "①", which int() refuses.
    path = tuple(int(part) if part.isascii() and part.isdigit() else part for part in parts)
    return Override(text, path, value, len(key) + 2)


# -- the value: YAML, with positions moved into the override's pseudo-file ----


def _shift(position: Position, override: Override) -> Position:
    """A position inside the value text -> the same place inside the whole override text."""
    col = position.col + override.value_col - 1 if position.line == 1 else position.col
    return Position(override.file, position.line, col)


def _parse_value(override: Override) -> Document:
    """The value as YAML (so ``adam``, ``0.1``, ``[1, 2]``, ``{sgd: 0.1}`` all work)."""
    try:
        doc = parse_yaml(override.value_text, override.file)
    except SpecError as exc:
        shifted = [
            Diagnostic(_shift(d.position, override) if d.position else None, dotted(override.path), d.message)
            for d in exc.diagnostics
        ]
        raise SpecError(shifted) from None
    positions = {path: _shift(pos, override) for path, pos in doc.positions.items()}
    positions.setdefault((), override.position(override.value_col))
    return Document(doc.data, override.file, positions)


# -- walking the spec's type annotations alongside the data -------------------


def _kinds_of(annotation: Any) -> KindsOf | None:
    """The kind registry when ``annotation`` (or its union member matching a mapping) names kinds."""
    bare, metadata = strip_annotated(annotation)
    found = next((m for m in metadata if isinstance(m, KindsOf)), None)
    if found is not None:
        return found
    if get_origin(bare) in (Union, types.UnionType):
        for member in get_args(bare):
            inner = _kinds_of(member)
            if inner is not None:
                return inner
    return None


def _list_item(annotation: Any) -> Any:
    """The item annotation of a list annotation (looking through Optional/Union)."""
    bare, _ = strip_annotated(annotation)
    members = get_args(bare) if get_origin(bare) in (Union, types.UnionType) else (annotation,)
    for member in members:
        inner, _ = strip_annotated(member)
        if get_origin(inner) in (list, typing.List):
            return get_args(inner)[0]
    return None


def _model_class(annotation: Any) -> type[BaseModel] | None:
    bare, _ = strip_annotated(annotation)
    members = get_args(bare) if get_origin(bare) in (Union, types.UnionType) else (bare,)
    for member in members:
        inner, _ = strip_annotated(member)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return None


def _dict_value(annotation: Any) -> Any:
    bare, _ = strip_annotated(annotation)
    members = get_args(bare) if get_origin(bare) in (Union, types.UnionType) else (bare,)
    for member in members:
        inner, _ = strip_annotated(member)
        if get_origin(inner) is dict:
            return get_args(inner)[1]
    return None


def _child_annotation(annotation: Any, node: Any, key: str | int) -> Any:
    """The annotation of ``node[key]`` given the annotation of ``node`` (None when unknown)."""
    if annotation is None:
        return None
    if isinstance(key, int):
        return _list_item(annotation)
    kinds = _kinds_of(annotation)
    if kinds is not None and isinstance(node, dict):
        cls = kinds.registry.get(node.get("type"))  # type: ignore[arg-type]
        return _field_annotation(cls, key) if cls is not None else None
    cls = _model_class(annotation)
    if cls is not None:
        return _field_annotation(cls, key)
    return _dict_value(annotation)


def _field_annotation(cls: type[BaseModel], key: str) -> Any:
    info = cls.model_fields.get(key)
    if info is None:
        return None
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


# -- applying one override ------------------------------------------------------


class _Applier:
    """Applies overrides to a private copy of a document, keeping positions in step with the data."""

    def __init__(self, doc: Document):
        self.data = copy.deepcopy(doc.data) if doc.data is not None else {}
        self.positions = dict(doc.positions)

    def apply(self, override: Override) -> None:
        value = _parse_value(override)
        parent, path, annotation = self._parent(override)
        last = self._key(parent, override.path[-1], override, len(path), annotation)
        path = path + (last,)
        self._forget(path)
        parent[last] = value.data
        self.positions.update({path + sub: pos for sub, pos in value.positions.items()})

    def _parent(self, override: Override) -> tuple[dict | list, KeyPath, Any]:
        """Walk to the container holding the overridden key, creating or expanding on the way.

        Returns the container, its path (numeric keys of mappings turned back into
        names, layer names into indices) and its annotation.
        """
        node: Any = self.data
        annotation: Any = Spec
        path: KeyPath = ()
        for depth, written in enumerate(override.path[:-1]):
            key = self._key(node, written, override, depth, annotation)
            child_annotation = _child_annotation(annotation, node, key)
            path = path + (key,)
            child = node[key] if (isinstance(node, dict) and key in node) or isinstance(node, list) else None
            node[key] = self._expanded(child, child_annotation, path, override.path[depth + 1], override)
            node, annotation = node[key], child_annotation
        return node, path, annotation

    def _key(self, node: Any, key: str | int, override: Override, depth: int, annotation: Any) -> str | int:
        """``key`` checked against ``node``: list items by existing index (or a layer by name), mapping keys by name."""
        where = dotted(override.path[:depth]) or "the spec"
        if isinstance(node, dict):
            return str(key)  # a numeric key of a mapping is still a name
        if not isinstance(node, list):
            raise SpecError.single(
                f"cannot set '{dotted(override.path)}': '{where}' holds the value {node!r}, not a mapping or list",
                position=override.position(), path=dotted(override.path[:depth]),
            )  # fmt: skip
        if not isinstance(key, int) and _kinds_of(_list_item(annotation)) is LAYERS:
            return self._layer_index(node, key, override, depth)
        if not isinstance(key, int):
            raise SpecError.single(
                f"'{where}' is a list; index it with a number, not '{key}'",
                position=override.position(), path=dotted(override.path[: depth + 1]),
            )  # fmt: skip
        if key >= len(node):
            raise SpecError.single(
                f"index {key} is out of range: '{where}' has {len(node)} item(s)",
                position=override.position(), path=dotted(override.path[: depth + 1]),
            )  # fmt: skip
        return key

    def _layer_index(self, layers: list, name: str, override: Override, depth: int) -> int:
        """The index of the layer called ``name`` in this list (its direct items only)."""
        names = [_layer_name(layer) for layer in layers]
        if name in names:
            return names.index(name)
        given = [n for n in names if n is not None]
        where = dotted(override.path[:depth]) or "the spec"
        hint = f"; its named layers: {', '.join(given)}" if given else "; none of its layers has a name"
        raise SpecError.single(
            f"'{where}' has no layer named '{name}'{did_you_mean(name, given)}{hint}",
            position=override.position(), path=dotted(override.path[: depth + 1]),
        )  # fmt: skip

    def _expanded(self, child: Any, annotation: Any, here: KeyPath, next_key: str | int, override: Override) -> Any:
        """The child as a container to descend into: created when absent, a kind shorthand made canonical.

        A shorthand is rewritten only when the next key is not already written in
        it, so ``optimizer.adam.lr`` still walks into ``{adam: {lr: …}}`` as written.
        """
        kinds = _kinds_of(annotation)
        if child is None and kinds is not None:
            raise SpecError.single(
                f"'{dotted(here)}' is not set in the spec; give it whole first, "
                f"e.g. --set {dotted(here)}=<{kinds.what} name>",
                position=override.position(), path=dotted(here),
            )  # fmt: skip
        if child is None:
            self._forget(here)
            self.positions[here] = override.position()
            return {}
        shorthand = isinstance(child, str) or (
            isinstance(child, dict) and "type" not in child and str(next_key) not in child
        )
        if kinds is not None and shorthand:
            return self._canonical(child, kinds, here, override)
        return child

    def _canonical(self, raw: Any, kinds: KindsOf, here: KeyPath, override: Override) -> dict:
        """Rewrite a shorthand kind into ``{type: …, field: …}`` and move its positions to match."""
        try:
            canonical, origins = canonical_kind(raw, kinds)
        except ShorthandError as exc:
            position = self.positions.get(here + exc.where) or self.positions.get(here) or override.position()
            raise SpecError.single(str(exc), position=position, path=dotted(here + exc.where)) from None
        old = {path[len(here):]: pos for path, pos in self.positions.items() if path[: len(here)] == here}
        self._forget(here)
        self.positions[here] = old.get((), override.position())
        for key, origin in origins.items():
            for sub, pos in old.items():
                if sub[: len(origin)] == origin:
                    self.positions[here + (key,) + sub[len(origin):]] = pos
        return canonical

    def _forget(self, path: KeyPath) -> None:
        for stale in [p for p in self.positions if p[: len(path)] == path]:
            del self.positions[stale]


def _layer_name(raw: Any) -> str | None:
    """The ``name`` of a layer as written, in any of its forms (None when it has none)."""
    try:
        canonical, _ = canonical_kind(raw, LAYERS)
    except ShorthandError:
        return None
    name = canonical.get("name")
    return name if isinstance(name, str) else None


def apply_overrides(doc: Document, overrides: Sequence[str]) -> Document:
    """Return a new document with every ``key.path=value`` applied in order (``doc`` is untouched).

    Raises SpecError for a malformed override, a path that cannot be walked, or
    a value that is not valid YAML; the result still needs ``validate_document``.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides is a list of 'key.path=value' strings, not one string")
    if not overrides:
        return doc
    if doc.data is not None and not isinstance(doc.data, dict):
        raise SpecError.single("overrides need a spec that is a mapping", position=doc.position_of(()))
    applier = _Applier(doc)
    for text in overrides:
        applier.apply(parse_override(text))
    return Document(applier.data, doc.file, applier.positions)
