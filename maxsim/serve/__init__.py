"""``maxsim serve``: a search service over an index (FastAPI, run by uvicorn).

``create_app(retriever)`` builds the app, so it can also be mounted in another one. One thread,
:class:`IndexWorker`, runs the model. Searches read one index version (concurrent searches are
batched, one snapshot a batch); writes go through the index's atomic swap and writer lock, one at
a time. With an API key, every route but ``/health`` and ``/ready`` needs ``Authorization: Bearer
<key>``.
Errors are JSON, never tracebacks.

FastAPI and uvicorn because they are the well-kept ASGI pair that PyLate's server and most RAG
stacks already run (and FastAPI writes the OpenAPI docs at ``/docs`` from the request models).
"""

from maxsim.serve.app import create_app
from maxsim.serve.batching import GATHER_S, IndexWorker, check_search, load_retriever
from maxsim.serve.process import (
    ENV_API_KEY,
    ENV_INDEX,
    ENV_READ_ONLY,
    app_from_environment,
    keep_freed_memory,
    writer_lock,
)
from maxsim.serve.schema import MAX_DOCUMENTS, MAX_K, MAX_QUERIES, AddRequest, DeleteRequest, SearchRequest

__all__ = ["ENV_API_KEY", "ENV_INDEX", "ENV_READ_ONLY", "GATHER_S", "MAX_DOCUMENTS", "MAX_K", "MAX_QUERIES",
           "AddRequest", "DeleteRequest", "IndexWorker", "SearchRequest", "app_from_environment", "check_search",
           "create_app", "keep_freed_memory", "load_retriever", "writer_lock"]
