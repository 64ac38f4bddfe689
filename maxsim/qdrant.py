"""Qdrant as an index backend: a collection of chunks whose token vectors Qdrant scores by MaxSim.

Why Qdrant (rather than Vespa, Weaviate or Milvus): it scores multivectors by MaxSim natively
(``comparator=MAX_SIM``), shards and replicates a collection across nodes, filters on payload
fields inside the search, and its Python client runs the same API in-process (``path=`` or
``":memory:"``) as against a cluster, so what is tested here is the code that talks to one.
Vespa also ranks by MaxSim, but through an application package and its own query language, not
a client call; Weaviate and Milvus added multivectors later and filter or score them with fewer
options.

Each chunk of a document is one point (documents longer than the model's ``doc_maxlen`` are
split as in maxsim's own index): its token vectors as the multivector ``tokens`` (float16, or
float32 with Qdrant's int8 scalar quantisation), its MUVERA encoding (:mod:`maxsim.muvera`) as
the single vector ``muvera`` that Qdrant's HNSW searches first, and the payload
``{"document_id", "chunk", "content" (the chunk's text), "metadata"}``. A search takes the
``candidates`` best points by MUVERA, reranks them by MaxSim over ``tokens``, and keeps each
document's best chunk; with the first stage off, every point is scored by exact MaxSim (and
grouped by ``document_id`` in Qdrant). The collection's metadata records the model (dim, digest,
folder), the storage and the MUVERA settings, and a model of other dimensions is refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from maxsim.errors import MaxsimError, SettingsError
from maxsim.index.filters import Filter
from maxsim.muvera import Muvera

TOKENS = "tokens"
FIRST_STAGE = "muvera"
#: the namespace of point ids: uuid5(NAMESPACE, "<document id>\\0<chunk>")
NAMESPACE = uuid.UUID("5b0e4c2a-6f7e-4d0c-9a55-3c1d2b7f0e11")
STORAGES = ("float16", "int8")


class QdrantError(MaxsimError, ValueError):
    """A collection that maxsim cannot use as asked."""


#: a collection name maxsim gives Qdrant: letters, digits, '_', '-' and '.', not starting with '.'
COLLECTION_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,254}")


def check_collection_name(name) -> str:
    """``name`` if it is a collection name every Qdrant accepts (as a folder name in its
    storage, it must stay one), else a SettingsError naming the fix.

    >>> check_collection_name("../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    maxsim.errors.SettingsError: Qdrant collection name '../x' is not one maxsim uses: ...
    """
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise SettingsError(f"Qdrant collection name {name!r} is not one maxsim uses: give 1 to 255 letters, digits, "
                            "'_', '-' or '.' (not first), such as 'scifact'")
    return name


def point_id(document_id: str, chunk: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{document_id}\0{chunk}"))


def connect(target):
    """A ``QdrantClient`` for ``target``: a client already made, an ``http(s)://`` URL (a
    server or cluster), ``":memory:"``, or a folder (Qdrant's local mode, in this process)."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise SettingsError("Qdrant needs the qdrant-client package: pip install 'maxsim[qdrant]'") from None
    if isinstance(target, QdrantClient):
        return target
    target = str(target)
    if target.startswith(("http://", "https://")):
        return QdrantClient(url=target)
    if target == ":memory:":
        return QdrantClient(":memory:")
    try:
        return QdrantClient(path=target)
    except RuntimeError as err:
        if "already accessed" not in str(err):
            raise
        raise QdrantError(f"the Qdrant folder {target} is open in another process (Qdrant's local mode allows one): "
                          "stop that process, or run a Qdrant server and give its URL") from None


@dataclass
class QdrantSettings:
    """What a collection records of how it was made (its metadata's ``maxsim`` entry)."""

    dim: int
    model_digest: str | None
    model_path: str | None
    storage: str
    muvera: dict | None
    model_settings: dict | None = None

    def encoder(self) -> Muvera | None:
        return Muvera(**self.muvera) if self.muvera else None


class QdrantIndex:
    """One collection of a Qdrant client, as maxsim writes and searches it."""

    def __init__(self, client, collection: str) -> None:
        check_collection_name(collection)
        self.client, self.collection = client, collection
        self._settings: QdrantSettings | None = None
        self._fields_seen: set[str] = set()  # metadata fields some point has (once seen, kept)

    # ------------------------------------------------------------------ the collection
    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def create(self, settings: QdrantSettings, overwrite: bool = False) -> None:
        """Make the collection (refusing one already there unless ``overwrite``)."""
        from qdrant_client import models

        if settings.storage not in STORAGES:
            raise SettingsError(f"Qdrant storage {settings.storage!r} is not one of {', '.join(STORAGES)}")
        if self.exists():
            if not overwrite:
                raise QdrantError(f"Qdrant collection {self.collection!r} exists: choose another name, or replace it "
                                  "with --overwrite (overwrite=True)")
            self.client.delete_collection(self.collection)
        int8 = settings.storage == "int8"
        vectors = {TOKENS: models.VectorParams(
            size=settings.dim, distance=models.Distance.DOT,
            multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
            datatype=None if int8 else models.Datatype.FLOAT16,
            quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, always_ram=True)) if int8 else None,
            hnsw_config=models.HnswConfigDiff(m=0))}  # (no graph over the multivectors: they rerank)
        if settings.muvera:
            vectors[FIRST_STAGE] = models.VectorParams(size=settings.encoder().output_dim,
                                                       distance=models.Distance.DOT)
        self.client.create_collection(self.collection, vectors_config=vectors,
                                      metadata={"maxsim": settings.__dict__})
        self.client.create_payload_index(self.collection, "document_id", models.PayloadSchemaType.KEYWORD)
        self._settings = settings

    @property
    def settings(self) -> QdrantSettings:
        """The collection's recorded settings (a collection maxsim did not make is refused)."""
        if self._settings is None:
            if not self.exists():
                raise QdrantError(f"Qdrant has no collection {self.collection!r}: make it with `maxsim index ... "
                                  f"--qdrant ... --collection {self.collection}`")
            info = self.client.get_collection(self.collection)
            recorded = (info.config.metadata or {}).get("maxsim")
            if not recorded:
                raise QdrantError(f"Qdrant collection {self.collection!r} was not made by maxsim (its metadata has "
                                  "no maxsim settings): make one with `maxsim index --qdrant`")
            vectors = info.config.params.vectors
            size = vectors[TOKENS].size if isinstance(vectors, dict) and TOKENS in vectors else None
            if size != recorded["dim"]:
                raise QdrantError(f"Qdrant collection {self.collection!r} holds {size}-dim token vectors, not the "
                                  f"{recorded['dim']} its metadata records")
            self._settings = QdrantSettings(**recorded)
        return self._settings

    def check_model(self, dim: int, digest: str | None) -> None:
        """Refuse a model whose dimensions (or weights) are not the collection's."""
        settings = self.settings
        if dim != settings.dim:
            raise QdrantError(f"Qdrant collection {self.collection!r} holds {settings.dim}-dim token vectors but "
                              f"the model makes {dim}-dim ones: use the model it was made with, or another collection")
        if settings.model_digest and digest and digest != settings.model_digest:
            raise QdrantError(f"the model is not the one Qdrant collection {self.collection!r} was made with (its "
                              "weights or settings differ): its query vectors would not match the stored ones")

    def check_fields(self, condition: Filter) -> None:
        """Refuse a filter naming a metadata field no point has (as maxsim's own index does)."""
        wanted = (condition.fields | condition.nested) - self._fields_seen
        self._fields_seen |= fields_present(self.client, self.collection, wanted)
        unknown = sorted(wanted - self._fields_seen)
        if unknown:
            raise SettingsError(f"no document of Qdrant collection {self.collection!r} has the metadata field "
                                f"{', '.join(map(repr, unknown))}: check the field's name")

    def count(self) -> int:
        """Documents in the collection."""
        from qdrant_client import models

        hits = self.client.count(self.collection, count_filter=models.Filter(must=[models.FieldCondition(
            key="chunk", match=models.MatchValue(value=0))]), exact=True)
        return int(hits.count)

    # ------------------------------------------------------------------ writing
    def upsert(self, records: Sequence[dict], vectors: np.ndarray, doclens: np.ndarray, chunk_docs: np.ndarray,
               spans: Sequence[tuple[int, int]], batch: int = 64) -> int:
        """Write the chunks of ``records`` ({"id", "content", "metadata"}): their token vectors
        back to back (T, dim) float32, ``doclens`` (N,) tokens per chunk, ``chunk_docs`` (N,)
        each chunk's record, ``spans`` its characters. A document already there is replaced
        (its old chunks deleted first). Returns the chunks written."""
        from qdrant_client import models

        encoder = self.settings.encoder()
        self.delete([r["id"] for r in records])
        offsets = np.concatenate([[0], np.cumsum(doclens, dtype=np.int64)])
        chunk_number = np.zeros(len(doclens), dtype=np.int64)
        for i in range(1, len(doclens)):
            chunk_number[i] = chunk_number[i - 1] + 1 if chunk_docs[i] == chunk_docs[i - 1] else 0
        points = []
        for i in range(len(doclens)):
            record, (start, end) = records[int(chunk_docs[i])], spans[i]
            tokens = np.asarray(vectors[offsets[i] : offsets[i + 1]], dtype=np.float32)
            vector = {TOKENS: tokens.tolist()}
            if encoder is not None:
                vector[FIRST_STAGE] = encoder.encode_document(tokens).tolist()
            points.append(models.PointStruct(
                id=point_id(record["id"], int(chunk_number[i])), vector=vector,
                payload={"document_id": record["id"], "chunk": int(chunk_number[i]),
                         "content": record["content"][start:end], "metadata": record.get("metadata")}))
        for at in range(0, len(points), batch):
            self.client.upsert(self.collection, points[at : at + batch], wait=True)
        return len(points)

    def delete(self, document_ids: Sequence[str]) -> None:
        """Delete every chunk of these documents (ids not there are ignored)."""
        from qdrant_client import models

        if document_ids:
            self.client.delete(self.collection, points_selector=models.FilterSelector(filter=models.Filter(must=[
                models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids)))])),
                wait=True)

    def present(self, document_ids: Sequence[str]) -> set[str]:
        """Which of these documents the collection holds."""
        from qdrant_client import models

        found, offset = set(), None
        wanted = models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchAny(
            any=list(document_ids))), models.FieldCondition(key="chunk", match=models.MatchValue(value=0))])
        while document_ids:
            points, offset = self.client.scroll(self.collection, scroll_filter=wanted, limit=256, offset=offset,
                                                with_payload=["document_id"], with_vectors=False)
            found.update(p.payload["document_id"] for p in points)
            if offset is None:
                break
        return found

    # ------------------------------------------------------------------ searching
    def search(self, q_vectors: np.ndarray, q_mask: np.ndarray, k: int, filter: Mapping | None = None,
               first_stage: bool = True, candidates: int | None = None) -> list[list[tuple[str, float, dict]]]:
        """Each query's ``k`` best documents, by their best chunk's MaxSim: (document id, score,
        payload). ``q_vectors`` (Q, Lq, dim) float32, ``q_mask`` (Q, Lq). With ``first_stage``
        (and a MUVERA vector in the collection), ``candidates`` points (default max(100, 10 k))
        come from the MUVERA HNSW search and are reranked by MaxSim; without, every point is
        scored exactly."""
        from qdrant_client import models

        encoder = self.settings.encoder() if first_stage else None
        condition = None
        if filter is not None:
            checked = Filter(filter)
            condition = to_qdrant_filter(checked)
            self.check_fields(checked)
        out = []
        for vectors, mask in zip(np.asarray(q_vectors, dtype=np.float32), np.asarray(q_mask, dtype=bool)):
            tokens = vectors[mask]
            if encoder is None:  # every point by exact MaxSim, each document's best chunk
                groups = self.client.query_points_groups(
                    self.collection, group_by="document_id", query=tokens.tolist(), using=TOKENS,
                    query_filter=condition, limit=k, group_size=1, with_payload=True,
                    search_params=models.SearchParams(exact=True))
                out.append([(g.id, float(g.hits[0].score), g.hits[0].payload) for g in groups.groups])
                continue
            # the MUVERA candidates reranked by MaxSim; each document keeps its best chunk here
            # (Qdrant's local mode ignores a prefetch under query_points_groups)
            limit = candidates or max(100, 10 * k)
            points = self.client.query_points(
                self.collection, prefetch=models.Prefetch(query=encoder.encode_query(tokens).tolist(),
                                                          using=FIRST_STAGE, limit=limit, filter=condition),
                query=tokens.tolist(), using=TOKENS, query_filter=condition, limit=limit, with_payload=True).points
            best: dict[str, tuple[str, float, dict]] = {}
            for point in points:  # (best first)
                best.setdefault(point.payload["document_id"], (point.payload["document_id"], float(point.score),
                                                               point.payload))
            out.append(list(best.values())[:k])
        return out


def to_qdrant_filter(spec: Mapping | Filter):
    """A maxsim filter (:mod:`maxsim.index.filters`) as a Qdrant ``Filter`` over the payload,
    meaning what it means on maxsim's own index: metadata fields under ``metadata.``, ``id`` as
    ``document_id``; a number equals by value (a range from it to itself, so 1.0 matches 1), a
    list-valued field matches on any element. Ranges over texts are compared as dates (Qdrant
    has no text ranges); a text that is no date is refused."""
    from qdrant_client import models

    condition = spec if isinstance(spec, Filter) else Filter(spec)  # checked as for maxsim's own index
    must, must_not = [], []
    for key, op, value in condition.conditions:
        field_key = "document_id" if key == "id" else f"metadata.{key}"
        if op in ("eq", "ne", "in"):
            (must if op != "ne" else must_not).append(_member(models, field_key, value if op == "in" else [value]))
        elif isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise SettingsError(f"filter field {key!r}: Qdrant compares texts in ranges only as dates, and "
                                    f"{value!r} is no ISO date") from None
            must.append(models.FieldCondition(key=field_key, range=models.DatetimeRange(**{op: value})))
        else:
            must.append(models.FieldCondition(key=field_key, range=models.Range(**{op: value})))
    return models.Filter(must=must or None, must_not=must_not or None)


def _member(models, key: str, values: list):
    """The condition that the field (or one of its elements) equals one of ``values``."""
    options = []
    texts = [v for v in values if isinstance(v, str)]
    if texts:
        options.append(models.FieldCondition(key=key, match=models.MatchAny(any=texts) if len(texts) > 1
                                             else models.MatchValue(value=texts[0])))
    for value in values:
        if value is None:
            options.append(models.IsNullCondition(is_null=models.PayloadField(key=key)))
        elif isinstance(value, bool):
            options.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
        elif isinstance(value, (int, float)):
            options.append(models.FieldCondition(key=key, range=models.Range(gte=value, lte=value)))
    return options[0] if len(options) == 1 else models.Filter(should=options)


def fields_present(client, collection: str, fields: set[str]) -> set[str]:
    """Which of the metadata ``fields`` (dotted paths) some point of the collection has."""
    from qdrant_client import models

    present = set()
    for field in fields:
        has = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=f"metadata.{field}"))])
        if client.count(collection, count_filter=has, exact=False).count:
            present.add(field)
    return present


def export_index(data, client_or_url, collection: str, storage: str = "float16", first_stage: bool = True,
                 muvera: Mapping | None = None, overwrite: bool = False, block: int = 1024,
                 show_progress: bool = False) -> QdrantIndex:
    """Write every live document of a maxsim index (:class:`maxsim.index.IndexData`) into a new
    Qdrant collection: its chunks' token vectors as the index stores them (centroid plus decoded
    residual, so as approximate as the index's own; nothing is encoded again), text and
    metadata. The collection records the index's model, so :meth:`Retriever.from_qdrant` loads it."""
    from dataclasses import asdict

    from maxsim.progress import progress

    backend = QdrantIndex(connect(client_or_url), collection)
    encoder = Muvera(dim=data.dim, **dict(muvera or {})) if first_stage else None
    settings = data.settings
    chunking = {"split_documents": settings.split_documents, "max_document_tokens": settings.max_document_tokens}
    backend.create(QdrantSettings(data.dim, settings.model_digest, settings.model_path, storage,
                                  None if encoder is None else asdict(encoder),
                                  (settings.model_settings or {}) | chunking), overwrite=overwrite)
    bar = progress(data.n_documents, "exporting to Qdrant", "documents", show_progress)
    numbers, records = [], []

    def flush() -> None:
        chunks = data.chunks_of(numbers)
        vectors, lengths = data.decompress(chunks)
        local = {n: i for i, n in enumerate(numbers)}
        chunk_docs = np.array([local[int(n)] for n in data.chunk_documents(chunks)], dtype=np.int64)
        backend.upsert(records, vectors.numpy(), lengths.numpy(), chunk_docs, data.chunk_spans(chunks).tolist())
        bar.update(len(numbers))
        numbers.clear()
        records.clear()

    try:
        for number, record in data.iter_documents():
            numbers.append(number)
            records.append(record)
            if len(numbers) == block:
                flush()
        if numbers:
            flush()
    finally:
        bar.close()
    return backend
