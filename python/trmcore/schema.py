"""The one reader of the JSON files trmcore reads, and the tiny schemas they are checked against.

Every JSON file a user could hand to ``trm`` (dataset.json, run.json, the
``trmcore`` record inside an ONNX model, affinity.json, fit.json, study.json,
the study cache, output-folder markers) goes through :func:`read_json` (or
:func:`parse_json` for text already in memory) with the schema of that file.
The schema of each file lives next to the code that owns the file
(``DATASET_JSON`` in ``data/layout.py``, ``RUN_JSON`` in ``training/runinfo.py``,
``METADATA_JSON`` in ``infer/metadata.py`` ...). A bad file gives one
:class:`JsonFileError` (a ``ValueError``) naming the file, the field and the
problem, e.g.::

    run/run.json: model.depth: expected an integer, got 64.5
    model.onnx: trmcore metadata: label_values[2]: expected an integer >= 0, got -1

What the reader refuses before any field is looked at:

* files above ``max_bytes`` (default :data:`MAX_JSON_BYTES`), read no further;
* text that is not UTF-8;
* nesting deeper than :data:`MAX_DEPTH` (checked on the text, without
  recursion, before ``json.loads`` could exhaust Python's stack);
* ``NaN``, ``Infinity`` and numbers that overflow a float, where the schema wants a
  number (reported at their field; scores trmcore records as NaN say so in their schema),
  integers beyond 64 bits where it wants an integer;
* an object that names a key twice (parsers disagree on which value wins).

Schemas are plain objects: :class:`Int`, :class:`Float`, :class:`Str`,
:class:`Bool`, :class:`Maybe` (null allowed), :class:`List`, :class:`Map`
(any keys), :class:`Object` (named fields), :class:`OneOf`, :class:`AnyJson`
and :class:`Build` (turn the checked value into an object, e.g. a dataclass
whose own ``__post_init__`` holds the bounds). :func:`dataclass_schema`
derives an :class:`Object` from a dataclass's field types, so bounds and
defaults stay written once, in the dataclass.

Torch-free and NumPy-free (``trmcore.infer`` uses it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from trmcore.errors import TrmError

#: Largest JSON file trmcore reads (bytes); affinity.json of a few hundred tasks stays far below.
MAX_JSON_BYTES = 64 << 20
#: Deepest nesting of objects and lists accepted; trmcore's own files nest at most 5 levels.
MAX_DEPTH = 32
#: Largest text file (tasks lists, CSV tables) read by :func:`read_text_file`.
MAX_TEXT_BYTES = 16 << 20

PathLike = Union[str, Path]

__all__ = ["MAX_JSON_BYTES", "MAX_DEPTH", "MAX_TEXT_BYTES", "JsonFileError", "read_json",
           "parse_json", "validate", "read_text_file", "read_csv_rows", "Schema", "Int", "Float", "Str", "Bool", "Maybe", "List", "Map",
           "Object", "OneOf", "AnyJson", "Build", "dataclass_schema"]


class JsonFileError(TrmError):
    """A JSON file that trmcore cannot use: one line naming the file, the field and the problem."""


class _Invalid(Exception):
    """Raised inside a schema check; becomes a JsonFileError naming the file in read_json/parse_json."""

    def __init__(self, where: str, problem: str, kind: Optional[type] = None) -> None:
        super().__init__(problem)
        self.where, self.problem, self.kind = where, problem, kind


# ---------------------------------------------------------------------------------------------- parsing
class _JsonObject(dict):
    """A JSON object; ``duplicates`` lists the keys its text named more than once."""

    duplicates: Tuple[str, ...] = ()


def _object(pairs):
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen, twice = set(), []
        for key, _ in pairs:
            if key in seen and key not in twice:
                twice.append(key)
            seen.add(key)
        obj.duplicates = tuple(twice)
    return obj


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _check_depth(text: str, limit: int) -> Optional[str]:
    """The problem when objects and lists nest more than ``limit`` deep, worded for the user; else None.

    Works on the text without recursion (json.loads recurses once per level and a file of 100000
    ``[`` exhausts Python's stack): strings are blanked, the brackets kept, and each pass removes the
    innermost ``[]`` / ``{}`` pairs, i.e. one level. Brackets that do not match are left to json.loads,
    whose message says where (it recurses at most ``limit`` levels before meeting them, or reaches
    Python's recursion limit, which :func:`parse_json` reports as too deep).
    """
    if "[" not in text and "{" not in text:
        return None
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(limit):
        shorter = _INNERMOST.sub("", brackets)
        if shorter == brackets:
            return None  # all removed, or brackets that do not match
        brackets = shorter
    if _INNERMOST.search(brackets):
        return f"objects and lists nest more than {limit} levels deep; trmcore's files nest a few levels"
    return None


def parse_json(text: Union[str, bytes], source: str, schema: Optional["Schema"] = None, *,
               max_depth: int = MAX_DEPTH, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse ``text`` and check it against ``schema``; JsonFileError ``"{source}: {field}: {problem}"``.

    Args:
        text: the JSON text (bytes are decoded as UTF-8, a byte-order mark allowed).
        source: how the error names the text, e.g. the file path or ``"model.onnx: trmcore metadata"``.
        schema: what the value must be; None accepts any JSON (still refusing NaN, duplicates ...).
    Returns:
        the checked value (what ``schema.check`` returns: converted and with defaults where it says so).
    """
    if len(text) > max_bytes:
        raise JsonFileError(f"{source}: {len(text)} bytes, more than the {max_bytes} a trmcore JSON file may have")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise JsonFileError(f"{source}: not UTF-8 text (byte {err.start}); not a JSON file?") from None
    problem = _check_depth(text, max_depth)
    if problem:
        raise JsonFileError(f"{source}: {problem}")
    try:
        # Default number parsing (a Python hook per number costs seconds on a big file): NaN, Infinity and
        # 1e999 become float nan / inf and the schema refuses them at their field (where a score may be
        # NaN, "not scored", its schema says so); an integer of more than 4300 digits is Python's ValueError.
        value = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as err:
        raise JsonFileError(f"{source}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except ValueError as err:  # an integer literal beyond Python's 4300 digits
        raise JsonFileError(f"{source}: not valid JSON: {str(err).split(';')[0]}") from None
    except RecursionError:  # unmatched brackets nested beyond Python's recursion limit (see _check_depth)
        raise JsonFileError(f"{source}: not valid JSON: objects and lists nest more than {max_depth} levels deep") from None
    return validate(value, schema or AnyJson(), source)


def validate(value: Any, schema: "Schema", source: str) -> Any:
    """``schema.check(value)`` for a value already parsed; JsonFileError ``"{source}: {field}: {problem}"``."""
    try:
        return schema.check(value, "")
    except _Invalid as err:
        message = f"{source}: {err.where}: {err.problem}" if err.where else f"{source}: {err.problem}"
        error: Exception = JsonFileError(message)
        if err.kind is not None:  # a dataclass's own error type (e.g. a resource limit) is kept, with the file named
            try:
                error = err.kind(message)
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                pass
        raise error from None


def read_json(path: PathLike, schema: Optional["Schema"] = None, *, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH) -> Any:
    """Read and check the JSON file ``path`` (see :func:`parse_json`).

    OSErrors (absent, permission denied, a folder) propagate with ``path`` as their file name, so
    ``trm`` prints the real cause; a caller that wants its own wording for an absent file catches
    FileNotFoundError.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JsonFileError(f"{path}: more than {max_bytes} bytes, more than a trmcore JSON file may have")
    return parse_json(data, str(path), schema, max_depth=max_depth, max_bytes=max_bytes)


def read_text_file(path: PathLike, *, max_bytes: int = MAX_TEXT_BYTES, what: str = "file") -> str:
    """The UTF-8 text of ``path`` (tasks lists, tables): JsonFileError naming it when too big or not text."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JsonFileError(f"{what} {path}: more than {max_bytes} bytes; not a {what}?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise JsonFileError(f"{what} {path}: not UTF-8 text (byte {err.start}); not a {what}?") from None


def read_csv_rows(path: PathLike, *, what: str = "CSV file", max_bytes: int = MAX_TEXT_BYTES) -> list:
    """The rows of a CSV file (lists of strings) through :func:`read_text_file`; JsonFileError naming the file
    when it is too big, not UTF-8, or not CSV (a field beyond the csv module's limit, a stray NUL)."""
    import csv
    import io

    text = read_text_file(path, max_bytes=max_bytes, what=what)
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise JsonFileError(f"{what} {path}: not a readable CSV table ({err})") from None


# ---------------------------------------------------------------------------------------------- schemas
def _show(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and len(str(abs(value))) > 24:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\- ]{1,64}")


def _join(where: str, key: Union[str, int]) -> str:
    """``model.depth``, ``tasks[0]``; an unusual key (a newline, a dot ...) is quoted so that the message
    stays one unambiguous line: ``labels['C\\nSF']``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if not _PLAIN_KEY.fullmatch(key):
        shown = repr(key) if len(key) <= 40 else repr(key[:37]) + "..."
        return f"{where}[{shown}]"
    return f"{where}.{key}" if where else key


def _range_text(minimum, maximum, exclusive_min: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}" if not exclusive_min else f" above {minimum} and up to {maximum}"
    if minimum is not None:
        return f" {'>' if exclusive_min else '>='} {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


class Schema:
    """What one JSON value must be. ``check(value, where)`` returns the value to use or raises _Invalid."""

    expected = "a JSON value"

    def check(self, value: Any, where: str) -> Any:  # pragma: no cover - every schema overrides it
        raise NotImplementedError

    def fail(self, value: Any, where: str, expected: Optional[str] = None) -> typing.NoReturn:
        raise _Invalid(where, f"expected {expected or self.expected}, got {_show(value)}")


#: Integers beyond this are refused unless a schema says otherwise: NumPy and C++ take 64-bit integers.
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class Int(Schema):
    """An integer (not true/false, not 2.0) within ``[minimum, maximum]`` (either may be None)."""

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.expected = "an integer" + _range_text(minimum, maximum)

    def check(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(value, where)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            self.fail(value, where)
        if not _INT64[0] <= value <= _INT64[1]:
            raise _Invalid(where, f"expected {self.expected}, got {_show(value)}, beyond 64-bit integers")
        return value


class Float(Schema):
    """A finite number (an integer is accepted and becomes a float) within the bounds.

    ``allow_nan``: NaN is accepted too (a score trmcore itself records as NaN: "nothing to score").
    """

    def __init__(self, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 exclusive_min: bool = False, allow_nan: bool = False) -> None:
        self.minimum, self.maximum, self.exclusive_min, self.allow_nan = minimum, maximum, exclusive_min, allow_nan
        self.expected = "a finite number" + _range_text(minimum, maximum, exclusive_min) + (" or NaN" if allow_nan else "")

    def check(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(value, where)
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
        if self.allow_nan and math.isnan(number):
            return number
        if not math.isfinite(number):
            self.fail(value, where)
        if self.minimum is not None and (number <= self.minimum if self.exclusive_min else number < self.minimum):
            self.fail(value, where)
        if self.maximum is not None and number > self.maximum:
            self.fail(value, where)
        return number


class Str(Schema):
    """A string; ``choices`` restricts it to those, ``pattern`` (a regular expression, matched whole) to its
    spelling, ``nonempty`` refuses ``""``; ``expected`` words the requirement for the error message."""

    def __init__(self, choices: Optional[Iterable[str]] = None, nonempty: bool = False, max_len: int = 4096,
                 pattern: Optional[str] = None, expected: Optional[str] = None) -> None:
        self.choices = tuple(choices) if choices is not None else None
        self.nonempty, self.max_len = nonempty, max_len
        self.pattern = re.compile(pattern) if pattern else None
        if expected:
            self.expected = expected
        elif self.choices is not None:
            self.expected = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            self.expected = "a non-empty string" if nonempty else "a string"

    def check(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or (self.nonempty and not value):
            self.fail(value, where)
        if len(value) > self.max_len:
            raise _Invalid(where, f"a string of {len(value)} characters, more than the {self.max_len} allowed")
        if self.choices is not None and value not in self.choices:
            self.fail(value, where)
        if self.pattern is not None and not self.pattern.fullmatch(value):
            self.fail(value, where)
        return value


class Bool(Schema):
    expected = "true or false"

    def check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(value, where)
        return value


class Maybe(Schema):
    """``null`` or what ``schema`` accepts."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.expected = f"{schema.expected} or null"

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.schema.check(value, where)


class List(Schema):
    """A list of ``items`` with ``min_len`` to ``max_len`` entries; returns a new list."""

    def __init__(self, items: Schema, min_len: int = 0, max_len: Optional[int] = None) -> None:
        self.items, self.min_len, self.max_len = items, min_len, max_len
        if max_len == min_len:
            shape = f"a list of exactly {min_len} entries"
        elif max_len is not None:
            shape = f"a list of {min_len} to {max_len} entries"
        else:
            shape = {0: "a list", 1: "a non-empty list"}.get(min_len, f"a list of at least {min_len} entries")
        self.expected = f"{shape}, each {items.expected}"

    def check(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            self.fail(value, where)
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise _Invalid(where, f"expected {self.expected}, got {len(value)} entr{'y' if len(value) == 1 else 'ies'}")
        return [self.items.check(item, _join(where, k)) for k, item in enumerate(value)]


def _check_duplicates(value: dict, where: str) -> None:
    twice = getattr(value, "duplicates", ())
    if twice:
        raise _Invalid(where, f"key {twice[0]!r} appears twice in one object (which one counts is ambiguous)")


class Map(Schema):
    """An object with any keys; each value checked by ``values``, each key (a string) by ``keys`` if given."""

    def __init__(self, values: Schema, keys: Optional[Schema] = None, nonempty: bool = False,
                 expected: Optional[str] = None) -> None:
        self.values, self.keys, self.nonempty = values, keys, nonempty
        self.expected = expected or ("a non-empty object" if nonempty else "an object")

    def check(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict) or (self.nonempty and not value):
            self.fail(value, where)
        _check_duplicates(value, where)
        out = {}
        for key, item in value.items():
            if self.keys is not None:
                try:
                    self.keys.check(key, where)
                except _Invalid as err:
                    raise _Invalid(where, f"key {key!r}: {err.problem}") from None
            out[key] = self.values.check(item, _join(where, key))
        return out


class Object(Schema):
    """An object with named fields.

    Args:
        fields: field name -> schema.
        required: fields that must be present (others may be absent and are then left out of the result).
        extra: what to do with other keys: "ignore" (dropped, for files other tools add keys to),
            "keep" (kept unchecked but for NaN and duplicates), or "forbid" (an error naming them).
    """

    expected = "an object"

    def __init__(self, fields: Mapping[str, Schema], required: Sequence[str] = (), extra: str = "ignore") -> None:
        assert extra in ("ignore", "keep", "forbid"), extra
        self.fields, self.required, self.extra = dict(fields), tuple(required), extra

    def check(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(value, where)
        _check_duplicates(value, where)
        missing = [name for name in self.required if name not in value]
        if missing:
            raise _Invalid(where, f"required key {missing[0]!r} is missing")
        unknown = [key for key in value if key not in self.fields]
        if unknown and self.extra == "forbid":
            raise _Invalid(where, f"unknown key {unknown[0]!r} (known: {', '.join(self.fields)})")
        out = {}
        for key, item in value.items():
            if key in self.fields:
                out[key] = self.fields[key].check(item, _join(where, key))
            elif self.extra == "keep":
                out[key] = AnyJson(finite=False).check(item, _join(where, key))
        return out


class OneOf(Schema):
    """The first of ``schemas`` that accepts the value; else "expected {expected}"."""

    def __init__(self, *schemas: Schema, expected: Optional[str] = None) -> None:
        self.schemas = schemas
        self.expected = expected or " or ".join(s.expected for s in schemas)

    def check(self, value: Any, where: str) -> Any:
        for schema in self.schemas:
            try:
                return schema.check(value, where)
            except _Invalid:
                continue
        self.fail(value, where)


class AnyJson(Schema):
    """Any JSON value without duplicate keys, checked all the way down.

    ``finite`` (default): NaN and infinities refused too; False for records trmcore writes itself where
    NaN means "not scored" (a study's cached results, risk diagnostics).
    """

    expected = "a JSON value"

    def __init__(self, finite: bool = True) -> None:
        self.finite = finite

    def check(self, value: Any, where: str) -> Any:
        self._walk(value, where)
        return value

    def _walk(self, value: Any, where: str) -> None:
        if isinstance(value, float):
            if self.finite and not math.isfinite(value):
                raise _Invalid(where, f"{_show(value)} is not a number trmcore accepts here (finite numbers only)")
        elif isinstance(value, dict):
            _check_duplicates(value, where)
            for key, item in value.items():
                if isinstance(item, (dict, list, float)):
                    self._walk(item, _join(where, key))
        elif isinstance(value, list):
            for key, item in enumerate(value):
                if isinstance(item, (dict, list, float)):
                    self._walk(item, _join(where, key))


class Build(Schema):
    """Check with ``schema``, then ``factory(value)``; a ValueError/TypeError of the factory names the field.

    For dataclasses whose ``__post_init__`` holds the bounds (UNetConfig, TrainConfig, ...): the
    file's error then quotes the dataclass's own message, so the bound is written once.
    """

    def __init__(self, schema: Schema, factory: Callable[[Any], Any]) -> None:
        self.schema, self.factory = schema, factory
        self.expected = schema.expected

    def check(self, value: Any, where: str) -> Any:
        checked = self.schema.check(value, where)
        try:
            return self.factory(checked)
        except (ValueError, TypeError) as err:
            kind = None if type(err) in (ValueError, TypeError) else type(err)
            raise _Invalid(where, str(err).splitlines()[0] if str(err) else type(err).__name__, kind) from None


_SIMPLE = {int: Int, float: Float, str: Str, bool: Bool}


def _schema_of_type(hint: Any) -> Schema:
    if hint in _SIMPLE:
        return _SIMPLE[hint]()
    if dataclasses.is_dataclass(hint):
        return dataclass_schema(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return Maybe(_schema_of_type(rest[0]) if len(rest) == 1 else AnyJson())
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return List(_schema_of_type(args[0]) if args else AnyJson())
    if origin in (dict, Mapping) or hint is dict:
        return Map(AnyJson())
    return AnyJson()


def dataclass_schema(cls: type, overrides: Optional[Mapping[str, Schema]] = None, required: Sequence[str] = (),
                     extra: str = "ignore", build: bool = True) -> Schema:
    """An :class:`Object` of ``cls``'s fields typed from its annotations, built into ``cls(**fields)``.

    ``overrides`` replaces the schema of some fields (e.g. a list of label values). Fields absent from
    the file keep the dataclass's defaults; ranges are the dataclass's own ``__post_init__`` checks,
    quoted with the field path when they fail.
    """
    hints = typing.get_type_hints(cls)
    fields: Dict[str, Schema] = {f.name: _schema_of_type(hints[f.name]) for f in dataclasses.fields(cls)}
    fields.update(overrides or {})
    schema = Object(fields, required=required, extra=extra)
    return Build(schema, lambda value: cls(**value)) if build else schema
