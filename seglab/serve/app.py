"""The HTTP application: FastAPI routes over a :class:`~seglab.serve.runner.Runner` and a
:class:`~seglab.serve.batching.MicroBatcher`.

Endpoints: ``POST /v1/segment`` (an image as the raw body or a multipart file; the query says which outputs
and how to infer), ``GET /v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus text, prometheus_client on a
registry of the app's own) and the web page at ``/``. A request is read with a size cap, decoded and checked on
a worker thread (the pixel limit is applied from the image header), queued for the inference thread, and its
result encoded on an encoding thread, so the event loop only moves bytes. Errors are JSON
``{"error": message, "status": code}``; with an API key every endpoint but ``/healthz`` and the static page
needs ``Authorization: Bearer KEY`` (the page asks for the key and sends it with its API calls).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fastapi
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.requests import Request
except ImportError:
    raise ImportError("seglab serve needs FastAPI and uvicorn: pip install 'seglab[serve]'") from None

from seglab.serve.batching import MicroBatcher, QueueFull
from seglab.serve.encode import OUTPUTS, InputError, decode_image
from seglab.serve.runner import RequestOptions, Runner, parse_scales

STATIC = Path(__file__).parent / "static"
RAW_TYPES = ("image/", "application/octet-stream")
QUERY_KEYS = ("outputs", "mode", "flip", "scales", "alpha")
ENDPOINTS = ("/v1/segment", "/v1/model", "/healthz", "/metrics", "/")
OPEN_PATHS = ("/healthz", "/", "/favicon.ico")  # no API key needed: health checks and the static page
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ServeSettings:
    """Limits and batching of a server. ``max_wait_ms``: how long the oldest request waits for a batch to fill;
    ``max_queue``: waiting requests beyond which the server answers 503; ``max_body_bytes`` (413 above),
    ``max_pixels`` (413 above, from the image header), ``timeout_s`` per request (504), ``api_key`` (None: open)."""

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 64_000_000
    timeout_s: float = 60.0
    api_key: str | None = None
    encode_threads: int = 2


def _bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InputError(400, f"{name}={text!r}: expected true or false")


def parse_query(query: Any, default_mode: str = "whole") -> tuple[tuple[str, ...], RequestOptions]:
    """The outputs and inference options of a ``/v1/segment`` query (InputError 400 naming what is wrong);
    ``mode`` defaults to ``default_mode`` (the model folder's evaluation mode)."""
    unknown = sorted(set(query.keys()) - set(QUERY_KEYS))
    if unknown:
        raise InputError(400, f"unknown query option(s) {', '.join(unknown)}; the options are {', '.join(QUERY_KEYS)}")
    outputs = tuple(o.strip() for o in query.get("outputs", "png").split(",") if o.strip())
    bad = [o for o in outputs if o not in OUTPUTS]
    if not outputs or bad:
        raise InputError(400, f"outputs={query.get('outputs')!r}: choose from {', '.join(OUTPUTS)} (comma-separated)")
    mode = query.get("mode", default_mode)
    if mode not in ("whole", "slide"):
        raise InputError(400, f"mode={mode!r}: expected whole or slide")
    try:
        alpha = float(query.get("alpha", "0.5"))
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise InputError(400, f"alpha={query.get('alpha')!r}: expected a number in [0, 1] (the overlay's opacity)")
    scales = parse_scales(query["scales"]) if "scales" in query else (1.0,)
    flip = _bool(query["flip"], "flip") if "flip" in query else False
    return outputs, RequestOptions(mode=mode, flip=flip, scales=scales, alpha=alpha)


class Metrics:
    """The server's Prometheus metrics, on a registry of its own (no global state)."""

    def __init__(self, max_batch: int, depth: Any) -> None:
        try:
            import prometheus_client as prometheus
        except ImportError:
            raise ImportError("seglab serve needs prometheus_client: pip install 'seglab[serve]'") from None
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("seglab_requests", "HTTP requests by endpoint and status code",
                                           ["endpoint", "status"], registry=self.registry)
        self.errors = prometheus.Counter("seglab_request_errors", "Refused or failed /v1/segment requests by status",
                                         ["status"], registry=self.registry)
        self.latency = prometheus.Histogram("seglab_request_seconds", "Time to answer /v1/segment (seconds)",
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = prometheus.Histogram("seglab_stage_seconds", "Time per stage of /v1/segment (seconds)",
                                          ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = prometheus.Histogram("seglab_batch_size", "Images per model batch",
                                               buckets=tuple(range(1, max_batch + 1)), registry=self.registry)
        self.batch_seconds = prometheus.Histogram("seglab_batch_seconds", "Model time per batch (seconds)",
                                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        queue = prometheus.Gauge("seglab_queue_depth", "Requests waiting for the model", registry=self.registry)
        queue.set_function(depth)
        self._generate = prometheus.generate_latest
        self.content_type = prometheus.CONTENT_TYPE_LATEST

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        return self._generate(self.registry)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, f"the request body is {declared} bytes, over the server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, f"the request body exceeds the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and a name for it in messages: the raw body (``image/*`` or
    ``application/octet-stream``) or the first file of a ``multipart/form-data`` body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        from starlette.formparsers import MultiPartException, MultiPartParser

        body = await _read_body(request, limit)

        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=16).parse()
        except MultiPartException as exc:
            raise InputError(400, f"the multipart body cannot be parsed: {exc.message}") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise InputError(400, "the multipart body has no file; send the image as a file field (e.g. "
                                  "curl -F image=@photo.jpg)")
        data = await files[0].read()
        return data, f"the uploaded file {files[0].filename!r}"
    if content_type.startswith(RAW_TYPES):
        return await _read_body(request, limit), "the request body"
    shown = content_type or "none"
    raise InputError(415, f"Content-Type {shown!r}: send an image (image/png, image/jpeg, ..., or "
                          "application/octet-stream) as the body, or multipart/form-data with the image as a file")


def create_app(runner: Runner, settings: ServeSettings | None = None) -> fastapi.FastAPI:
    """The FastAPI application serving ``runner`` (start it with uvicorn; tests use its TestClient)."""
    from contextlib import asynccontextmanager

    settings = settings or ServeSettings()
    state: dict[str, Any] = {}

    def run(key: Any, payloads: list[Any]) -> list[Any]:
        options = payloads[0][1]
        return runner.run([image for image, _ in payloads], options)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncGenerator[None, None]:
        metrics = state["metrics"]
        state["batcher"] = MicroBatcher(run, max_batch=settings.max_batch, max_wait_s=settings.max_wait_ms / 1000,
                                        max_queue=settings.max_queue, on_batch=metrics.on_batch)
        state["pool"] = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="seglab-encode")
        yield
        state["batcher"].stop()
        state["pool"].shutdown(wait=False, cancel_futures=True)

    state["metrics"] = Metrics(settings.max_batch, lambda: state["batcher"].depth if "batcher" in state else 0)
    app = fastapi.FastAPI(title="seglab", summary=f"{runner.name} ({runner.task} segmentation)", lifespan=lifespan,
                          docs_url="/docs", redoc_url=None)
    metrics: Metrics = state["metrics"]

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return error(exc.status, exc.message)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values, whatever paths clients send
        if settings.api_key and path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                metrics.requests.labels(endpoint, "401").inc()
                return error(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             {"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": runner.name}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return {**runner.card(), "limits": {
            "max_body_bytes": settings.max_body_bytes, "max_pixels": settings.max_pixels,
            "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms, "timeout_s": settings.timeout_s}}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def process(request: Request, times: list[float]) -> dict[str, Any]:
        """Read, decode, queue and encode one request; ``times`` gets the end of each stage."""
        loop = asyncio.get_running_loop()
        batcher: MicroBatcher = state["batcher"]
        outputs, options = parse_query(request.query_params, runner.default_mode)
        runner.check(options)
        batcher.announce()  # a batch forming now may wait for this request while it is read and decoded
        try:
            data, what = await _image_bytes(request, settings.max_body_bytes)
            image = await loop.run_in_executor(state["pool"], lambda: decode_image(
                data, max_pixels=settings.max_pixels, what=what))
        except BaseException:  # refused, or cancelled by the timeout
            batcher.withdraw()
            raise
        times.append(time.perf_counter())
        try:
            future = batcher.submit(runner.key(image, options), (image, options), announced=True)
        except QueueFull as exc:
            raise InputError(503, f"the server is busy: {exc}; retry shortly") from None
        result = await asyncio.wrap_future(future)  # cancelled with this task: the batcher then skips it
        times.append(time.perf_counter())
        body = await loop.run_in_executor(state["pool"], runner.encode, image, result, outputs, options)
        times.append(time.perf_counter())
        return body

    @app.post("/v1/segment")
    async def segment(request: Request) -> Response:
        start = time.perf_counter()
        times: list[float] = []
        try:
            try:
                body = await asyncio.wait_for(process(request, times), settings.timeout_s)
            except asyncio.TimeoutError:
                stage = ("reading the image", "waiting for the model", "encoding the result")[len(times)]
                raise InputError(504, f"no result within the server's timeout of {settings.timeout_s} s "
                                      f"(timed out {stage})") from None
        except InputError as exc:
            metrics.errors.labels(str(exc.status)).inc()
            return error(exc.status, exc.message, {"Retry-After": "1"} if exc.status == 503 else None)
        decoded, inferred, done = times
        metrics.stage.labels("decode").observe(decoded - start)
        metrics.stage.labels("queue_and_model").observe(inferred - decoded)
        metrics.stage.labels("encode").observe(done - inferred)
        metrics.latency.observe(done - start)
        body = {"model": runner.name, "task": runner.task, **body, "timing_ms": {
            "decode": round((decoded - start) * 1000, 2), "queue_and_model": round((inferred - decoded) * 1000, 2),
            "encode": round((done - inferred) * 1000, 2)}}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return app


__all__ = ["ServeSettings", "create_app", "parse_query"]
