"""Filtered search: the grammar, every door (Retriever.search, maxsim search --where, POST
/search), documents outside a filter never scored, fewer than k documents, clear errors."""

import importlib
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.errors import SettingsError
from maxsim.index import IndexData
from maxsim.index.filters import Filter, parse_where
from maxsim.retriever import Retriever

search_module = importlib.import_module("maxsim.index.search")  # the module (maxsim.index.search is the function)

QUERY = "why do stars shine"


def metadata(i: int) -> dict | None:
    if i % 7 == 6:
        return None  # some documents have no metadata
    return {"year": 2000 + i % 5, "source": "pubmed" if i % 2 else "arxiv", "journal": {"name": f"J{i % 3}"},
            "open": i % 4 == 0}


def passes(i: int, test) -> bool:
    return test(metadata(i) or {})


@pytest.fixture
def r(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS, metadata=[metadata(i) for i in range(len(DOCS))])
    Retriever.from_index(path).add(["a late note on stars"], document_ids=["late"], metadata=[{"year": 2003}])
    return Retriever.from_index(path)


CASES = [
    ({"source": "pubmed"}, lambda m: m.get("source") == "pubmed"),
    ({"year": {"gte": 2002, "lt": 2004}}, lambda m: 2002 <= m.get("year", -1) < 2004),
    ({"year": {"in": [2001, 2004]}, "source": "arxiv"}, lambda m: m.get("year") in (2001, 2004)
     and m.get("source") == "arxiv"),
    ({"journal.name": "J1"}, lambda m: m.get("journal", {}).get("name") == "J1"),
    ({"open": True}, lambda m: m.get("open") is True),
    ({"source": {"ne": "pubmed"}}, lambda m: m.get("source") != "pubmed"),
    ({"year": "2001"}, lambda m: False),  # a text is not the number 2001
]


@pytest.mark.parametrize("spec, test", CASES)
def test_every_hit_passes_and_every_passing_document_can_be_found(r, spec, test, monkeypatch):
    expected = {IDS[i] for i in range(len(DOCS)) if passes(i, test)}
    if test({"year": 2003}):
        expected.add("late")
    hits = r.search(QUERY, k=len(DOCS) + 1, filter=spec)
    assert {h.document_id for h in hits} == expected  # fewer than k: every one that passes
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    monkeypatch.setattr(search_module, "EXACT_FILTER_CHUNKS", 0)  # through the probed centroids, not all scored
    top = r.search(QUERY, k=3, filter=spec, ndocs=4)
    assert {h.document_id for h in top} <= expected and len(top) == min(3, len(expected))


def test_documents_outside_the_filter_are_never_decompressed(r, monkeypatch):
    data = r.index_data
    allowed = {i for i in range(len(DOCS)) if passes(i, lambda m: m.get("source") == "arxiv")}
    touched = []
    real = IndexData.unit_vectors_of

    def noting(self, segment, index):
        s = self.segments.index(segment)
        chunk_of_row = np.asarray(segment.cell_rows[2])[index]  # rows are in cell order
        touched.extend((segment.chunk_docs[chunk_of_row] + self.doc_base[s]).tolist())
        return real(self, segment, index)

    monkeypatch.setattr(IndexData, "unit_vectors_of", noting)
    monkeypatch.setattr(search_module, "EXACT_FILTER_CHUNKS", 0)
    for ndocs in (4, None):
        r.search([QUERY, "cells dividing", "volcanoes"], k=5, filter={"source": "arxiv"}, ndocs=ndocs)
    assert touched and set(touched) <= allowed
    assert data is r.index_data


def test_id_filters_and_the_filter_cache(r):
    hits = r.search(QUERY, k=10, filter={"id": {"in": ["doc3", "doc5", "late"]}})
    assert sorted(h.document_id for h in hits) == ["doc3", "doc5", "late"]
    data = r.index_data
    assert data.allowed({"id": {"in": ["doc3", "doc5", "late"]}}) is data.allowed({"id": {"in": ["doc3", "doc5",
                                                                                            "late"]}})
    r.delete(["doc3"])
    assert sorted(h.document_id for h in r.search(QUERY, k=10, filter={"id": {"in": ["doc3", "doc5"]}})) == ["doc5"]


@pytest.mark.parametrize("spec, message", [
    ({"yeer": 2001}, "no document of this index has the metadata field yeer: its documents have journal, open, "
                     "source, year"),
    ({"year": {"between": [1, 2]}}, "unknown operator 'between'"),
    ({"year": {"in": []}}, "'in' takes a non-empty list"),
    ({"year": {"gte": [2001]}}, "'gte' takes one value"),
    ({"year": {"gte": True}}, "'gte' compares numbers or texts"),
    ({"bad field!": 1}, "is not a field name"),
    ({}, "a non-empty JSON object"),
    ({"id": True}, "document ids are texts"),
    ({"id": {"gte": "doc10"}}, "document ids have no order"),
    ({"journal.nmae": "J1"}, "no document of this index has the metadata field 'journal.nmae'"),
    ({"year": float("nan")}, "is not a number a document can hold"),
    ({"year": {"lt": float("inf")}}, "is not a number a document can hold"),
    ({"year": 2**63}, "beyond +-2**53"),
    ({"year": {"in": list(range(100_001))}}, "'in' takes at most 100000 values"),
])
def test_a_bad_filter_is_a_clear_error(r, spec, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        r.search(QUERY, filter=spec)


def test_where_conditions_on_the_command_line(r):
    assert parse_where(["year>=2002", "year<2004", "source in pubmed,arxiv", '{"open": true}', "journal.name=J1"]) == {
        "year": {"gte": 2002, "lt": 2004}, "source": {"in": ["pubmed", "arxiv"]}, "open": {"eq": True},
        "journal.name": {"eq": "J1"}}
    result = CliRunner().invoke(app, ["search", "--index", str(r.index_path), QUERY, "--json", "-k", "50",
                                      "--where", "source=pubmed", "--where", "year>=2003"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits and all(h["metadata"]["source"] == "pubmed" and h["metadata"]["year"] >= 2003 for h in hits)
    bad = CliRunner().invoke(app, ["search", "--index", str(r.index_path), QUERY, "--where", "year~2003"])
    assert bad.exit_code == 2 and "write FIELD=VALUE" in bad.output


def test_the_filter_field_of_post_search(r):
    from maxsim.serve import create_app

    with TestClient(create_app(r)) as client:
        ok = client.post("/search", json={"queries": [QUERY, "volcanoes"], "k": 50, "filter": {"year": 2001}})
        assert ok.status_code == 200, ok.text
        for hits in ok.json()["results"]:
            assert hits and all(h["metadata"]["year"] == 2001 for h in hits)
        assert client.post("/search", json={"queries": [QUERY], "filter": {"year": {"nope": 1}}}).status_code == 422
        unknown = client.post("/search", json={"queries": [QUERY], "filter": {"yeer": 1}})
        assert unknown.status_code == 400 and "yeer" in unknown.json()["error"]


def test_a_long_in_list_is_one_parameter_and_numeric_ids_read_as_text(r):
    """10,000 values in one 'in' (a 500 before: SQLite's expression tree grew with the list)."""
    years = list(range(-5_000, 5_000))
    condition = Filter({"year": {"in": years}, "id": {"in": [f"doc{i}" for i in range(10_000)]}})
    assert len(condition.params) == 3 and condition.sql.count("?") == 3
    hits = r.search(QUERY, k=len(DOCS) + 1, filter={"year": {"in": years}})
    expected = {IDS[i] for i in range(len(DOCS)) if metadata(i) is not None} | {"late"}
    assert {h.document_id for h in hits} == expected
    numeric = Filter({"id": 5152028})
    assert numeric.params == ['["5152028"]']


def test_list_valued_fields_match_on_any_element_and_numbers_as_numbers(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "lists"
    meta = [{"tags": ["a", "b"], "n": 1}, {"tags": "a", "n": 1.0}, {"tags": ["b"], "n": 2.5}, {"tags": [], "n": [1, 3]},
            {"tags": {"a": "a"}}, {"n": None}, {"n": [None]}]
    retriever.index(DOCS[: len(meta)], path=path, document_ids=IDS[: len(meta)], metadata=meta)
    r = Retriever.from_index(path)

    def ids(spec):
        return sorted(h.document_id for h in r.search(QUERY, k=20, filter=spec))

    assert ids({"tags": "a"}) == [IDS[0], IDS[1]]  # (an object's values are not elements)
    assert ids({"tags": {"ne": "a"}}) == sorted(IDS[i] for i in (2, 3, 4, 5, 6))
    assert ids({"tags": {"in": ["b", "zz"]}}) == [IDS[0], IDS[2]]
    assert ids({"n": 1.0}) == sorted([IDS[0], IDS[1], IDS[3]])
    assert ids({"n": {"gt": 2}}) == sorted([IDS[2], IDS[3]])
    assert ids({"n": None}) == [IDS[5]]


def test_the_sql_of_a_filter_is_parameterised():
    condition = Filter({"source": "x'); DROP TABLE documents; --"})
    assert "DROP" not in condition.sql and "x'); DROP TABLE documents; --" in condition.params
