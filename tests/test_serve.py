"""`maxsim serve` tested against the real server, started in a subprocess, over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from maxsim.model import ColBERT
from maxsim.retriever import Retriever

pytestmark = pytest.mark.slow
DOCS = [f"document {i} about {topic}" for i, topic in enumerate(
    ["cats and fish", "bees and honey", "rain and clouds", "iron and rust", "stars and fusion", "bread and ovens",
     "whales breathing", "tides and the moon", "snow in winter", "volcanoes erupting", "coffee growing",
     "glass making"])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("serve")
    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24)
    model.save(folder / "model")
    retriever = Retriever.from_pretrained(folder / "model")
    retriever.index(DOCS, path=folder / "index", document_ids=[f"d{i}" for i in range(len(DOCS))],
                    metadata=[{"n": i} for i in range(len(DOCS))])
    return folder / "index"


class Server:
    def __init__(self, index, *extra):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "maxsim", "serve", "--index", str(index), "--port",
                                         str(self.port), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.process.poll() is not None:
                raise AssertionError(self.process.stdout.read())
        raise AssertionError("the server did not start")

    def stop(self, sig=signal.SIGTERM):
        os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(index_path):
    running = Server(index_path)
    yield running
    running.stop()


def test_search_equals_the_library_and_get_works(server, index_path):
    expected = Retriever.from_index(index_path).search(["cats and fish", "the moon and tides"], k=3)
    got = httpx.post(server.url + "/search", json={"queries": ["cats and fish", "the moon and tides"], "k": 3}).json()
    assert [[h["document_id"] for h in hits] for hits in got["results"]] == \
        [[h.document_id for h in hits] for hits in expected]
    for hits, want in zip(got["results"], expected):
        for hit, w in zip(hits, want):
            assert hit["score"] == pytest.approx(w.score, rel=1e-5)
            assert (hit["rank"], hit["content"], hit["metadata"]) == (w.rank, w.content, w.metadata)
    one = httpx.get(server.url + "/search", params={"q": "cats and fish", "k": 2}).json()
    assert [h["document_id"] for h in one["results"][0]] == [h.document_id for h in expected[0][:2]]
    health = httpx.get(server.url + "/health").json()
    assert health["documents"] == len(DOCS) and health["version"]
    metrics = httpx.get(server.url + "/metrics").text
    assert "maxsim_requests_total" in metrics and "maxsim_request_seconds_bucket" in metrics
    assert httpx.get(server.url + "/docs").status_code == 200


def test_hybrid_search_equals_the_library_and_bad_settings_are_422(server, index_path):
    queries = ["cats and fish", "the moon and tides"]
    library = Retriever.from_index(index_path)
    for hybrid in (True, "weighted", {"fusion": "rrf", "rrf_k": 10, "depth": 20}):
        expected = library.search(queries, k=4, hybrid=hybrid)
        got = httpx.post(server.url + "/search", json={"queries": queries, "k": 4, "hybrid": hybrid})
        assert got.status_code == 200, got.text
        for hits, want in zip(got.json()["results"], expected):
            assert [h["document_id"] for h in hits] == [w.document_id for w in want]
            for hit, w in zip(hits, want):
                assert hit["score"] == pytest.approx(w.score, rel=1e-5)
                assert hit["maxsim_score"] == pytest.approx(w.maxsim_score, rel=1e-4, abs=1e-4)
                assert hit["bm25_score"] == pytest.approx(w.bm25_score, rel=1e-5)
    for bad in ("bm26", {"weight": 2}, {"fusion": "rrf", "colour": 1}, 3):
        answer = httpx.post(server.url + "/search", json={"queries": queries, "hybrid": bad})
        assert answer.status_code == 422, (bad, answer.text)


def test_add_then_find_delete_then_never(server):
    added = httpx.post(server.url + "/documents", json={"documents": [
        {"id": "zebra", "text": "zebrafish regenerate heart muscle", "metadata": {"source": "test"}}]})
    assert added.status_code == 200, added.text
    hits = httpx.post(server.url + "/search", json={"queries": ["zebrafish regenerate heart muscle"], "k": 1}).json()
    top = hits["results"][0][0]
    assert top["document_id"] == "zebra" and (top["chunk"], top["start"]) == (0, 0)
    whole = httpx.get(server.url + "/documents/zebra").json()
    assert whole == {"document_id": "zebra", "content": "zebrafish regenerate heart muscle",
                     "metadata": {"source": "test"}}
    deleted = httpx.request("DELETE", server.url + "/documents", json={"ids": ["zebra"]})
    assert deleted.status_code == 200
    hits = httpx.post(server.url + "/search", json={"queries": ["zebrafish regenerate heart muscle"], "k": 20}).json()
    assert "zebra" not in {h["document_id"] for h in hits["results"][0]}
    missing = httpx.request("DELETE", server.url + "/documents", json={"document_ids": ["no-such"]})  # ids too
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(server.url + "/documents/zebra").status_code == 404


def test_one_client_never_breaks_another(server):
    deep: dict = {"leaf": 1}
    for _ in range(599):
        deep = {"x": deep}
    refused = httpx.post(server.url + "/documents", json={"documents": [{"id": "deep", "text": "t", "metadata": deep}]})
    assert refused.status_code == 422 and "nests 600 levels deep" in refused.json()["error"]
    bad_body = b'{"queries": ["cats \\ud800"], "k": 3}'  # a lone surrogate, as JSON can carry one
    bad_document = b'{"documents": [{"id": "s", "text": "text \\udcff"}]}'
    results: dict[str, list[int]] = {"good": [], "bad": []}

    def client(i: int) -> None:
        with httpx.Client(timeout=60) as http:
            if i % 10 == 3:
                answer = http.post(server.url + "/search", content=bad_body, headers={"content-type": "application/json"})
                results["bad"].append(answer.status_code)
                assert "lone surrogate" in answer.json()["error"]
            else:
                results["good"].append(http.post(server.url + "/search", json={"queries": [DOCS[i % len(DOCS)]],
                                                                                "k": 3}).status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["bad"] == [422] * 6 and results["good"] == [200] * 54
    answer = httpx.post(server.url + "/documents", content=bad_document, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "lone surrogate" in answer.json()["error"]
    answer = httpx.get(server.url + "/search", params={"q": "fine"}, timeout=30)
    assert answer.status_code == 200


def test_a_delete_that_repeats_an_id_reports_what_was_removed(server):
    assert httpx.post(server.url + "/documents", json={"documents": [{"id": "twice", "text": "said twice"}]},
                      timeout=60).status_code == 200
    deleted = httpx.request("DELETE", server.url + "/documents", json={"ids": ["twice", "twice"]}, timeout=60)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1


def test_health_and_readiness(server):
    deadline = time.monotonic() + 60
    while httpx.get(server.url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["ready"] is True
    assert httpx.get(server.url + "/ready").json() == {"ready": True}


def test_searches_during_writes_all_succeed_and_see_one_version(server):
    stop = threading.Event()
    failures, seen = [], []

    def searcher():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(server.url + "/search", json={"queries": ["document about things"], "k": 50})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                ids = [h["document_id"] for h in response.json()["results"][0]]
                seen.append(ids)
                if len(ids) != len(set(ids)):
                    failures.append(f"duplicates: {ids}")

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    with httpx.Client(timeout=60) as client:
        for i in range(4):
            assert client.post(server.url + "/documents", json={"documents": [
                {"id": f"new{i}", "text": f"new document {i} about things"}]}).status_code == 200
            assert client.request("DELETE", server.url + "/documents", json={"ids": [f"new{i}"]}).status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert seen
    # every answer comes from one version: the 12 documents, or those and one new one
    assert all(set(ids) - {f"d{i}" for i in range(len(DOCS))} <= {f"new{i}" for i in range(4)} for ids in seen)
    assert all(len(set(ids) - {f"d{i}" for i in range(len(DOCS))}) <= 1 for ids in seen)


def test_api_key_and_limits(index_path, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o644)
    running = Server(index_path, "--api-key-file", str(key_file), "--read-only")
    try:
        assert httpx.get(running.url + "/health").status_code == 200  # open
        refused = httpx.post(running.url + "/search", json={"queries": ["cats"]})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        assert httpx.post(running.url + "/search", json={"queries": ["cats"]},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(running.url + "/search", json={"queries": ["cats"]}, headers=auth).status_code == 200
        too_many = httpx.post(running.url + "/search", json={"queries": ["cats"], "k": 100000}, headers=auth)
        assert too_many.status_code == 422 and "k" in too_many.json()["error"]
        malformed = httpx.post(running.url + "/search", content=b"{not json", headers={**auth, "content-type":
                                                                                       "application/json"})
        assert malformed.status_code == 422 and "Traceback" not in malformed.text
        big = httpx.post(running.url + "/search", content=b"x" * (17 * 1024 * 1024), headers=auth)
        assert big.status_code == 413

        def chunks():  # no Content-Length: Transfer-Encoding: chunked, 20 MB in 1 MB pieces
            for _ in range(20):
                yield b" " * (1024 * 1024)

        chunked = httpx.post(running.url + "/search", content=chunks(), headers={**auth, "content-type":
                                                                                  "application/json"})
        assert chunked.status_code == 413 and "over 16777216 bytes" in chunked.json()["error"]
        assert httpx.get(running.url + "/ready").status_code == 200  # open, as /health
        # without the key, /health says only that the process is up: no paths, no counts
        assert httpx.get(running.url + "/health").json() == {"status": "ok", "ready": True}
        told = httpx.get(running.url + "/health", headers=auth).json()
        assert told["model"] and told["documents"] == len(DOCS)
        # made-up paths, with the key or without, add no label set to /metrics
        with httpx.Client() as client:
            client.get(running.url + "/metrics", headers=auth)  # (its own label set, counted after it answers)
            before = client.get(running.url + "/metrics", headers=auth).text
            for i in range(200):
                client.get(f"{running.url}/no/such/path/{i}", headers=auth if i % 2 else {})
            after = client.get(running.url + "/metrics", headers=auth).text
        assert "/no/such" not in after and 'route="unmatched"' in after
        def labels(text):
            return {line.split(" ")[0] for line in text.splitlines() if line.startswith("maxsim_requests_total")}

        assert labels(after) - labels(before) <= {'maxsim_requests_total{route="unmatched",status="401"}',
                                                  'maxsim_requests_total{route="unmatched",status="404"}'}
        assert len(after) < len(before) + 2_000
        # a query over the bound is refused before it is tokenised; one at the bound is searched
        long = httpx.post(running.url + "/search", json={"queries": ["stars " * 2_000], "hybrid": True}, headers=auth)
        assert long.status_code == 422 and "12000 characters, over the 10000 allowed" in long.json()["error"]
        assert httpx.get(running.url + "/search", params={"q": "x" * 10_001}, headers=auth).status_code == 422
        assert httpx.post(running.url + "/search", json={"queries": ["cats " * 2_000]}, headers=auth).status_code == 200
        read_only = httpx.post(running.url + "/documents", json={"documents": [{"id": "a", "text": "b"}]},
                               headers=auth)
        assert read_only.status_code == 403
    finally:
        running.stop()
    # a key file that others can read: a warning, as ssh gives
    assert "can be read by other users (mode 0644)" in running.process.stdout.read()


def test_a_second_writer_is_refused_and_read_only_servers_share(server, index_path):
    second = subprocess.run([sys.executable, "-m", "maxsim", "serve", "--index", str(index_path), "--port",
                             str(_free_port())], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"pid {server.process.pid}" in second.stderr and "--read-only" in second.stderr
    reader = Server(index_path, "--read-only")
    try:
        assert httpx.get(reader.url + "/health").json()["read_only"] is True
    finally:
        reader.stop()


def test_kill_9_during_an_add_leaves_the_previous_index_serving(index_path, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index_path, copy)
    running = Server(copy)
    before = httpx.get(running.url + "/health").json()["documents"]
    documents = [{"id": f"bulk{i}", "text": f"bulk document number {i} " * 8} for i in range(400)]

    def add():
        try:
            httpx.post(running.url + "/documents", json={"documents": documents}, timeout=120)
        except httpx.HTTPError:
            pass  # the server is killed under it

    writer = threading.Thread(target=add)
    writer.start()
    time.sleep(0.5)
    running.stop(signal.SIGKILL)
    writer.join()
    again = Server(copy)
    try:
        after = httpx.get(again.url + "/health").json()["documents"]
        assert after in (before, before + len(documents))  # one version or the other, never a mix
        hits = httpx.post(again.url + "/search", json={"queries": ["cats and fish"], "k": 3})
        assert hits.status_code == 200 and hits.json()["results"][0]
    finally:
        again.stop()


def test_several_workers_share_the_index(index_path, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index_path, copy)
    running = Server(copy, "--workers", "2")
    try:
        with httpx.Client(timeout=60) as client:
            added = client.post(running.url + "/documents", json={"documents": [
                {"id": "okapi", "text": "okapi live in rainforests of central africa"}]})
            assert added.status_code == 200, added.text
            for _ in range(6):  # new connections: whichever worker answers sees the write
                with httpx.Client(timeout=60) as fresh:
                    hits = fresh.post(running.url + "/search", json={"queries": [
                        "okapi live in rainforests of central africa"], "k": 1}).json()
                assert hits["results"][0][0]["document_id"] == "okapi"
    finally:
        running.stop()
