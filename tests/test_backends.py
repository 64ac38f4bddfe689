"""The one door to every search engine: both backends implement the whole protocol, the
registry finds them by name, and the command line changes an index (add, delete, the index
subcommands and the spellings before them)."""

import inspect
import json

import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.backends import BACKENDS, Backend, backend_class
from maxsim.backends.local import LocalIndex
from maxsim.backends.qdrant import QdrantBackend
from maxsim.cli import app
from maxsim.cli.indexes import IndexCommands
from maxsim.errors import SettingsError
from maxsim.index import IndexData
from maxsim.retriever import Retriever


def protocol_members() -> set[str]:
    return {name for name in vars(Backend) if not name.startswith("_")}


@pytest.mark.parametrize("backend", [LocalIndex, QdrantBackend])
def test_each_backend_implements_every_member_of_the_protocol(backend):
    missing = sorted(name for name in protocol_members() if not hasattr(backend, name))
    assert missing == [], f"{backend.__name__} lacks {missing}"
    for name in protocol_members() - {"kind"}:
        wanted, got = getattr(Backend, name), getattr(backend, name)
        if callable(wanted) and not isinstance(wanted, property):
            want_params = list(inspect.signature(wanted).parameters)
            got_params = list(inspect.signature(got).parameters)
            assert got_params[: len(want_params)] == want_params or "args" in got_params, (backend.__name__, name)


def test_the_registry_names_each_backend_once():
    assert backend_class("maxsim") is LocalIndex and backend_class("qdrant") is QdrantBackend
    assert {backend_class(kind).kind for kind in BACKENDS} == set(BACKENDS)
    with pytest.raises(SettingsError, match="no backend called 'faiss': maxsim has maxsim, qdrant"):
        backend_class("faiss")


def test_a_retriever_over_an_index_holds_a_backend_of_the_protocol(retriever, tmp_path):  # noqa: F811
    path = retriever.index(DOCS, path=tmp_path / "ix", document_ids=IDS)
    loaded = Retriever.from_index(path)
    assert isinstance(loaded.backend, Backend) and loaded.backend.kind == "maxsim"
    assert loaded.index_data is loaded.backend.data and loaded.index_path == path
    ranking = loaded.backend.search(*loaded.query_vectors([DOCS[3]]), k=3)
    (passages,) = loaded.backend.passages(ranking)
    assert passages[0].document_id == IDS[3] and passages[0].content in DOCS[3]
    assert [h.document_id for h in loaded.search(DOCS[3], k=3)] == [p.document_id for p in passages]


def _corpus_file(path, rows):
    path.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in rows))
    return path


def test_the_command_line_adds_and_deletes_documents(retriever, tmp_path):  # noqa: F811
    path = retriever.index(DOCS[:10], path=tmp_path / "ix", document_ids=IDS[:10])
    new = _corpus_file(tmp_path / "new.jsonl", [("late1", "a late note on the tides"), ("late2", "volcanoes erupt")])
    added = CliRunner().invoke(app, ["add", str(path), str(new)])
    assert added.exit_code == 0, added.output
    assert "added 2 documents, 12 in all" in added.output
    held = {r["id"] for r in IndexData.load(path).documents}
    assert held == set(IDS[:10]) | {"late1", "late2"}
    again = CliRunner().invoke(app, ["add", str(path), str(new)])  # ids the index holds: refused, nothing changes
    assert again.exit_code == 2 and "already in the index" in again.output and "Traceback" not in again.output
    assert IndexData.load(path).n_documents == 12
    deleted = CliRunner().invoke(app, ["delete", str(path), "--id", "late1", "--id", IDS[0]])
    assert deleted.exit_code == 0 and "deleted 2 documents, 10 in all" in deleted.output
    unknown = CliRunner().invoke(app, ["delete", str(path), "--id", "nobody", "--id", IDS[1]])
    assert unknown.exit_code == 2 and "nobody" in unknown.output
    assert {r["id"] for r in IndexData.load(path).documents} == (held - {"late1", IDS[0]})
    hits = Retriever.from_index(path).search("a late note on the tides", k=12)
    assert "late1" not in {h.document_id for h in hits} and len(hits) == 10


def test_the_former_index_spellings_still_work_with_a_warning(retriever, tmp_path):  # noqa: F811
    assert IndexCommands.new_spelling(["--add-bm25", "ix", "--language", "fr"]) == \
        ["add-bm25", "ix", "--language", "fr"]
    path = retriever.index(DOCS[:10], path=tmp_path / "ix", document_ids=IDS[:10])
    result = CliRunner().invoke(app, ["index", "--verify", str(path)])
    assert result.exit_code == 0 and "no problem found" in result.output
    assert f"`maxsim index --verify {path}` is spelled `maxsim index verify {path}` now" in result.output
    result = CliRunner().invoke(app, ["index", "verify", str(path)])
    assert result.exit_code == 0 and "spelled" not in result.output
    corpus = _corpus_file(tmp_path / "c.jsonl", [("a", DOCS[0]), ("b", DOCS[1])])
    built = CliRunner().invoke(app, ["index", str(corpus), "--model", str(retriever.model_path), "--output",
                                     str(tmp_path / "old-spelling")])
    assert built.exit_code == 0, built.output
    assert "is spelled `maxsim index build" in built.output
    assert IndexData.load(tmp_path / "old-spelling").n_documents == 2
