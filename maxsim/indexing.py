"""Building maxsim's index from a model's vectors: the settings it records, the streaming build
(:class:`maxsim.index.build.StreamingBuild`) and its sharing out under torchrun.

Documents are encoded and compressed in shards, so memory does not grow with the corpus; a
build that was killed resumes from the shards it had done when it is run again with the same
documents and settings. Under torchrun, every rank calls :func:`build_index` with the same
documents and they share the shards and segments out, each rank's model on its own device.
``pool_factor`` N > 1 stores about 1/N of each chunk's vectors (:mod:`maxsim.index.pooling`, as
PyLate's ``pool_factor``), saved with the index so that documents added later are pooled alike.
The BM25 side is kept in a language's stop words and stemmer (:data:`maxsim.lexical.BM25_LANGUAGES`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maxsim import process_group
from maxsim.errors import SettingsError
from maxsim.files import check_replaceable
from maxsim.index import IndexData, IndexSettings, index_lock, is_index
from maxsim.index.build import Shard, StreamingBuild
from maxsim.index_settings import nbits_for
from maxsim.lexical import check_language
from maxsim.limits import check_name
from maxsim.model import ColBERT

logger = logging.getLogger(__name__)

#: where an index known by name lives, under the current directory
INDEX_ROOT = Path(".maxsim") / "indexes"

#: texts -> (vectors (T, dim) float32, doclens (N,), chunk_docs (N,), spans (N,) of (start, end))
ChunkEncoder = Callable[[Sequence[str]], tuple]


def index_folder(name: str | None) -> Path:
    """``INDEX_ROOT/name`` for an index known by name; the name must be one plain folder name.

    >>> index_folder("scifact").as_posix()
    '.maxsim/indexes/scifact'
    >>> index_folder("../elsewhere")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: index name '../elsewhere' must be one folder name ...
    """
    if not name:
        raise SettingsError("give the index a path= (a folder) or a name= (kept under .maxsim/indexes/)")
    check_name(name, "index name", INDEX_ROOT)
    return INDEX_ROOT / name


def check_build_settings(nbits, pool_factor, bm25_language) -> None:
    """Refuse settings an index cannot be built with, before any work."""
    if nbits is not None and nbits not in (1, 2, 4):  # (None: by the corpus's size)
        raise SettingsError("nbits must be 1, 2 or 4")
    if not isinstance(pool_factor, int) or isinstance(pool_factor, bool) or pool_factor < 1:
        raise SettingsError(f"pool_factor must be a whole number of 1 or more (1: no pooling), got {pool_factor!r}")
    if bm25_language is not None:
        check_language(bm25_language, "pass one of them as the language (--language), or None for no BM25 side")


def settings_for(model: ColBERT, model_path: str | None, encoded_in: str, nbits: int | None, seed: int,
                 split_documents: bool, max_document_tokens: int | None, pool_factor: int,
                 bm25_language: str | None, n_documents: int) -> IndexSettings:
    """What an index of ``n_documents`` built with ``model`` records (settings checked first: a
    bad one is refused before any work; ``nbits`` None: :func:`~maxsim.index_settings.nbits_for`)."""
    check_build_settings(nbits, pool_factor, bm25_language)
    return IndexSettings(nbits=nbits_for(n_documents) if nbits is None else nbits, dim=model.settings.dim,
                         model_path=model_path, model_digest=model.digest(),
                         model_settings=model.settings.model_dump(), split_documents=split_documents,
                         max_document_tokens=max_document_tokens or model.settings.doc_maxlen, seed=seed,
                         encoded_in=encoded_in, pool_factor=pool_factor, bm25_language=bm25_language)


def build_index(records: Sequence[dict], path: Path, settings: IndexSettings, encode: ChunkEncoder,
                device_type: str, overwrite: bool = False, show_progress: bool = False) -> IndexData:
    """Encode ``records`` shard by shard with ``encode`` and write the index into ``path``
    (replacing an index there only with ``overwrite``; a folder holding anything else is never
    touched); returns it. Under torchrun every rank calls this with the same records: they
    share the shards and segments out, and rank 0 holds the writer lock for all."""
    check_replaceable(path, is_index, "maxsim index", overwrite, "--overwrite (overwrite=True)")

    def shard_of(shard: Sequence[dict]) -> Shard:
        vectors, doclens, chunk_docs, spans = encode([r["content"] for r in shard])
        return Shard(vectors, doclens, chunk_docs, np.asarray(spans, dtype=np.int32).reshape(-1, 2))

    group = process_group.joined(device_type) if process_group.launched() else contextlib.nullcontext(
        process_group.Context())
    with group as context, index_lock(path) if context.is_main else contextlib.nullcontext():  # (rank 0's, for all)
        if context.is_main:
            check_replaceable(path, is_index, "maxsim index", overwrite, "--overwrite (overwrite=True)")
        data = StreamingBuild(path, records, settings, shard_of, show_progress=show_progress, context=context).run()
    logger.info("indexed %d documents (%d chunks, %d tokens, %d centroids, %d segments) in %s", data.n_documents,
                data.n_chunks, data.n_tokens, len(data.centroids), len(data.segments), path)
    return data
