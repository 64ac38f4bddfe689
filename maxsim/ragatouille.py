"""RAGatouille's API over maxsim: ``from maxsim.ragatouille import RAGTrainer, RAGPretrainedModel``.

A translation only (RAGatouille 0.0.9.post2's calls, arguments, return values and files), with
everything done by maxsim underneath: :func:`maxsim.prepare_training_data`, :class:`Trainer`,
:class:`Retriever` and the index. What differs from RAGatouille, on purpose: ``train`` returns
the best checkpoint (a dev slice is held out when there are enough queries), training runs on a
CPU or one GPU in the calling process (a notebook is fine), mining honours the minimum rank,
ranks are 1-based everywhere (0-based with ``zero_index_ranks``), and clearing encodings does
not sleep. See the README's migration section for what is not carried over.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from maxsim.data.batches import global_batches
from maxsim.data.jsonl import read_jsonl
from maxsim.data.mining import BM25_LANGUAGES
from maxsim.data.prepare import prepare_training_data
from maxsim.data.training_folder import TrainingData, document_text
from maxsim.errors import SettingsError
from maxsim.files import atomic_write_text
from maxsim.ids import normalise
from maxsim.index import IndexData, best_chunks, index_lock, is_index, search
from maxsim.limits import check_name
from maxsim.model import ColBERT
from maxsim.model.checkpoint import resolve_model_path
from maxsim.model.formats import detect_format
from maxsim.ranking import Ranking
from maxsim.retriever import Hit, Retriever, check_k
from maxsim.training import TrainConfig, Trainer

logger = logging.getLogger(__name__)

#: the maxsim training folder inside ``data_out_path``, beside RAGatouille's three files
MAXSIM_DATA = "maxsim"

#: RAGatouille's side files are one JSON each, rewritten whole: an add or a delete refreshes them
#: while the index holds at most this many passages (about a second of writing); past it, they
#: are removed with a warning (:func:`write_side_files` writes them again on demand), so that an
#: add costs what it adds, not what the index holds
SIDE_FILES_MAX_PASSAGES = 100_000

#: the side files, in the index folder
SIDE_FILES = ("collection.json", "pid_docid_map.json", "docid_metadata_map.json")
#: fewer prepared queries than this: no dev slice, and ``train`` returns the last checkpoint
MIN_QUERIES_FOR_DEV = 20
DEV_FRACTION = 0.1


class _DefaultSplitter:
    """Stands for RAGatouille's default splitter (llama-index's sentence splitter): maxsim splits
    documents into windows of ``max_document_length`` tokens instead."""

    def __repr__(self) -> str:
        return "llama_index_sentence_splitter"


llama_index_sentence_splitter = _DefaultSplitter()


def _device(n_gpu: int) -> str:
    import torch

    return "cuda" if n_gpu != 0 and torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- training
class RAGTrainer:
    """Fine-tune or train a ColBERT model in a few lines, as RAGatouille's ``RAGTrainer``."""

    def __init__(self, model_name: str, pretrained_model_name: str, language_code: str = "en",
                 n_usable_gpus: int = -1) -> None:
        self.model_name = model_name
        self.pretrained_model_name = str(resolve_model_path(pretrained_model_name))  # a clear error when missing
        self.language_code = language_code
        self.n_usable_gpus = n_usable_gpus
        found = detect_format(Path(self.pretrained_model_name))
        logger.info("%s: %s", pretrained_model_name, f"a {found} ColBERT checkpoint, fine-tuned with its own settings"
                    if found else "a plain encoder: a new ColBERT is built on it")
        self.collection: list[str] = []
        self.queries: set[str] | None = None
        self.raw_data: list | None = None
        self.training_triplets: list[list[int]] = []
        self.data_dir: Path | None = None

    def add_documents(self, documents: list[str]) -> None:
        """Documents that are only candidates for mined negatives."""
        self.collection += list(documents)

    def prepare_training_data(
        self,
        raw_data: list[tuple] | list[list],
        all_documents: list[str] | None = None,
        data_out_path: str | Path = "./data/",
        num_new_negatives: int = 10,
        hard_negative_minimum_rank: int = 10,
        mine_hard_negatives: bool = True,
        hard_negative_model_size: str = "small",
        pairs_with_labels: bool = False,
        positive_label: int | str = 1,
        negative_label: int | str = 0,
    ) -> str | Path:
        """Pairs, labelled pairs or triplets (a passage may be a str, a list of str or a dict with
        "content") into a maxsim training folder (``data_out_path/maxsim``) and RAGatouille's
        three files beside it; returns ``data_out_path``.

        Negatives are mined with BM25 in ``language_code`` from ranks ``hard_negative_minimum_rank``
        on (dense mining with the base model for a language BM25 has no stemmer for), or drawn
        at random with ``mine_hard_negatives=False``.
        """
        kind = _raw_kind(raw_data, pairs_with_labels, positive_label, negative_label)
        rows = _rows(raw_data, kind)
        self.raw_data = raw_data
        if hard_negative_model_size != "small":
            logger.info("hard_negative_model_size=%r is RAGatouille's dense miner's size; maxsim mines with BM25",
                        hard_negative_model_size)
        mining: dict[str, Any] = {"mine": "none"}
        if mine_hard_negatives and self.language_code in BM25_LANGUAGES:
            mining = {"mine": "bm25", "bm25_language": self.language_code}
        elif mine_hard_negatives:
            logger.warning("BM25 has no stemmer for %r: mining negatives densely with %s", self.language_code,
                           self.pretrained_model_name)
            mining = {"mine": "dense", "miner_model": self.pretrained_model_name}
        documents = [d for d in self.collection + list(all_documents or []) if isinstance(d, str) and d.strip()]
        out = Path(data_out_path)
        prepare_training_data(
            [rows], out / MAXSIM_DATA, all_documents=documents, kind=kind, negatives=num_new_negatives,
            min_rank=hard_negative_minimum_rank, positive_labels=(str(positive_label),),
            negative_labels=(str(negative_label),), **mining)
        self.data_dir = out
        # every query of raw_data, as RAGatouille keeps them, also one whose pairs are all negative
        asked = list(dict.fromkeys(str(row[0]).strip() for row in raw_data))
        self.queries, self.collection, self.training_triplets = _write_ragatouille_files(out, asked)
        return data_out_path

    def train(
        self,
        batch_size: int = 32,
        nbits: int = 2,
        maxsteps: int = 500_000,
        use_ib_negatives: bool = True,
        learning_rate: float = 5e-6,
        dim: int | None = None,
        doc_maxlen: int | None = None,
        use_relu: bool = False,
        warmup_steps: int | Literal["auto"] = "auto",
        accumsteps: int = 1,
        **maxsim_options,
    ) -> str:
        """Train on the prepared data; returns the path (str) of the best checkpoint.

        One pass over the data, or ``maxsteps`` steps if that is fewer (RAGatouille's meaning).
        ``dim`` and ``doc_maxlen`` default to the base checkpoint's own (128 and 256 for a new
        ColBERT). A dev slice (10%) is held out by itself when there are at least
        :data:`MIN_QUERIES_FOR_DEV` queries, and the best checkpoint on it is returned; with
        fewer, the last one (and the log says why). Other keyword arguments (``epochs``,
        ``dev_fraction``, ``eval_every``, ``output``, ...) are :class:`TrainConfig` fields.
        """
        if self.data_dir is None:
            raise SettingsError("no training data: call prepare_training_data(...) first")
        if use_relu:
            raise SettingsError("use_relu=True is not supported: maxsim's projection is linear, as colbert-ai's "
                                "default")
        logger.info("nbits=%d is an index setting: pass it when indexing (RAGPretrainedModel.index uses 2)", nbits)
        values: dict[str, Any] = {
            "data": self.data_dir / MAXSIM_DATA, "base_model": self.pretrained_model_name,
            "output": Path(".ragatouille") / "colbert" / "none" / self.model_name /
            datetime.datetime.now().strftime("%Y-%m-%d_%H.%M.%S"),
            "batch_size": batch_size, "use_ib_negatives": use_ib_negatives, "learning_rate": learning_rate,
            "dim": dim, "doc_maxlen": doc_maxlen, "warmup_steps": warmup_steps, "accumulation_steps": accumsteps,
        }
        values.update(maxsim_options)
        values = {k: v for k, v in values.items() if v is not None}
        self._plan(values, maxsteps)
        config = TrainConfig(**values)
        gpus = self._gpus()
        if gpus > 1:
            return str(_torchrun(config, gpus))
        return str(Trainer(config).train())

    def _plan(self, values: dict, maxsteps: int) -> None:
        """A dev slice when there are enough queries, one epoch or ``maxsteps``, a few validations."""
        data = TrainingData.load(values["data"], values.get("nway", 2))
        n_queries = len({e.query for e in data.examples})
        if not {"dev_fraction", "dev_data"} & set(values):
            if n_queries >= MIN_QUERIES_FOR_DEV:
                values["dev_fraction"] = DEV_FRACTION
                logger.info("holding out %d%% of the %d queries as a dev set to choose the best checkpoint",
                            round(100 * DEV_FRACTION), n_queries)
            else:
                logger.warning("only %d queries: too few for a dev slice (%d needed), so train() returns the last "
                               "checkpoint, not the best", n_queries, MIN_QUERIES_FOR_DEV)
        kept = len(data.examples) - round(values.get("dev_fraction", 0) * n_queries)
        steps = len(global_batches(range(max(1, kept)), values["batch_size"], 1))
        if "max_steps" not in values and "epochs" not in values and maxsteps < steps:
            values["max_steps"] = maxsteps
        total = values.get("max_steps") or steps * values.get("epochs", 1)
        values.setdefault("eval_every", max(1, math.ceil(total / 4)))
        values.setdefault("save_every", values["eval_every"])

    def _gpus(self) -> int:
        import torch

        available = torch.cuda.device_count()
        wanted = available if self.n_usable_gpus == -1 else self.n_usable_gpus
        return max(0, min(wanted, available))


def _torchrun(config: TrainConfig, gpus: int, device: str = "cuda") -> Path:
    """Train under torchrun with ``gpus`` processes (one GPU each) in a subprocess, streaming its
    log; returns the checkpoint it printed last (the best)."""
    folder = Path(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as handle:
        handle.write(config.model_copy(update={"device": device}).to_yaml())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "maxsim", "train", "--config", handle.name]
    logger.info("training with %d processes: %s", gpus, " ".join(command))
    last = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            last = line.strip() or last
    os.unlink(handle.name)
    if process.returncode != 0:
        raise RuntimeError(f"torchrun training failed (exit status {process.returncode}); its log is above")
    return Path(last)


def _raw_kind(raw_data, pairs_with_labels: bool, positive_label, negative_label) -> str:
    """The kind of ``raw_data`` by RAGatouille's rules, with its ValueErrors."""
    if not raw_data:
        raise ValueError("Raw data must be a list of pairs or triplets of strings.")
    sample = raw_data[0]
    if len(sample) == 2:
        kind = "pairs"
    elif len(sample) == 3:
        if pairs_with_labels:
            kind = "labelled"
            if sample[-1] not in [positive_label, negative_label]:
                raise ValueError(f"Invalid value for label: {sample}")
        else:
            kind = "triplets"
    else:
        raise ValueError("Raw data must be a list of pairs or triplets of strings.")
    for row in raw_data:
        if not isinstance(row[0], str):
            raise ValueError("Queries must be a strings.")
        if kind == "labelled" and row[2] not in [positive_label, negative_label]:
            raise ValueError(f"Label {row[2]} must correspond to either positive_label or negative_label!")
    return kind


def _passages(value) -> list[str]:
    """A passage as RAGatouille takes it: a str, a list of str, or a dict with "content"."""
    if isinstance(value, dict):
        return [value["content"]]
    if isinstance(value, (list, tuple)):
        return [v["content"] if isinstance(v, dict) else v for v in value]
    return [value]


def _rows(raw_data, kind: str) -> list[dict]:
    """RAGatouille rows as maxsim's (one row per labelled passage)."""
    if kind == "pairs":
        return [{"query": q, "positive": _passages(p)} for q, p in raw_data]
    if kind == "triplets":
        return [{"query": q, "positive": _passages(p), "negative": _passages(n)} for q, p, n in raw_data]
    return [{"query": q, "passage": text, "label": str(label)} for q, p, label in raw_data for text in _passages(p)]


def _write_ragatouille_files(out: Path, asked: list[str] = ()) -> tuple[set[str], list[str], list[list[int]]]:
    """RAGatouille's queries.train.colbert.tsv, corpus.train.colbert.tsv and
    triples.train.colbert.jsonl (``[query, positive, negative]`` line numbers) from the maxsim
    folder; returns (queries, collection, training_triplets) as RAGatouille's trainer holds them.
    ``asked``: the query texts of the raw data; those without a positive (no triple) are kept
    too, after the others, as RAGatouille keeps every query."""
    folder = out / MAXSIM_DATA
    queries = {str(o["_id"]): o["text"] for _, o in read_jsonl(folder / "queries.jsonl")}
    known = {normalise(q) for q in queries.values()}
    unpaired = dict.fromkeys(q for q in asked if normalise(q) not in known)
    queries.update({f"unpaired-{i}": text for i, text in enumerate(unpaired)})
    documents = {str(o["_id"]): document_text(o.get("title"), o["text"])
                 for _, o in read_jsonl(folder / "corpus.jsonl")}
    query_index = {q: i for i, q in enumerate(queries)}
    document_index = {d: i for i, d in enumerate(documents)}
    triplets = []
    for _, line in read_jsonl(folder / "triples.jsonl"):
        q = query_index[str(line["query_id"])]
        for p in line["positive_ids"]:
            triplets += [[q, document_index[str(p)], document_index[str(n)]] for n in line["negative_ids"]]

    def tsv(texts) -> str:
        return "".join(f"{i}\t{t.replace(chr(9), ' ').replace(chr(10), ' ')}\n" for i, t in enumerate(texts))

    atomic_write_text(out / "queries.train.colbert.tsv", tsv(queries.values()))
    atomic_write_text(out / "corpus.train.colbert.tsv", tsv(documents.values()))
    atomic_write_text(out / "triples.train.colbert.jsonl", "".join(json.dumps(t) + "\n" for t in triplets))
    return set(queries.values()), list(documents.values()), triplets


# ----------------------------------------------------------------------------- using a model
class RAGPretrainedModel:
    """A ColBERT model and the index it searches, as RAGatouille's ``RAGPretrainedModel``."""

    def __init__(self, retriever: Retriever, index_root: str | Path | None = None) -> None:
        self.retriever = retriever
        self.index_root = Path(index_root if index_root is not None else ".ragatouille/")
        self.model_name = retriever.model_path
        self._in_memory: list[dict] = []

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, n_gpu: int = -1, verbose: int = 1,
                        index_root: str | None = None) -> RAGPretrainedModel:
        """A ColBERT checkpoint (maxsim, colbert-ai or PyLate format, a folder or a hub name); a
        plain encoder gets a new projection, with a warning that it is untrained."""
        path = resolve_model_path(pretrained_model_name_or_path)
        if detect_format(path) is None:
            logger.warning("%s is not a ColBERT checkpoint: it gets a new, untrained projection (train it first, "
                           "or load a ColBERT checkpoint)", pretrained_model_name_or_path)
        return cls(Retriever(ColBERT.from_pretrained(path, device=_device(n_gpu))), index_root)

    @classmethod
    def from_index(cls, index_path: str | Path, n_gpu: int = -1, verbose: int = 1) -> RAGPretrainedModel:
        """An index (and the model that built it); the index root is two folders above it."""
        index_path = Path(index_path)
        retriever = Retriever.from_index(index_path, device=_device(n_gpu))
        return cls(retriever, index_path.parent.parent.parent)

    # ---------------------------------------------------------------- indexes
    def _index_path(self, index_name: str | None) -> Path:
        if index_name is None:
            if self.retriever.index_path is not None:
                return self.retriever.index_path
            index_name = f"{Path(str(self.model_name or 'model')).name}new_index"
            logger.info("no index_name given: using %s", index_name)
        root = self.index_root / "colbert" / "indexes"
        return root / check_name(index_name, "index_name", root)

    def _use_index(self, index_name: str | None) -> None:
        """Switch to the index called ``index_name`` (if another), and pick up others' writes."""
        if index_name is not None and self._index_path(index_name) != self.retriever.index_path:
            data = IndexData.load(self._index_path(index_name))
            self.retriever.index_data, self.retriever.index_path = data, self._index_path(index_name)
        self.retriever.refresh()

    def index(
        self,
        collection: list[str],
        document_ids: list | None = None,
        document_metadatas: list[dict] | None = None,
        index_name: str | None = None,
        overwrite_index: bool | str = True,
        max_document_length: int = 256,
        split_documents: bool = True,
        document_splitter_fn: Callable | None = llama_index_sentence_splitter,
        preprocessing_fn: Callable | list[Callable] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> str:
        """Index ``collection`` at ``<index_root>/colbert/indexes/<index_name>``; returns that path.

        ``overwrite_index``: True replaces an index there, "reuse" opens it instead, False refuses.
        """
        path = self._index_path(index_name)
        if overwrite_index == "reuse" and is_index(path):
            logger.info("reusing the index in %s", path)
            self._use_index(index_name)
            return str(path)
        texts, ids, metadata = _documents(collection, document_ids, document_metadatas, preprocessing_fn,
                                          split_documents and document_splitter_fn is not None, document_splitter_fn)
        if use_faiss:
            logger.info("use_faiss: maxsim's k-means always uses faiss")
        self.retriever.index(texts, path=path, document_ids=ids, metadata=metadata, split_documents=split_documents,
                             max_document_tokens=max_document_length, batch_size=bsize,
                             overwrite=overwrite_index is True)
        write_side_files(path)
        return str(path)

    def add_to_index(
        self,
        new_collection: list[str],
        new_document_ids: list | None = None,
        new_document_metadatas: list[dict] | None = None,
        index_name: str | None = None,
        split_documents: bool = True,
        document_splitter_fn: Callable | None = llama_index_sentence_splitter,
        preprocessing_fn: Callable | list[Callable] | None = None,
        bsize: int = 32,
        use_faiss: bool = False,
    ) -> None:
        """Add documents; ids already in the index are skipped (as RAGatouille does), and logged."""
        self._use_index(index_name)
        texts, ids, metadata = _documents(new_collection, new_document_ids, new_document_metadatas, preprocessing_fn,
                                          split_documents and document_splitter_fn is not None, document_splitter_fn)
        present = self.retriever.index_data.positions_of(ids)
        keep = [i for i, d in enumerate(ids) if d not in present]
        if len(keep) < len(ids):
            logger.warning("%d documents are already in the index and were skipped", len(ids) - len(keep))
        if keep:
            self.retriever.add([texts[i] for i in keep], [ids[i] for i in keep],
                               None if metadata is None else [metadata[i] for i in keep], batch_size=bsize)
        _refresh_side_files(self.retriever.index_path)

    def delete_from_index(self, document_ids: str | list, index_name: str | None = None) -> None:
        """Delete documents by id (a str is one id); ids not in the index are ignored."""
        self._use_index(index_name)
        wanted = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        present = self.retriever.index_data.positions_of([str(d) for d in wanted])
        known = [str(d) for d in wanted if str(d) in present]
        if known:
            self.retriever.delete(known)
        _refresh_side_files(self.retriever.index_path)

    # ---------------------------------------------------------------- search
    def search(self, query: str | list[str], index_name: str | None = None, k: int = 10, force_fast: bool = False,
               zero_index_ranks: bool = False, doc_ids: list | None = None, **kwargs):
        """The ``k`` best passages for a query (a list of dicts), or for each of a list of queries.

        Each result: ``content``, ``score``, ``rank``, ``document_id``, ``passage_id`` and, when the
        document has metadata, ``document_metadata``. ``doc_ids`` restricts the search to those
        documents (scored exactly); ``force_fast`` probes fewer centroids.
        """
        self._use_index(index_name)
        single = isinstance(query, str)
        texts = Retriever.checked_queries(query)
        check_k(k)
        if force_fast and ("ncells" in kwargs or "ndocs" in kwargs):
            raise SettingsError("force_fast sets ncells and ndocs itself: give force_fast=True, or ncells=/ndocs=, "
                                "not both")
        data = self.retriever.index_data
        q_vectors, q_mask = self.retriever.query_vectors(texts)
        if doc_ids is not None:
            positions = sorted(data.positions_of([str(d) for d in doc_ids]).values())
            chunk_ids = data.chunks_of(positions)
            ranking = Ranking.from_rows([best_chunks(data, q_vectors[i : i + 1], q_mask[i : i + 1], chunk_ids, k)
                                         for i in range(len(texts))], k)
        else:
            options = {"ncells": 1, "ndocs": max(2 * k, 32)} if force_fast else {}
            ranking = search(data, q_vectors, q_mask, k, **options, **kwargs)
        results = []
        for i, hits in enumerate(self.retriever.hits(ranking)):
            passages = ranking.row(i)[0].tolist()
            results.append([_result(hit, zero_index_ranks, passage_id=p) for hit, p in zip(hits, passages)])
        return results[0] if single else results

    def rerank(self, query: str | list[str], documents: list[str], k: int = 10, zero_index_ranks: bool = False,
               bsize: int | Literal["auto"] = "auto"):
        """``documents`` ordered by MaxSim to the query, best ``k``: dicts with ``content``,
        ``score``, ``rank`` and ``result_index`` (the position in ``documents``)."""
        single = isinstance(query, str)
        results = [[_result(h, zero_index_ranks, result_index=int(h.document_id), with_id=False)
                    for h in self.retriever.rerank(q, documents, k)] for q in Retriever.checked_queries(query)]
        return results[0] if single else results

    # ---------------------------------------------------------------- in memory
    def encode(self, documents: list[str], bsize: int | Literal["auto"] = "auto",
               document_metadatas: list[dict] | None = None, verbose: bool = True,
               max_document_length: int | Literal["auto"] = "auto") -> None:
        """Encode documents into memory (added to any encoded before) for :meth:`search_encoded_docs`."""
        if document_metadatas is not None and len(document_metadatas) != len(documents):
            raise ValueError("document_metadatas must be the same length as documents")
        start = len(self._in_memory)
        ids = [str(start + i) for i in range(len(documents))]
        self.retriever.encode(list(documents), ids, document_metadatas)
        self._in_memory += [{"content": d} for d in documents]

    def search_encoded_docs(self, query: str | list[str], k: int = 10, bsize: int = 32):
        """Search the encoded documents: dicts with ``content``, ``score``, ``rank``,
        ``result_index`` and, for a document encoded with metadata, ``document_metadata``."""
        single = isinstance(query, str)
        results = [[_result(h, False, result_index=int(h.document_id), with_id=False)
                    for h in self.retriever.search_encoded(q, k)] for q in ([query] if single else query)]
        return results[0] if single else results

    def clear_encoded_docs(self, force: bool = False) -> None:
        """Forget the encoded documents (at once: no 10-second wait)."""
        self.retriever.clear_encoded()
        self._in_memory = []

    # ---------------------------------------------------------------- LangChain
    def as_langchain_retriever(self, **kwargs):
        """A LangChain retriever over :meth:`search` (needs ``pip install maxsim[langchain]``)."""
        return _langchain().retriever_for(self, kwargs)

    def as_langchain_document_compressor(self, k: int = 5, **kwargs):
        """A LangChain document compressor over :meth:`rerank` (needs ``maxsim[langchain]``)."""
        return _langchain().compressor_for(self, k, kwargs)


def _langchain():
    try:
        import langchain_core  # noqa: F401
    except ImportError:
        raise SettingsError("the LangChain wrappers need langchain-core: pip install 'maxsim[langchain]'") from None
    from maxsim import ragatouille_langchain

    return ragatouille_langchain


def _result(hit: Hit, zero_index_ranks: bool, with_id: bool = True, **extra) -> dict:
    result = {"content": hit.content, "score": hit.score, "rank": hit.rank - 1 if zero_index_ranks else hit.rank}
    if with_id:
        result["document_id"] = hit.document_id
    result.update(extra)
    if hit.metadata is not None:
        result["document_metadata"] = hit.metadata
    return result


def _documents(collection, document_ids, document_metadatas, preprocessing_fn, custom_split: bool,
               splitter) -> tuple[list[str], list[str], list[dict] | None]:
    """Texts, ids and metadata with RAGatouille's checks and ValueErrors; uuids when no ids."""
    collection = list(collection)
    if document_ids is None:
        document_ids = [str(uuid.uuid4()) for _ in collection]
    else:
        document_ids = [document_ids] if isinstance(document_ids, str) else list(document_ids)
        if len(document_ids) != len(collection):
            raise ValueError("document_ids must be the same length as collection")
        if len(document_ids) != len(set(document_ids)):
            raise ValueError("document_ids must be unique")
        if any(not str(i).strip() for i in document_ids):
            raise ValueError("document_ids must not contain empty strings")
        if not all(isinstance(i, type(document_ids[0])) for i in document_ids):
            raise ValueError("All document_ids must be of the same type")
    if document_metadatas is not None and len(document_metadatas) != len(collection):
        raise ValueError("document_metadatas must be the same length as collection")
    if custom_split and splitter is not llama_index_sentence_splitter:
        raise SettingsError("a custom document_splitter_fn is not supported: maxsim splits documents into windows "
                            "of max_document_length tokens itself; split them beforehand and index the pieces "
                            "with their own ids, or pass split_documents=False")
    for function in [preprocessing_fn] if callable(preprocessing_fn) else list(preprocessing_fn or []):
        collection = [function(text) for text in collection]
    return collection, [str(i) for i in document_ids], None if document_metadatas is None else list(document_metadatas)


def _refresh_side_files(path: Path) -> None:
    """After an add or a delete: the side files rewritten, or, past
    :data:`SIDE_FILES_MAX_PASSAGES` passages, removed (never left out of step with the index)."""
    with index_lock(path):
        data = IndexData.load(path)
        passages = data.n_chunks
        if passages <= SIDE_FILES_MAX_PASSAGES:
            _write_side_files(path, data)
            return
        removed = [name for name in SIDE_FILES if (Path(path) / name).exists()]
        for name in removed:
            (Path(path) / name).unlink()
    if removed:
        logger.warning("%s: removed RAGatouille's side files (%s) instead of rewriting them whole for %d passages "
                       "on every add or delete; write them when needed with "
                       "maxsim.ragatouille.write_side_files(%r)", path, ", ".join(removed), passages, str(path))


def write_side_files(path: str | Path) -> None:
    """RAGatouille's side files in the index folder, from the index as it is now (under its lock):
    ``collection.json`` (each passage's text, by passage id), ``pid_docid_map.json`` and, when a
    document has metadata, ``docid_metadata_map.json``. Costs time in proportion to the index."""
    path = Path(path)
    with index_lock(path):
        _write_side_files(path, IndexData.load(path))


def _write_side_files(path: Path, data: IndexData) -> None:
    """:func:`write_side_files`, the lock held and the index loaded."""
    records = dict(data.iter_documents())
    chunks = data.chunks_of(sorted(records))  # the passages of documents not deleted
    owners = data.chunk_documents(chunks).tolist()
    spans = data.chunk_spans(chunks).tolist()
    passages = [records[d]["content"][start:end] for d, (start, end) in zip(owners, spans)]
    atomic_write_text(path / "collection.json", json.dumps(passages, ensure_ascii=False))
    pid_docid = {str(p): records[d]["id"] for p, d in zip(chunks.tolist(), owners)}
    atomic_write_text(path / "pid_docid_map.json", json.dumps(pid_docid, ensure_ascii=False))
    metadata = {d["id"]: d["metadata"] for d in records.values() if d["metadata"] is not None}
    if metadata:
        atomic_write_text(path / "docid_metadata_map.json", json.dumps(metadata, ensure_ascii=False))
    elif (path / "docid_metadata_map.json").exists():
        (path / "docid_metadata_map.json").unlink()


__all__ = ["RAGPretrainedModel", "RAGTrainer", "llama_index_sentence_splitter", "write_side_files"]
