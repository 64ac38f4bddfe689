"""Concurrent searches batched by maxsim.serve.SearchBatcher (in process; the server's tests are in
test_serve.py)."""

from __future__ import annotations

import threading

import pytest
from test_serve import DOCS, index_path  # noqa: F401 - the index fixture

from maxsim import serve
from maxsim.errors import SettingsError
from maxsim.retriever import Retriever

QUERIES = ["cats and fish", "the moon and tides", "honey", "volcanoes", "glass", "winter snow"]


def test_requests_waiting_together_are_one_batch_with_the_same_answers(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    expected = {k: retriever.search(QUERIES, k=k) for k in (2, 5)}
    sizes: list[int] = []
    first_started, release = threading.Event(), threading.Event()
    refresh = retriever.refresh

    def held_refresh():  # the first batch waits until every other request is queued
        first_started.set()
        release.wait(30)
        return refresh()

    monkeypatch.setattr(retriever, "refresh", held_refresh)
    batcher = serve.SearchBatcher(retriever, on_batch=sizes.append)
    first = batcher.submit(QUERIES[:1], 2)
    assert first_started.wait(30)
    later = [batcher.submit(QUERIES[i : i + 2], k) for i, k in ((1, 2), (3, 5), (0, 5), (4, 2))]
    release.set()
    answers = [first.result(30)] + [f.result(30) for f in later]
    assert sizes == [1, 8]  # the four requests that waited were searched as one batch of 8 queries
    wanted = [expected[2][:1], expected[2][1:3], expected[5][3:5], expected[5][0:2], expected[2][4:6]]
    for got, want in zip(answers, wanted):
        assert [[h["document_id"] for h in row] for row in got] == [[h.document_id for h in row] for row in want]
        for row, want_row in zip(got, want):
            assert [h["score"] for h in row] == pytest.approx([h.score for h in want_row], rel=1e-5)
            assert [h["rank"] for h in row] == list(range(1, len(row) + 1))


def test_one_groups_error_is_its_own(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    real_search = serve.search

    def search(data, q_vectors, q_mask, k, *rest):
        if k == 7:
            raise SettingsError("k 7 is refused here")
        return real_search(data, q_vectors, q_mask, k, *rest)

    monkeypatch.setattr(serve, "search", search)
    first_started, release = threading.Event(), threading.Event()
    refresh = retriever.refresh
    monkeypatch.setattr(retriever, "refresh", lambda: (first_started.set(), release.wait(30), refresh())[-1])
    batcher = serve.SearchBatcher(retriever)
    batcher.submit(["warm-up"], 3)
    assert first_started.wait(30)
    bad, good = batcher.submit(["cats"], 7), batcher.submit(["cats"], 3)
    release.set()
    with pytest.raises(SettingsError, match="k 7 is refused"):
        bad.result(30)
    assert len(good.result(30)[0]) == 3
