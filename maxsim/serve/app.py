"""The service's routes over a retriever (FastAPI): search, add, delete, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from maxsim.errors import MaxsimError, UnknownIdError
from maxsim.fusion import Hybrid
from maxsim.inputs import DEFAULT_K
from maxsim.limits import check_query
from maxsim.retriever import Retriever
from maxsim.serve.batching import IndexWorker, check_search
from maxsim.serve.guard import Metrics, authorised, install_guards
from maxsim.serve.schema import MAX_K, AddRequest, DeleteRequest, SearchRequest


def create_app(retriever: Retriever, api_key: str | None = None, read_only: bool = False) -> FastAPI:
    """The service over ``retriever`` (which holds an index: ``Retriever.from_index(path)``)."""
    app = FastAPI(title="maxsim", description="Search a ColBERT index.", version="1")
    metrics = Metrics()
    install_guards(app, api_key, metrics)
    worker = IndexWorker(retriever, on_batch=metrics.batch.observe)
    # writes one at a time; a write encodes and compresses on the worker's thread, then is saved
    # here while searches go on (each search batch reads one version: before or after it)
    writer = ThreadPoolExecutor(1, thread_name_prefix="maxsim-writer")
    add_search_routes(app, retriever, worker)
    add_document_routes(app, retriever, worker, writer, read_only)
    add_status_routes(app, retriever, worker, metrics, api_key, read_only)
    return app


def add_search_routes(app: FastAPI, retriever: Retriever, worker: IndexWorker) -> None:
    """POST /search (the JSON body of :class:`SearchRequest`) and GET /search?q=...&k=..."""

    async def run_search(queries: list[str], k: int, ncells: int | None = None, ndocs: int | None = None,
                         filter: dict | None = None, hybrid: Hybrid | bool | None = None):
        settings = retriever.search_config(hybrid).hybrid  # (None: the model's search.json)
        return await asyncio.wrap_future(worker.search(queries, k, ncells, ndocs, filter, settings))

    @app.post("/search")
    async def search_post(body: SearchRequest):
        """The ``k`` best documents for each query, each hit as ``maxsim search --json`` prints it."""
        check_search(retriever, body)
        return JSONResponse({"results": await run_search(body.queries, body.k, body.ncells, body.ndocs, body.filter,
                                                         body.hybrid)})

    @app.get("/search")
    async def search_get(q: str, k: int = DEFAULT_K):
        """One query, from a browser: ``/search?q=...&k=10``."""
        if not q.strip():
            raise HTTPException(422, "q must be a non-empty query")
        try:
            check_query(q)
        except MaxsimError as err:
            raise HTTPException(422, str(err)) from None
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K}")
        return JSONResponse({"results": await run_search([q], k)})

    @app.get("/documents/{document_id}")
    def document(document_id: str):
        """A document's whole text and metadata, ``{"id", "content", "metadata"}`` (a hit is one of
        its chunks); 404 for an id the index does not hold."""
        try:
            return retriever.document(document_id)
        except UnknownIdError as err:
            raise HTTPException(404, str(err.args[0] if err.args else err)) from None


def add_document_routes(app: FastAPI, retriever: Retriever, worker: IndexWorker, writer: ThreadPoolExecutor,
                        read_only: bool) -> None:
    """POST /documents (add) and DELETE /documents (by id); 403 on a read-only server."""

    def writable():
        if read_only:
            raise HTTPException(403, "this server is read-only (--read-only)")

    @app.post("/documents")
    async def add(body: AddRequest):
        """Add documents (written through the index's atomic swap and writer lock)."""
        writable()
        encoded = await asyncio.wrap_future(worker.run(lambda: retriever.encode_for_index(
            [d.text for d in body.documents], [d.document_id for d in body.documents],
            [d.metadata for d in body.documents])))

        def save():
            retriever.add_encoded(encoded)
            return {"added": len(body.documents), "documents": retriever.document_count()}

        return await asyncio.wrap_future(writer.submit(save))

    @app.delete("/documents")
    async def delete(body: DeleteRequest):
        """Delete documents by id; an id not in the index is an error (404) and nothing changes."""
        writable()

        def run():
            removed = retriever.delete(body.document_ids)
            return {"deleted": removed, "documents": retriever.document_count()}

        try:
            return await asyncio.wrap_future(writer.submit(run))
        except KeyError as err:
            raise HTTPException(404, str(err.args[0] if err.args else err)) from None


def add_status_routes(app: FastAPI, retriever: Retriever, worker: IndexWorker, metrics: Metrics,
                      api_key: str | None, read_only: bool) -> None:
    """GET /health (liveness), /ready (readiness) and /metrics (Prometheus)."""

    @app.get("/health")
    def health(request: Request):
        """Liveness: the process answers (``ready`` says whether searches are answered at speed yet).
        With an API key configured, the model, the index and its counts are told only to a
        request that carries the key."""
        answer = {"status": "ok", "ready": worker.ready.is_set()}
        if api_key is None or authorised(request.headers.get("authorization", ""), api_key):
            answer.update(model=retriever.model_path, **retriever.status(), read_only=read_only)
        return answer

    @app.get("/ready")
    def ready():
        """Readiness, for a load balancer: 200 once searches are answered at speed, 503 before."""
        if worker.ready.is_set():
            return {"ready": True}
        return JSONResponse({"ready": False, "error": "warming up: not ready for searches yet"}, status_code=503)

    @app.get("/metrics")
    def prometheus():
        metrics.documents.set(retriever.document_count())
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")
