"""Segmented indexes: adds as new segments, deletes as tombstones, merges and compaction, the
same rankings from one segment or many, memory-mapped opening, the previous format, and a
writer killed at any moment."""

import bz2
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_index_writes import DOCS, IDS, checkpoint, retriever  # noqa: F401 - fixtures
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.index import IndexData, compaction, manifest, merge_policy, reader, writer
from maxsim.index.documents import SqliteDocuments
from maxsim.index.segment import Segment
from maxsim.retriever import Retriever

QUERIES = ["why do stars shine", "how do cells divide", "ocean tides and the moon", "filler note about nothing",
           "the immune system", "volcanoes and lava"]


def rankings(r: Retriever, k: int = 8) -> list[list[tuple[str, float]]]:
    return [[(h.document_id, h.score) for h in hits] for hits in r.search(QUERIES, k=k)]


def assert_same_rankings(a, b):
    for row_a, row_b in zip(a, b):
        assert [d for d, _ in row_a] == [d for d, _ in row_b], (row_a, row_b)
        np.testing.assert_allclose([s for _, s in row_a], [s for _, s in row_b], rtol=1e-5, atol=1e-5)


def segment_folders(path):
    return sorted(p.name for p in path.iterdir() if p.name.startswith("seg-"))


def add_as_stored(path, source: IndexData, position: int) -> None:
    """Add document ``position`` of ``source`` to the index at ``path`` with its tokens exactly
    as ``source`` stores them (a new segment), as an add through the model would, less the
    encoder's rounding."""
    (segment,) = source.segments
    chunks = np.flatnonzero(segment.chunk_docs == position)
    tokens = segment.token_positions(chunks)
    with manifest.index_lock(path):
        data = IndexData.load(path)
        writer.save(writer.with_documents(data, np.asarray(segment.codes[tokens]), np.asarray(segment.residuals[tokens]),
                                          np.asarray(segment.doclens[chunks]), source.documents_at([position]),
                                          np.zeros(len(chunks), dtype=np.int32), segment.spans[chunks].tolist()), path)


def test_one_segment_or_many_give_the_same_rankings(retriever, tmp_path, monkeypatch):  # noqa: F811
    """Built in one go, against: the same build with its last ten documents deleted and added
    back (the same stored tokens), one add at a time (eleven segments), then merged by the
    policy, then compacted."""
    one = tmp_path / "one"
    retriever.index(DOCS, path=one, document_ids=IDS)
    source = IndexData.load(one)
    want = rankings(Retriever.from_index(one))
    many = tmp_path / "many"
    shutil.copytree(one, many)
    Retriever.from_index(many).delete(IDS[-10:])
    monkeypatch.setattr(merge_policy, "SEGMENTS_PER_TIER", 1000)  # no merge: eleven segments
    for position in range(len(DOCS) - 10, len(DOCS)):
        add_as_stored(many, source, position)
    r = Retriever.from_index(many)
    assert len(r.index_data.segments) == 11 and r.index_data.n_documents == len(DOCS)
    assert_same_rankings(rankings(r), want)
    monkeypatch.setattr(merge_policy, "SEGMENTS_PER_TIER", 10)  # the next write merges ten of the small ones
    r.add(["one more filler note"], document_ids=["extra"])
    r.delete(["extra"])
    assert len(r.index_data.segments) <= 3 and r.index_data.n_documents == len(DOCS)
    assert_same_rankings(rankings(r), want)
    result = CliRunner().invoke(app, ["index", "compact", str(many)])
    assert result.exit_code == 0, result.output
    compacted = Retriever.from_index(many)
    assert len(compacted.index_data.segments) == 1 and compacted.index_data.n_documents == len(DOCS)
    assert compacted.index_data.segments[0].n_documents == len(DOCS)  # the deleted ones are gone
    assert len(segment_folders(many)) == 1
    assert_same_rankings(rankings(compacted), want)
    assert IndexData.load(many).verify() == []


def test_deleted_documents_are_never_found_and_their_ids_can_come_back(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    r = Retriever.from_index(path)
    gone = [hits[0].document_id for hits in r.search(QUERIES, k=1)]
    r.delete(gone)
    assert r.index_data.n_documents == len(DOCS) - len(set(gone))
    for hits in r.search(QUERIES, k=len(DOCS)):
        assert not set(gone) & {h.document_id for h in hits}
        assert len(hits) == len(DOCS) - len(set(gone))
    assert r.index_data.positions_of(gone) == {}
    r.add([DOCS[IDS.index(gone[0])]], document_ids=[gone[0]])  # deleted, so the id is free again
    assert r.search(QUERIES[0], k=1)[0].document_id == gone[0]


def test_vectors_added_are_stored_as_a_build_stores_them(retriever, tmp_path, cpu_bf16):  # noqa: F811
    """The vectors a build encoded, compressed as an add compresses them (IndexData.compress):
    the centroids and residual bytes the build stored (a build assigns against its centroids as
    stored, float16, and an add rounds its vectors as the build spills them). A product of
    another shape may break an exact tie the other way on some CPU: one token in ten at most."""
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    vectors = retriever.encoder.chunks(DOCS, retriever.backend.chunking)[0]  # the build's batches again
    data = IndexData.load(path)
    (segment,) = data.segments
    rows = segment.token_positions(np.arange(segment.n_chunks))
    codes, residuals = data.compress(vectors)
    same = codes == np.asarray(segment.codes[rows])
    assert same.mean() >= 0.9, same.mean()
    np.testing.assert_array_equal(residuals[same], np.asarray(segment.residuals[rows])[same])


def test_opening_maps_the_arrays_and_reads_no_document(retriever, tmp_path, monkeypatch):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    Retriever.from_index(path).add(["a late note"], document_ids=["late"])

    def refuse(*args, **kwargs):
        raise AssertionError("a document was read while opening")

    for name in ("get", "positions_of", "__iter__", "content_lengths"):
        monkeypatch.setattr(SqliteDocuments, name, refuse)
    data = IndexData.load(path)
    assert len(data.segments) == 2 and data.n_documents == len(DOCS) + 1
    for segment in data.segments:
        for name in ("codes", "residuals", "doclens", "chunk_docs", "spans", "ivf_chunks"):
            assert isinstance(getattr(segment, name), np.memmap), name


def test_an_add_or_delete_opens_only_what_it_wrote_and_rehashes_no_shared_file(retriever, tmp_path,  # noqa: F811
                                                                              monkeypatch):
    """After an in-place write the writer keeps the segments it did not touch (the same objects)
    and the shared centroids and codec without reading or hashing them again; what it holds
    then searches as a fresh open does, and the manifest's digests are still the files'."""
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    r = Retriever.from_index(path)
    r.add(["a late note about the tides"], document_ids=["late"])
    first, second = r.index_data.segments
    hashed, opened = [], []
    real_digest, real_open = manifest.file_digest, Segment.open
    monkeypatch.setattr(manifest, "file_digest", lambda f: hashed.append(f.name) or real_digest(f))
    monkeypatch.setattr(IndexData, "load", classmethod(lambda cls, p: pytest.fail("the index was read again")))
    monkeypatch.setattr(Segment, "open", classmethod(lambda cls, root, entry: opened.append(entry["name"])
                                                       or real_open.__func__(cls, root, entry)))
    r.add(["another late note on volcanoes"], document_ids=["later"])
    assert hashed == [] and len(r.index_data.segments) == 3
    assert r.index_data.segments[0] is first and r.index_data.segments[1] is second
    assert opened == [r.index_data.manifest_entries[2]["name"]]
    assert isinstance(r.index_data.segments[2].codes, np.memmap)
    opened.clear()
    third = r.index_data.segments[2]
    r.delete([IDS[0]])  # tombstones in the first segment: that one is opened again
    assert hashed == [] and opened == [first.name]
    assert r.index_data.segments[0] is not first and r.index_data.segments[0].deleted.tolist() == [0]
    assert r.index_data.segments[1] is second and r.index_data.segments[2] is third
    monkeypatch.undo()
    assert_same_rankings(rankings(r), rankings(Retriever.from_index(path)))
    meta = json.loads((path / "index.json").read_text())
    for name in ("centroids.npy", "codec.npy"):
        assert meta["files"][name] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert IndexData.load(path).verify() == []


def test_segments_store_narrow_integers_and_the_wide_ones_written_before_still_read(retriever, tmp_path,  # noqa: F811
                                                                                    monkeypatch):
    """Lengths, document positions and spans take the fewest bytes that hold them, offsets 4, and
    an inverted file over most centroids is dense; a segment written as before (int32, int64
    offsets, sparse cells) searches the same and still verifies."""
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    retriever.index(DOCS, path=narrow, document_ids=IDS)
    (segment,) = IndexData.load(narrow).segments
    kinds = {name: getattr(segment, name).dtype for name in ("doclens", "chunk_docs", "spans", "ivf_offsets")}
    span_kind = np.uint8 if max(len(d) for d in DOCS) < 256 else np.uint16
    assert kinds == {"doclens": np.uint8, "chunk_docs": np.uint8, "spans": span_kind, "ivf_offsets": np.int32}
    used = len(np.unique(np.asarray(segment.codes)))
    n_centroids = len(IndexData.load(narrow).centroids)
    # sparse cells while the tokens use at most half the centroids, dense past that (how many the
    # 439 tokens use depends on the CPU's k-means and bf16 path, so both outcomes are checked)
    assert len(segment.ivf_cells) == (used if 2 * used <= n_centroids else 0)
    assert len(segment.ivf_offsets) == (used + 1 if 2 * used <= n_centroids else n_centroids + 1)

    from maxsim.index import segment as segment_module
    from maxsim.index.ivf import build_ivf

    def always_dense(codes, doclens, n):
        chunks, dense = build_ivf(codes, doclens, n)
        return np.zeros(0, np.int32), dense, chunks

    monkeypatch.setattr(segment_module, "sparse_ivf", always_dense)
    retriever.index(DOCS, path=tmp_path / "dense", document_ids=IDS)
    monkeypatch.undo()
    (dense,) = IndexData.load(tmp_path / "dense").segments
    assert not len(dense.ivf_cells) and len(dense.ivf_offsets) == len(IndexData.load(narrow).centroids) + 1
    assert_same_rankings(rankings(Retriever.from_index(narrow)), rankings(Retriever.from_index(tmp_path / "dense")))
    assert CliRunner().invoke(app, ["index", "verify", str(tmp_path / "dense")]).exit_code == 0

    def widest(values, unsigned=True):
        return np.asarray(values).astype(np.int32 if unsigned else np.int64)

    def always_sparse(codes, doclens, n):
        chunks, dense = build_ivf(codes, doclens, n)
        cells = np.flatnonzero(np.diff(dense)).astype(np.int32)
        return cells, np.concatenate([dense[cells], dense[-1:]]), chunks

    monkeypatch.setattr(segment_module, "narrowest", widest)
    monkeypatch.setattr(segment_module, "sparse_ivf", always_sparse)
    retriever.index(DOCS, path=wide, document_ids=IDS)
    monkeypatch.undo()
    (old,) = IndexData.load(wide).segments
    assert old.doclens.dtype == np.int32 and old.ivf_offsets.dtype == np.int64 and len(old.ivf_cells) == used
    assert_same_rankings(rankings(Retriever.from_index(narrow)), rankings(Retriever.from_index(wide)))
    assert (wide / old.name / "doclens.npy").stat().st_size > (narrow / segment.name / "doclens.npy").stat().st_size
    Retriever.from_index(wide).add(["a late note"], document_ids=["late"])  # a new segment beside the old one
    assert CliRunner().invoke(app, ["index", "verify", str(wide)]).exit_code == 0


def fake_segment(tokens, documents=10, deleted=0):
    segment = Segment.from_arrays(np.zeros(tokens, np.int64), np.zeros((tokens, 1), np.uint8), [tokens], [0],
                                  [(0, 0)], [{"id": str(i), "content": "", "metadata": None}
                                             for i in range(documents)], 4)
    return segment.with_deleted(np.arange(deleted)) if deleted else segment


class Sized:
    """A segment as the policy sees it."""

    def __init__(self, n_tokens, n_documents=1, deleted=()):
        self.n_tokens, self.n_documents, self.deleted = n_tokens, n_documents, list(deleted)


def apply_policy(segments: list) -> list:
    """The index's merge loop, on sizes alone."""
    while (chosen := merge_policy.plan_merge(segments)) is not None:
        combined = Sized(sum(segments[i].n_tokens for i in chosen))
        segments = [s for i, s in enumerate(segments) if i not in chosen] + [combined]
    return segments


@pytest.mark.parametrize("sizes", ["alternating", "random", "growing"])
def test_the_merge_policy_bounds_the_segment_count_whatever_the_sizes_and_their_order(sizes):
    """Adds alternating between 1 and 50 documents left 601 segments under the former policy
    (it merged only ten adjacent segments of one size level); now the count stays within the
    tiers' budget after every write, and the tokens are all kept."""
    rng = random.Random(7)
    segments, total = [], 0
    for i in range(1_000):
        tokens = {"alternating": (60, 3_000)[i % 2], "random": rng.randint(20, 5_000), "growing": 50 * (i + 1)}[sizes]
        total += tokens
        segments = apply_policy([*segments, Sized(tokens)])
        mergeable = [s for s in segments if s.n_tokens <= merge_policy.AUTO_MERGE_MAX_TOKENS // 2]
        assert len(mergeable) <= merge_policy.allowed_segments(sum(s.n_tokens for s in mergeable))
    assert sum(s.n_tokens for s in segments) == total
    assert len(segments) <= 40, len(segments)


def test_the_merge_policy_rewrites_mostly_deleted_segments_and_leaves_large_ones():
    big = fake_segment(5_000_000)
    assert merge_policy.plan_merge([big] + [fake_segment(300)] * 10) is None  # within the budget
    assert merge_policy.plan_merge([big] * 30) is None  # too large to merge without --compact
    assert merge_policy.plan_merge([big, fake_segment(300, deleted=6)]) == [1]  # more than half deleted
    assert merge_policy.plan_merge([big, fake_segment(300, deleted=5)]) is None
    small = [Sized(n) for n in (100, 9_000, 100, 8_000, 100, 7_000, 100, 6_000, 100, 5_000, 100)]
    chosen = merge_policy.plan_merge(small)  # over the budget: the ten smallest go together, not adjacent ones
    assert chosen == [0, *range(2, 11)]  # (of two runs as even, the smaller)


def write_legacy(data: IndexData, path) -> None:
    """``data`` written in the previous format (maxsim-plaid-2), as maxsim wrote it before."""
    (segment,) = data.segments
    path.mkdir()
    arrays = {"centroids": data.centroids.astype(np.float16), "codec": data.codec.to_array(),
              "codes": segment.codes_in_chunk_order(),  # that format's rows: chunk after chunk
              "residuals": np.asarray(segment.residuals)[np.asarray(segment.token_rows, dtype=np.int64)],
              "doclens": np.asarray(segment.doclens), "chunk_docs": np.asarray(segment.chunk_docs),
              "spans": np.asarray(segment.spans)}
    for name, array in arrays.items():
        np.save(path / f"{name}.npy", array, allow_pickle=False)
    text = "".join(json.dumps(d) + "\n" for d in data.documents)
    (path / "documents.jsonl.bz2").write_bytes(bz2.compress(text.encode()))
    meta = data.settings.model_dump()
    meta.update(format="maxsim-plaid-2", version="old", n_documents=data.n_documents, n_chunks=data.n_chunks,
                n_tokens=data.n_tokens, n_centroids=len(data.centroids),
                files={f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in path.iterdir()})
    (path / "index.json").write_text(json.dumps(meta))


def test_an_index_of_the_previous_format_is_read_and_converted_by_its_first_write(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    want = rankings(Retriever.from_index(path))
    old = tmp_path / "old"
    write_legacy(IndexData.load(path), old)
    r = Retriever.from_index(old)
    assert r.index_data.legacy and json.loads((old / "index.json").read_text())["format"] == "maxsim-plaid-2"
    assert_same_rankings(rankings(r), want)
    r.add(["a late note about stars"], document_ids=["late"])  # the first write converts it
    meta = json.loads((old / "index.json").read_text())
    assert meta["format"] == manifest.FORMAT and [s["n_documents"] for s in meta["segments"]] == [len(DOCS), 1]
    assert not (old / "codes.npy").exists() and not (old / "documents.jsonl.bz2").exists()
    r.delete(["late"])
    assert_same_rankings(rankings(Retriever.from_index(old)), want)
    assert IndexData.load(old).verify() == []


KILLED_WRITER = """
import sys
from maxsim.retriever import Retriever
path, start = sys.argv[1], int(sys.argv[2])
r = Retriever.from_index(path)
for i in range(start, start + 10_000):
    r.add([f"note number {i} about killing writers"], document_ids=[f"k{i}"])
    print("added", i, flush=True)
    if i % 3 == 2:
        r.delete([f"k{i - 1}"])
        print("deleted", i - 1, flush=True)
"""


def test_a_writer_killed_at_any_moment_leaves_the_last_complete_manifest(retriever, tmp_path):  # noqa: F811
    path = tmp_path / "ix"
    retriever.index(DOCS, path=path, document_ids=IDS)
    rng = random.Random(0)
    done: dict[str, bool] = {}  # id -> present, as the writer reported before it died
    start = 0
    for _ in range(4):
        writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = writer.stdout.readline()
        assert first.startswith("added"), writer.stderr.read()[-2000:]
        time.sleep(rng.uniform(0.0, 1.5))
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate()
        lines = [first.strip(), *out.splitlines()]
        for line in lines:
            what, number = line.split()
            done[f"k{number}"] = what == "added"
        what, number = lines[-1].split()
        last = int(number) + (1 if what == "deleted" else 0)  # the last add that returned
        # the one write in flight when it died (not reported) may or may not have landed:
        # the delete of k{last - 1} or the add of k{last + 1}
        unsure = {f"k{last - 1}", f"k{last + 1}"}
        data = IndexData.load(path)  # the last complete manifest
        assert data.verify() == []
        held = {d["id"] for d in data.documents}
        assert set(IDS) <= held
        assert {i for i in held if i.startswith("k")} <= set(done) | unsure
        assert {i for i, present in done.items() if i not in unsure and (i in held) != present} == set()
        done.update({i: i in held for i in unsure})
        start = last + 2
    Retriever.from_index(path).add(["after the kills"], document_ids=["after"])  # cleans what the kills left
    manifest = json.loads((path / "index.json").read_text())
    assert segment_folders(path) == sorted(s["name"] for s in manifest["segments"])
    assert not [p for p in path.rglob(".tmp-*")]


def test_compaction_opens_a_bounded_number_of_segments_at_once(retriever, tmp_path, monkeypatch):  # noqa: F811
    """An index of more segments than a compaction opens at once (as the former merge policy
    could leave: 601, and 9,021 open files) compacts in rounds, never opening them all."""
    path = tmp_path / "ix"
    retriever.index(DOCS[:30], path=path, document_ids=IDS[:30])
    source = IndexData.load(path)
    want = rankings(Retriever.from_index(path))
    Retriever.from_index(path).delete(IDS[20:30])
    monkeypatch.setattr(merge_policy, "SEGMENTS_PER_TIER", 1000)
    for position in range(20, 30):
        add_as_stored(path, source, position)
    assert len(IndexData.load(path).segments) == 11
    monkeypatch.setattr(compaction, "COMPACT_AT_ONCE", 3)
    opened = []
    open_segment = Segment.open
    monkeypatch.setattr(Segment, "open", classmethod(lambda cls, root, entry: opened.append(entry["name"])
                                                     or open_segment(root, entry)))
    load_once = reader._open_version

    def bounded(path, first=None):
        data = load_once(path, first)
        assert len(data.segments) <= 3, "a compaction step opened every segment"
        return data

    monkeypatch.setattr(reader, "_open_version", bounded)
    result = CliRunner().invoke(app, ["index", "compact", str(path)])
    assert result.exit_code == 0, result.output
    assert "30 documents, 11 segments" in result.output
    monkeypatch.setattr(reader, "_open_version", load_once)
    compacted = IndexData.load(path)
    assert len(compacted.segments) == 1 and compacted.n_documents == 30 and compacted.verify() == []
    assert len(segment_folders(path)) == 1
    assert_same_rankings(rankings(Retriever.from_index(path)), want)


def test_a_hand_edited_manifest_with_a_repeated_or_foreign_segment_is_refused(retriever, tmp_path):  # noqa: F811
    path, other = tmp_path / "ix", tmp_path / "other"
    retriever.index(DOCS[:12], path=path, document_ids=IDS[:12])
    retriever.index(DOCS[12:24], path=other, document_ids=IDS[12:24], seed=3)
    meta = json.loads((path / "index.json").read_text())
    original = json.dumps(meta)
    meta["segments"].append(dict(meta["segments"][0]))
    (path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(manifest.IndexLoadError, match="lists the segment seg-.* more than once"):
        IndexData.load(path)
    (path / "index.json").write_text(original)
    foreign = json.loads((other / "index.json").read_text())["segments"][0]
    shutil.copytree(other / foreign["name"], path / foreign["name"])
    meta = json.loads(original)
    meta["segments"].append(foreign)
    (path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(manifest.IndexLoadError, match=f"lists the segment {foreign['name']}, which was written for "
                                                   "another index"):
        IndexData.load(path)
    (path / "index.json").write_text(original)
    assert IndexData.load(path).n_documents == 12


def test_verify_while_a_writer_replaces_the_version_reports_no_false_damage(retriever, tmp_path,  # noqa: F811
                                                                             monkeypatch):
    """A merge between loading a version and reading its files deleted them under the
    verification, which reported the index damaged; now the new version is verified instead."""
    from maxsim.index import segment_checks

    path = tmp_path / "ix"
    retriever.index(DOCS[:12], path=path, document_ids=IDS[:12])
    Retriever.from_index(path).add(["a late note"], document_ids=["late"])
    real_verify, calls = segment_checks.verify, []

    def verify_meeting_a_writer(root, entry, *args):
        calls.append(entry["name"])
        if len(calls) == 1:
            compaction.compact_index(root)  # another process: a new version, the old files deleted
        return real_verify(root, entry, *args)

    monkeypatch.setattr(reader, "verify", verify_meeting_a_writer)
    result = CliRunner().invoke(app, ["index", "verify", str(path)])
    assert result.exit_code == 0, result.output
    assert "no problem found" in result.output and len(calls) > 2
