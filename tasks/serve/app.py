"""`ratchet serve-model`: an HTTP endpoint that answers with production and follows it.

Routes, in MLflow's scoring protocol where it has one (a client of `mlflow models serve`
works unchanged):

  POST /invocations  {"inputs": [...]} (or "instances") -> {"predictions": [...], "version": "v0003"}
                     a classifier takes strings and answers {"label", "score"}; a tagger takes
                     sentences (a string, or a list of words) and answers {"tokens", "tags", "entities"}
  GET  /ping         200 once a version is loaded (no token: for load balancers' probes)
  GET  /version      the served version, its task type and when it was loaded
  GET  /health       the same, plus swaps, the last load error, requests and batches

Every answer carries the version that gave it (the body's "version" and the
X-Ratchet-Version header). Concurrent requests are answered together (batching.py); the
served version moves when the alias does (follow.py), checked every `poll_s`, without a
failed or delayed request. With a token every route but /ping wants
`Authorization: Bearer <token>`. A malformed request gets a 4xx naming what is wrong;
an oversized one (body, number of inputs, one input's length) gets 413.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tasks.serve.batching import MicroBatcher
from tasks.serve.follow import Follower

VERSION_HEADER = "X-Ratchet-Version"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20   # a request body's size
    max_inputs: int = 256           # inputs in one request
    max_chars: int = 10_000         # characters of one input (a sentence's words together)
    max_batch: int = 64             # inputs answered by one forward pass
    max_wait_ms: float = 5.0        # how long a request waits for others to share its batch
    poll_s: float = 1.0             # how often production's alias is checked


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
         500: "INTERNAL_ERROR", 503: "UNAVAILABLE"}


def error(status: int, message: str) -> JSONResponse:
    """MLflow's error body."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error_code": CODES.get(status, "ERROR"), "message": message}, status, headers=headers)


def _chars(item) -> int:
    """Characters of one input: a string's, or a sentence's words together (a wrong type: 0,
    the kind's parse names it)."""
    if isinstance(item, str):
        return len(item)
    return sum(len(w) for w in item if isinstance(w, str)) if isinstance(item, list) else 0


def inputs_of(body: bytes, limits: Limits) -> list:
    """The request's inputs, or Refused with the reason."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or not ({"inputs", "instances"} & payload.keys()):
        raise Refused(400, 'expected a JSON object {"inputs": [...]} (or "instances")')
    inputs = payload.get("inputs", payload.get("instances"))
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, '"inputs" must be a non-empty list')
    if len(inputs) > limits.max_inputs:
        raise Refused(413, f"{len(inputs)} inputs in one request; at most {limits.max_inputs}")
    for i, item in enumerate(inputs):
        size = _chars(item)
        if size > limits.max_chars:
            raise Refused(413, f"inputs[{i}] has {size} characters; at most {limits.max_chars}")
    return inputs


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused once it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"the body is over {limit} bytes")
    return bytes(body)


def build_app(follower: Follower, *, token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    stats = {"requests": 0, "answered": 0, "refused": 0, "failed": 0}

    def run(inputs: list) -> tuple[str, list]:
        served = follower.current  # read once: the whole batch is answered by this version
        return served.version, served.predictor.predict(inputs)

    batcher = MicroBatcher(run, max_rows=limits.max_batch, max_wait_ms=limits.max_wait_ms)

    async def follow() -> None:
        while True:
            await asyncio.sleep(limits.poll_s)
            await asyncio.to_thread(follower.refresh)  # loads beside the served version, then switches

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(follower.refresh)
        if follower.current is None:
            raise RuntimeError(f"nothing to serve: {follower.last_error}")
        workers = [asyncio.create_task(batcher.work()), asyncio.create_task(follow())]
        yield
        for worker in workers:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker

    app = FastAPI(title="Ratchet model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())

    def about() -> dict:
        served = follower.current
        return {"version": served.version, "task": served.task, "alias": follower.alias,
                "loaded_at": served.loaded_at, "load_seconds": served.load_seconds}

    @app.get("/ping")
    async def ping() -> Response:
        return Response("\n", 200 if follower.current else 503, media_type="text/plain")

    @app.get("/version")
    async def version(request: Request) -> JSONResponse:
        return JSONResponse(about()) if authorised(request) else error(401, "a bearer token is required")

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        if not authorised(request):
            return error(401, "a bearer token is required")
        return JSONResponse({**about(), "status": "ok", "swaps": follower.swaps, "last_error": follower.last_error,
                             "batches": batcher.batches, "rows": batcher.rows, **stats, "limits": asdict(limits)})

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        stats["requests"] += 1
        try:
            if not authorised(request):
                raise Refused(401, "a bearer token is required")
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise Refused(415, f"Content-Type must be application/json, got {media or 'none'!r}")
            inputs = inputs_of(await read_body(request, limits.max_body_bytes), limits)
            try:
                parsed = follower.current.predictor.parse(inputs)
            except ValueError as exc:
                raise Refused(400, str(exc)) from None
        except Refused as exc:
            stats["refused"] += 1
            return error(exc.status, str(exc))
        started = time.perf_counter()
        try:
            served_by, answers = await batcher.answer(parsed)
        except Exception as exc:  # the model failed on these inputs: report it, keep serving
            stats["failed"] += 1
            return error(500, f"prediction failed: {type(exc).__name__}: {exc}")
        stats["answered"] += 1
        return JSONResponse({"predictions": answers, "version": served_by},
                            headers={VERSION_HEADER: served_by,
                                     "X-Ratchet-Seconds": f"{time.perf_counter() - started:.4f}"})

    return app
