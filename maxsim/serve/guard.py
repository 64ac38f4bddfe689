"""The service's door: every request's body size and API key checked before any work, counted
and timed in ``/metrics`` (labelled by route template), and every error answered as JSON."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match

from maxsim.errors import MaxsimError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
#: the routes that need no API key: a load balancer's probes (without the key, /health says only
#: whether the process is up and ready: paths and counts are for those who hold it)
OPEN_ROUTES = ("/health", "/ready")
#: the metrics' route label of a request that matches no route
UNMATCHED = "unmatched"

class Metrics:
    """What ``/metrics`` reports, in a registry of the app's own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("maxsim_requests", "Requests served", ["route", "status"], registry=self.registry)
        self.latency = Histogram("maxsim_request_seconds", "Request latency in seconds", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.errors = Counter("maxsim_errors", "Requests answered with an error", ["route"], registry=self.registry)
        self.documents = Gauge("maxsim_documents", "Documents in the index", registry=self.registry)
        self.batch = Histogram("maxsim_search_batch_queries", "Queries searched together in one batch",
                               registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class Guard:
    """Body size and API key checked before any work, every request counted and timed, and every
    error answered as JSON (a bug is logged with its traceback, which the client never sees).

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` would run every request
    through an extra task and memory streams.
    """

    def __init__(self, app: Callable, api_key: str | None, metrics: Metrics, routes: list) -> None:
        self.app, self.api_key, self.metrics, self.routes = app, api_key, metrics, routes

    def route_of(self, scope: dict) -> str:
        """The route template a request matches (``/search``), or ``unmatched``: the metrics'
        label, so that made-up paths add no label set (their number stays the routes')."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, started, status = self.route_of(scope), time.perf_counter(), [0]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            refusal = JSONResponse({"error": f"the request body is over {MAX_BODY_BYTES} bytes"}, status_code=413)
        elif route not in OPEN_ROUTES and self.api_key is not None and \
                not authorised(headers.get(b"authorization", b"").decode("latin-1"), self.api_key):
            refusal = JSONResponse({"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                                   status_code=401)
        else:
            refusal = None
        received = [0]

        async def counted_receive() -> dict:  # the body counted as it streams in (chunked has no length)
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > MAX_BODY_BYTES:
                    raise HTTPException(413, f"the request body is over {MAX_BODY_BYTES} bytes")
            return message

        try:
            await (refusal or self.app)(scope, counted_receive, send_and_note)
        except Exception:  # noqa: BLE001 - a bug: logged with its traceback here, JSON to the client
            logger.exception("error serving %s", route)
            if status[0]:  # the answer had begun: nothing more can be said over HTTP
                raise
            await JSONResponse({"error": "internal error"}, status_code=500)(scope, receive, send_and_note)
        self.metrics.requests.labels(route, str(status[0])).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        if status[0] >= 400:
            self.metrics.errors.labels(route).inc()


def install_guards(app: FastAPI, api_key: str | None, metrics: Metrics) -> None:
    """:class:`Guard` around the app, and JSON for every error FastAPI answers itself."""
    app.add_middleware(Guard, api_key=api_key, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
                             for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(MaxsimError)
    async def user_error(request: Request, exc: MaxsimError):
        return JSONResponse({"error": str(exc)}, status_code=400)


def authorised(header: str, api_key: str) -> bool:
    """Whether an Authorization header carries the key (compared in constant time)."""
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
