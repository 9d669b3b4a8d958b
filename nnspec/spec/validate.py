"""From a parsed document to a validated :class:`Spec`, or every error at once with its line.

Steps: (1) rewrite every shorthand into canonical form, carrying each value's
position along; (2) pydantic validation, whose error locations are mapped back
to positions; (3) shape inference and the caps on size; (4) meaning checks.
Each step reports all it finds; later steps run only on what earlier ones
accepted, so one mistake does not cascade into ten messages.
"""

from __future__ import annotations

import types
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Annotated, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from nnspec.errors import Diagnostic, Position, SpecError, did_you_mean, dotted, short_repr
from nnspec.spec.kinds import Kind, KindsOf, ShorthandError, canonical_kind, strip_annotated
from nnspec.spec.meaning import meaning_findings
from nnspec.spec.runnable import file_findings
from nnspec.spec.model import Spec
from nnspec.spec.search import search_problems
from nnspec.spec.shapes import infer_shapes
from nnspec.spec.source import Document, KeyPath, load_document, parse_text

_PLACEHOLDER = object()  # stands in for a value that failed to canonicalize


def load_spec(path: str | Path) -> Spec:
    """Read, resolve ``extends``, validate and shape-check a spec file, and check that the
    files it names exist (relative to the spec's directory). Raises SpecError."""
    spec = validate_document(load_document(path))
    check_files(spec, Path(path).resolve().parent)
    return spec


def check_files(spec: Spec, base_dir: Path) -> None:
    """The files a spec names (``init.pretrained.checkpoint``) exist, or SpecError at their line."""
    findings = file_findings(spec, base_dir)
    if findings:
        raise SpecError([Diagnostic(spec.position_of(f.path), dotted(f.path), f.message) for f in findings])


def loads_spec(text: str, *, fmt: str = "yaml", file: str = "<string>") -> Spec:
    """Like :func:`load_spec` for text in memory (no ``extends``)."""
    return validate_document(parse_text(text, file, fmt))


_WHAT = {type(None): "empty", list: "a list", str: "a single string", int: "a number", float: "a number", bool: "a boolean"}


def validate_document(doc: Document) -> Spec:
    if not isinstance(doc.data, dict):
        what = _WHAT.get(type(doc.data), f"a {type(doc.data).__name__}")
        raise SpecError.single(f"a spec is a mapping of sections; this file is {what}", position=doc.position_of(()))
    canon = _Canonicalizer(doc)
    data = canon.value(Spec, doc.data, (), ())
    diagnostics = list(canon.diagnostics)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        diagnostics += _pydantic_diagnostics(exc, data, canon.positions, doc)
        raise SpecError(_unique(diagnostics)) from None
    if diagnostics:
        raise SpecError(_unique(diagnostics))
    spec._positions = canon.positions
    check_spec(spec, doc)
    return spec


def check_spec(spec: Spec, doc: Document | None = None) -> None:
    """The checks beyond types: names, shapes, caps, and what the layers mean together."""
    diagnostics: list[Diagnostic] = []

    def at(path: KeyPath, message: str) -> Diagnostic:
        position = spec.position_of(path) or (doc.position_of(path) if doc else None)
        return Diagnostic(position, dotted(path), message)

    diagnostics += [at(path, message) for path, message in _name_problems(spec)]
    if spec.search is not None:
        diagnostics += [at(path, message) for path, message in search_problems(spec.search)]
    _, problems = infer_shapes(spec.model, spec.input)
    diagnostics += [at(problem.path, problem.message) for problem in problems]
    if not diagnostics:
        findings = meaning_findings(spec)
        diagnostics += [at(f.path, f.message) for f in findings if not f.warning]
        spec._warnings = [at(f.path, "warning: " + f.message) for f in findings if f.warning]
    if diagnostics:
        raise SpecError(diagnostics)


def _name_problems(spec: Spec) -> list[tuple[KeyPath, str]]:
    """Given names are unique in the whole model and never shadow a generated ``<type>_<i>`` sibling."""
    from nnspec.spec.layers import children

    problems: list[tuple[KeyPath, str]] = []
    seen: dict[str, KeyPath] = {}

    def visit(layers: list, path: KeyPath) -> None:
        generated = {f"{layer.type}_{i}": i for i, layer in enumerate(layers) if layer.name is None}
        for i, layer in enumerate(layers):
            here = path + (i,)
            if layer.name is not None:
                if layer.name in seen:
                    problems.append((here + ("name",), f"name '{layer.name}' is already used by {dotted(seen[layer.name])}"))
                else:
                    seen[layer.name] = here
                if layer.name in generated:
                    problems.append(
                        (here + ("name",), f"name '{layer.name}' collides with the generated name of {dotted(path + (generated[layer.name],))}")
                    )
            for rel, group in children(layer):
                visit(group, here + rel)

    visit(spec.model, ("model",))
    return problems


# -- step 1: shorthands to canonical form, positions carried along ---------


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


class _Canonicalizer:
    """Walks raw data guided by the Spec's type annotations, rewriting kinds into canonical form."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.positions: dict[KeyPath, Position] = {}
        self.diagnostics: list[Diagnostic] = []

    def transplant(self, raw: Any, raw_path: KeyPath, canon_path: KeyPath) -> None:
        position = self.doc.positions.get(raw_path)
        if position is not None:
            self.positions[canon_path] = position
        if isinstance(raw, dict):
            for key, value in raw.items():
                self.transplant(value, raw_path + (key,), canon_path + (key,))
        elif isinstance(raw, list):
            for i, value in enumerate(raw):
                self.transplant(value, raw_path + (i,), canon_path + (i,))

    def value(self, annotation: Any, raw: Any, raw_path: KeyPath, canon_path: KeyPath, metadata: list[Any] = ()) -> Any:
        annotation, more = strip_annotated(annotation)
        metadata = list(metadata) + more
        kinds = next((m for m in metadata if isinstance(m, KindsOf)), None)
        if kinds is not None:
            return self.kind(kinds, raw, raw_path, canon_path)
        if _is_union(annotation):
            for member in get_args(annotation):
                bare, _ = strip_annotated(member)
                if _accepts_structure(bare, member, raw):
                    return self.value(member, raw, raw_path, canon_path)
            self.transplant(raw, raw_path, canon_path)
            return raw
        if get_origin(annotation) in (list, typing.List) and isinstance(raw, list):
            self._position(raw_path, canon_path)
            (item,) = get_args(annotation)
            return [self.value(item, v, raw_path + (i,), canon_path + (i,)) for i, v in enumerate(raw)]
        if get_origin(annotation) is dict and isinstance(raw, dict):
            self._position(raw_path, canon_path)
            _, item = get_args(annotation)
            return {k: self.value(item, v, raw_path + (k,), canon_path + (k,)) for k, v in raw.items()}
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(raw, dict):
            return self.model(annotation, raw, raw_path, canon_path, {k: (k,) for k in raw})
        self.transplant(raw, raw_path, canon_path)
        return raw

    def kind(self, kinds: KindsOf, raw: Any, raw_path: KeyPath, canon_path: KeyPath) -> Any:
        try:
            canonical, origins = canonical_kind(raw, kinds)
        except ShorthandError as exc:
            where = raw_path + exc.where
            self.diagnostics.append(Diagnostic(self.doc.position_of(where), dotted(canon_path + exc.where), str(exc)))
            self.transplant(raw, raw_path, canon_path)
            return _PLACEHOLDER
        cls = kinds.registry.get(canonical["type"]) if isinstance(canonical["type"], str) else None
        if cls is None:
            self.transplant(raw, raw_path, canon_path)
            return canonical
        return self.model(cls, canonical, raw_path, canon_path, origins)

    def model(self, cls: type[BaseModel], raw: dict, raw_path: KeyPath, canon_path: KeyPath, origins: dict) -> dict:
        self._position(raw_path, canon_path)
        result = {}
        for key, value in raw.items():
            origin = raw_path + origins[key]
            info: FieldInfo | None = cls.model_fields.get(key)
            if info is None:
                self.transplant(value, origin, canon_path + (key,))
                result[key] = value
            else:
                result[key] = self.value(info.annotation, value, origin, canon_path + (key,), info.metadata)
            # A key's own position is where it (or its shorthand) was written.
            position = self.doc.positions.get(origin)
            if position is not None:
                self.positions[canon_path + (key,)] = position
        return result

    def _position(self, raw_path: KeyPath, canon_path: KeyPath) -> None:
        position = self.doc.positions.get(raw_path)
        if position is not None:
            self.positions.setdefault(canon_path, position)


def _accepts_structure(bare: Any, member: Any, raw: Any) -> bool:
    """Whether a union member is the one to guide the walk for this raw value."""
    _, metadata = strip_annotated(member)
    if any(isinstance(m, KindsOf) for m in metadata):
        return isinstance(raw, (str, dict))
    if isinstance(raw, list):
        return get_origin(bare) in (list, typing.List)
    if isinstance(raw, dict):
        return (isinstance(bare, type) and issubclass(bare, BaseModel)) or get_origin(bare) is dict
    return False


# -- step 2: pydantic errors to positioned diagnostics ----------------------


def _canonical_path(data: Any, loc: tuple, names_field: bool = False) -> KeyPath:
    """Follow a pydantic ``loc`` through the data, dropping union tags it inserts.

    ``names_field``: the error is about a missing or unknown field, which the last
    part of ``loc`` names (otherwise an unmatched part is a union tag like ``constrained-int``).
    """
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, (dict, list, tuple)) and _has(node, part):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and node.get("type") == part:
            continue  # discriminator tag
        elif isinstance(part, str) and ("[" in part or part in ("function-after", "function-before")):
            continue  # validator wrappers
        elif names_field and i == len(loc) - 1 and isinstance(node, dict) and isinstance(part, str):
            path.append(part)  # a missing or extra field: name it
            node = None
        else:
            continue
    return tuple(path)


def _error_path(data: Any, error: dict) -> KeyPath:
    return _canonical_path(data, tuple(error["loc"]), names_field=error["type"] in ("missing", "extra_forbidden"))


def _model_for(data: Any, path: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (for listing its fields)."""
    node: Any = data
    cls: type[BaseModel] | None = Spec
    annotation: Any = Spec
    for part in path:
        if isinstance(part, str):
            info = cls.model_fields.get(part) if cls is not None else None
            if info is None:
                return None
            annotation = info.annotation
            for extra in info.metadata:
                if isinstance(extra, KindsOf):
                    annotation = Annotated[annotation, extra]
        else:
            annotation = _item_annotation(annotation, node)
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        cls = _class_of(annotation, node)
    return cls


def _item_annotation(annotation: Any, node: Any) -> Any:
    """The annotation of a list's items (looking through Optional/Union to the list member)."""
    bare, _ = strip_annotated(annotation)
    candidates = get_args(bare) if _is_union(bare) else (annotation,)
    for candidate in candidates:
        inner, _ = strip_annotated(candidate)
        if get_origin(inner) in (list, typing.List):
            return get_args(inner)[0]
    return annotation


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _class_of(annotation: Any, node: Any) -> type[BaseModel] | None:
    annotation, metadata = strip_annotated(annotation)
    kinds = next((m for m in metadata if isinstance(m, KindsOf)), None)
    if kinds is not None and isinstance(node, dict):
        return kinds.registry.get(node.get("type"))  # type: ignore[arg-type]
    if kinds is None and _is_union(annotation):  # Optional[...] and the like: the member that takes this node
        members = (_class_of(member, node) for member in get_args(annotation))
        return next((cls for cls in members if cls is not None), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _pydantic_diagnostics(exc: ValidationError, data: Any, positions: dict, doc: Document) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    errors = [(error, _error_path(data, error)) for error in _one_story(data, exc.errors(include_url=False))]
    misspelt = _misspelt_required(data, errors)
    for error, path in errors:
        if _under_placeholder(data, path):
            continue  # already reported as a shorthand error
        if error["type"] == "missing" and path in misspelt:
            continue  # the unknown field's "did you mean" already says it: one mistake, one error
        message = _message(error, data, path)
        out.append(Diagnostic(_position(positions, path, doc), dotted(path), message))
    return out


def _misspelt_required(data: Any, errors: list[tuple[dict, KeyPath]]) -> set[KeyPath]:
    """Paths of missing required fields that an unknown field beside them misspells (``kernal`` for ``kernel``).

    Pydantic sees two problems there, a missing ``kernel`` and an unknown
    ``kernal``; the writer made one, so only the unknown field (with its
    did-you-mean) is reported.
    """
    missing = {path for error, path in errors if error["type"] == "missing" and path}
    covered: set[KeyPath] = set()
    for error, path in errors:
        if error["type"] != "extra_forbidden" or not path:
            continue
        owner = path[:-1]
        candidates = [p[-1] for p in missing if p[:-1] == owner and isinstance(p[-1], str)]
        close = get_close_matches(str(path[-1]), candidates, n=1, cutoff=0.6)
        if close:
            covered.add((*owner, close[0]))
    return covered


def _one_story(data: Any, errors: list[dict]) -> list[dict]:
    """Drop the errors that only echo another one.

    Pydantic reports a value that fails a union against *every* member: ``kernel: [3, 3, 3]``
    is "not a valid integer" as well as "too long". Where some member has the written
    value's structure (a list for ``list[...]``/``tuple[...]`` members, anything else for
    the rest), only that member's errors are kept. A ``too_short`` that only counts the
    items that survived validation is dropped too: the item's own error says it all.
    """
    choices = [_union_choices(data, tuple(error["loc"])) for error in errors]
    fitting = {path for found in choices for path, fits in found if fits}
    kept = []
    for error, found in zip(errors, choices):
        if any(not fits and path in fitting for path, fits in found):
            continue
        if error["type"] == "too_short":
            written = _at(data, _error_path(data, error))
            if isinstance(written, (list, tuple)) and len(written) >= error.get("ctx", {}).get("min_length", 0):
                continue
        kept.append(error)
    return kept


def _union_choices(data: Any, loc: tuple) -> list[tuple[KeyPath, bool]]:
    """For each union member tag in ``loc``: the value's path, and whether the member fits its structure."""
    found: list[tuple[KeyPath, bool]] = []
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, (dict, list, tuple)) and _has(node, part):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and node.get("type") == part:
            continue  # discriminator tag, not a union member
        elif isinstance(part, str) and node is not None:
            wants_list = part.startswith(("list[", "tuple[", "set[", "frozenset["))
            found.append((tuple(path), wants_list == isinstance(node, (list, tuple))))
        else:
            break
    return found


def _at(data: Any, path: KeyPath) -> Any:
    node = data
    for part in path:
        if not (isinstance(node, (dict, list)) and _has(node, part)):
            return None
        node = node[part]
    return node


def _under_placeholder(data: Any, path: KeyPath) -> bool:
    node = data
    for part in path:
        if node is _PLACEHOLDER:
            return True
        if isinstance(node, (dict, list)) and _has(node, part):
            node = node[part]
        else:
            break
    return node is _PLACEHOLDER


def _position(positions: dict, path: KeyPath, doc: Document) -> Position:
    for end in range(len(path), -1, -1):
        found = positions.get(path[:end])
        if found is not None:
            return found
    return doc.position_of(())


def _message(error: dict, data: Any, path: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_for(data, path[:-1])
        field = path[-1] if path else "?"
        if owner is not None:
            allowed = [f for f in owner.model_fields if f != "type"]
            what = f" of {owner.kind_name()}" if issubclass(owner, Kind) else ""
            if not allowed:
                return f"unknown field '{field}'{what}, which takes no fields"
            return f"unknown field '{field}'{what}{did_you_mean(field, allowed)}; allowed: {', '.join(allowed)}"
        return f"unknown field '{field}'"
    if kind == "missing" and path and error["loc"] and error["loc"][-1] == path[-1]:
        return f"missing required field '{path[-1]}'"
    if kind == "missing" and error["loc"] and isinstance(error["loc"][-1], int):
        return f"too few values: item {error['loc'][-1]} is missing"
    value = error.get("input")
    # Pydantic's wording speaks of Python types ("a valid tuple", "after validation"); a spec's
    # writer wrote YAML or JSON, so these say what to write instead.
    if kind in ("tuple_type", "list_type", "set_type"):
        got = f" (got {short_repr(value)})" if isinstance(value, (int, float, str, bool)) else ""
        if path == ("input",):
            return f"expected a list of 1 to 3 sizes, e.g. [1, 28, 28] or [784]{got}"
        return f"expected a list{got}"
    if kind in ("too_short", "too_long"):
        ctx = error.get("ctx", {})
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        actual = ctx.get("actual_length")
        items = lambda n: f"{n} item{'s' if n != 1 else ''}"  # noqa: E731
        if path == ("model",) and kind == "too_short":
            return "a model needs at least one layer; the list is empty"
        if bound is not None and actual is not None:
            return (f"needs at least {items(bound)}, got {actual or 'none'}" if kind == "too_short"
                    else f"takes at most {items(bound)}, got {actual}")  # fmt: skip
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind not in ("model_type", "dict_type", "list_type") and isinstance(value, (int, float, str, bool)) and kind != "value_error":
        message += f" (got {short_repr(value)})"
    return message[0].lower() + message[1:] if message else message


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[str] = set()
    unique = []
    for diagnostic in diagnostics:
        if str(diagnostic) not in seen:
            seen.add(str(diagnostic))
            unique.append(diagnostic)
    return unique
