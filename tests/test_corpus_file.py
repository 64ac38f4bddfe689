"""The lazily read corpus.jsonl: the same documents as read_corpus, bad lines named at opening."""

import codecs
import json

import pytest

from maxsim.data.corpus_file import CorpusFile
from maxsim.data.errors import DataError
from maxsim.data.training_folder import read_corpus


def _write(path, lines, bom=False, newline="\n"):
    text = newline.join(lines) + newline
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8"))
    return path


def test_the_same_documents_as_read_corpus_in_any_slice(tmp_path):
    lines = [json.dumps({"_id": f"d{i}", "title": "T" if i % 2 else "", "text": f"text {i} caf\u00e9"}) for i in range(10)]
    lines.insert(3, "   ")  # blank lines are skipped, as read_corpus skips them
    for bom, newline in [(False, "\n"), (True, "\r\n")]:
        path = _write(tmp_path / "corpus.jsonl", lines, bom, newline)
        lazy, eager = CorpusFile(path), read_corpus(path)
        assert len(lazy) == len(eager) == 10
        want = [{"id": i, "content": t, "metadata": None} for i, t in zip(eager.ids, eager.texts)]
        assert list(lazy) == want and lazy[2:7] == want[2:7] and lazy[-1] == want[-1] and lazy[::3] == want[::3]
        assert lazy._offsets.nbytes == 8 * len(lazy)  # an offset a document, no texts
    with pytest.raises(IndexError):
        CorpusFile(path)[10]


@pytest.mark.parametrize("bad, message", [
    ('{"_id": "d0", "text": "again"}', 'duplicate id "d0"'),
    ('{"_id": "d9", "text": "a", "text": "b"}', 'the key "text" appears twice'),
    ('{"_id": "d9", "text": "lone \\ud800 surrogate"}', "surrogate"),
    ('{"_id": "d9"}', 'missing field "text"'),
    ('{"_id": "d9", "text": "x"', "malformed JSON"),
    ('{"_id": "d9", "text": "x", "metadata": ["a list"]}', "is a list: give a dict"),
])
def test_a_bad_line_is_named_when_the_file_is_opened(tmp_path, bad, message):
    path = _write(tmp_path / "corpus.jsonl", ['{"_id": "d0", "text": "first"}', '{"_id": "d1", "text": "second"}', bad])
    with pytest.raises(DataError, match=message) as caught:
        CorpusFile(path)
    assert "corpus.jsonl:3:" in str(caught.value)  # the file and the line


def test_a_corpus_files_metadata_reaches_the_index_and_its_filters(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from maxsim.cli import app
    from maxsim.model import ColBERT

    lines = [json.dumps({"document_id": "1", "text": "statins lower cholesterol", "metadata": {"source": "pubmed"}}),
             json.dumps({"_id": "2", "text": "statins and the liver", "metadata": {"source": "pmc"}}),
             json.dumps({"_id": "3", "text": "a note on tides", "metadata": {}})]
    path = _write(tmp_path / "corpus.jsonl", lines)
    assert [r["metadata"] for r in CorpusFile(path)] == [{"source": "pubmed"}, {"source": "pmc"}, None]
    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "model")
    built = CliRunner().invoke(app, ["index", "build", str(path), "--model", str(model), "--output",
                                     str(tmp_path / "ix")])
    assert built.exit_code == 0, built.output
    found = CliRunner().invoke(app, ["search", "--index", str(tmp_path / "ix"), "--json", "-k", "3",
                                     "--where", "source=pubmed", "statins"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output.strip().splitlines()[-1])
    assert [(h["document_id"], h["metadata"]) for h in hits] == [("1", {"source": "pubmed"})]
