"""An index on disk and in memory: its files, its settings, one consistent version at a time.

Files (all listed with their sha256 in ``index.json``; a damaged or truncated file is an error
on load, never wrong results)::

    index.json        settings (:class:`IndexSettings`), counts, file checksums
    centroids.npy     (C, dim) float16
    codec.npy         (2 * 2**nbits - 1,) float32: bucket cutoffs then bucket values
    codes.npy         (T,) uint16 (int32 past 65,536 centroids) centroid id of each token
    residuals.npy     (T, dim * nbits / 8) uint8, packed bucket ids
    doclens.npy       (N,) int32 tokens per chunk
    chunk_docs.npy    (N,) int32 document position of each chunk
    spans.npy         (N, 2) int32 character span (start, end) of each chunk in its document
    documents.jsonl.bz2  {"id", "content", "metadata"} per document, bzip2-compressed in
                         streams of 512 documents (then of 64 for the rest) back to back (one
                         text to ``bz2.decompress``)

Writes go through :func:`index_lock` and an atomic folder swap; a load reads one version.
"""

from __future__ import annotations

import bz2
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from maxsim.errors import MaxsimError
from maxsim.files import (
    LockedError,
    atomic_directory,
    exclusive_lock,
    lock_path,
    old_path,
    recover_directory,
    remove_stale_temps_of,
    sha256_of,
)
from maxsim.index.codec import Codec, nearest_centroids
from maxsim.index.ivf import build_ivf, ranges

logger = logging.getLogger(__name__)

FORMAT = "maxsim-plaid-2"
ARRAYS = ("centroids", "codec", "codes", "residuals", "doclens", "chunk_docs", "spans")
#: what index.json holds besides the settings: written on save, not part of IndexSettings
RECORDED = ("format", "version", "n_documents", "n_chunks", "n_tokens", "n_centroids", "files")


class IndexLoadError(MaxsimError, ValueError):
    """An index that cannot be used: damaged, truncated, or made for another model."""


class IndexSettings(BaseModel):
    """How an index was built; saved in ``index.json`` (beside the counts and checksums)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    nbits: Literal[1, 2, 4] = 2
    dim: int
    #: the folder the model was loaded from (None: a model held only in memory)
    model_path: str | None = None
    #: :meth:`maxsim.model.ColBERT.digest` of the model that encoded the documents
    model_digest: str | None = None
    model_settings: dict | None = None
    split_documents: bool = True
    max_document_tokens: int
    seed: int = 0
    #: the precision documents were encoded in (``bfloat16``, ``float32``, ``bfloat16 autocast``)
    encoded_in: str | None = None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return sha256_of(handle).hexdigest()


def is_index(path: str | Path) -> bool:
    """Whether ``path`` is a maxsim index folder (of any format version)."""
    meta = Path(path) / "index.json"
    try:
        return str(json.loads(meta.read_text()).get("format", "")).startswith("maxsim-plaid")
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def index_lock(path: str | Path, timeout: float = 60.0) -> Iterator[None]:
    """The writer lock of an index: ``<path>.lock`` beside the folder, held while a process reads,
    changes and saves the index, so that two writers take turns and none loses the other's work.

    Whoever takes it puts back an index that a crash between a swap's two renames left as
    ``<path>.old``, and removes the temporary folders a writer killed mid-write left beside it (no
    writer can be at work while it is held).
    """
    with exclusive_lock(lock_path(path), f"the index {path}", timeout):
        recover_directory(path)
        for stale in remove_stale_temps_of(path):
            logger.info("removed %s, left by a write of %s that did not finish", stale, path)
        yield


#: index.json keys every index has
REQUIRED_KEYS = ("format", "files", "nbits", "dim", "split_documents", "max_document_tokens")
DOCUMENTS_FILE = "documents.jsonl.bz2"
#: documents per bzip2 stream of DOCUMENTS_FILE (bzip2 itself works in blocks of 900 kB, so a
#: block of about that much text costs little in size: +1.2% on SciFact's abstracts)
TEXT_BLOCK = 512
#: documents per stream after the last full TEXT_BLOCK: an add recompresses only the last of
#: these (about 13 ms for 64 SciFact abstracts, against 100 ms for 512); once they make up a
#: full block, they become one (+20% in size on these few documents only)
TAIL_BLOCK = 64


class CompressedTexts:
    """The JSON lines and compressed streams of the last save, reused by the next: a save that
    follows an add encodes only the new documents to JSON (a line is found by its document,
    which versions share and never change) and compresses only the blocks that changed (the
    last tail block or two) instead of every text (0.8 s for SciFact's 5,183 abstracts). Shared
    by the versions a process derives from one another (safe: a stream is found by its text)."""

    def __init__(self) -> None:
        self._streams: dict[str, bytes] = {}
        self._lines: dict[int, tuple[dict, str]] = {}  # id(document) -> (document, its line)

    def compress(self, documents: list[dict]) -> bytes:
        """The documents as JSON lines in bzip2 streams (:func:`text_blocks`), back to back."""
        lines = []
        for document in documents:
            known = self._lines.get(id(document))
            lines.append(known[1] if known is not None and known[0] is document
                         else json.dumps(document, ensure_ascii=False) + "\n")
        self._lines = {id(d): (d, line) for d, line in zip(documents, lines)}
        blocks = ["".join(lines[start:end]) for start, end in text_blocks(len(lines))] or [""]
        streams = {b: self._streams.get(b) or bz2.compress(b.encode("utf-8"), 9) for b in blocks}
        self._streams = streams
        return b"".join(streams[b] for b in blocks)


def text_blocks(n: int) -> list[tuple[int, int]]:
    """(start, end) of each stream's documents among ``n``: blocks of :data:`TEXT_BLOCK`, then
    the rest in blocks of :data:`TAIL_BLOCK`.

    >>> text_blocks(1100)
    [(0, 512), (512, 1024), (1024, 1088), (1088, 1100)]
    """
    full = n - n % TEXT_BLOCK
    starts = [*range(0, full, TEXT_BLOCK), *range(full, n, TAIL_BLOCK)]
    return [(start, min(start + (TEXT_BLOCK if start < full else TAIL_BLOCK), n)) for start in starts]


LOAD_ATTEMPTS = 50  # a load that meets a write in progress starts again, up to this many times


class _Changed(Exception):
    """The index was being replaced while we read it: read it again."""


@dataclass
class IndexData:
    """An index in memory. Chunks are the units stored and searched; documents own chunks.

    ``version`` changes with every save; a writer that finds another version on disk than the
    one it holds reloads before changing anything. Changes (:meth:`with_documents`,
    :meth:`without_documents`) return a new object and leave this one as it was.
    """

    settings: IndexSettings
    centroids: np.ndarray
    codec: Codec
    codes: np.ndarray
    residuals: np.ndarray
    doclens: np.ndarray
    chunk_docs: np.ndarray
    ivf: np.ndarray
    ivf_offsets: np.ndarray
    documents: list[dict] = field(default_factory=list)  # {"id", "content", "metadata"}
    spans: list[tuple[int, int]] = field(default_factory=list)
    version: str = ""
    texts: CompressedTexts = field(default_factory=CompressedTexts, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @cached_property
    def offsets(self) -> np.ndarray:
        """(N + 1,) int64 start of each chunk's tokens."""
        return np.concatenate([[0], np.cumsum(self.doclens, dtype=np.int64)])

    def arrays(self) -> dict[str, np.ndarray]:
        code_type = np.uint16 if len(self.centroids) <= 1 << 16 else np.int32
        return {"centroids": self.centroids.astype(np.float16), "codec": self.codec.to_array(),
                "codes": self.codes.astype(code_type), "residuals": self.residuals, "doclens": self.doclens,
                "chunk_docs": self.chunk_docs, "spans": np.asarray(self.spans, dtype=np.int32).reshape(-1, 2)}

    def save(self, path: str | Path) -> str:
        """Write every file to a new folder, then swap it in: a crash leaves the old index.

        The caller holds :func:`index_lock` (``Retriever`` does) and has checked that ``path`` may
        be replaced. Returns the new version, which this object takes.
        """
        path = Path(path)
        version = uuid.uuid4().hex
        with atomic_directory(path) as tmp:
            files = {}
            for name, array in self.arrays().items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                files[f"{name}.npy"] = None
            (tmp / DOCUMENTS_FILE).write_bytes(self.texts.compress(self.documents))
            files[DOCUMENTS_FILE] = None
            meta = self.settings.model_dump()
            meta.update(format=FORMAT, version=version, n_documents=len(self.documents), n_chunks=len(self.doclens),
                        n_tokens=int(self.doclens.sum()), n_centroids=int(len(self.centroids)),
                        files={name: _sha256(tmp / name) for name in sorted(files)})
            (tmp / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.version = version
        return version

    @classmethod
    def load(cls, path: str | Path) -> IndexData:
        """Read an index; every file is checked against the checksum index.json records.

        A load that meets a writer's swap reads again, so what comes back is always one version;
        an index left without its folder by a crash between the swap's two renames is put back
        from ``<path>.old`` first.
        """
        path = Path(path)
        for attempt in range(LOAD_ATTEMPTS):
            if not (path / "index.json").is_file() and old_path(path).is_dir():
                _recover_if_idle(path)
            try:
                return cls._load_once(path)
            except _Changed:
                time.sleep(min(0.01 * (attempt + 1), 0.2))
        raise IndexLoadError(f"{path} kept changing while it was read ({LOAD_ATTEMPTS} tries): "
                             "another process is writing it without pause; try again")

    @staticmethod
    def current_version(path: str | Path) -> str | None:
        """The version recorded in ``path/index.json`` now, or None if it cannot be read."""
        try:
            return json.loads((Path(path) / "index.json").read_bytes()).get("version")
        except (OSError, ValueError, AttributeError):
            return None

    @classmethod
    def _load_once(cls, path: Path) -> IndexData:
        meta_path = path / "index.json"
        try:
            raw = meta_path.read_bytes()
        except FileNotFoundError:
            if old_path(path).is_dir():
                raise _Changed from None  # a writer is between its two renames
            raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
        meta = _parse_meta(raw, meta_path, path)

        def unchanged() -> bool:
            try:
                return meta_path.read_bytes() == raw
            except FileNotFoundError:
                return False

        loaded = {}
        for name, digest in meta["files"].items():
            try:
                with (path / name).open("rb") as handle:
                    # hash and parse the same open file: a swap in between cannot mix versions
                    matches = sha256_of(handle).hexdigest() == digest
                    handle.seek(0)
                    if matches:
                        loaded[name] = (np.load(handle, allow_pickle=False) if name.endswith(".npy")
                                        else bz2.decompress(handle.read()).decode("utf-8"))
            except FileNotFoundError:
                matches = False
            if not matches:
                if not unchanged():
                    raise _Changed
                raise IndexLoadError(f"{path / name} is missing, truncated or damaged (checksum mismatch): "
                                     "rebuild the index, or restore the folder from a copy")
        if not unchanged():
            raise _Changed
        return cls._from_files(meta, loaded, path)

    @classmethod
    def _from_files(cls, meta: dict, loaded: dict, path: Path) -> IndexData:
        arrays = {name: loaded[f"{name}.npy"] for name in ARRAYS}
        try:
            documents = [json.loads(x) for x in loaded[DOCUMENTS_FILE].splitlines()]
        except (ValueError, RecursionError) as err:
            raise IndexLoadError(f"{path / DOCUMENTS_FILE} is damaged ({type(err).__name__}): rebuild the "
                                 "index") from None
        _check_documents(documents, path)
        _check_arrays(meta, arrays, documents, path)
        codes = arrays["codes"].astype(np.int64)
        ivf, ivf_offsets = build_ivf(codes, arrays["doclens"], len(arrays["centroids"]))
        settings = _settings(meta, path)
        return cls(settings=settings, centroids=arrays["centroids"].astype(np.float32),
                   codec=Codec.from_array(arrays["codec"], settings.nbits), codes=codes,
                   residuals=arrays["residuals"], doclens=arrays["doclens"], chunk_docs=arrays["chunk_docs"],
                   ivf=ivf, ivf_offsets=ivf_offsets, documents=documents,
                   spans=[tuple(span) for span in arrays["spans"].tolist()], version=meta.get("version", ""))

    # ------------------------------------------------------------------ changes
    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token vectors ((T, dim) float32) as this index stores them, with its centroids and
        codec: (centroid ids (T,) int64, packed residuals (T, dim * nbits / 8) uint8)."""
        codes = nearest_centroids(vectors, self.centroids).astype(np.int64)
        return codes, self.codec.encode(vectors - self.centroids[codes])

    def with_documents(self, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray, records: list[dict],
                       chunk_docs: np.ndarray, spans: list[tuple[int, int]]) -> IndexData:
        """A new index with documents added (existing centroids and codec).

        codes, residuals: the chunks' tokens back to back, from :meth:`compress`; doclens: (n,)
        tokens per chunk; chunk_docs: (n,) position of each chunk's document among ``records``.
        """
        all_codes = np.concatenate([self.codes, codes])
        all_doclens = np.concatenate([self.doclens, doclens.astype(np.int32)])
        ivf, ivf_offsets = build_ivf(all_codes, all_doclens, len(self.centroids))
        chunk_docs = np.concatenate([self.chunk_docs, (chunk_docs + len(self.documents)).astype(np.int32)])
        changed = replace(self, codes=all_codes, residuals=np.concatenate([self.residuals, residuals]),
                          doclens=all_doclens, chunk_docs=chunk_docs, ivf=ivf, ivf_offsets=ivf_offsets,
                          documents=self.documents + list(records), spans=self.spans + list(spans))
        if "token_scales" in self.__dict__:  # made already: only the new tokens' are new
            added = changed.scales_of(torch.arange(len(self.codes), len(all_codes)))
            changed.__dict__["token_scales"] = np.concatenate([self.token_scales, added])
        return changed

    def without_documents(self, positions: set[int]) -> IndexData:
        """A new index without some documents (by position) and their chunks; later ones move up."""
        keep_chunk = ~np.isin(self.chunk_docs, np.fromiter(positions, dtype=np.int64))
        keep_token = np.repeat(keep_chunk, self.doclens)
        new_position = np.cumsum([i not in positions for i in range(len(self.documents))]) - 1
        codes, doclens = self.codes[keep_token], self.doclens[keep_chunk]
        ivf, ivf_offsets = build_ivf(codes, doclens, len(self.centroids))
        changed = replace(self, codes=codes, residuals=self.residuals[keep_token], doclens=doclens,
                          chunk_docs=new_position[self.chunk_docs[keep_chunk]].astype(np.int32), ivf=ivf,
                          ivf_offsets=ivf_offsets,
                          documents=[d for i, d in enumerate(self.documents) if i not in positions],
                          spans=[s for s, keep in zip(self.spans, keep_chunk) if keep])
        if "token_scales" in self.__dict__:
            changed.__dict__["token_scales"] = self.token_scales[keep_token]
        return changed

    # ------------------------------------------------------------------ reading vectors
    def token_positions(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Positions (in codes/residuals) of every token of the given chunks, chunk after chunk."""
        return ranges(self.offsets[chunk_ids], self.doclens[chunk_ids])

    def decompress(self, chunk_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors of some chunks back to back, as stored (centroid + decoded residual,
        not renormalised): ((T, dim) float32, (n,) int64 tokens per chunk)."""
        lengths = torch.from_numpy(self.doclens[chunk_ids].astype(np.int64))
        return self.vectors_at(torch.from_numpy(self.token_positions(chunk_ids))), lengths

    def vectors_at(self, index: torch.Tensor) -> torch.Tensor:
        """Stored vectors (centroid + decoded residual) of the tokens at ``index`` ((T,) int64
        positions): (T, dim) float32."""
        vectors = self.centroid_vectors.index_select(0, self.codes_of(index))
        vectors += self.residual_vectors(index)
        return vectors

    def codes_of(self, index: torch.Tensor) -> torch.Tensor:
        """Centroid id of the tokens at ``index`` ((T,) int64 positions): (T,) int64."""
        return self._codes_t.index_select(0, index)

    def residual_vectors(self, index: torch.Tensor) -> torch.Tensor:
        """Decoded residuals of the tokens at ``index`` ((T,) int64 positions): (T, dim) float32."""
        packed = self._residuals_t.index_select(0, index).long()
        return torch.nn.functional.embedding(packed, self._table_t).reshape(len(index), -1)[:, : self.dim]

    @cached_property
    def token_scales(self) -> np.ndarray:
        """(T,) float32: 1 / norm of every stored token vector (centroid + decoded residual), by
        which exact scores treat them as the unit vectors they were encoded as. Made on first
        use (a pass over every token: about 0.1 s a million tokens on 2 cores, 4 bytes a token
        in memory) and carried through :meth:`with_documents` and :meth:`without_documents`."""
        return self.scales_of(torch.arange(len(self.codes)))

    def scales_of(self, positions: torch.Tensor, block: int = 1 << 16) -> np.ndarray:
        """1 / norm of the stored vectors of the tokens at ``positions`` ((T,) int64): (T,)
        float32, computed ``block`` tokens at a time."""
        scales = np.empty(len(positions), dtype=np.float32)
        for start in range(0, len(positions), block):
            norms = torch.linalg.vector_norm(self.vectors_at(positions[start : start + block]), dim=1).clamp_min_(1e-12)
            scales[start : start + block] = norms.reciprocal_().numpy()
        return scales

    @cached_property
    def centroid_vectors(self) -> torch.Tensor:
        """The centroids as a (C, dim) float32 tensor (made once per loaded version)."""
        return torch.from_numpy(np.ascontiguousarray(self.centroids, dtype=np.float32))

    @cached_property
    def _codes_t(self) -> torch.Tensor:
        return torch.from_numpy(self.codes.astype(np.int64))

    @cached_property
    def _residuals_t(self) -> torch.Tensor:
        return torch.from_numpy(self.residuals)

    @cached_property
    def _table_t(self) -> torch.Tensor:
        return torch.from_numpy(self.codec.table)


def _parse_meta(raw: bytes, meta_path: Path, path: Path) -> dict:
    """index.json, checked for the format and the keys every index has."""
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise IndexLoadError(f"{meta_path} is damaged ({err}): rebuild the index") from None
    if not isinstance(meta, dict):
        raise IndexLoadError(f"{meta_path} is damaged (not a JSON object): rebuild the index")
    if meta.get("format") != FORMAT:
        raise IndexLoadError(f"{path}: index format {meta.get('format')!r} is not {FORMAT!r}, the one this "
                             "maxsim reads: rebuild the index with `maxsim index`")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise IndexLoadError(f"{meta_path} is damaged (no {', '.join(missing)}): rebuild the index")
    expected = {f"{name}.npy" for name in ARRAYS} | {DOCUMENTS_FILE}
    if not isinstance(meta["files"], dict) or set(meta["files"]) != expected:
        raise IndexLoadError(f"{meta_path} is damaged (its file list is not {sorted(expected)}): rebuild the index")
    if meta["nbits"] not in (1, 2, 4):
        raise IndexLoadError(f"{meta_path} is damaged (nbits {meta['nbits']!r} is not 1, 2 or 4): rebuild the index")
    return meta


#: the kind of number each array must hold ("i": signed or unsigned integers, "u": unsigned,
#: "f": floating point), and how many dimensions
ARRAY_KINDS = {"centroids": ("f", 2), "codec": ("f", 1), "codes": ("iu", 1), "residuals": ("u", 2),
               "doclens": ("iu", 1), "chunk_docs": ("iu", 1), "spans": ("iu", 2)}


def _check_arrays(meta: dict, arrays: dict[str, np.ndarray], documents: list, path: Path) -> None:
    """Refuse arrays that cannot be an index, each problem naming its file: the wrong kind of
    number or shape, values out of range (a negative code, a centroid that is not a number),
    or arrays that do not fit together (an edited index.json, files from two indexes). The
    checksums cannot catch these: they say only that the files are the ones index.json names."""
    problems = []
    for name, (kinds, ndim) in ARRAY_KINDS.items():
        array = arrays[name]
        if array.dtype.kind not in kinds or array.ndim != ndim:
            problems.append(f"{name}.npy holds {array.ndim}-d {array.dtype} values, not {ndim}-d "
                            f"{'floats' if kinds == 'f' else 'integers'}")
    if problems:  # (the checks below need the right kinds of number)
        raise IndexLoadError(f"{path} is damaged ({'; '.join(problems)}): rebuild the index")
    nbits, dim = meta["nbits"], meta["dim"]
    centroids, codec, codes, doclens = arrays["centroids"], arrays["codec"], arrays["codes"], arrays["doclens"]
    chunk_docs, spans, residuals = arrays["chunk_docs"], arrays["spans"], arrays["residuals"]
    n_chunks = len(doclens)
    if centroids.shape[1] != dim:
        problems.append(f"centroids.npy holds {centroids.shape[1]}-dim centroids, not {dim}-dim")
    if not np.isfinite(centroids).all():
        problems.append("centroids.npy holds values that are not numbers (NaN or infinite)")
    if len(codec) != 2 * 2**nbits - 1:
        problems.append(f"codec.npy does not hold {2 * 2**nbits - 1} values for nbits {nbits}")
    elif not np.isfinite(codec).all() or (np.diff(codec[: 2**nbits - 1]) < 0).any():
        problems.append("codec.npy holds values that are not numbers, or bucket cutoffs out of order")
    if n_chunks and doclens.min() < 0:
        problems.append("doclens.npy holds a negative length")
    n_tokens = int(doclens.astype(np.int64).sum())
    if len(codes) != n_tokens or len(residuals) != n_tokens:
        problems.append(f"codes.npy and residuals.npy do not hold one row per token ({n_tokens} by doclens.npy)")
    if residuals.shape[1] != dim * nbits // 8:
        problems.append(f"residuals.npy rows are not {dim * nbits // 8} bytes")
    if len(codes) and (codes.min() < 0 or codes.max() >= len(centroids)):
        problems.append(f"codes.npy names a centroid outside 0..{len(centroids) - 1}")
    if len(chunk_docs) != n_chunks or len(spans) != n_chunks:
        problems.append("chunk_docs.npy and spans.npy do not hold one row per chunk")
    elif n_chunks and (chunk_docs.min() < 0 or chunk_docs.max() >= len(documents)):
        problems.append("chunk_docs.npy names a document that is not stored")
    if spans.shape[1] != 2:
        problems.append(f"spans.npy holds {spans.shape[1]} columns, not 2 (start, end)")
    elif len(spans) == n_chunks and n_chunks and not problems:
        lengths = np.array([len(d["content"]) for d in documents], dtype=np.int64)[chunk_docs]
        if (spans[:, 0] < 0).any() or (spans[:, 1] < spans[:, 0]).any() or (spans[:, 1] > lengths).any():
            problems.append("spans.npy holds a span outside its document's text")
    if problems:
        raise IndexLoadError(f"{path} is damaged ({'; '.join(problems)}): rebuild the index")


def _check_documents(documents: list, path: Path) -> None:
    """Every stored document is ``{"id": str, "content": str, "metadata": dict or None}``."""
    for number, record in enumerate(documents, start=1):
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get("content"), str)
                and (record.get("metadata") is None or isinstance(record["metadata"], dict))):
            raise IndexLoadError(f"{path / DOCUMENTS_FILE} is damaged (document {number} is not an object with a "
                                 'text "id", a text "content" and a "metadata" object or null): rebuild the index')


def _recover_if_idle(path: Path) -> None:
    """Put back ``<path>.old`` left by a crash between a swap's two renames, unless a writer is
    in the middle of its swap now (then the load waits for it)."""
    try:
        with index_lock(path, timeout=0):  # taking the lock recovers
            pass
    except LockedError:
        pass


def read_settings(path: str | Path) -> IndexSettings:
    """The settings of the index in ``path``, from its index.json alone (checked, arrays not read)."""
    path = Path(path)
    try:
        raw = (path / "index.json").read_bytes()
    except FileNotFoundError:
        raise IndexLoadError(f"{path} is not a maxsim index (no index.json)") from None
    return _settings(_parse_meta(raw, path / "index.json", path), path)


def _settings(meta: dict, path: Path) -> IndexSettings:
    """The settings part of index.json, typed; keys this maxsim does not know are logged."""
    unknown = sorted(set(meta) - set(RECORDED) - set(IndexSettings.model_fields))
    if unknown:
        logger.warning("%s/index.json has settings this maxsim does not know (%s): ignored", path, ", ".join(unknown))
    try:
        return IndexSettings.model_validate({k: v for k, v in meta.items() if k not in RECORDED})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise IndexLoadError(f"{path}/index.json is damaged ({problems}): rebuild the index") from None
