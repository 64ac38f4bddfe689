"""Datasets by name: fetched from a server (here one on 127.0.0.1 serving a zip the test makes),
checked against the md5, never half in the cache, imported with --from, and taken by name."""

import hashlib
import http.server
import io
import json
import threading
import zipfile

import pytest
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.data import datasets
from maxsim.data.datasets import DatasetError, download, resolve


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:  # as BEIR's: one top folder named for the dataset
        zipped.writestr("tiny/corpus.jsonl", "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"})
                                                    + "\n" for i in range(4)))
        zipped.writestr("tiny/queries.jsonl", json.dumps({"_id": "q0", "text": "doc one"}) + "\n")
        zipped.writestr("tiny/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    return buffer.getvalue()


class _Server:
    """A server on 127.0.0.1 answering every GET with ``body`` (cut short after ``cut`` bytes,
    while announcing the whole length, when ``cut`` is set)."""

    def __init__(self, body: bytes, cut: int | None = None) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body[: outer.cut] if outer.cut is not None else outer.body)

            def log_message(self, *args):
                pass

        self.body, self.cut = body, cut
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{{name}}.zip"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAXSIM_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "datasets"


def test_a_dataset_is_downloaded_checked_and_taken_by_name(cache, monkeypatch):
    body = _zip_bytes()
    server = _Server(body)
    try:
        monkeypatch.setattr(datasets, "BEIR_URL", server.url)
        monkeypatch.setitem(datasets.BEIR_MD5, "tiny", hashlib.md5(body).hexdigest())
        result = CliRunner().invoke(app, ["download", "tiny"])
        assert result.exit_code == 0, result.output
        folder = cache / "tiny"
        assert result.output.strip().splitlines()[-1] == str(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]
        assert resolve("tiny") == folder and resolve("no/such/path").name == "path"
        evaluated = CliRunner().invoke(app, ["eval", "--data", "tiny", "--model", "bm25", "-k", "3"])
        assert evaluated.exit_code == 0, evaluated.output
        assert json.loads(evaluated.output.strip().splitlines()[-1])["data"] == str(folder)
    finally:
        server.close()


def test_a_wrong_checksum_or_a_cut_download_leaves_nothing(cache, monkeypatch):
    body = _zip_bytes()
    for cut, md5, message in [(None, "0" * 32, "is not BEIR's tiny.zip"), (len(body) // 2, hashlib.md5(body).hexdigest(),
                                                                           "stopped after|cannot download")]:
        server = _Server(body, cut)
        try:
            monkeypatch.setattr(datasets, "BEIR_URL", server.url)
            monkeypatch.setitem(datasets.BEIR_MD5, "tiny", md5)
            with pytest.raises(DatasetError, match=message):
                download("tiny")
            assert not (cache / "tiny").exists()
            assert [p.name for p in cache.iterdir()] == []  # no partial file, no temporary folder
        finally:
            server.close()


def test_offline_the_error_names_the_url_and_the_local_fix(cache, monkeypatch):
    server = _Server(b"")
    url = server.url
    server.close()  # nothing listens there any more
    monkeypatch.setattr(datasets, "BEIR_URL", url)
    result = CliRunner().invoke(app, ["download", "scifact"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert url.format(name="scifact") in result.output and "--from PATH_OR_ZIP" in result.output
    unknown = CliRunner().invoke(app, ["download", "not-a-dataset"])
    assert unknown.exit_code == 2 and "scifact" in unknown.output


def test_a_local_copy_is_imported_with_from(cache, tmp_path, monkeypatch):
    archive = tmp_path / "tiny.zip"
    archive.write_bytes(_zip_bytes())
    monkeypatch.setitem(datasets.BEIR_MD5, "tiny", hashlib.md5(archive.read_bytes()).hexdigest())
    assert download("tiny", archive) == cache / "tiny" and (cache / "tiny" / "qrels" / "test.tsv").is_file()
    folder = tmp_path / "copy"
    (folder / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (folder / name).write_bytes((cache / "tiny" / name).read_bytes())
    assert download("mine", folder) == cache / "mine"  # any BEIR folder, under a name of one's own
    assert (cache / "mine" / "corpus.jsonl").read_bytes() == (folder / "corpus.jsonl").read_bytes()
    archive.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="is not BEIR's tiny.zip"):
        download("tiny", archive)
