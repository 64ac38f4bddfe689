"""maxsim.serve.IndexWorker in process: concurrent searches batched, writes between batches (the
server's tests are in test_serve.py)."""

from __future__ import annotations

import threading

import pytest
from test_serve import DOCS, index_path  # noqa: F401 - the index fixture

from maxsim import serve
from maxsim.backends import local
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
    worker = serve.IndexWorker(retriever, on_batch=sizes.append)
    first = worker.search(QUERIES[:1], 2)
    assert first_started.wait(30)
    later = [worker.search(QUERIES[i : i + 2], k) for i, k in ((1, 2), (3, 5), (0, 5), (4, 2))]
    release.set()
    answers = [first.result(30)] + [f.result(30) for f in later]
    assert sizes == [1, 8]  # the four requests that waited were searched as one batch of 8 queries
    wanted = [expected[2][:1], expected[2][1:3], expected[5][3:5], expected[5][0:2], expected[2][4:6]]
    for got, want in zip(answers, wanted):
        assert [[h["document_id"] for h in row] for row in got] == [[h.document_id for h in row] for row in want]
        for row, want_row in zip(got, want):
            assert [h["score"] for h in row] == pytest.approx([h.score for h in want_row], rel=1e-5)
            assert [h["rank"] for h in row] == list(range(1, len(row) + 1))


def _held_first_refresh(retriever):
    """(started, release, refresh): a refresh whose first call waits for ``release`` (set ``started`` first)."""
    first_started, release = threading.Event(), threading.Event()
    refresh = retriever.refresh
    calls = [0]

    def held_first_refresh():
        calls[0] += 1
        if calls[0] == 1:
            first_started.set()
            release.wait(30)
        return refresh()

    return first_started, release, held_first_refresh


def test_a_batch_waits_for_as_many_requests_as_the_last_one_answered(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    first_started, release, held_first_refresh = _held_first_refresh(retriever)

    monkeypatch.setattr(retriever, "refresh", held_first_refresh)
    sizes: list[int] = []
    worker = serve.IndexWorker(retriever, on_batch=sizes.append, gather_s=30)
    worker.search(["warm-up"], 2)
    assert first_started.wait(30)
    three = [worker.search([q], 2) for q in QUERIES[:3]]
    release.set()
    for future in three:
        future.result(30)
    assert sizes == [1, 3]
    # the three clients come back one by one, 0.2 s apart: still one batch, not 1 + 2
    back = [worker.search([QUERIES[3]], 2)]
    threading.Event().wait(0.2)
    back += [worker.search([q], 2) for q in QUERIES[4:6]]
    for future in back:
        future.result(30)
    assert sizes == [1, 3, 3]


def test_one_client_never_waits_to_gather(index_path, caplog):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    with caplog.at_level("INFO", logger="maxsim.serve"):
        worker = serve.IndexWorker(retriever, gather_s=30)
        assert worker.ready.wait(60)
    assert any(r.message.startswith("ready: searches are answered at speed") for r in caplog.records)
    for query in QUERIES:  # each one alone: had it waited to gather, this would take minutes
        assert len(worker.search([query], 2).result(20)[0]) == 2


def test_one_groups_error_is_its_own(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    real_search = local.search

    def search(data, q_vectors, q_mask, k, *rest):
        if k == 7:
            raise SettingsError("k 7 is refused here")
        return real_search(data, q_vectors, q_mask, k, *rest)

    monkeypatch.setattr(local, "search", search)
    first_started, release = threading.Event(), threading.Event()
    refresh = retriever.refresh
    monkeypatch.setattr(retriever, "refresh", lambda: (first_started.set(), release.wait(30), refresh())[-1])
    worker = serve.IndexWorker(retriever)
    worker.search(["warm-up"], 3)
    assert first_started.wait(30)
    bad, good = worker.search(["cats"], 7), worker.search(["cats"], 3)
    release.set()
    with pytest.raises(SettingsError, match="k 7 is refused"):
        bad.result(30)
    assert len(good.result(30)[0]) == 3


def test_a_job_runs_between_batches_on_the_workers_thread(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    first_started, release = threading.Event(), threading.Event()
    refresh = retriever.refresh
    monkeypatch.setattr(retriever, "refresh", lambda: (first_started.set(), release.wait(30), refresh())[-1])
    sizes: list[int] = []
    worker = serve.IndexWorker(retriever, on_batch=sizes.append)
    first = worker.search(["cats"], 3)
    assert first_started.wait(30)
    before = worker.search(["honey"], len(DOCS) + 1)  # (every document)
    threads: list[str] = []

    def add():
        threads.append(threading.current_thread().name)
        retriever.add(["a new document about honey bees and their hives"], ["new-doc"])
        return len(retriever.index_data.documents)

    job = worker.run(add)
    after = worker.search(["honey bees hives"], len(DOCS) + 1)
    release.set()
    assert job.result(30) == len(DOCS) + 1
    assert sizes == [1, 1, 1]  # the job split the waiting searches into a batch before it and one after
    assert "new-doc" not in [h["document_id"] for h in before.result(30)[0]]
    assert "new-doc" in [h["document_id"] for h in after.result(30)[0]]
    assert first.result(30) and threads == ["maxsim-index"]
    failing = worker.run(lambda: retriever.delete(["no-such-id"]))
    with pytest.raises(KeyError):
        failing.result(30)
    assert len(worker.search(["cats"], 2).result(30)[0]) == 2  # the worker goes on after a failed job


def test_no_reload_from_disk_while_this_retriever_writes(index_path, monkeypatch):  # noqa: F811

    retriever = Retriever.from_index(index_path)
    seen: list[tuple[bool, object]] = []
    save = local.save

    def save_then_look(data, path):  # the new version is on disk, not yet taken by the retriever
        version = save(data, path)
        before = retriever.index_data
        seen.append((retriever.refresh(), retriever.index_data is before))
        return version

    monkeypatch.setattr(local, "save", save_then_look)
    retriever.add(["a document about otters"], ["otter"])
    assert seen == [(False, True)]  # a search meanwhile would not read the write's version back
    assert retriever.index_data.documents[-1]["id"] == "otter"
    assert retriever.refresh() is False  # and after it, the retriever holds the newest version


def test_a_batch_that_fails_is_answered_request_by_request(index_path, monkeypatch):  # noqa: F811
    retriever = Retriever.from_index(index_path)
    encode = retriever.query_vectors

    def fails_on_poison(queries, *args, **kwargs):  # as a tokenizer fails for a whole batch on one bad text
        if any("poison" in q for q in queries):
            raise ValueError("this text cannot be encoded")
        return encode(queries, *args, **kwargs)

    first_started, release, held_first_refresh = _held_first_refresh(retriever)

    sizes: list[int] = []
    worker = serve.IndexWorker(retriever, on_batch=sizes.append)
    assert worker.ready.wait(60)
    searches = []
    real_search = local.search
    monkeypatch.setattr(local, "search", lambda *args, **kwargs: (searches.append(len(args[1])),
                                                                  real_search(*args, **kwargs))[1])
    monkeypatch.setattr(retriever, "query_vectors", fails_on_poison)
    monkeypatch.setattr(retriever, "refresh", held_first_refresh)
    worker.search(["warm-up"], 2)
    assert first_started.wait(30)
    futures = [worker.search([q], 2) for q in QUERIES[:3]] + [worker.search(["poison"], 2)] + \
        [worker.search([q], 2) for q in QUERIES[3:]]
    release.set()
    with pytest.raises(ValueError, match="cannot be encoded"):
        futures[3].result(30)
    good = [f.result(30) for i, f in enumerate(futures) if i != 3]
    assert sizes[:2] == [1, 7] and all(len(hits[0]) == 2 for hits in good)
    assert searches == [1, 6]  # the six good requests were searched once, together


def test_a_request_that_fails_its_checks_never_reaches_a_batch(index_path):  # noqa: F811
    """Through HTTP, with a key: bad filters are answered before any batch, and a mix of bad and
    good requests costs the good ones nothing (no batch searched again, request by request)."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    retriever = Retriever.from_index(index_path)
    sizes: list[int] = []
    app = serve.create_app(retriever, api_key="k3y")
    auth = {"Authorization": "Bearer k3y"}
    with TestClient(app) as client:
        bad = {"queries": ["cats"], "filter": {"nope": 1}}
        good = {"queries": ["cats"], "k": 2}
        original = serve.IndexWorker._answer

        def counted(self, batch):
            sizes.append(len(batch))
            return original(self, batch)

        serve.IndexWorker._answer = counted
        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: client.post("/search", json=bad if i % 2 else good, headers=auth),
                                        range(32)))
        finally:
            serve.IndexWorker._answer = original
    assert all(a.status_code == (400 if i % 2 else 200) for i, a in enumerate(answers))
    assert "no document of this index has the metadata field nope" in answers[1].json()["error"]
    assert sum(sizes) == 16  # only the 16 good requests were searched, each once


def test_not_ready_until_the_query_encoder_is_warm(index_path, monkeypatch):  # noqa: F811
    from fastapi.testclient import TestClient

    retriever = Retriever.from_index(index_path)
    warm, encode = threading.Event(), retriever.query_vectors

    def slow_first_encodes(queries, *args, **kwargs):
        warm.wait(30)
        return encode(queries, *args, **kwargs)

    monkeypatch.setattr(retriever, "query_vectors", slow_first_encodes)
    with TestClient(serve.create_app(retriever)) as client:
        not_yet = client.get("/ready")
        assert not_yet.status_code == 503 and not_yet.json()["ready"] is False
        assert client.get("/health").json()["ready"] is False  # alive, not ready
        warm.set()
        for _ in range(100):
            if client.get("/ready").status_code == 200:
                break
            threading.Event().wait(0.1)
        assert client.get("/ready").json() == {"ready": True}
