"""Reading indexes of the previous format, ``maxsim-plaid-2`` (one folder of whole arrays).

Such an index is read whole, as before: every file checked against its sha256, the texts
decompressed, every array checked. It is served as one segment held in memory, and it is
converted to the current format (:mod:`maxsim.index.manifest`) by its first write (an add, a
delete or a compaction), which rewrites the folder once, atomically.

Files::

    index.json        settings, counts, ``files``: {name: sha256}
    centroids.npy, codec.npy, codes.npy, residuals.npy, doclens.npy, chunk_docs.npy, spans.npy
    documents.jsonl.bz2  {"id", "content", "metadata"} per document, in bzip2 streams
"""

from __future__ import annotations

import bz2
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maxsim.files import sha256_of

LEGACY_FORMAT = "maxsim-plaid-2"
LEGACY_ARRAYS = ("centroids", "codec", "codes", "residuals", "doclens", "chunk_docs", "spans")
LEGACY_DOCUMENTS = "documents.jsonl.bz2"


class Changed(Exception):
    """The index was being replaced while we read it: read it again."""


def read_legacy(path: Path, meta: dict, unchanged: Callable[[], bool], error: type[Exception]
                ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The arrays and documents of a ``maxsim-plaid-2`` index whose index.json is ``meta``,
    every file checked; raises :class:`Changed` when the folder was replaced meanwhile
    (``unchanged()`` false) and ``error`` when it is damaged."""
    expected = {f"{name}.npy" for name in LEGACY_ARRAYS} | {LEGACY_DOCUMENTS}
    if not isinstance(meta.get("files"), dict) or set(meta["files"]) != expected:
        raise error(f"{path / 'index.json'} is damaged (its file list is not {sorted(expected)}): rebuild the index")
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
                raise Changed
            raise error(f"{path / name} is missing, truncated or damaged (checksum mismatch): "
                        "rebuild the index, or restore the folder from a copy")
    if not unchanged():
        raise Changed
    arrays = {name: loaded[f"{name}.npy"] for name in LEGACY_ARRAYS}
    try:
        documents = [json.loads(x) for x in loaded[LEGACY_DOCUMENTS].splitlines()]
    except (ValueError, RecursionError) as err:
        raise error(f"{path / LEGACY_DOCUMENTS} is damaged ({type(err).__name__}): rebuild the index") from None
    check_documents(documents, path / LEGACY_DOCUMENTS, error)
    problems = array_problems(meta, arrays, documents)
    if problems:
        raise error(f"{path} is damaged ({'; '.join(problems)}): rebuild the index")
    return arrays, documents


def check_documents(documents: list, path: Path, error: type[Exception]) -> None:
    """Every stored document is ``{"id": str, "content": str, "metadata": dict or None}``."""
    for number, record in enumerate(documents, start=1):
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get("content"), str)
                and (record.get("metadata") is None or isinstance(record["metadata"], dict))):
            raise error(f"{path} is damaged (document {number} is not an object with a "
                        'text "id", a text "content" and a "metadata" object or null): rebuild the index')


#: the kind of number each array must hold ("i": signed or unsigned integers, "u": unsigned,
#: "f": floating point), and how many dimensions
LEGACY_KINDS = {"centroids": ("f", 2), "codec": ("f", 1), "codes": ("iu", 1), "residuals": ("u", 2),
               "doclens": ("iu", 1), "chunk_docs": ("iu", 1), "spans": ("iu", 2)}


def array_problems(meta: dict, arrays: dict[str, np.ndarray], documents: list) -> list[str]:
    """Refuse arrays that cannot be an index, each problem naming its file: the wrong kind of
    number or shape, values out of range (a negative code, a centroid that is not a number),
    or arrays that do not fit together (an edited index.json, files from two indexes). The
    checksums cannot catch these: they say only that the files are the ones index.json names."""
    problems = []
    for name, (kinds, ndim) in LEGACY_KINDS.items():
        array = arrays[name]
        if array.dtype.kind not in kinds or array.ndim != ndim:
            problems.append(f"{name}.npy holds {array.ndim}-d {array.dtype} values, not {ndim}-d "
                            f"{'floats' if kinds == 'f' else 'integers'}")
    if problems:  # (the checks below need the right kinds of number)
        return problems
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
    return problems

