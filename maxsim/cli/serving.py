"""``maxsim serve``: the HTTP service (:mod:`maxsim.serve`) over an index or a Qdrant collection."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli.common import (
    Device,
    QdrantCollection,
    QdrantTarget,
    QueryPrecision,
    app,
    fail,
    one_line_errors,
    quiet_libraries,
    warn_if_others_can_read,
)


@app.command()
def serve(
    index: Annotated[Path | None, typer.Option(help="Index folder made by maxsim index.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key (readable by its owner only: chmod 600): every route but /health and /ready then needs Authorization: Bearer <key>.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse writes (POST and DELETE /documents), so that several servers can share the index.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes (each holds the model and the index; writes take the index's writer lock).")] = 1,
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
    device: Device = "auto",
    query_precision: QueryPrecision = "auto",
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Serve even if the index's model folder now holds another model (its weights changed since indexing).")] = False,
) -> None:
    """Serve an index (or a Qdrant collection) over HTTP: /search, /documents, /health, /ready, /metrics, docs at /docs."""
    import uvicorn

    from maxsim.retriever import Retriever
    from maxsim.serve import create_app, keep_freed_memory, load_retriever, writer_lock

    quiet_libraries()
    keep_freed_memory()
    with contextlib.ExitStack() as held:
        with one_line_errors():
            key = api_key_file.read_text().strip() if api_key_file is not None else None
            if api_key_file is not None and not key:
                fail(f"--api-key-file {api_key_file} is empty")
            if api_key_file is not None:
                warn_if_others_can_read(api_key_file)
            if workers < 1:
                fail(f"--workers must be 1 or more, got {workers}")
            if (index is None) == (qdrant is None and collection is None):
                fail("give --index DIR, or --qdrant URL_OR_PATH with --collection NAME")
            if qdrant is not None or collection is not None:
                if qdrant is None or collection is None or workers > 1:
                    fail("--qdrant needs --collection, and serves with one worker (Qdrant shards the load)")
                served = Retriever.from_qdrant(qdrant, collection, device=device, allow_model_mismatch=allow_model_mismatch)
                served.encoder.query_precision = query_precision
                uvicorn.run(create_app(served, api_key=key, read_only=read_only),
                            host=host, port=port, log_level="info")
                return
            if not read_only:
                held.enter_context(writer_lock(index))
            if workers > 1:  # each worker builds its own app (uvicorn needs an import string)
                from maxsim.serve import process

                # a bad index or setting is one error line here, not one per worker
                Retriever.from_index(index, device=device, allow_model_mismatch=allow_model_mismatch
                                     ).encoder.query_precision = query_precision
                os.environ.update({process.ENV_INDEX: str(index.resolve()), process.ENV_API_KEY: key or "",
                                   process.ENV_READ_ONLY: "1" if read_only else "0", process.ENV_DEVICE: device,
                                   process.ENV_ALLOW_MISMATCH: "1" if allow_model_mismatch else "0",
                                   process.ENV_QUERY_PRECISION: query_precision})
            else:
                application = create_app(load_retriever(index, device, allow_model_mismatch, query_precision),
                                         api_key=key, read_only=read_only)
        if workers > 1:
            uvicorn.run("maxsim.serve:app_from_environment", factory=True, workers=workers, host=host, port=port,
                        log_level="info")
        else:
            uvicorn.run(application, host=host, port=port, log_level="info")
