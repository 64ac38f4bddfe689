"""The one thread that runs the model and the index for the service, and the batches it answers."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maxsim.backends import Backend
from maxsim.backends.local import search_pool
from maxsim.errors import MaxsimError
from maxsim.fusion import Hybrid
from maxsim.retriever import Retriever
from maxsim.serve.schema import MAX_QUERIES, SearchRequest

logger = logging.getLogger(__name__)

#: how long a batch waits for the clients of the last one (seconds): see :class:`IndexWorker`
GATHER_S = 0.015


@dataclass
class _Search:
    queries: list[str]
    k: int
    ncells: int | None
    ndocs: int | None
    filter: dict | None = None
    hybrid: Hybrid | None = None
    future: Future = field(default_factory=Future)


@dataclass
class _Job:
    run: Callable[[], Any]
    future: Future = field(default_factory=Future)


class IndexWorker:
    """The one thread that runs the model and the index for the service: search batches, and the
    model's work for writes (:meth:`run`), in the order they arrive.

    Searches waiting together (up to ``max_queries`` queries) are answered as one batch: their
    queries encoded in one forward (one forward of 16 queries costs far less than 16 forwards of
    one), searched per (k, ncells, ndocs) on the threads of a :func:`~maxsim.index.search_pool`,
    on one index version (after picking up other processes' writes). A batch gathers the
    requests that wait, and when fewer wait than the last batch answered, waits up to
    ``gather_s`` for them: under load the clients just answered come back within milliseconds,
    and a batch that left without them would leave them to a next, small batch that costs
    nearly as much (with 16 clients on 2 cores, most batches were of one request). One client
    never waits: its last batch answered one request.

    One thread for all of the model's work also keeps torch's CPU threads fast: OpenMP keeps a
    pool of worker threads for every thread that has run parallel work, and once they outnumber
    the cores its workers stop spinning between parallel regions, so that each region waits for
    them to wake (a search 10 to 15% slower on 2 cores). The search pool's threads run torch on
    one thread each, so they start no OpenMP pool; :func:`load_retriever` loads without leaving
    one.
    """

    def __init__(self, retriever: Retriever, max_queries: int = MAX_QUERIES,
                 on_batch: Callable[[int], None] | None = None, gather_s: float = GATHER_S) -> None:
        self.retriever, self.max_queries, self.on_batch, self.gather_s = retriever, max_queries, on_batch, gather_s
        self._waiting: queue.SimpleQueue[_Search | _Job] = queue.SimpleQueue()
        self._pool = search_pool()  # the queries of a batch are searched on its threads
        #: set once the query encoder's traces are made: from then on a search is answered at speed
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="maxsim-index", daemon=True)
        self._thread.start()

    def search(self, queries: list[str], k: int, ncells: int | None = None, ndocs: int | None = None,
               filter: dict | None = None, hybrid: Hybrid | None = None) -> Future:
        """A future of the hits of each query (lists of ``Hit.to_dict()``)."""
        request = _Search(list(queries), k, ncells, ndocs, filter, hybrid)
        self._waiting.put(request)
        return request.future

    def run(self, job: Callable[[], Any]) -> Future:
        """A future of ``job()``, called on this worker's thread between two search batches."""
        request = _Job(job)
        self._waiting.put(request)
        return request.future

    def _warm_up(self) -> None:
        """Make the query encoder's traces (one query, several) and what the index makes on its
        first search (centroid groups and tables: about a second at a million passages) before
        the first requests, which wait behind this rather than one of them paying for it."""
        try:
            for n in (1, 2):
                self.retriever.query_vectors(["warm-up"] * n)
            self.retriever.search("warm-up", k=1, hybrid=False)
        except Exception:  # noqa: BLE001 - a request that meets the same error answers it
            logger.warning("warming up (query encoder, first search) failed", exc_info=True)

    def _serve(self) -> None:
        self._warm_up()
        try:
            held = f"{self.retriever.backend.location}, {self.retriever.document_count()} documents"
        except Exception as err:  # noqa: BLE001 - the service answers anyway; its requests meet the error
            held = f"the documents cannot be counted: {err}"
        logger.info("ready: searches are answered at speed (%s); %s", held, self.retriever.search_config().line())
        self.ready.set()
        held: _Search | _Job | None = None  # a job taken while gathering a batch: it runs next
        expected = 1  # requests the last batch answered: under load, their clients come back together
        while True:
            first, held = held or self._waiting.get(), None
            if isinstance(first, _Job):
                _settle(first.future, first.run)
                continue
            batch, count = [first], len(first.queries)
            deadline = time.monotonic() + self.gather_s
            while count < self.max_queries:
                wait = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    request = self._waiting.get(timeout=wait) if wait > 0 else self._waiting.get_nowait()
                except queue.Empty:
                    break
                if isinstance(request, _Job):
                    held = request
                    break
                batch.append(request)
                count += len(request.queries)
            expected = len(batch)
            if self.on_batch is not None:
                self.on_batch(count)
            self._answer(batch)

    def _answer(self, batch: list[_Search]) -> None:
        """Search a batch, each request failing alone: requests are checked before they are
        queued (:func:`create_app`), so what fails here is one group of requests that share their
        settings (its members get the error; the other groups are searched once, as planned) or
        one request's hits. Only if encoding the batch's queries fails (a bug, never bad input)
        is each request encoded alone, to find the one that fails; the rest are still searched
        together."""
        try:
            self.retriever.refresh()  # other processes' writes
            backend = self.retriever.backend.pinned()  # one index version a batch
            try:
                q_vectors, q_mask = self.retriever.query_vectors([q for r in batch for q in r.queries])
            except Exception as err:  # noqa: BLE001 - found request by request below
                if len(batch) == 1:
                    raise
                logger.warning("encoding a batch of %d requests failed (%s: %s): encoding each alone", len(batch),
                               type(err).__name__, err)
                batch, q_vectors, q_mask = self._encode_alone(batch)
                if not batch:
                    return
        except Exception as err:  # noqa: BLE001 - handed to the requests, which answer it as JSON
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
            return
        self._search(batch, backend, q_vectors, q_mask)

    def _encode_alone(self, batch: list[_Search]) -> tuple[list[_Search], torch.Tensor, torch.Tensor]:
        """Each request's queries encoded on their own; a request that fails gets its error.
        Returns the requests that encoded, and their vectors and masks back to back."""
        kept, vectors, masks = [], [], []
        for request in batch:
            try:
                v, m = self.retriever.query_vectors(request.queries)
            except Exception as err:  # noqa: BLE001 - this request's own error
                request.future.set_exception(err)
                continue
            kept.append(request)
            vectors.append(v)
            masks.append(m)
        if not kept:
            return [], torch.zeros(0), torch.zeros(0)
        return kept, torch.cat(vectors), torch.cat(masks)

    def _search(self, batch: list[_Search], backend: Backend, q_vectors: torch.Tensor, q_mask: torch.Tensor) -> None:
        rows = np.cumsum([0] + [len(r.queries) for r in batch])
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(batch):
            key = None if r.filter is None else json.dumps(r.filter, sort_keys=True)
            groups.setdefault((r.k, r.ncells, r.ndocs, key, r.hybrid), []).append(i)
        for (k, ncells, ndocs, _, hybrid), members in groups.items():
            take = torch.cat([torch.arange(rows[i], rows[i + 1]) for i in members])
            condition = batch[members[0]].filter
            try:
                if hybrid is None:
                    ranking = backend.search(q_vectors[take], q_mask[take], k, condition, ncells, None, ndocs,
                                             self._pool)
                    found = self.retriever.hits(ranking, backend)
                else:
                    texts = [q for i in members for q in batch[i].queries]
                    ranking, components = backend.search_hybrid(texts, q_vectors[take], q_mask[take], k, hybrid,
                                                                condition, ncells, None, ndocs)
                    found = self.retriever.hits(ranking, backend, components=components)
            except Exception as err:  # noqa: BLE001 - the group's own error (its members share every setting)
                for i in members:
                    batch[i].future.set_exception(err)
                continue
            for i, start in zip(members, np.cumsum([0] + [len(batch[i].queries) for i in members])):
                rows_of = found[start : start + len(batch[i].queries)]
                _settle(batch[i].future, lambda rows_of=rows_of: [[hit.to_dict() for hit in row] for row in rows_of])


def check_search(retriever: Retriever, body: SearchRequest) -> None:
    """Refuse, before it is queued, a search that would fail against the index (hybrid without a
    BM25 side, a filter naming a field no document has), so that it never reaches a batch. Where
    another process has written a newer version than the one held (which may have the field),
    the request goes on to the worker, which reads it."""
    backend = retriever.backend
    if body.hybrid not in (None, False):
        backend.require_bm25()
    if body.filter is None:
        return
    try:
        backend.check_filter(body.filter)
    except MaxsimError:
        if not backend.changed_on_disk():
            raise


def _settle(future: Future, run: Callable[[], Any]) -> None:
    try:
        future.set_result(run())
    except Exception as err:  # noqa: BLE001 - handed to the request, which answers it as JSON
        future.set_exception(err)


def load_retriever(index: str | Path, device: str | None = None, allow_model_mismatch: bool = False,
                   query_precision: str = "auto") -> Retriever:
    """``Retriever.from_index(index, ...)`` (queries encoded in ``query_precision``) run in a thread
    that then ends, so that the thread that loads leaves no OpenMP pool behind (see
    :class:`IndexWorker`): for ``maxsim serve`` and for anyone building the app with :func:`create_app`."""
    def load() -> Retriever:
        retriever = Retriever.from_index(index, None, device, allow_model_mismatch)
        retriever.encoder.query_precision = query_precision
        return retriever

    with ThreadPoolExecutor(1) as loader:
        return loader.submit(load).result()

