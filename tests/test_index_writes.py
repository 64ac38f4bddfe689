"""Writing indexes safely: folders we did not write, names, writer locks, readers during writes,
crash recovery, failed writes, the model an index was built with, and k."""

import datetime
import errno
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TOPICS
from safetensors.torch import save_file
from typer.testing import CliRunner

from maxsim.backends import local
from maxsim.cli import app
from maxsim.index import IndexData, IndexLoadError
from maxsim.model import ColBERT
from maxsim.retriever import Retriever

DOCS = [f"{title}: {text}" for title, _, text in TOPICS] + [f"filler note {i} about nothing much" for i in range(24)]
IDS = [f"doc{i}" for i in range(len(DOCS))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """A saved maxsim checkpoint of the tiny model (dim 16), so other processes can load it."""
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24, query_maxlen=12, seed=0).save(folder)
    return folder


@pytest.fixture(scope="module")
def retriever(checkpoint):
    return Retriever.from_pretrained(checkpoint)


@pytest.fixture
def built(retriever, tmp_path):
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    return path


def test_index_never_replaces_a_folder_it_did_not_write(retriever, tmp_path, checkpoint):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "model.bin").write_text("weights")
    with pytest.raises(FileExistsError, match="not a maxsim index"):
        retriever.index(DOCS[:5], path=run)
    with pytest.raises(FileExistsError, match="not a maxsim index"):
        retriever.index(DOCS[:5], path=run, overwrite=True)
    result = CliRunner().invoke(app, ["index", "build", str(_corpus(tmp_path)), "--model", str(checkpoint), "--output",
                                      str(run)])
    assert result.exit_code == 2 and "not a maxsim index" in result.output and "Traceback" not in result.output
    assert (run / "checkpoints" / "model.bin").read_text() == "weights"


def test_replacing_an_index_needs_overwrite(retriever, built, tmp_path, checkpoint):
    with pytest.raises(FileExistsError, match="overwrite"):
        retriever.index(DOCS[:5], path=built)
    assert len(IndexData.load(built).documents) == len(DOCS)
    retriever.index(DOCS[:5], path=built, overwrite=True)
    assert len(IndexData.load(built).documents) == 5
    args = ["index", "build", str(_corpus(tmp_path)), "--model", str(checkpoint), "--output", str(built)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert CliRunner().invoke(app, args + ["--overwrite"]).exit_code == 0
    assert len(IndexData.load(built).documents) == 3


def _corpus(folder):
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"c{i}", "text": DOCS[i]}) + "\n" for i in range(3)))
    return path


def test_index_name_is_one_folder_name(retriever, tmp_path, monkeypatch):
    work = tmp_path / "sandbox" / "work"
    work.mkdir(parents=True)
    precious = tmp_path / "sandbox" / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    monkeypatch.chdir(work)
    for name in ("../../precious", "../x", "..", ".", "a/b", str(precious), "a\\b", ""):
        with pytest.raises(ValueError):
            retriever.index(DOCS[:3], name=name)
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["precious", "work"]
    path = retriever.index(DOCS[:3], name="notes")
    assert path == work.relative_to(work) / ".maxsim" / "indexes" / "notes" and (work / path / "index.json").is_file()


WRITER = """
import sys, time
from pathlib import Path
from maxsim.retriever import Retriever
path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
r = Retriever.from_index(path)
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    r.add([f"{tag} document number {i} about {tag}"], document_ids=[f"{tag}-{i}"])
print(len(r.index_data.documents))
"""


def test_two_processes_adding_to_one_index_keep_both(built, tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(built), tag, "5", str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("A", "B")]
    time.sleep(3)  # both have loaded the index (the same version) before either writes
    go.write_text("go")
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    ids = {d["id"] for d in IndexData.load(built).documents}
    assert {f"{t}-{i}" for t in "AB" for i in range(5)} <= ids  # nobody's documents were lost
    assert len(ids) == len(DOCS) + 10


def test_a_retriever_refreshes_to_see_another_process_s_writes(retriever, built, tmp_path):
    r = Retriever.from_index(built, model=retriever.model)
    assert not r.refresh()
    go = tmp_path / "go"
    go.write_text("go")
    done = subprocess.run([sys.executable, "-c", WRITER, str(built), "C", "1", str(go)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert r.refresh() and r.search("C document number 0 about C", k=1)[0].document_id == "C-0"


def test_a_reader_sees_one_version_while_a_process_writes(built, tmp_path):
    go = tmp_path / "go"
    go.write_text("go")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(built), "W", "25", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    loads, sizes = 0, set()
    try:
        while writer.poll() is None:
            data = IndexData.load(built)  # must never mix two versions or fail
            n_docs = len(data.documents)
            for segment in data.segments:
                assert int(segment.doclens.sum()) == len(segment.codes) == len(segment.residuals)
                assert len(segment.doclens) == len(segment.chunk_docs) == len(segment.spans)
                assert set(np.unique(segment.chunk_docs).tolist()) == set(range(segment.n_documents))
            assert json.loads((built / "index.json").read_text())["n_documents"] >= n_docs
            loads += 1
            sizes.add(n_docs)
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err[-2000:]
    assert len(IndexData.load(built).documents) == len(DOCS) + 25
    assert loads >= 5 and len(sizes) >= 2, (loads, sizes)  # the loads did overlap the writes


def test_a_crash_between_the_two_renames_is_recovered(retriever, built):
    old = built.with_name(built.name + ".old")
    built.rename(old)  # what a crash between "index -> index.old" and "tmp -> index" leaves
    data = IndexData.load(built)
    assert len(data.documents) == len(DOCS) and built.is_dir() and not old.exists()
    r = Retriever.from_index(built, model=retriever.model)
    shutil.copytree(built, old)
    shutil.rmtree(built)  # again, and this time the next write finds it
    r.add(["a new document about owls"], document_ids=["new"])
    assert len(IndexData.load(built).documents) == len(DOCS) + 1 and not old.exists()


def test_deleting_a_string_deletes_that_one_id(retriever, tmp_path):
    path = tmp_path / "ix"
    retriever.index(["first text", "second text", "twelfth text"], path=path, document_ids=["1", "2", "12"])
    r = Retriever.from_index(path, model=retriever.model)
    r.delete("12")
    assert [d["id"] for d in IndexData.load(path).documents] == ["1", "2"]
    assert [d["id"] for d in r.index_data.documents] == ["1", "2"]


def test_a_failed_add_changes_nothing(retriever, built, monkeypatch):
    r = Retriever.from_index(built, model=retriever.model)
    before = IndexData.load(built).version
    with pytest.raises(ValueError, match="cannot be saved as JSON"):
        r.add(["a text"], document_ids=["when"], metadata=[{"when": datetime.date(2026, 1, 1)}])
    assert len(r.index_data.documents) == len(DOCS) and IndexData.load(built).version == before

    def full_disk(data, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(local, "save", full_disk)
    with pytest.raises(OSError):
        r.add(["zebrafish regenerate their fins"], document_ids=["zebra"])
    assert "zebra" not in {d["id"] for d in r.index_data.documents}
    assert all(h.document_id != "zebra" for h in r.search("zebrafish fins", k=len(DOCS)))
    with pytest.raises(OSError):
        r.delete("doc0")
    assert "doc0" in {d["id"] for d in r.index_data.documents}
    monkeypatch.undo()
    r.add(["zebrafish regenerate their fins"], document_ids=["zebra"], metadata=[{"when": "2026-01-01"}])  # a retry
    assert r.search("zebrafish regenerate their fins", k=1)[0].document_id == "zebra"
    assert "zebra" in {d["id"] for d in IndexData.load(built).documents}


def test_a_replaced_model_folder_is_refused(tmp_path, checkpoint):
    model_dir = tmp_path / "model"
    shutil.copytree(checkpoint, model_dir)
    path = tmp_path / "ix"
    Retriever.from_pretrained(model_dir).index(DOCS, path=path, document_ids=IDS)
    assert Retriever.from_index(path).search("cats", k=1)  # the same model: fine
    save_file({"weight": torch.randn(16, 32, generator=torch.Generator().manual_seed(9))},
              str(model_dir / "projection.safetensors"))  # another matrix of the same shape
    with pytest.raises(IndexLoadError, match="not the one .* was built with"):
        Retriever.from_index(path)
    assert Retriever.from_index(path, allow_model_mismatch=True).search("cats", k=1)
    refused = CliRunner().invoke(app, ["search", "--index", str(path), "cats"])
    assert refused.exit_code == 2 and "--allow-model-mismatch" in refused.output
    assert CliRunner().invoke(app, ["search", "--index", str(path), "cats", "--allow-model-mismatch"]).exit_code == 0


def test_an_index_of_a_model_in_memory_needs_that_model(checkpoint, tmp_path):
    model = ColBERT.from_pretrained(checkpoint)
    with torch.no_grad():
        model.linear.weight.mul_(-1)  # changed in memory, never saved
    Retriever(model).index(DOCS, path=tmp_path / "a")
    with pytest.raises(IndexLoadError, match="not the one"):
        Retriever.from_index(tmp_path / "a")  # the folder holds other weights
    assert Retriever.from_index(tmp_path / "a", model=model).search("cats", k=1)
    model.source = None  # a model built by hand: nothing to reload
    Retriever(model).index(DOCS, path=tmp_path / "b")
    with pytest.raises(IndexLoadError, match="pass it"):
        Retriever.from_index(tmp_path / "b")


def test_k_is_checked_and_a_large_k_returns_every_document(retriever, built):
    r = Retriever.from_index(built, model=retriever.model)
    for k in (-1, 0):
        with pytest.raises(ValueError, match="k must be"):
            r.search("cats", k=k)
    for queries in ([], None):
        with pytest.raises(ValueError, match="query"):
            r.search(queries)
    hits = r.search("why do stars shine", k=1000, ncells=1)  # one cell reaches only some documents
    assert sorted(h.document_id for h in hits) == sorted(IDS)
    assert [h.rank for h in hits] == list(range(1, len(DOCS) + 1))
    assert len(r.search("why do stars shine", k=len(DOCS) - 1, ncells=1, ndocs=2)) == len(DOCS) - 1
    result = CliRunner().invoke(app, ["search", "--index", str(built), "cats", "-k", "-1"])
    assert result.exit_code == 2 and "-k must be 1 or more" in result.output


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.pop("files"), "no files"),
    (lambda meta: meta.pop("nbits"), "no nbits"),
    (lambda meta: meta.update(nbits=2), "codec.npy does not hold 7 values for nbits 2"),  # built at 4 bits
    (lambda meta: meta["segments"][0]["files"].pop("residuals.npy"), "segment list"),
    (lambda meta: meta["files"].pop("codec.npy"), "file list"),
])
def test_an_edited_index_json_is_a_clear_error(built, edit, message):
    meta = json.loads((built / "index.json").read_text())
    edit(meta)
    (built / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match=message):
        IndexData.load(built)


def test_index_command_checks_the_corpus_before_loading_a_model(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = CliRunner().invoke(app, ["index", "build", str(tmp_path / "empty.jsonl"), "--model", str(tmp_path / "nope"),
                                      "--output", str(tmp_path / "ix")])
    assert result.exit_code == 2 and f"{tmp_path / 'empty.jsonl'}: no documents" in result.output


def test_an_add_writes_only_a_new_segment_and_a_delete_only_tombstones(retriever, tmp_path, monkeypatch):
    """What a write costs grows with the change: an add writes one segment of the new documents
    and leaves every file of the others as it was; a delete writes a tombstone file only."""
    from maxsim.index import segment as segment_module

    path = tmp_path / "ix"
    retriever.index(DOCS[:9], path=path, document_ids=IDS[:9])
    (first,) = [p for p in path.iterdir() if p.name.startswith("seg-")]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()}
    written = []
    write = segment_module.Segment.write
    monkeypatch.setattr(segment_module.Segment, "write", lambda self, root, owner=None:
                        written.append(self.n_documents) or write(self, root, owner))
    retriever.search(DOCS[0], k=1)
    selector = retriever.backend.data.selector
    retriever.add(DOCS[9:10], document_ids=IDS[9:10])
    retriever.add(DOCS[10:13], document_ids=IDS[10:13])
    assert written == [1, 3]
    assert retriever.backend.data.selector is selector  # the same centroids: their selection is kept
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.iterdir()} == before
    retriever.delete(["doc1"])
    assert written == [1, 3]  # no segment rewritten
    assert sorted(p.name for p in first.iterdir() if p.name not in before)[0].startswith("deleted-")
    loaded = IndexData.load(path)
    assert [d["id"] for d in loaded.documents] == IDS[:1] + IDS[2:13]
    assert [d["content"] for d in loaded.documents] == DOCS[:1] + DOCS[2:13]
    assert [s.n_documents for s in loaded.segments] == [9, 1, 3] and loaded.n_documents == 12
