"""Filters on documents: which documents a search may return, by metadata or by id.

A filter is a JSON object; every condition in it must hold (AND)::

    {"source": "pubmed"}                       metadata field equals a value (text, number,
                                               true/false or null)
    {"year": {"gte": 2019, "lt": 2022}}         a range: gt, gte, lt, lte (numbers, or texts
                                               compared as text, such as ISO dates)
    {"year": {"in": [2019, 2021]}}              membership
    {"source": {"ne": "arxiv"}}                 not equal (documents without the field too)
    {"journal.name": "Nature"}                  a nested field, by a dotted path
    {"id": {"in": ["d1", "d7"]}}                document ids (the ``id`` key is the document's
                                               id, not a metadata field), as PyLate's subset=

A value's type must match: ``{"year": "2020"}`` does not match the number 2020. Naming a field
that no document of the index has, an unknown operator, or a value of the wrong shape is an
error (:class:`~maxsim.errors.SettingsError`) naming what is wrong.

Each segment runs the filter as one SQLite query over its documents (``json_extract`` on the
metadata); search then looks only at the chunks of the documents it returns, so documents
outside the filter are never decompressed or scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from maxsim.errors import SettingsError

RANGES = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
OPERATORS = (*RANGES, "eq", "ne", "in")
#: a metadata field path: names of letters, digits, _ and - joined by dots
FIELD = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
SCALAR_TYPES = (str, int, float, bool, type(None))


def _json_type(value) -> str:
    """The SQLite ``json_type`` of a JSON value of this Python type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    return "text"


class Filter:
    """A checked filter: its SQL condition over the ``documents`` table and its parameters,
    and the metadata fields it names (to check against the index's)."""

    def __init__(self, spec: Mapping) -> None:
        if not isinstance(spec, Mapping) or not spec:
            raise SettingsError(f"a filter is a non-empty JSON object of conditions, got {spec!r}: see "
                                "maxsim.index.filters for the grammar")
        self.spec = dict(spec)
        self.fields: set[str] = set()
        clauses, self.params = [], []
        for key, condition in self.spec.items():
            if not isinstance(key, str) or not (key == "id" or FIELD.fullmatch(key)):
                raise SettingsError(f"filter field {key!r} is not a field name (letters, digits, _ and -, "
                                    "joined by dots for nested fields)")
            if key != "id":
                self.fields.add(key.split(".")[0])
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
            return "(" + " OR ".join(self._equal(key, v) for v in value) + ")"
        if not isinstance(value, SCALAR_TYPES):
            raise SettingsError(f"filter field {key!r}: {op!r} takes one value (text, number, true, false or "
                                f"null), got {value!r}")
        if op == "eq":
            return self._equal(key, value)
        if op == "ne":
            return f"NOT {self._equal(key, value)}"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SettingsError(f"filter field {key!r}: {op!r} compares numbers or texts, got {value!r}")
        if key == "id":
            self.params.append(value)
            return f"(id {RANGES[op]} ?)"
        return self._typed(key, _json_type(value), f"json_extract(metadata, ?) {RANGES[op]} ?", value)

    def _equal(self, key: str, value) -> str:
        if key == "id":
            if not isinstance(value, str):
                raise SettingsError(f"filter field 'id': document ids are texts, got {value!r}")
            self.params.append(value)
            return "(id = ?)"
        kind = _json_type(value)
        if kind in ("null", "true", "false"):
            self.params.append(_path(key))
            return f"(coalesce(json_type(metadata, ?), '') = '{kind}')"
        return self._typed(key, kind, "json_extract(metadata, ?) = ?", value)

    def _typed(self, key: str, kind: str, comparison: str, value) -> str:
        types = "('integer', 'real')" if kind == "number" else "('text')"
        self.params += [_path(key), _path(key), value]
        return f"(coalesce(json_type(metadata, ?), '') IN {types} AND {comparison})"


def _path(key: str) -> str:
    return "$." + ".".join(f'"{part}"' for part in key.split("."))


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
                part = json.loads(text)
            except ValueError as err:
                raise SettingsError(f"--where {condition!r} is not a JSON object ({err})") from None
            if not isinstance(part, dict):
                raise SettingsError(f"--where {condition!r} is not a JSON object")
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
