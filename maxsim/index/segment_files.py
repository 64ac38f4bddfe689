"""A segment folder's files: the arrays it holds and their kinds, the check that their lengths
agree (made on every open), and its tombstone files (the positions of its deleted documents)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from maxsim.errors import MaxsimError
from maxsim.files import file_digest, fsync_file

#: the arrays of a segment, in the order they are written
SEGMENT_ARRAYS = ("codes", "residuals", "doclens", "chunk_docs", "spans", "ivf_cells", "ivf_offsets", "ivf_chunks")
#: arrays of segments written in cell order (older segments lack them)
ROW_ARRAYS = ("token_rows", "row_chunks")
#: the kind of number each array must hold ("iu": integers, "u": unsigned) and its dimensions
SEGMENT_KINDS = {"codes": ("iu", 1), "residuals": ("u", 2), "doclens": ("iu", 1), "chunk_docs": ("iu", 1),
                 "spans": ("iu", 2), "ivf_cells": ("iu", 1), "ivf_offsets": ("iu", 1), "ivf_chunks": ("iu", 1),
                 "token_rows": ("iu", 1), "row_chunks": ("iu", 1)}



class SegmentError(MaxsimError, ValueError):
    """A segment's files do not match what the manifest says of them."""


def check_counts(arrays: dict[str, np.ndarray], entry: dict, folder: Path) -> None:
    """The arrays' lengths agree with one another and with the manifest's counts."""
    n_tokens, n_chunks = entry["n_tokens"], entry["n_chunks"]
    problems = []
    if len(arrays["codes"]) != n_tokens or len(arrays["residuals"]) != n_tokens:
        problems.append(f"codes.npy and residuals.npy do not hold {n_tokens} tokens")
    for name in ROW_ARRAYS:
        if name in arrays and len(arrays[name]) != n_tokens:
            problems.append(f"{name}.npy does not hold {n_tokens} tokens")
    if ("token_rows" in arrays) != ("row_chunks" in arrays):
        problems.append("token_rows.npy and row_chunks.npy are not both there")
    for name in ("doclens", "chunk_docs", "spans"):
        if len(arrays[name]) != n_chunks:
            problems.append(f"{name}.npy does not hold {n_chunks} chunks")
    if arrays["spans"].ndim != 2 or arrays["spans"].shape[1] != 2:
        problems.append("spans.npy does not hold (start, end) pairs")
    if len(arrays["ivf_cells"]) and len(arrays["ivf_offsets"]) != len(arrays["ivf_cells"]) + 1:
        problems.append("ivf_offsets.npy does not hold one more entry than ivf_cells.npy")
    if not len(arrays["ivf_offsets"]):
        problems.append("ivf_offsets.npy is empty")
    if problems:
        raise SegmentError(f"{folder} is damaged ({'; '.join(problems)}): rebuild the index")


def write_tombstones(folder: Path, deleted: np.ndarray) -> dict:
    """Write a segment's deleted positions as a new file in its folder; returns the manifest's
    record of it."""
    name = f"deleted-{uuid.uuid4().hex}.npy"
    tmp = folder / f".tmp-{name}"
    np.save(tmp, np.asarray(deleted, dtype=np.int32), allow_pickle=False)
    fsync_file(tmp)
    os.replace(tmp, folder / name)
    return {"file": name, "count": int(len(deleted)), "bytes": (folder / name).stat().st_size,
            "sha256": file_digest(folder / name)}


def read_tombstones(folder: Path, record: dict) -> np.ndarray:
    """A segment's deleted positions, checked whole (the file grows with the deletions only)."""
    path = folder / record["file"]
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != record["sha256"]:
        raise SegmentError(f"{path} is damaged (checksum mismatch): restore the index from a copy")
    path_array = np.load(path, allow_pickle=False)
    if path_array.dtype.kind not in "iu" or path_array.ndim != 1 or len(path_array) != record["count"]:
        raise SegmentError(f"{path} does not hold {record['count']} document positions")
    return path_array.astype(np.int32)
