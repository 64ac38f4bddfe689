"""Filters on documents: which documents a search may return, by metadata or by id.

A filter is a JSON object; every condition in it must hold (AND)::

    {"source": "pubmed"}                       metadata field equals a value (text, number,
                                               true/false or null)
    {"year": {"gte": 2019, "lt": 2022}}         a range: gt, gte, lt, lte (numbers, or texts
                                               compared as text, such as ISO dates)
    {"year": {"in": [2019, 2021]}}              membership
    {"source": {"ne": "arxiv"}}                 not equal (documents without the field too)
    {"journal.name": "Nature"}                  a nested field, by a dotted path
    {"id": {"in": ["d1", "d7"]}}                document ids (``id``, or ``document_id``, is the document's
                                               id, not a metadata field), as PyLate's subset=

A value's type must match: ``{"year": "2020"}`` does not match the number 2020; numbers
compare as numbers (``1.0`` matches ``1``). A field whose value is a list matches when any of
its elements does (``{"tags": "x"}`` matches ``{"tags": ["x", "y"]}``; ``ne`` then passes only
lists without it), as in Qdrant. Numbers must be finite, and integers within +-2**53 (what every
JSON reader holds exactly). Document ids are texts without an order: ``id`` takes ``eq``,
``ne`` and ``in`` (a number is read as its decimal text: ``{"id": 5152028}`` is
``{"id": "5152028"}``), and no range. Naming a field that no document of the index has (a
nested one too), an unknown operator, or a value of the wrong shape is an error
(:class:`~maxsim.errors.SettingsError`) naming what is wrong.

Each segment runs the filter as one SQLite query over its documents (``json_each`` on the
metadata); an ``in`` list is one JSON parameter that SQLite reads once into a lookup table, so
a document costs the same whatever the list's length (up to :data:`MAX_IN_VALUES` values).
Search then looks only at the chunks of the documents it returns, so documents outside the
filter are never decompressed or scored.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

from maxsim.errors import SettingsError
from maxsim.files import json_object
from maxsim.limits import MAX_SAFE_INTEGER

RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = (*RANGES, "eq", "ne", "in")
#: a metadata field path: names of letters, digits, _ and - joined by dots
FIELD = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
SCALAR_TYPES = (str, int, float, bool, type(None))
#: the most values one ``in`` takes
MAX_IN_VALUES = 100_000
#: SQLite's json types of each kind of filter value
NUMBER, TEXT = "('integer', 'real')", "('text')"


def _json_type(value) -> str:
    """The SQLite ``json_type`` of a JSON value of this Python type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


def _elements(condition: str) -> str:
    """A condition that holds when the field's value (``?``: its path), or one of its elements
    when it is a list, meets ``condition`` (over json_each's ``type`` and ``value``); an
    object's members are not elements."""
    return f"EXISTS (SELECT 1 FROM json_each(metadata, ?) WHERE typeof(key) != 'text' AND ({condition}))"


class Filter:
    """A checked filter: its SQL condition over the ``documents`` table and its parameters,
    and the metadata fields it names (to check against the index's): ``fields`` the top-level
    names, ``nested`` the dotted paths."""

    def __init__(self, spec: Mapping) -> None:
        if not isinstance(spec, Mapping) or not spec:
            raise SettingsError(f"a filter is a non-empty JSON object of conditions, got {spec!r}: see "
                                "maxsim.index.filters for the grammar")
        if "id" in spec and "document_id" in spec:
            raise SettingsError("a filter names the document's id twice (id and document_id): give one")
        self.spec = {("id" if key == "document_id" else key): value for key, value in spec.items()}
        self.fields: set[str] = set()
        self.nested: set[str] = set()
        #: (field, operator, value or list of values) of each condition, values as compared
        self.conditions: list[tuple[str, str, object]] = []
        clauses, self.params = [], []
        for key, condition in self.spec.items():
            if not isinstance(key, str) or not (key == "id" or FIELD.fullmatch(key)):
                raise SettingsError(f"filter field {key!r} is not a field name (letters, digits, _ and -, "
                                    "joined by dots for nested fields)")
            if key != "id":
                self.fields.add(key.split(".")[0])
                if "." in key:
                    self.nested.add(key)
            ops = condition if isinstance(condition, Mapping) else {"eq": condition}
            if not ops:
                raise SettingsError(f"filter field {key!r}: an empty condition")
            for op, value in ops.items():
                clauses.append(self._clause(key, op, value))
        self.sql = " AND ".join(clauses)

    def key(self) -> str:
        """The filter as canonical JSON (equal filters, equal keys)."""
        return json.dumps(self.spec, sort_keys=True)

    def _clause(self, key: str, op: str, value) -> str:
        if op not in OPERATORS:
            raise SettingsError(f"filter field {key!r}: unknown operator {op!r}: use one of {', '.join(OPERATORS)}")
        if op == "in":
            if not isinstance(value, list) or not value or not all(isinstance(v, SCALAR_TYPES) for v in value):
                raise SettingsError(f"filter field {key!r}: 'in' takes a non-empty list of values, got {value!r}")
            if len(value) > MAX_IN_VALUES:
                raise SettingsError(f"filter field {key!r}: 'in' takes at most {MAX_IN_VALUES} values, got "
                                    f"{len(value)}: filter on a metadata field the documents share instead")
            values = [_checked(key, v) for v in value]
            self.conditions.append((key, op, values))
            return self._member(key, values)
        if not isinstance(value, SCALAR_TYPES):
            raise SettingsError(f"filter field {key!r}: {op!r} takes one value (text, number, true, false or "
                                f"null), got {value!r}")
        value = _checked(key, value)
        self.conditions.append((key, op, value))
        if op == "eq":
            return self._member(key, [value])
        if op == "ne":
            return f"NOT {self._member(key, [value])}"
        if key == "id":
            raise SettingsError(f"filter field 'id': document ids have no order ({op!r}: as texts \"10\" sorts "
                                "before \"9\"): list them with 'in', or keep an ordered value in a metadata field")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SettingsError(f"filter field {key!r}: {op!r} compares numbers or texts, got {value!r}")
        self.params += [_path(key), value]
        return _elements(f"type IN {NUMBER if _json_type(value) == 'number' else TEXT} AND value {RANGES[op]} ?")

    def _member(self, key: str, values: list) -> str:
        """The condition that the field (or one of its elements) equals one of ``values``."""
        if key == "id":
            self.params.append(json.dumps(values))
            return "(id IN (SELECT value FROM json_each(?)))"
        parts = []
        numbers = [v for v in values if _json_type(v) == "number"]
        texts = [v for v in values if _json_type(v) == "text"]
        flags = sorted({_json_type(v) for v in values} & {"true", "false"})
        checks, values_params = [], []
        for kind, part in ((NUMBER, numbers), (TEXT, texts)):
            if len(part) == 1:  # (one value: compared directly)
                checks.append(f"(type IN {kind} AND value = ?)")
                values_params.append(part[0])
            elif part:
                checks.append(f"(type IN {kind} AND value IN (SELECT value FROM json_each(?)))")
                values_params.append(json.dumps(part))
        if flags:
            checks.append(f"type IN ({', '.join(repr(f) for f in flags)})")
        if checks:
            self.params += [_path(key), *values_params]
            parts.append(_elements(" OR ".join(checks)))
        if any(v is None for v in values):
            self.params.append(_path(key))
            parts.append("(coalesce(json_type(metadata, ?), '') = 'null')")
        return "(" + " OR ".join(parts) + ")"


def _checked(key: str, value):
    """A filter value as compared: numbers finite and within +-2**53, an id a text."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"filter field {key!r}: {value!r} is not a number a document can hold: use a finite one")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        raise SettingsError(f"filter field {key!r}: the integer {value} is beyond +-2**53 ({MAX_SAFE_INTEGER}), "
                            "which metadata cannot hold: compare such values as text")
    if key == "id":
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise SettingsError(f"filter field 'id': document ids are texts, got {value!r}: write the id as text")
    return value


def _path(key: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in key.split("."))


def path_condition(key: str) -> tuple[str, list]:
    """The SQL condition (and its parameters) that a document's metadata has the field ``key``
    (a dotted path), to check that a filter names a field some document has."""
    return "json_type(metadata, ?) IS NOT NULL", [_path(key)]


def parse_where(conditions: list[str]) -> dict:
    """``maxsim search --where`` conditions as one filter: each a JSON object, or
    ``FIELD=VALUE``, ``FIELD!=VALUE``, ``FIELD>=VALUE`` (also >, <=, <) or ``FIELD in A,B,C``;
    a VALUE that reads as JSON (2020, true, null, "quoted") is that value, else text.

    >>> parse_where(["year>=2019", "source in pubmed,pmc", 'id="d1"'])
    {'year': {'gte': 2019}, 'source': {'in': ['pubmed', 'pmc']}, 'id': {'eq': 'd1'}}
    """
    spec: dict = {}
    for condition in conditions:
        text = condition.strip()
        if text.startswith("{"):
            try:
                part = json_object(text)
            except ValueError as err:
                raise SettingsError(f"--where {condition!r} is not a JSON object ({err})") from None
            for key, value in part.items():
                spec.setdefault(key, {}).update(value if isinstance(value, dict) else {"eq": value})
            continue
        match = re.fullmatch(r"\s*([^\s=!<>]+)\s*(!=|>=|<=|=|>|<|\s+in\s+)\s*(.*)", text)
        if not match:
            raise SettingsError(f"--where {condition!r}: write FIELD=VALUE, FIELD>=VALUE (also !=, >, <=, <), "
                                "FIELD in A,B or a JSON object")
        key, op, raw = match.group(1), match.group(2).strip(), match.group(3).strip()
        name = {"=": "eq", "!=": "ne", ">=": "gte", "<=": "lte", ">": "gt", "<": "lt", "in": "in"}[op]
        value = [_value(v) for v in raw.split(",")] if name == "in" else _value(raw)
        spec.setdefault(key, {})[name] = value
    return spec


def _value(raw: str):
    raw = raw.strip()
    try:
        return json.loads(raw)
    except ValueError:
        return raw
