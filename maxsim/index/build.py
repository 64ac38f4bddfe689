"""Building an index from token vectors, shard by shard, in memory that does not grow with the
corpus, resumable after a kill.

A build works in ``<index>.build/``, beside the index folder, in three stages:

1. **spill**: each shard of the corpus (``SHARD_DOCUMENTS`` documents) is encoded by the caller
   and its token vectors written in float16, with its chunks' lengths and spans
   (``shard-<n>/``, each written whole then renamed into place);
2. **centroids**: ``2 ** floor(log2(16 * sqrt(T)))`` centroids are trained (k-means) on a sample
   of every shard's tokens, and the residual codec fitted on the sample's residuals;
3. **segments**: shards are compressed in order, one at a time, into segments of about
   ``SEGMENT_TOKENS`` tokens, each written as it fills (:mod:`maxsim.index.segment`); each
   token goes to its nearest centroid through :class:`~maxsim.index.codec.CentroidSearch`.

``build.json`` there records the settings, a digest of each shard's documents and what is
done. Run again with the same documents and settings, a build keeps the shards, centroids and
segments already done; with others, it logs why and starts over. At the end the manifest is
written and the folder swapped in as the index (atomically: readers of an index it replaces
see the old one or the new one).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxsim import process_group
from maxsim.errors import OutputExistsError
from maxsim.files import atomic_write_text, publish_directory, real_path
from maxsim.index.codec import (
    CentroidSearch,
    Codec,
    as_stored,
    centroids_fingerprint,
    n_centroids_for,
    nearest_centroids,
    train_centroids,
)
from maxsim.index.manifest import write_manifest
from maxsim.index.reader import IndexData
from maxsim.index.segment import Segment
from maxsim.index.writer import write_shared
from maxsim.index_settings import IndexSettings
from maxsim.progress import progress

logger = logging.getLogger(__name__)

BUILD_FORMAT = "maxsim-build-1"
#: documents encoded and spilled at a time (their float32 vectors are held while they encode:
#: about 380 MB for 4,096 documents of 180 tokens at dim 128)
SHARD_DOCUMENTS = 4096
#: tokens compressed at a time (their float32 vectors and residuals: 16 MB each at dim 128)
COMPRESS_BLOCK = 1 << 15
#: tokens per segment a build writes (about 290 MB of codes and residuals at dim 128, nbits 2,
#: held while it fills; a search visits every segment, so fewer and larger is faster)
SEGMENT_TOKENS = 8_000_000
#: chunks per segment a build writes, at most: its inverted file then names chunks in 2 bytes
#: (1.5 bytes a token, against 3.0 with 4-byte chunk numbers)
SEGMENT_CHUNKS = 1 << 16
#: sampled tokens per centroid for k-means (as colbert-ai)
POINTS_PER_CENTROID = 16


@dataclass
class Shard:
    """One shard, encoded: ``vectors`` (T, dim) float16 or float32 unit vectors, the chunks'
    tokens back to back; ``doclens`` (N,) int32 tokens per chunk; ``chunk_docs`` (N,) int32 each
    chunk's document among the shard's; ``spans`` (N, 2) int32 characters of each chunk."""

    vectors: np.ndarray
    doclens: np.ndarray
    chunk_docs: np.ndarray
    spans: np.ndarray


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the system (glibc's ``malloc_trim``; elsewhere
    nothing). Blocks of tens of megabytes, allocated and freed shard after shard, otherwise stay
    in the process's heap: 640 MB of a 40,000-passage build's 1.6 GB, measured."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def shard_bounds(n_documents: int, size: int = SHARD_DOCUMENTS) -> list[tuple[int, int]]:
    """(start, end) of each shard's documents.

    >>> shard_bounds(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    return [(start, min(start + size, n_documents)) for start in range(0, n_documents, size)]


def records_digest(records: Sequence[dict]) -> str:
    """What identifies a shard's documents (ids, texts, metadata), for a resumed build."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def work_folder(path: Path) -> Path:
    """Where the build of the index at ``path`` works: ``<path>.build`` beside it."""
    path = real_path(path)
    return path.with_name(path.name + ".build")


class StreamingBuild:
    """The build of one index at ``path`` from ``records`` (every document's {"id", "content",
    "metadata"}), encoded shard by shard by ``encode(records of one shard) -> Shard``."""

    def __init__(self, path: str | Path, records: Sequence[dict], settings: IndexSettings,
                 encode: Callable[[Sequence[dict]], Shard], shard_documents: int | None = None,
                 segment_tokens: int | None = None, show_progress: bool = False,
                 context: process_group.Context | None = None) -> None:
        self.path, self.records, self.settings, self.encode = Path(path), records, settings, encode
        self.context = context if context is not None else process_group.Context()
        self.bounds = shard_bounds(len(records), shard_documents or SHARD_DOCUMENTS)
        self.segment_tokens, self.show_progress = segment_tokens or SEGMENT_TOKENS, show_progress
        self.work = work_folder(self.path)
        self.digests = [records_digest(records[a:b]) for a, b in self.bounds]
        self.state: dict = {}

    def run(self) -> IndexData:
        """Build (or finish building) the index and swap it in; the caller holds its writer lock
        (under torchrun: rank 0 does, and every rank calls this)."""
        if self.context.distributed:
            return self._run_shared()
        self._start_or_resume()
        self._spill()
        centroids, codec = self._centroids()
        entries = self._segments(CentroidSearch(centroids, seed=self.settings.seed), codec)
        return self._publish(centroids, codec, entries)

    def _publish(self, centroids: np.ndarray, codec: Codec, entries: list[dict]) -> IndexData:
        write_shared(self.work, centroids, codec)
        write_manifest(self.work, self.settings, entries, len(centroids))
        for child in self.work.iterdir():
            if child.name.startswith(("shard-", ".tmp-shard-")):
                shutil.rmtree(child)
        (self.work / "build.json").unlink()
        publish_directory(self.work, self.path)
        return IndexData.load(self.path)

    # ------------------------------------------------------------------ under torchrun
    def _run_shared(self) -> IndexData:
        """The build shared out over torchrun's ranks, in the same work folder (a file system
        they all see): rank r encodes shards r, r + G, ...; rank 0 trains the centroids and codec
        on the one-process sample, gathered from the ranks that hold its shards, and broadcasts
        them; rank r compresses segments r, r + G, ... (each recorded in ``segment-<n>.json``
        once written); rank 0 writes the manifest. A rank killed anywhere leaves whole files
        only, and the same command resumes."""
        context = self.context
        if context.is_main:
            self._start_or_resume()
        process_group.barrier(context)
        self.state = json.loads((self.work / "build.json").read_text())
        self._spill([i for i in range(context.rank, len(self.bounds), context.world_size)])
        process_group.barrier(context)
        centroids, codec = self._centroids_shared()
        groups = self._groups(0)
        assign = CentroidSearch(centroids, seed=self.settings.seed)
        for g in range(context.rank, len(groups), context.world_size):
            record = self.work / f"segment-{g:05d}.json"
            if not record.is_file():
                atomic_write_text(record, json.dumps(self._segment(*groups[g], assign, codec)))
                release_freed_memory()
        process_group.barrier(context)
        if context.is_main:
            entries = [json.loads((self.work / f"segment-{g:05d}.json").read_text()) for g in range(len(groups))]
            for g in range(len(groups)):
                (self.work / f"segment-{g:05d}.json").unlink()
            self._publish(centroids, codec, entries)
        process_group.barrier(context)
        return IndexData.load(self.path)

    def _centroids_shared(self) -> tuple[np.ndarray, Codec]:
        """:meth:`_centroids` with every rank's shards: the sample's rows gathered to rank 0,
        which trains; the centroids and codec broadcast to every rank."""
        import torch.distributed as dist

        context = self.context
        done = (self.work / "centroids.npy").is_file() and (self.work / "codec.npy").is_file()
        result: list = [None]
        if not done:
            sizes = np.array([len(self._shard(i, "vectors")) for i in range(len(self.bounds))], dtype=np.int64)
            k = n_centroids_for(int(sizes.sum()))
            own = set(range(context.rank, len(self.bounds), context.world_size))
            part = self._sample(sizes, k * POINTS_PER_CENTROID, own)
            parts: list = [None] * context.world_size
            dist.all_gather_object(parts, part)
            if context.is_main:
                rows = {i: r for gathered in parts for i, r in gathered.items()}
                sample = np.concatenate([rows[i] for i in sorted(rows)]) if rows else \
                    np.zeros((0, self.settings.dim), dtype=np.float32)
                result = [self._fit(sample, k)]
        elif context.is_main:
            result = [self._centroids()]
        if context.is_main:
            result = [(result[0][0], result[0][1].to_array())]
        dist.broadcast_object_list(result, src=0)
        centroids, codec = result[0]
        return centroids, codec if isinstance(codec, Codec) else Codec.from_array(codec, self.settings.nbits)

    # ------------------------------------------------------------------ stages
    def _start_or_resume(self) -> None:
        wanted = {"format": BUILD_FORMAT, "settings": self.settings.model_dump(), "shards": self.digests,
                  "segment_tokens": self.segment_tokens}
        state_file = self.work / "build.json"
        if state_file.is_file():
            try:
                state = json.loads(state_file.read_text())
            except ValueError:
                state = {}
            if all(state.get(key) == value for key, value in wanted.items()):
                done = sum((self.work / f"shard-{i:05d}").is_dir() for i in range(len(self.bounds)))
                logger.info("resuming the build in %s: %d of %d shards encoded, %d segments written", self.work,
                            done, len(self.bounds), len(state.get("segments", [])))
                self.state = state
                return
            changed = [key for key, value in wanted.items() if state.get(key) != value]
            logger.warning("%s holds a build of other %s: starting over", self.work, " and ".join(changed))
        if self.work.exists():
            ours = state_file.is_file() or (self.work / "index.json").is_file() or not any(self.work.iterdir())
            if not ours:
                raise OutputExistsError(f"{self.work} exists and is not a maxsim build folder (the index build "
                                        "works there): move it away, or build the index elsewhere")
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.state = {**wanted, "segments": []}
        self._save_state()

    def _save_state(self) -> None:
        atomic_write_text(self.work / "build.json", json.dumps(self.state, indent=1) + "\n")

    def _spill(self, shards: Sequence[int] | None = None) -> None:
        """Encode and spill the ``shards`` (default every one) not spilled yet."""
        shards = range(len(self.bounds)) if shards is None else shards
        todo = [i for i in shards if not (self.work / f"shard-{i:05d}").is_dir()]
        mine = sum(self.bounds[i][1] - self.bounds[i][0] for i in shards)
        bar = progress(mine, "encoding", "documents", self.show_progress and self.context.is_main,
                       initial=mine - sum(self.bounds[i][1] - self.bounds[i][0] for i in todo))
        try:
            for i in todo:
                start, end = self.bounds[i]
                shard = self.encode(self.records[start:end])
                tmp = self.work / f".tmp-shard-{i:05d}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                np.save(tmp / "vectors.npy", np.asarray(shard.vectors, dtype=np.float16), allow_pickle=False)
                for name in ("doclens", "chunk_docs", "spans"):
                    np.save(tmp / f"{name}.npy", np.asarray(getattr(shard, name), dtype=np.int32), allow_pickle=False)
                os.replace(tmp, self.work / f"shard-{i:05d}")
                del shard
                release_freed_memory()
                bar.update(end - start)
        finally:
            bar.close()

    def _shard(self, i: int, name: str, mapped: bool = True) -> np.ndarray:
        """One array of a spilled shard: memory-mapped (for its length, or a few rows), or read
        whole (``mapped=False``: its pages are freed with it, where a map's would stay resident)."""
        return np.load(self.work / f"shard-{i:05d}" / f"{name}.npy", mmap_mode="r" if mapped else None,
                       allow_pickle=False)

    def _centroids(self) -> tuple[np.ndarray, Codec]:
        if (self.work / "centroids.npy").is_file() and (self.work / "codec.npy").is_file():
            centroids = np.load(self.work / "centroids.npy", allow_pickle=False)
            return centroids, Codec.from_array(np.load(self.work / "codec.npy", allow_pickle=False),
                                               self.settings.nbits)
        sizes = np.array([len(self._shard(i, "vectors")) for i in range(len(self.bounds))], dtype=np.int64)
        k = n_centroids_for(int(sizes.sum()))
        rows = self._sample(sizes, k * POINTS_PER_CENTROID)
        return self._fit(np.concatenate([rows[i] for i in sorted(rows)]) if rows else
                         np.zeros((0, self.settings.dim), dtype=np.float32), k)

    def _fit(self, sample: np.ndarray, k: int) -> tuple[np.ndarray, Codec]:
        """``k`` centroids and the codec trained on ``sample``, saved in the work folder."""
        centroids = as_stored(train_centroids(sample, k, self.settings.seed, POINTS_PER_CENTROID))
        codes = CentroidSearch(centroids, seed=self.settings.seed).nearest(sample)
        codec = Codec.fit(sample - centroids[codes], self.settings.nbits, seed=self.settings.seed)
        np.save(self.work / "codec.npy", codec.to_array(), allow_pickle=False)
        np.save(self.work / ".tmp-centroids.npy", centroids, allow_pickle=False)
        os.replace(self.work / ".tmp-centroids.npy", self.work / "centroids.npy")  # (last: marks both done)
        return centroids, codec

    def _sample(self, sizes: np.ndarray, n: int, shards: set[int] | None = None) -> dict[int, np.ndarray]:
        """min(n, T) tokens drawn uniformly from every shard (seeded), as {shard: (m, dim)
        float32 rows}, of ``shards`` only when given (each rank reads its own)."""
        total = int(sizes.sum())
        rng = np.random.default_rng(self.settings.seed)
        picked = np.sort(rng.choice(total, n, replace=False)) if total > n else np.arange(total)
        base = np.concatenate([[0], np.cumsum(sizes)])
        parts = {}
        for i in range(len(sizes)):
            mine = picked[(picked >= base[i]) & (picked < base[i + 1])] - base[i]
            if len(mine) and (shards is None or i in shards):
                parts[i] = self._shard(i, "vectors", mapped=False)[mine].astype(np.float32)
        return parts

    def _segments(self, assign: CentroidSearch, codec: Codec) -> list[dict]:
        """Compress the shards in order into segments of about ``segment_tokens`` tokens; those
        a killed build wrote already are kept."""
        entries = [done["entry"] for done in self.state["segments"]]
        first = self.state["segments"][-1]["shards"][1] if self.state["segments"] else 0
        groups = self._groups(first)
        bar = progress(len(self.bounds), "compressing", "shards", self.show_progress, initial=first)
        try:
            for start, end in groups:
                entry = self._segment(start, end, assign, codec)
                release_freed_memory()
                entries.append(entry)
                self.state["segments"].append({"shards": [start, end], "entry": entry})
                self._save_state()
                bar.update(end - start)
        finally:
            bar.close()
        return entries

    def _groups(self, first: int) -> list[tuple[int, int]]:
        """Runs of shards, from ``first``, of about ``segment_tokens`` tokens and at most
        ``SEGMENT_CHUNKS`` chunks each (a shard with more chunks is a segment on its own)."""
        groups, start, tokens, chunks = [], first, 0, 0
        for i in range(first, len(self.bounds)):
            shard_chunks = len(self._shard(i, "doclens"))
            if i > start and chunks + shard_chunks > SEGMENT_CHUNKS:
                groups.append((start, i))
                start, tokens, chunks = i, 0, 0
            tokens += len(self._shard(i, "vectors"))
            chunks += shard_chunks
            if tokens >= self.segment_tokens:
                groups.append((start, i + 1))
                start, tokens, chunks = i + 1, 0, 0
        if start < len(self.bounds):
            groups.append((start, len(self.bounds)))
        return groups

    def _segment(self, start: int, end: int, assign: CentroidSearch, codec: Codec) -> dict:
        centroids = assign.centroids
        codes, residuals, doclens, chunk_docs, spans = [], [], [], [], []
        for i in range(start, end):
            spilled = self._shard(i, "vectors", mapped=False)
            for at in range(0, len(spilled), COMPRESS_BLOCK):
                vectors = np.asarray(spilled[at : at + COMPRESS_BLOCK], dtype=np.float32)
                block_codes = assign.nearest(vectors)
                codes.append(block_codes)
                residuals.append(codec.encode(vectors - centroids[block_codes]))
            del spilled
            release_freed_memory()
            doclens.append(np.asarray(self._shard(i, "doclens")))
            chunk_docs.append(np.asarray(self._shard(i, "chunk_docs")) + (self.bounds[i][0] - self.bounds[start][0]))
            spans.append(np.asarray(self._shard(i, "spans")))
        width = self.settings.dim * self.settings.nbits // 8
        segment = Segment.from_arrays(np.concatenate(codes), np.concatenate(residuals).reshape(-1, width),
                                      np.concatenate(doclens), np.concatenate(chunk_docs),
                                      np.concatenate(spans).reshape(-1, 2),
                                      self.records[self.bounds[start][0] : self.bounds[end - 1][1]], len(centroids),
                                      bm25_language=self.settings.bm25_language)
        return segment.write(self.work, centroids_fingerprint(centroids))


def build(vectors: np.ndarray, doclens: np.ndarray, chunk_docs: np.ndarray, spans: list[tuple[int, int]],
          documents: list[dict], settings: IndexSettings) -> IndexData:
    """An index in memory, of one segment, from every token vector at once (for small corpora and
    tests; save it with :func:`maxsim.index.writer.save`, under :func:`~maxsim.index.manifest.index_lock`).

    vectors: (T, dim) float32 unit vectors, the chunks' tokens back to back; doclens: (N,) int32
    tokens per chunk; chunk_docs: (N,) int32 position of each chunk's document in
    ``documents`` ({"id", "content", "metadata"}); spans: (start, end) characters of each
    chunk in its document. ``2 ** floor(log2(16 * sqrt(T)))`` centroids are trained with
    ``settings.seed``, and residuals quantised to ``settings.nbits`` bits per dimension.
    """
    k = n_centroids_for(len(vectors))
    centroids = as_stored(train_centroids(vectors, k, settings.seed))
    codes = nearest_centroids(vectors, centroids)
    residual = vectors - centroids[codes]
    codec = Codec.fit(residual, settings.nbits)
    segment = Segment.from_arrays(codes, codec.encode(residual), doclens, chunk_docs, spans, documents, k,
                                  bm25_language=settings.bm25_language)
    return IndexData(settings, centroids, codec, [segment])
