"""Reading spec files into plain Python data *with* the position of every value.

Why not ``yaml.safe_load``: it forgets where values were written, silently keeps
the last of two duplicate keys, reads ``3e-4`` as a string and ``no`` as False
(YAML 1.1), and expands aliases, so a "billion laughs" file eats the memory of
whatever walks the result. This module parses YAML with the YAML 1.2 core
scalar rules, rejects aliases and duplicate keys, bounds size and depth *before*
building anything, and records a :class:`~nnspec.errors.Position` for every
mapping key and list item so that later errors can point at a line.

JSON is parsed by the ``json`` module (strict syntax, exact error positions);
positions of its values come from reading the same text as YAML flow style.

One module, a little over 500 lines: reading a file safely (regular files only, size capped on
the bytes read), parsing it, and resolving ``extends`` all produce the positions and errors the
rest of the spec package relies on, and they share the same limits.
"""

from __future__ import annotations

import json
import os
import stat
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nnspec.errors import Diagnostic, Position, SpecError, dotted, short_repr

KeyPath = tuple[str | int, ...]

MAX_FILE_BYTES = 1 << 20  # a spec is a page of text; 1 MiB is generous
MAX_DEPTH = 64  # nesting of mappings/lists
MAX_NODES = 200_000  # scalars + collections in one file
MAX_EXTENDS_CHAIN = 16


@dataclass
class Document:
    """Plain data (dicts, lists, scalars) plus where each part was written."""

    data: Any
    file: str
    positions: dict[KeyPath, Position] = field(default_factory=dict)

    def position_of(self, path: KeyPath) -> Position:
        """The position of ``path``, or of its nearest written ancestor."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return Position(self.file, 1, 1)


# -- YAML ------------------------------------------------------------------

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars (``3e-4`` is a float, ``no`` a string)."""


# Start from SafeLoader's resolvers minus the YAML 1.1 rules: bool/int/float are replaced
# below; timestamps (`2020-01-01`), merge keys (`<<`) and `=` are plain strings in YAML 1.2.
_replaced = {
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value",
}  # fmt: skip
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag not in _replaced]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# Order matters: "12" matches both the int and the float pattern, int must win.
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


MAX_INT_BITS = 64  # no spec value needs more; bigger ones are typos or attacks on int() and repr()


class _ScalarError(ValueError):
    """A scalar that cannot be read (the message is the user's)."""


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise _ScalarError(f"integer out of range (more than {MAX_INT_BITS} bits)")
    return value


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    text = loader.construct_scalar(node)
    digits = text.lstrip("-+")
    if len(digits) > 2 * MAX_INT_BITS:  # too large whatever the base; do not even convert
        raise _ScalarError(f"integer out of range (more than {MAX_INT_BITS} bits)")
    if text.startswith("0o"):
        return _check_int(int(text[2:], 8))
    if text.startswith("0x"):
        return _check_int(int(text[2:], 16))
    return _check_int(int(text, 10))  # YAML 1.2: "010" is ten, not octal eight


def _construct_float(loader: yaml.SafeLoader, node: ScalarNode) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_SpecLoader.add_constructor(
    "tag:yaml.org,2002:bool", lambda loader, node: loader.construct_scalar(node) in ("true", "True", "TRUE")
)


def _mark(file: str, mark: Any) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


def _prescan(text: str, file: str) -> None:
    """Walk the event stream (iteratively, cheaply) to enforce the bounds and refuse aliases.

    Doing this before composing means a hostile file is rejected before any
    recursive structure is built.
    """
    depth = nodes = documents = 0
    try:
        for event in yaml.parse(text, Loader=_SpecLoader):
            if isinstance(event, AliasEvent):
                raise SpecError.single(
                    f"YAML aliases (*{event.anchor}) are not supported; use 'extends' to reuse a spec",
                    position=_mark(file, event.start_mark),
                )
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise SpecError.single(
                        "a spec file holds one YAML document; found a second '---'",
                        position=_mark(file, event.start_mark),
                    )
            if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError.single(
                        f"nesting deeper than {MAX_DEPTH} levels", position=_mark(file, event.start_mark)
                    )
            elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                depth -= 1
            if isinstance(event, (ScalarEvent, MappingStartEvent, SequenceStartEvent)):
                nodes += 1
                if nodes > MAX_NODES:
                    raise SpecError.single(
                        f"more than {MAX_NODES} values in one file", position=_mark(file, event.start_mark)
                    )
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except yaml.reader.ReaderError as exc:  # a control character: unmarked, but its offset is known
        raise SpecError.single(
            f"invalid YAML: character U+{exc.character:04X} is not allowed ({exc.reason})",
            position=_offset_position(text, exc.position, file),
        ) from None
    except yaml.YAMLError as exc:  # any other unmarked error
        raise SpecError.single(f"invalid YAML: {exc}", position=Position(file, 1, 1)) from None


def _offset_position(text: str, offset: int, file: str) -> Position:
    """The line and column of character ``offset`` of ``text``."""
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Position(file, line, col)


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    position = _mark(file, mark) if mark else Position(file, 1, 1)
    problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
    return SpecError.single(f"invalid YAML: {problem or exc}", position=position)


class _Converter:
    """Turns a composed YAML node tree into plain data, recording positions."""

    def __init__(self, loader: _SpecLoader, file: str):
        self.loader = loader
        self.file = file
        self.positions: dict[KeyPath, Position] = {}

    def convert(self, node: Node, path: KeyPath) -> Any:
        self.positions.setdefault(path, _mark(self.file, node.start_mark))
        if isinstance(node, MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node, path)
                if key in result:
                    first = self.positions[path + (key,)]
                    raise SpecError.single(
                        f"duplicate key '{key}' (first written at line {first.line})",
                        position=_mark(self.file, key_node.start_mark),
                        path=dotted(path + (key,)),
                    )
                self.positions[path + (key,)] = _mark(self.file, key_node.start_mark)
                result[key] = self.convert(value_node, path + (key,))
            return result
        if isinstance(node, SequenceNode):
            return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: Node, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _yaml_error(exc, self.file) from None
        except _ScalarError as exc:
            raise SpecError.single(str(exc), position=_mark(self.file, node.start_mark), path=dotted(path)) from None
        except (ValueError, TypeError, AttributeError):
            # A scalar its explicit tag cannot read: `!!int abc`, `!!timestamp x`.
            raise SpecError.single(
                f"invalid YAML: cannot read {short_repr(node.value)} as {node.tag.rsplit(':', 1)[-1]}",
                position=_mark(self.file, node.start_mark),
                path=dotted(path),
            ) from None

    def _key(self, node: Node, path: KeyPath) -> str:
        where = _mark(self.file, node.start_mark)
        if not isinstance(node, ScalarNode):
            raise SpecError.single("mapping keys must be plain names", position=where, path=dotted(path))
        key = self._scalar(node, path)
        if not isinstance(key, str):
            raise SpecError.single(
                f"mapping keys must be names, not {type(key).__name__} {short_repr(key)}", position=where, path=dotted(path)
            )
        return key


def parse_yaml(text: str, file: str) -> Document:
    _prescan(text, file)
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None, file, {(): Position(file, 1, 1)})
        converter = _Converter(loader, file)
        data = converter.convert(node, ())
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    finally:
        loader.dispose()
    return Document(data, file, converter.positions)


# -- JSON ------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateJSONKey(key)
        result[key] = value
    return result


class _DuplicateJSONKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _JSONIntOutOfRange(ValueError):
    def __init__(self, digits: str):
        super().__init__(digits[:40])
        self.digits = digits


def _json_int(digits: str) -> int:
    # Bound the length first: int() refuses (ValueError) beyond sys.get_int_max_str_digits().
    if len(digits.lstrip("-")) > 2 * MAX_INT_BITS or int(digits).bit_length() > MAX_INT_BITS:
        raise _JSONIntOutOfRange(digits)
    return int(digits)


def _json_depth_ok(text: str) -> bool:
    """Bracket depth outside strings, without building anything."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _trailing_comma(text: str, pos: int) -> int | None:
    """The offset of a comma right before a closing ``]``/``}`` at ``pos`` (whitespace between), if any."""
    if pos >= len(text) or text[pos] not in "]}":
        return None
    before = len(text[:pos].rstrip())
    return before - 1 if before and text[before - 1] == "," else None


def parse_json(text: str, file: str) -> Document:
    if not _json_depth_ok(text):
        raise SpecError.single(f"nesting deeper than {MAX_DEPTH} levels", position=Position(file, 1, 1))
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        comma = _trailing_comma(text, exc.pos)
        if comma is not None:  # json's own words ("Expecting value") name what it wanted, not what is wrong
            line, col = text.count("\n", 0, comma) + 1, comma - text.rfind("\n", 0, comma)
            message = "invalid JSON: trailing comma after the last item (JSON allows none; remove it)"
            raise SpecError.single(message, position=Position(file, line, col)) from None
        raise SpecError.single(f"invalid JSON: {exc.msg}", position=Position(file, exc.lineno, exc.colno)) from None
    except _DuplicateJSONKey as exc:
        where = _find_key(text, exc.key, second=True) or Position(file, 1, 1)
        raise SpecError.single(f"duplicate key '{exc.key}'", position=Position(file, where.line, where.col)) from None
    except _JSONIntOutOfRange as exc:
        error = SpecError.single(
            f"integer out of range (more than {MAX_INT_BITS} bits)",
            position=_offset_position(text, max(text.find(exc.digits), 0), file),
        )
        try:  # the YAML reader applies the same bound and knows the value's key path
            _positions_of_json(text, file)
        except SpecError as located:
            if located.diagnostics[0].message == error.diagnostics[0].message:
                error = located
        raise error from None
    try:
        positions = _positions_of_json(text, file)
    except SpecError:
        positions = {(): Position(file, 1, 1)}
    return Document(data, file, positions)


def _positions_of_json(text: str, file: str) -> dict[KeyPath, Position]:
    # JSON is YAML flow style: reuse the YAML reader to learn where values sit. What JSON
    # allows but YAML does not — tabs between tokens, raw control characters such as DEL
    # inside strings — becomes spaces first, which keeps every line and column.
    return parse_yaml(yaml.reader.Reader.NON_PRINTABLE.sub(" ", text.replace("\t", " ")), file).positions


def _find_key(text: str, key: str, second: bool) -> Position | None:
    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    if len(hits) < (2 if second else 1):
        return None
    offset = hits[1 if second else 0]
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Position("", line, col)


# -- files and `extends` ---------------------------------------------------


def read_text(path: Path, shown: str) -> str:
    """The file's text, reading only a regular file and at most MAX_FILE_BYTES of it.

    The size cap is enforced on the bytes actually read, not on what ``stat`` says:
    /proc files report size 0 and can be endless.  The file is opened non-blocking, so a
    FIFO or a device that would wait for data (``/proc/kmsg``) fails at once instead of
    hanging; anything that is not a regular file is refused before it is read.
    """
    where = Position(shown, 1, 1)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SpecError.single("no such file", position=where) from None
    except ValueError:  # a NUL byte in the name
        raise SpecError.single("file name contains a NUL byte", position=where) from None
    except OSError as exc:
        raise SpecError.single(f"cannot read: {exc.strerror}", position=where) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SpecError.single("not a file (a directory)", position=where)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError.single("not a regular file", position=where)
        if info.st_size > MAX_FILE_BYTES:
            raise SpecError.single(f"file is {info.st_size} bytes; specs are limited to {MAX_FILE_BYTES}", position=where)
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_FILE_BYTES:
            raise SpecError.single(f"file is larger than {MAX_FILE_BYTES} bytes, the limit for specs", position=where)
    except OSError as exc:
        raise SpecError.single(f"cannot read: {exc.strerror}", position=where) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError.single("not UTF-8 text", position=Position(shown, line, 1)) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_text(text: str, file: str, fmt: str) -> Document:
    """Parse ``text`` as ``"yaml"`` or ``"json"``."""
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise SpecError.single(f"spec text larger than {MAX_FILE_BYTES} bytes", position=Position(file, 1, 1))
    surrogate = _SURROGATE.search(text)  # only text from Python can hold one; a file is decoded UTF-8
    if surrogate is not None:
        raise SpecError.single(
            f"not Unicode text: lone surrogate U+{ord(surrogate.group()):04X}",
            position=_offset_position(text, surrogate.start(), file),
        )
    return parse_json(text, file) if fmt == "json" else parse_yaml(text, file)


def format_of(path: Path) -> str:
    return "json" if path.suffix.lower() == ".json" else "yaml"


def load_document(path: str | Path, _chain: tuple[Path, ...] = ()) -> Document:
    """Read a spec file, resolving ``extends`` (relative to the file) by deep merge.

    Mappings merge key by key; lists and scalars in the extending file replace
    the base's. Positions stay with the file that wrote each value, so an error
    in an inherited value points into the base file.
    """
    path = Path(path)
    shown = str(path)
    text = read_text(path, shown)
    doc = parse_text(text, shown, format_of(path))
    if not isinstance(doc.data, dict) or "extends" not in doc.data:
        return doc
    extends = doc.data["extends"]
    where = doc.position_of(("extends",))
    if not isinstance(extends, str) or not extends:
        raise SpecError.single("must be a path to another spec file", position=where, path="extends")
    shown_extends = short_repr(extends, 60)
    try:
        base_path = (path.parent / extends).resolve()
        chain = _chain + (path.resolve(),)
        found = base_path.is_file()
        special = not found and base_path.exists()  # a directory, FIFO, device, socket
    except ValueError:  # pathlib's "embedded null byte"
        raise SpecError.single(f"{shown_extends} is not a usable path: it contains a NUL byte",
                               position=where, path="extends") from None
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise SpecError.single(f"{shown_extends} is not a usable path: a loop of symbolic links",
                               position=where, path="extends") from None
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES, ...
        raise SpecError.single(f"{shown_extends} is not a usable path: {exc.strerror}",
                               position=where, path="extends") from None
    if base_path in chain:
        cycle = " -> ".join(p.name for p in chain[chain.index(base_path):] + (base_path,))
        raise SpecError.single(f"{shown_extends} closes a cycle of 'extends' ({cycle})", position=where, path="extends")
    if len(chain) >= MAX_EXTENDS_CHAIN:
        raise SpecError.single(f"more than {MAX_EXTENDS_CHAIN} files chained by 'extends'", position=where)
    if special:
        raise SpecError.single(f"{shown_extends} is not a regular file ({short_repr(str(base_path), 80)})",
                               position=where, path="extends")
    if not found:
        looked = short_repr(str(base_path), 80)
        raise SpecError.single(f"{shown_extends} not found (looked at {looked})", position=where, path="extends")
    # Read the base by the path the user can follow from here, so that every error
    # in it (syntax, its own `extends`, its values) names the file the same way.
    base = load_document(_display_path(base_path), chain)
    if not isinstance(base.data, dict):
        raise SpecError.single(f"{shown_extends} is not a spec mapping", position=where, path="extends")
    overlay = {k: v for k, v in doc.data.items() if k != "extends"}
    overlay_positions = {p: pos for p, pos in doc.positions.items() if p[:1] != ("extends",)}
    return merge_documents(base, Document(overlay, doc.file, overlay_positions))


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def merge_documents(base: Document, over: Document) -> Document:
    """Deep-merge ``over`` onto ``base`` (mappings merge; everything else replaces)."""
    positions = dict(base.positions)

    def merge(a: Any, b: Any, path: KeyPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            merged = dict(a)
            for key, value in b.items():
                merged[key] = merge(a[key], value, path + (key,)) if key in a else _take(value, path + (key,))
            return merged
        return _take(b, path)

    def _take(value: Any, path: KeyPath) -> Any:
        # Replaced wholesale: forget every base position at or under this path.
        for stale in [p for p in positions if p[: len(path)] == path]:
            del positions[stale]
        positions.update({p: pos for p, pos in over.positions.items() if p[: len(path)] == path})
        return value

    data = merge(base.data, over.data, ())
    positions[()] = over.positions.get((), Position(over.file, 1, 1))
    return Document(data, over.file, positions)


def diagnostic_at(doc: Document, path: KeyPath, message: str) -> Diagnostic:
    return Diagnostic(doc.position_of(path), dotted(path), message)
