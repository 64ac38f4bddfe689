"""What careless or hostile callers hand the library, and files that lie: every one refused with
a clear error before any work, or handled, never a traceback, a silent default or a broken index."""

import hashlib
import json
import os
import re

import numpy as np
import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.errors import SettingsError
from maxsim.index import IndexData, IndexLoadError
from maxsim.index.segment import Segment
from maxsim.index.writer import save
from maxsim.limits import MAX_METADATA_DEPTH
from maxsim.retriever import Retriever


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.fixture
def small(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS[:12], path=path, document_ids=IDS[:12])
    return path


def test_metadata_is_bounded_in_depth_and_size_at_every_door(retriever, small, tmp_path):  # noqa: F811
    loaded = Retriever.from_index(small)
    with pytest.raises(SettingsError, match=f"nests 600 levels deep, over the {MAX_METADATA_DEPTH} allowed"):
        loaded.add(["a deep one"], ["deep"], [_nested(600)])
    with pytest.raises(SettingsError, match="takes 70\\d{3} bytes as JSON, over the 65536 allowed"):
        loaded.add(["a big one"], ["big"], [{"blob": "x" * 70_000}])
    with pytest.raises(SettingsError, match="cannot be saved as JSON"):
        loaded.add(["not a number"], ["nan"], [{"value": float("nan")}])
    with pytest.raises(SettingsError, match="nests 40 levels deep"):
        retriever.index(["one"], path=tmp_path / "other", document_ids=["a"], metadata=[_nested(40)])
    assert not (tmp_path / "other").exists() and len(Retriever.from_index(small).index_data.documents) == 12
    loaded.add(["a flat one"], ["flat"], [_nested(MAX_METADATA_DEPTH)])  # at the bound: accepted


def test_an_index_that_already_holds_deep_metadata_still_answers(retriever, tmp_path, caplog):  # noqa: F811
    path = tmp_path / "old"
    retriever.index(DOCS[:12], path=path, document_ids=IDS[:12])
    data = IndexData.load(path)  # as an index written before the bound would hold it
    old = data.segments[0]
    records = list(old.documents)
    records[0] = {**records[0], "metadata": _nested(600)}
    data.segments[0] = Segment.from_arrays(old.codes, old.residuals, old.doclens, old.chunk_docs, old.spans, records,
                                           len(data.centroids))
    save(data, path)
    hits = Retriever.from_index(path).search(DOCS[0], k=12)
    assert len(hits) == 12 and {h.document_id for h in hits} == set(IDS[:12])
    assert next(h for h in hits if h.document_id == IDS[0]).metadata is None
    assert "nests deeper than 32 levels and is not returned" in caplog.text
    json.dumps([h.to_dict() for h in hits])  # (what serve and search --json do with them)


def test_lone_surrogates_are_refused_at_the_door(small):
    loaded = Retriever.from_index(small)
    with pytest.raises(SettingsError, match=r"the query holds a lone surrogate \(U\+D800 at character 5\)"):
        loaded.search(["fine", "cats\ud800"])
    with pytest.raises(SettingsError, match="lone surrogate"):
        loaded.add(["text \udcff here"], ["s1"])
    with pytest.raises(SettingsError, match="lone surrogate"):
        loaded.add(["good text"], ["s2"], [{"note": "bad \ud83d"}])
    result = CliRunner().invoke(app, ["search", "--index", str(small), "cats \udcff"])
    assert result.exit_code == 2 and "error: the query 1 holds a lone surrogate" in result.output
    assert "Traceback" not in result.output


def test_a_huge_k_is_clamped_and_bad_search_settings_are_errors(small):
    loaded = Retriever.from_index(small)
    assert len(loaded.search("cats", k=10**12)) == 12  # at once, without sizing anything by k
    for setting, value, least in (("ncells", -1, 1), ("ncells", 0, 1), ("ndocs", -5, 0)):
        with pytest.raises(SettingsError, match=f"{setting} must be a whole number of {least} or more"):
            loaded.search("cats", **{setting: value})
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--index", str(small), "-k", "1000000000", "--json", "cats"])
    assert result.exit_code == 0 and len(json.loads(result.output)) == 12
    result = runner.invoke(app, ["search", "--index", str(small), "--ncells", "-1", "cats"])
    assert result.exit_code == 2 and "error: ncells must be a whole number of 1 or more" in result.output


def test_a_repeated_id_in_a_delete_is_removed_once_and_counted_once(small):
    loaded = Retriever.from_index(small)
    assert loaded.delete([IDS[0], IDS[0], IDS[1]]) == 2
    assert len(loaded.index_data.documents) == 10


def test_a_symlinked_index_is_written_in_its_target(retriever, small, tmp_path):  # noqa: F811
    link = tmp_path / "ix_link"
    link.symlink_to(small, target_is_directory=True)
    through = Retriever.from_index(link)
    through.add(["one more document"], ["extra"])
    through.add(["and another one"], ["extra2"])
    assert link.is_symlink() and os.readlink(link) == str(small)
    assert len(IndexData.load(small).documents) == 14 == len(IndexData.load(link).documents)
    assert not (tmp_path / "ix_link.old").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "ix", "ix.lock", "ix_link"]


def test_a_symlink_loop_is_reported_as_a_loop(retriever, tmp_path):  # noqa: F811
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    with pytest.raises(SettingsError, match="leads round in a loop"):
        retriever.index(["text"], path=loop)


def test_a_temp_folder_left_by_a_killed_write_is_removed_by_the_next(small, tmp_path):
    left = tmp_path / ".tmp-ix-abc12345"  # as atomic_directory names them
    left.mkdir()
    (left / "codes.npy").write_bytes(b"half")
    others = tmp_path / ".tmp-ix2-abc12345"  # another index's: not ours to remove
    others.mkdir()
    Retriever.from_index(small).add(["a new one"], ["new"])
    assert not left.exists() and others.exists()


def _edit(path, name, change):
    """Replace one array of an index, with the manifest's record of it (size, header, sha256)
    updated to match: a damaged index that lies consistently."""
    meta = json.loads((path / "index.json").read_text())
    shared = f"{name}.npy" in meta["files"]
    file = path / f"{name}.npy" if shared else path / meta["segments"][0]["name"] / f"{name}.npy"
    array = change(np.load(file))
    np.save(file, array, allow_pickle=False)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if shared:
        meta["files"][file.name] = digest
    else:
        meta["segments"][0]["files"][file.name] = {"dtype": array.dtype.str, "shape": list(array.shape),
                                                   "bytes": file.stat().st_size, "sha256": digest}
    (path / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name, change, message", [
    ("doclens", lambda a: a.astype(np.float32), "doclens.npy holds 1-d float32 values, not 1-d integers"),
    ("spans", lambda a: np.concatenate([a, a[:, :1]], axis=1), "spans.npy does not hold \\(start, end\\) pairs"),
    ("residuals", lambda a: a[:, :1], "residuals.npy rows are not"),
    ("centroids", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a).astype(a.dtype),
     "centroids.npy holds values that are not numbers"),
    ("codec", lambda a: np.full_like(a, np.nan), "codec.npy holds values that are not numbers"),
])
def test_arrays_edited_with_valid_checksums_are_refused_on_load(small, name, change, message):
    """What opening checks (headers, shapes, the small shared files whole)."""
    _edit(small, name, change)
    with pytest.raises(IndexLoadError, match=message):
        IndexData.load(small)


@pytest.mark.parametrize("name, change, message", [
    ("codes", lambda a: np.where(np.arange(len(a)) == 3, 60_000, a), "names a centroid outside"),
    ("spans", lambda a: a.astype(np.int32) + 10_000, "spans.npy holds a span outside its document's text"),
    ("chunk_docs", lambda a: a + 100, "chunk_docs.npy names a document that is not stored"),
    ("ivf_chunks", lambda a: a[::-1].copy(), "the inverted file does not match"),
])
def test_values_edited_with_valid_checksums_are_found_by_verify(small, name, change, message):
    """What only reading every value finds: ``maxsim index --verify``, and a merge's check."""
    assert IndexData.load(small).verify() == []
    _edit(small, name, change)
    problems = IndexData.load(small).verify()
    assert len(problems) == 1 and re.search(message, problems[0]), problems
    result = CliRunner().invoke(app, ["index", "verify", str(small)])
    assert result.exit_code == 1 and re.search(message, result.output), result.output


def _copy(checkpoint, tmp_path, name="m"):  # noqa: F811
    import shutil

    return shutil.copytree(checkpoint, tmp_path / name)


@pytest.mark.parametrize("file, edit, message", [
    ("config.json", {"num_hidden_layers": 100000}, "asks for 100000 layers but the weights hold 2"),
    ("config.json", {"num_attention_heads": 0}, "num_attention_heads is 0; it must be a whole number of 1 or more"),
    ("config.json", {"intermediate_size": 96}, "does not fit its weights: encoder.layer.0.intermediate"),
    ("maxsim_config.json", {"dim": 0}, "maxsim_config.json holds settings maxsim cannot use: dim: Input should be"),
    ("maxsim_config.json", {"query_maxlen": -5}, "query_maxlen: Input should be greater than or equal to 3"),
    ("maxsim_config.json", {"doc_maxlen": 10**9}, "doc_maxlen: Input should be less than or equal to"),
    ("maxsim_config.json", {"doc_maxlen": 500}, "doc_maxlen 500 is past the encoder's 128 positions"),
    ("maxsim_config.json", {"dim": 24}, "the projection is (16, 32) but the settings say dim 24"),
])
def test_checkpoint_configs_that_lie_are_refused_before_building(checkpoint, tmp_path, file, edit, message):  # noqa: F811
    from maxsim.model import ColBERT, ModelLoadError

    folder = _copy(checkpoint, tmp_path)
    config = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**config, **edit}))
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ColBERT.from_pretrained(folder)


def test_damaged_tokenizer_and_projection_files_are_named(checkpoint, tmp_path):  # noqa: F811
    from maxsim.model import ColBERT, ModelLoadError

    folder = _copy(checkpoint, tmp_path, "tok")
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer.json: the tokenizer cannot be read"):
        ColBERT.from_pretrained(folder)
    folder = _copy(checkpoint, tmp_path, "proj")
    (folder / "projection.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match="projection.safetensors is damaged or not a safetensors file"):
        ColBERT.from_pretrained(folder)


def test_an_unusable_model_setting_is_an_error_line_not_an_index(checkpoint, tmp_path):  # noqa: F811
    folder = _copy(checkpoint, tmp_path)
    config = json.loads((folder / "maxsim_config.json").read_text())
    (folder / "maxsim_config.json").write_text(json.dumps({**config, "dim": 0}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "text": "some text"}) + "\n")
    result = CliRunner().invoke(app, ["index", "build", str(corpus), "--model", str(folder), "--output", str(tmp_path / "ix")])
    assert result.exit_code == 2 and "error: " in result.output and "dim" in result.output
    assert not (tmp_path / "ix").exists()


def test_what_printed_a_traceback_is_one_line_naming_the_setting(small):
    """Integers past 2**63 in metadata and filters, rrf_k 1e30, bad hybrid settings on the command
    line, k=-1, [] and None as queries: each a SettingsError (Python), exit 2 with one line (CLI),
    or a 422/400 (server, with a key), never a traceback or a 500."""
    from fastapi.testclient import TestClient

    from maxsim.serve import create_app

    loaded = Retriever.from_index(small)
    with pytest.raises(SettingsError, match="holds the integer 18446744073709551616, beyond the"):
        loaded.add(["big"], ["big"], [{"n": 2**64}])
    with pytest.raises(SettingsError, match="beyond \\+-2\\*\\*53"):
        loaded.search("cells", filter={"n": 2**63})
    with pytest.raises(SettingsError, match="hybrid setting rrf_k"):
        loaded.search("cells", hybrid={"fusion": "rrf", "rrf_k": 1e30})
    for queries in ([], None, 5):
        with pytest.raises(SettingsError):
            loaded.search(queries)
    with pytest.raises(SettingsError, match="k must be a whole number"):
        loaded.search("cells", k=-1)
    assert [h.document_id for h in loaded.search("cells", hybrid="RRF")]  # (choices in any case)
    for flags, message in ((["--fusion", "rrf", "--rrf-k", "1000000000000000000000000000000"], "hybrid setting rrf_k"),
                           (["--fusion", "nope"], "hybrid setting fusion: Input should be 'rrf' or 'weighted'"),
                           (["--fusion-weight", "1.5"], "hybrid setting weight")):
        result = CliRunner().invoke(app, ["search", "--index", str(small), "cells", *flags])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    with TestClient(create_app(loaded, api_key="k")) as client:
        auth = {"Authorization": "Bearer k"}
        for body in ({"queries": ["cells"], "hybrid": {"rrf_k": 1e30}}, {"queries": ["cells"], "filter": {"n": 2**64}}):
            answer = client.post("/search", json=body, headers=auth)
            assert answer.status_code in (400, 422) and "error" in answer.json(), (body, answer.text)
        added = client.post("/documents", json={"documents": [{"id": "x", "text": "t", "metadata": {"n": 2**64}}]},
                            headers=auth)
        assert added.status_code == 422 and "beyond the" in added.json()["error"]
