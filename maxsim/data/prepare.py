"""From what users have (pairs, labelled pairs, triplets, BEIR folders) to a training folder.

:func:`prepare_training_data` reads every input, checks it (errors name the file and line),
merges duplicate texts and ids, mines negatives from a rank window, and writes the folder that
``maxsim train`` reads, with a ``manifest.json`` that says what went in and what came out. The
same inputs and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maxsim import process_group
from maxsim.data.bm25 import available_cpus
from maxsim.data.collection import Collection
from maxsim.data.errors import DataError
from maxsim.data.gather import RowErrors, gather_inputs
from maxsim.data.mining import (
    EXACT_SEARCH_LIMIT,
    BM25Miner,
    DenseMiner,
    IndexMiner,
    query_keys,
    query_window,
    random_negatives,
    sample_negatives,
)
from maxsim.data.settings import PrepareSettings
from maxsim.data.training_folder import document_text
from maxsim.data.training_output import check_output, write_output, write_training_folder
from maxsim.errors import SettingsError

logger = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- the whole job
def prepare_training_data(
    inputs: Sequence[str | Path | Sequence] | str | Path,
    output: str | Path,
    *,
    all_documents: Sequence[str] | None = None,
    corpus: Sequence[str | Path] = (),
    colbert_queries: str | Path | None = None,
    colbert_collection: str | Path | None = None,
    device: str = "auto",
    **options,
) -> dict:
    """Build a training folder from pairs, labelled pairs, triplets and/or BEIR folders.

    Parameters
    ----------
    inputs: files (.jsonl, .csv, .tsv, .parquet), BEIR folders, or Python lists of tuples or
        dicts (RAGatouille's ``raw_data``); a single path or list is one input.
    output: the folder to write: new, empty or an earlier prepare output, whose files (and only
        those) are replaced; an input may not lie inside it.
    all_documents: extra document texts that are only candidates for negatives.
    corpus: extra document files, also only candidates for negatives.
    colbert_queries, colbert_collection: colbert-ai's queries.tsv and collection.tsv, which the ids
        of colbert-ai triples inputs (``[qid, pid, ...]`` or ``[qid, [pid, score], ...]``) point into.
    device: where dense mining's model encodes (``auto``: a CUDA GPU where one is visible, in bf16
        autocast, else the CPU in float32; the two can order near-ties differently).
    options: the fields of :class:`PrepareSettings` (``mine``, ``negatives``, ``min_rank``, ...).

    Returns
    -------
    The manifest (also written to ``output/manifest.json``).
    """
    settings = PrepareSettings.checked(**options)
    if settings.mine == "dense":
        from maxsim.model import pick_device

        pick_device(device)  # a device that is not there fails now, not after reading the inputs
    inputs = _as_inputs(inputs)
    output = Path(output)
    check_output(output, [Path(i) for i in inputs if isinstance(i, (str, Path))] + [Path(c) for c in corpus]
                 + [Path(t) for t in (colbert_queries, colbert_collection) if t])

    dropped: Counter = Counter()
    tsvs = (Path(colbert_queries), Path(colbert_collection)) if colbert_queries and colbert_collection else None
    collection, described = gather_inputs(inputs, corpus, all_documents, settings, RowErrors(settings, dropped),
                                          tsvs)
    train_ids, dev_ids = split_dev(_queries_with_positives(collection, described, dropped), settings)
    doc_ids = list(collection.documents)
    mined, is_main = _mine(collection, train_ids, doc_ids, settings, device)
    triples = make_triples(collection, train_ids, doc_ids, mined.negatives, dropped, settings.max_lines_per_query)
    skew = skew_note(triples, settings.max_lines_per_query)
    if skew:
        mined.notes.append(skew)
    manifest = manifest_of(described, settings, collection, train_ids, dev_ids, doc_ids, mined, triples, dropped)
    if is_main:  # (under torchrun the other ranks only helped to mine)
        write_output(output, lambda folder: write_training_folder(
            folder, collection, train_ids, dev_ids, doc_ids, triples, manifest, settings.export))
    return manifest


def _mine(collection: Collection, train_ids: list[str], doc_ids: list[str], settings: PrepareSettings,
          device: str) -> tuple[Mined, bool]:
    """:func:`mine_negatives` in this process's place under torchrun (or alone): what was mined,
    and whether this process writes the folder (rank 0). Scored inputs mine none."""
    with process_group.joined(device if settings.mine == "dense" else "cpu") as context:
        mined = mine_negatives(collection, train_ids, doc_ids, settings if not collection.scores else
                               settings.model_copy(update={"negatives": 0}), device, context)
    if collection.scores:
        mined.notes.append("scored inputs: the negatives are the scored documents, none mined (a teacher would "
                           "have to score them: maxsim score --candidates N)")
    return mined, context.is_main


def manifest_of(described: list[dict], settings: PrepareSettings, collection: Collection, train_ids: list[str],
                dev_ids: list[str], doc_ids: list[str], mined: Mined, triples: list[dict], dropped: Counter) -> dict:
    """What ``manifest.json`` says: the inputs, the settings, the counts, what was dropped or
    merged and how negatives were mined."""
    return {
        "format": "maxsim training folder v1",
        "inputs": described,
        "settings": settings.manifest_entry(),
        "seed": settings.seed,
        "counts": {
            "queries": len(train_ids),
            "documents": len(doc_ids),
            "positives": sum(len(collection.positives[q]) for q in train_ids),
            "given_negatives": sum(len(collection.negatives.get(q, {})) for q in train_ids),
            "mined_negatives": sum(len(v) for v in mined.negatives.values()),
            "triples": len(triples),
            "dev_queries": len(dev_ids),
        },
        "dropped": dict(sorted((k, v) for k, v in dropped.items() if v)),
        "merged": dict(sorted(collection.merged.items())),
        "mining": {
            "method": settings.mine,
            "window_requested": [settings.min_rank, settings.max_rank],
            "window_counts": "ranks counted without the query's own positives",
            "smaller_windows": mined.windows,
            "dropped_by_false_negative_margin": mined.margin_dropped,
            "notes": mined.notes,
        },
    }


def _as_inputs(inputs) -> list:
    """A list of inputs: a single path, or one Python list of rows, becomes a list of one."""
    if isinstance(inputs, (str, Path)):
        return [inputs]
    if inputs and not isinstance(inputs[0], (str, Path)) and not (
            isinstance(inputs[0], list) and inputs[0] and isinstance(inputs[0][0], (tuple, list, dict))):
        return [inputs]  # one Python list of rows (tuples or dicts), not a list of inputs
    return list(inputs)


def _queries_with_positives(collection: Collection, described: list[dict], dropped: Counter) -> list[str]:
    """The queries that have a positive; a query's known positives are removed from its given
    negatives on the way."""
    for qid, negs in collection.negatives.items():
        for did in list(negs):
            if did in collection.positives.get(qid, {}):
                del negs[did]
                dropped["given negative that is also a positive"] += 1
    query_ids = [q for q in collection.queries if collection.positives.get(q)]
    dropped["query without a positive"] += len(collection.queries) - len(query_ids)
    if not query_ids:
        raise DataError(described[0]["input"] if described else "<inputs>", None, "no query has a positive",
                        "give (query, positive) pairs, positive labels or a qrels split")
    return query_ids


def split_dev(query_ids: list[str], settings: PrepareSettings) -> tuple[list[str], list[str]]:
    """(training query ids, dev query ids): ``dev_fraction`` of the queries, chosen by seed."""
    dev_ids: list[str] = []
    if settings.dev_fraction:
        n_dev = int(round(settings.dev_fraction * len(query_ids)))
        if not 0 < n_dev < len(query_ids):
            raise SettingsError(f"--dev-fraction {settings.dev_fraction} leaves {n_dev} of {len(query_ids)} "
                             "queries for dev")
        order = np.random.default_rng(settings.seed).permutation(len(query_ids))
        dev_ids = [query_ids[i] for i in np.sort(order[:n_dev]).tolist()]  # in input order
    dev_set = set(dev_ids)
    return [q for q in query_ids if q not in dev_set], dev_ids


@dataclass
class Mined:
    """What mining gave: corpus positions of each query's negatives, how many queries got a
    smaller window than asked for (and by how much), the candidates the false-negative margin
    dropped, and notes for the manifest."""

    negatives: dict[str, list[int]]
    windows: dict
    margin_dropped: int
    notes: list[str]


def mine_negatives(collection: Collection, train_ids: list[str], doc_ids: list[str], settings: PrepareSettings,
                   device: str = "auto", context: process_group.Context | None = None) -> Mined:
    """``settings.negatives`` negatives per training query from the miner's rank window (a dense
    miner's model on ``device``): each query ranked as deep as its window needs (``max_rank``
    plus its own positives, which are not counted), a block of queries at a time, so that memory
    holds one block's rankings. Under torchrun (``context`` of several ranks) dense mining shares
    the documents out: each rank scores its own, on its own device, and every rank gets the
    merged ranking (the same as one process's, to float rounding)."""
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    positives_of = {q: {doc_index[d] for d in collection.positives[q]} for q in train_ids}
    windows = {q: query_window(len(doc_ids), len(positives_of[q]), settings.min_rank, settings.max_rank,
                               settings.negatives) for q in train_ids}
    notes: list[str] = []
    started = time.perf_counter()
    mined: dict[str, list[int]] = {}
    margin_dropped = 0
    if settings.negatives > 0 and train_ids:
        if settings.mine == "none":
            for q in train_ids:
                mined[q] = random_negatives(len(doc_ids), positives_of[q], settings.negatives, _rng(settings.seed, q))
        else:
            doc_texts = [document_text(*collection.documents[d]) for d in doc_ids]
            miner = _miner(doc_texts, settings, notes, device, context or process_group.Context())
            del doc_texts
            with_floor = settings.false_negative_margin is not None
            block = getattr(miner, "query_block", len(train_ids))
            if isinstance(miner, DenseMiner):
                miner.keep_documents = len(train_ids) > block  # encoded once for every block
            for start in range(0, len(train_ids), block):
                ids = train_ids[start : start + block]
                known = [sorted(positives_of[q]) for q in ids]
                depths = [min(len(doc_ids), settings.max_rank + len(p)) for p in known]
                ranking = miner.rank([collection.queries[q] for q in ids], depths, known if with_floor else None)
                chosen, lost = sample_negatives(ranking, known, np.array([windows[q] for q in ids]),
                                                settings.negatives, query_keys(settings.seed, ids),
                                                settings.false_negative_margin)
                mined.update(zip(ids, (c.tolist() for c in chosen)))
                margin_dropped += int(lost.sum())
        logger.info("mined negatives (%s) for %d queries in %.2f s", settings.mine, len(train_ids),
                    time.perf_counter() - started)
    shrunk = window_report(windows, settings)
    if shrunk["queries"]:
        notes.insert(0, f"{shrunk['queries']} of {len(train_ids)} queries have too few documents besides their "
                     f"positives for ranks [{settings.min_rank}, {settings.max_rank}]: their windows are smaller "
                     f"(down to {shrunk['smallest']})")
    short = sum(1 for q in train_ids if len(mined.get(q, [])) < settings.negatives)
    if short and settings.negatives:
        notes.append(f"{short} queries got fewer than {settings.negatives} mined negatives")
    return Mined(mined, shrunk, margin_dropped, notes)


def window_report(windows: dict[str, tuple[int, int]], settings: PrepareSettings) -> dict:
    """How many queries got a smaller window than ``[min_rank, max_rank]``, the smallest, and by how
    many ranks each end moved, on average and at most (over those queries)."""
    moved = [(settings.min_rank - low, settings.max_rank - high) for low, high in windows.values()
             if (low, high) != (settings.min_rank, settings.max_rank)]
    if not moved:
        return {"queries": 0}
    starts, ends = np.array(moved).T
    smallest = min(windows.values(), key=lambda w: (w[1] - w[0], w[1]))
    return {"queries": len(moved), "smallest": list(smallest),
            "min_rank_lowered_by": {"mean": round(float(starts.mean()), 2), "max": int(starts.max())},
            "max_rank_lowered_by": {"mean": round(float(ends.mean()), 2), "max": int(ends.max())}}


def _miner(doc_texts: list[str], settings: PrepareSettings, notes: list[str], device: str,
           context: process_group.Context):
    """The miner ``settings.mine`` asks for (bm25 or dense, exact or through an index; dense on
    ``device``, or under torchrun on each rank's own, each scoring its share exactly)."""
    if settings.mine == "bm25":
        if context.distributed:
            logger.warning("under torchrun only dense mining is shared out: every rank mines BM25 alone")
        return BM25Miner(doc_texts, settings.bm25_language, settings.workers or available_cpus())
    from maxsim.model import ColBERT

    if context.distributed:
        miner_model = ColBERT.from_pretrained(settings.miner_model, device=str(context.device))
        if settings.dense_search == "index":
            logger.warning("under torchrun each rank scores its share of the documents exactly: --dense-search "
                           "index is not used")
        notes.append(f"dense mining shared the documents out over {context.world_size} processes (exact MaxSim)")
        return DenseMiner(miner_model, doc_texts, settings.batch_size, context=context)
    miner_model = ColBERT.from_pretrained(settings.miner_model, device=device)
    logger.info("dense mining encodes on %s", miner_model.device)
    if miner_model.device.type == "cuda":
        notes.append("dense mining encoded on the GPU in bf16 autocast (a CPU encodes in float32: near-ties can "
                     "rank differently, so the negatives can differ)")
    use_index = settings.dense_search == "index" or (
        settings.dense_search == "auto" and len(doc_texts) > EXACT_SEARCH_LIMIT)
    if use_index:
        notes.append(f"dense mining searched a compressed index of the {len(doc_texts)} documents")
        return IndexMiner(miner_model, doc_texts, settings.batch_size)
    return DenseMiner(miner_model, doc_texts, settings.batch_size)


def make_triples(collection: Collection, train_ids: list[str], doc_ids: list[str], mined: dict[str, list[int]],
                 dropped: Counter, max_lines: int | None = None) -> list[dict]:
    """One triples line per (query, positive), or with ``max_lines`` at most that many per query,
    its positives spread over them; given negatives first, then mined ones."""
    triples = []
    for q in train_ids:
        negatives = list(collection.negatives.get(q, {})) + [doc_ids[p] for p in mined.get(q, [])]
        negatives = list(dict.fromkeys(negatives))
        if not negatives:
            dropped["query with no negative available"] += 1
            continue
        positives = list(collection.positives[q])
        lines = len(positives) if max_lines is None else min(max_lines, len(positives))
        for share in (positives[j::lines] for j in range(lines)):
            line = {"query_id": q, "positive_ids": share, "negative_ids": negatives}
            if collection.scores:
                missing = [d for d in share + negatives if (q, d) not in collection.scores]
                if missing:
                    raise DataError("<inputs>", None, f'query "{q}" has documents without a teacher score (e.g. '
                                    f'"{missing[0]}"): some inputs carry scores and others do not',
                                    "give scores for every input, or none")
                line["scores"] = [collection.scores[(q, d)] for d in share + negatives]
            triples.append(line)
    return triples


def skew_note(triples: list[dict], max_lines: int | None) -> str | None:
    """A note when one query makes up much of the training examples: at least 5% of the lines and
    20 times the median query's, with one line per positive (see ``--max-lines-per-query``)."""
    lines = Counter(t["query_id"] for t in triples)
    if not lines:
        return None
    query, most = lines.most_common(1)[0]
    median = float(np.median(list(lines.values())))
    if most < 0.05 * len(triples) or most < 20 * median:
        return None
    fix = "" if max_lines is not None else "; --max-lines-per-query N caps a query's weight at N lines"
    return (f'query "{query}" makes {most} of the {len(triples)} training examples ({100 * most / len(triples):.1f}%), '
            f"the median query {median:g}: it weighs that many times more in training{fix}")


def _rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator for one query that depends only on the seed and the query id."""
    return np.random.default_rng([seed, int(hashlib.sha256(query_id.encode()).hexdigest()[:15], 16)])


