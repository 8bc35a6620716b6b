"""HTTP API for a trained RetriKT student (FastAPI), run by ``retrikt serve``.

Endpoints: ``POST /predict`` (a batch of inputs), ``GET /health``, ``GET /info``,
``GET /metrics`` (how many inputs each model call batched) and the OpenAPI docs at
``/docs`` (Swagger UI served from the packaged ``swagger-ui-bundle-v2`` assets, so it works
offline). The OpenAPI schema states the served task's real input
contract (fields, lengths, batch size), and every input is checked with
``Task.parse_input`` before the model runs, so a bad request gets a 4xx JSON error naming
the input index and field, and never reaches (or breaks) the model. Every error, including
404/405/500, has the same shape: ``{"error": "<what is wrong>", "errors": [{"index": i,
"message": ...}]}`` (``errors`` only when individual inputs are at fault).

Load is shed, never queued without bound (``Limits``): a body must arrive within
``body_timeout`` (else 408), requests wait in a queue of at most ``max_queue`` inputs (else
503 with ``Retry-After``), and a request not answered within ``timeout`` seconds of being
queued gets a 503 too. An admitted request therefore waits for at most ``max_queue`` inputs
ahead of it.

Inference is CPU-bound and the model is shared: one worker task runs it in a thread, one
call at a time, on every request waiting at that moment batched together (see ``_Service``).
When a request finds the worker idle, the worker first gives others ``batch_wait_ms`` to
arrive, so requests sent together share one model call (under load they pile up while the
model runs and are batched without waiting). The event loop stays free to answer
``/health``, to reject bad requests and to shed load while it runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import retrikt
from retrikt.errors import DataError, RetriktError
from retrikt.tasks import TASKS, Task

if TYPE_CHECKING:
    from retrikt.student import RetriKT

logger = logging.getLogger(__name__)

#: The longest field ``RetriKT.predict`` accepts (``Task.parse_input``'s default), which is
#: also the most a server may allow; the encoder reads only the first 128 tokens anyway.
DEFAULT_MAX_CHARS: int = inspect.signature(Task.parse_input).parameters["max_chars"].default
DOCS_ASSETS = "/docs-assets"
#: Fields up to this long are tokenized whole in a moment; longer ones are clipped first.
CLIP_ABOVE_CHARS = 2_000
_SPACE = re.compile(r"\s")
#: A JSON Schema pattern for "not only whitespace" as ``str.strip`` sees it. ``\S`` will not
#: do: ECMA regexes (which JSON Schema validators use) treat U+001C-U+001F as non-space.
#: Every character ``str.isspace`` knows is below U+3001 (tests check).
NOT_ONLY_SPACE = "[^" + "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace()) + "]"


@dataclass(frozen=True)
class Limits:
    """What one server accepts; all of it is shown by ``retrikt serve --help`` and ``/info``."""

    max_batch: int = 64  # inputs per request (413 above)
    max_chars: int = DEFAULT_MAX_CHARS  # characters per input field (422 above)
    max_queue: int = 256  # inputs waiting for the model, all requests together (503 above)
    timeout: float = 30.0  # seconds from being queued to being answered (503 after)
    body_timeout: float = 10.0  # seconds to receive a request body (408 after)
    batch_wait_ms: float = 2.0  # how long a model call waits for more requests to batch

    def check(self) -> None:
        """Refuse limits the server cannot honour, naming the command-line options."""
        if self.max_batch < 1:
            raise RetriktError(f"--max-batch must be at least 1, got {self.max_batch}")
        if not 1 <= self.max_chars <= DEFAULT_MAX_CHARS:
            raise RetriktError(
                f"--max-chars must be between 1 and {DEFAULT_MAX_CHARS} (the longest field "
                f"RetriKT.predict accepts), got {self.max_chars}"
            )
        if self.max_queue < self.max_batch:
            raise RetriktError(
                f"--max-queue must be at least --max-batch ({self.max_batch}) so that one "
                f"full request fits, got {self.max_queue}"
            )
        for option, value in (("--timeout", self.timeout), ("--body-timeout", self.body_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise RetriktError(f"{option} must be a positive number of seconds, got {value}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise RetriktError(
                f"--batch-wait-ms must be between 0 and 1000 milliseconds, got {self.batch_wait_ms}"
            )

    @property
    def max_body(self) -> int:
        """Bytes of the largest valid request: every field of the widest task (COPA's 4) at
        max_chars, each character \\u-escaped (6 bytes); larger bodies are refused unread."""
        widest = max(len(task.fields) for task in TASKS.values())
        return self.max_batch * widest * (6 * self.max_chars + 64) + 65_536


class PredictRequest(BaseModel):
    """A batch of inputs in the served task's field names (see ``GET /info``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt "input" is an error, not ignored
    inputs: list[Any] = Field(
        description="Each input is an object with the task's fields, a plain string "
        "(single-text tasks) or a list of strings in field order (e.g. a text pair)."
    )


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        description="One per input, in order: label, probs (or score for regression), "
        "the neighbours used, each with its text, teacher label, similarity and rationale "
        "(a store built with --rationales), and the explanation: the rationales of the "
        "neighbours that vote for the answer, heaviest first."
    )


class InputProblem(BaseModel):
    index: int
    message: str


class ErrorResponse(BaseModel):
    error: str
    errors: list[InputProblem] | None = None


class InputError(Exception):
    """A request the server answers with an error: its status, problems and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[InputProblem] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers


def _error(
    status: int,
    message: str,
    errors: list[InputProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=message, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body, headers=headers)


class _BodyGuard:
    """ASGI middleware: read the whole body within ``body_timeout`` and ``max_body`` bytes.

    Without it a client announcing a Content-Length it never sends holds a connection (and
    its request) for as long as it likes. The body read here is handed on to the app.
    """

    def __init__(self, app: ASGIApp, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await self._too_big(scope, receive, send)
            return
        body = bytearray()
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body += message.get("body", b"")
                    if len(body) > limit:
                        await self._too_big(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            response = _error(
                408,
                f"the request body did not arrive within {self.limits.body_timeout:g} s "
                f"({len(body):,} bytes received)",
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        response = _error(
            413,
            f"request body is larger than this server's limit of {limits.max_body:,} bytes "
            f"(at most {limits.max_batch} inputs of at most {limits.max_chars} characters "
            "per field)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


@dataclass
class _Job:
    """One request's checked inputs, and the future its predictions are delivered to."""

    examples: list[dict[str, Any]]
    future: asyncio.Future


class _Service:
    """The loaded model, its limits, the bounded queue and the one worker that runs it.

    Requests are admitted while the inputs waiting plus their own fit in ``max_queue``;
    the worker, when a request finds it idle, waits up to ``batch_wait_ms`` for more, takes
    every request waiting (up to ``max_batch`` inputs together), runs them as one batch in a
    thread, and hands each request its share. The model thus runs one call at a time
    (safe, and no oversubscribed cores), and under concurrent load one forward pass serves
    many requests. ``batch_sizes`` counts model calls by inputs batched (``GET /metrics``).
    """

    def __init__(self, model: RetriKT, limits: Limits):
        self.model, self.task, self.limits = model, model.task, limits
        self.queue: collections.deque[_Job] = collections.deque()
        self.waiting = 0  # inputs in the queue
        self.ready = asyncio.Event()  # set while the queue is not empty
        self.full = asyncio.Event()  # set while max_batch inputs or more are waiting
        self.seconds_per_batch = 1.0  # moving average, for Retry-After
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.requests = 0  # answered by the model

    def validate(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Parse every input, reporting all bad ones at once so a client can fix them together."""
        limits = self.limits
        if not inputs:
            raise InputError(422, "'inputs' is empty: send at least one input")
        if len(inputs) > limits.max_batch:
            raise InputError(
                413,
                f"batch of {len(inputs)} inputs is larger than this server's limit of "
                f"{limits.max_batch}: split it into smaller requests",
            )
        examples, problems = [], []
        for index, item in enumerate(inputs):
            try:
                examples.append(self.task.parse_input(item, f"inputs[{index}]", limits.max_chars))
            except DataError as err:
                problems.append(InputProblem(index=index, message=str(err)))
        if problems:
            first = problems[0].message
            more = f" (and {len(problems) - 1} more invalid inputs)" if len(problems) > 1 else ""
            raise InputError(422, first + more, problems)
        return examples

    def retry_after(self) -> str:
        """Seconds until the queue has drained, as the worker runs now (at least 1)."""
        batches = self.waiting / self.limits.max_batch + 1
        return str(max(1, math.ceil(batches * self.seconds_per_batch)))

    async def predict(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        limits = self.limits
        if self.waiting + len(examples) > limits.max_queue:
            raise InputError(
                503,
                f"the server is busy ({self.waiting} inputs waiting, limit {limits.max_queue}): "
                "retry after the time in the Retry-After header",
                headers={"Retry-After": self.retry_after()},
            )
        job = _Job(examples, asyncio.get_running_loop().create_future())
        self.queue.append(job)
        self.waiting += len(examples)
        self.ready.set()
        if self.waiting >= limits.max_batch:
            self.full.set()
        try:
            predictions = await asyncio.wait_for(job.future, limits.timeout)
        except TimeoutError:  # the future is cancelled: the worker skips it
            raise InputError(
                503,
                f"no answer within this server's timeout of {limits.timeout:g} s: it is "
                "overloaded; retry after the time in the Retry-After header",
                headers={"Retry-After": self.retry_after()},
            ) from None
        return [p.to_dict() for p in predictions]

    def next_batch(self) -> list[_Job]:
        """The requests at the head of the queue that fit in one model call together."""
        jobs: list[_Job] = []
        size, most = 0, self.limits.max_batch
        while self.queue and (not jobs or size + len(self.queue[0].examples) <= most):
            job = self.queue.popleft()
            self.waiting -= len(job.examples)
            if not job.future.done():  # drop requests that timed out or were given up on
                jobs.append(job)
                size += len(job.examples)
        if not self.queue:
            self.ready.clear()
        if self.waiting < self.limits.max_batch:
            self.full.clear()
        return jobs

    async def gather(self) -> None:
        """Give requests ``batch_wait_ms`` to join the first one, unless a batch is full.

        Only an idle worker waits: under load, requests pile up while the model runs and are
        batched anyway, and a wait would only leave the cores idle (measured: -15% req/s).
        """
        wait = self.limits.batch_wait_ms / 1000
        if wait > 0 and self.waiting < self.limits.max_batch:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.full.wait(), wait)

    async def work(self) -> None:
        """Run queued requests in batches, forever (cancelled at shutdown)."""
        while True:
            if not self.queue:  # idle: a request now may be the first of several sent together
                await self.ready.wait()
                await self.gather()
            jobs = self.next_batch()
            if not jobs:
                continue
            examples = [example for job in jobs for example in job.examples]
            start = time.perf_counter()
            try:
                predictions = await run_in_threadpool(self.run, examples)
            except Exception as err:  # each request reports it (as a 422 or a 500)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            seconds = time.perf_counter() - start
            self.seconds_per_batch = 0.8 * self.seconds_per_batch + 0.2 * seconds
            self.batch_sizes[len(examples)] += 1
            self.requests += len(jobs)
            logger.debug("ran %d requests as one batch of %d inputs", len(jobs), len(examples))
            start_row = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(predictions[start_row : start_row + len(job.examples)])
                start_row += len(job.examples)

    def run(self, examples: list[dict[str, Any]]) -> list[Any]:
        """The model on one batch (in the worker thread), long fields clipped first."""
        clipped = clip_to_encoder(self.model, examples)
        return self.model.predict(clipped, batch_size=self.limits.max_batch)

    def metrics(self) -> dict[str, Any]:
        """Counters since startup: model calls by the number of inputs they batched."""
        calls = sum(self.batch_sizes.values())
        inputs = sum(size * count for size, count in self.batch_sizes.items())
        return {
            "requests": self.requests,
            "model_calls": calls,
            "inputs": inputs,
            "mean_batch": round(inputs / calls, 2) if calls else None,
            "largest_batch": max(self.batch_sizes, default=0),
            "batch_sizes": {str(size): self.batch_sizes[size] for size in sorted(self.batch_sizes)},
            "waiting_inputs": self.waiting,
        }

    def info(self) -> dict[str, Any]:
        """What a client may know: ids, digests and limits; never a path on this disk."""
        model, task, store = self.model, self.task, self.model.store
        config = model.config
        retrieval = config.retrieval
        return jsonable_encoder(
            {
                "task": task.name,
                "task_type": task.task_type,
                "description": task.description,
                "fields": list(task.fields),
                "labels": list(task.label_names) if task.label_names else None,
                "retrieval": store is not None,
                "store_size": len(store) if store is not None else None,
                "store_encoder": store.encoder_id if store is not None else None,
                "store": None
                if store is None
                else {
                    "store_id": store.store_id,
                    "version": store.version,
                    "digest": store.digest,
                    "entries": len(store),
                },
                "config": {
                    "task": config.task,
                    "encoder": _public_id(config.encoder),
                    "head": config.head,
                    "max_length": config.max_length,
                    "format_version": config.format_version,
                    "retrieval": None
                    if retrieval is None
                    else {
                        "k": retrieval.k,
                        "mix": retrieval.mix,
                        "store_encoder_id": retrieval.store_encoder_id,
                        "store_manifest_sha256": retrieval.store_manifest_sha256,
                        "source_store_id": retrieval.source.get("store_id"),
                    },
                },
                "limits": {**asdict(self.limits), "max_body_bytes": self.limits.max_body},
                "retrikt_version": retrikt.__version__,
            }
        )

    def example_input(self) -> dict[str, str]:
        """A valid input of this task, for the docs page and its "Try it out" button."""
        example = {name: f"An example {name}." for name in self.task.fields}
        if self.task.name == "copa":
            example["question"] = "effect"
        return example

    def describe_inputs(self) -> str:
        """Markdown for the docs page: what one input of this task looks like."""
        task, limits = self.task, self.limits
        example = self.example_input()
        labels = ", ".join(task.label_names) if task.label_names else "a score"
        return (
            f"Serving task **{task.name}** ({task.description}) — predicts {labels}.\n\n"
            f"Each input is `{json.dumps(example)}`, or a list of {len(task.fields)} "
            f"string(s) in that order. At most {limits.max_batch} inputs per request and "
            f"{limits.max_chars} characters per field. When {limits.max_queue} inputs are "
            f"already waiting, or no answer is ready within {limits.timeout:g} s, the server "
            "answers 503 with a Retry-After header."
        )

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of one input, exactly what ``Task.parse_input`` accepts for this task."""
        task, limits = self.task, self.limits

        def text(name: str) -> dict[str, Any]:
            if task.name == "copa" and name == "question":
                return {"type": "string", "enum": ["cause", "effect"]}
            return {
                "type": "string",
                "minLength": 1,
                "maxLength": limits.max_chars,
                "pattern": NOT_ONLY_SPACE,
            }

        if task.label_names is None:
            label: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}]}
        else:
            count = len(task.label_names)
            label = {
                "anyOf": [
                    {"type": "string", "enum": list(task.label_names)},
                    {"type": "integer", "minimum": 0, "maximum": count - 1},
                    {"type": "null"},
                ]
            }
        label["description"] = "Optional gold label, echoed back; not used to predict."
        forms: list[dict[str, Any]] = [
            {
                "type": "object",
                "title": f"{task.name} input",
                "properties": {name: text(name) for name in task.fields}
                | {"idx": {"description": "Optional id, echoed back."}, "label": label},
                "required": list(task.fields),
            },
            {
                "type": "array",
                "title": "texts in field order",
                "prefixItems": [text(name) for name in task.fields],
                "minItems": len(task.fields),
                "maxItems": len(task.fields),
            },
        ]
        if len(task.fields) == 1:
            forms.append({**text(task.fields[0]), "title": "the text"})
        return {"anyOf": forms}


def create_app(
    model: RetriKT | str | os.PathLike,
    max_batch: int = Limits.max_batch,
    max_chars: int = Limits.max_chars,
    *,
    max_queue: int | None = None,
    timeout: float = Limits.timeout,
    body_timeout: float = Limits.body_timeout,
    batch_wait_ms: float = Limits.batch_wait_ms,
) -> FastAPI:
    """The FastAPI app serving ``model``: a loaded ``RetriKT`` or a folder loaded at startup.

    ``max_queue`` defaults to four full batches. Passing a folder defers the (seconds-long)
    load to the app's startup, so importing or building the app stays cheap; ``retrikt
    serve`` passes a loaded model instead so that a bad folder fails with a one-line error
    before the server binds its port.
    """
    limits = Limits(
        max_batch,
        max_chars,
        4 * max_batch if max_queue is None else max_queue,
        timeout,
        body_timeout,
        batch_wait_ms,
    )
    limits.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model
        if isinstance(loaded, str | os.PathLike):
            from retrikt.student_folder import load_student

            logger.info("loading the student from %s", loaded)
            loaded = await run_in_threadpool(load_student, loaded)
        service = _Service(loaded, limits)
        app.state.service = service
        app.description = service.describe_inputs()
        logger.info("serving task %s (%s)", service.task.name, _store_summary(loaded))
        worker = asyncio.create_task(service.work())
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    app = FastAPI(
        title="RetriKT",
        version=retrikt.__version__,
        summary="A small retrieval-augmented student that answers with explained predictions.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(_BodyGuard, limits=limits)
    _serve_docs(app)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The default schema, with the served task's real input contract and an example."""
        if app.openapi_schema is None:
            schema = default_openapi()
            service: _Service | None = getattr(app.state, "service", None)
            if service is not None:
                request = schema["components"]["schemas"]["PredictRequest"]
                request["properties"]["inputs"].update(
                    items=service.input_schema(), minItems=1, maxItems=limits.max_batch
                )
                request["examples"] = [{"inputs": [service.example_input()]}]
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, err: InputError) -> JSONResponse:
        return _error(err.status, err.message, err.errors, err.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if not content_type.split(";")[0].strip().lower().endswith("json"):
            return _error(
                415,
                f"the body must be JSON sent with 'Content-Type: application/json' "
                f"(got {content_type or 'no Content-Type'})",
            )
        problems = err.errors()
        bad_json = next((p for p in problems if p.get("type") == "json_invalid"), None)
        if bad_json is not None:
            reason = bad_json.get("ctx", {}).get("error", bad_json.get("msg"))
            position = bad_json["loc"][-1] if len(bad_json["loc"]) > 1 else "?"
            return _error(
                400, f"request body is not valid JSON: {reason} (at character {position})"
            )
        messages = []
        for problem in problems:
            where = ".".join(str(part) for part in problem["loc"][1:]) or "body"
            messages.append(f"{where}: {problem['msg']}")
        hint = 'the body must be a JSON object {"inputs": [...]}'
        return _error(422, f"{'; '.join(messages)} ({hint})")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400 and isinstance(err.__cause__, RecursionError):
            return _error(400, "request body is not valid JSON: nested too deeply")
        return _error(err.status_code, str(err.detail), headers=err.headers)  # 405 keeps Allow

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving %s", request.url.path)
        return _error(500, f"internal error ({type(err).__name__}); see the server log")

    bad_request = {
        400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
        408: {"model": ErrorResponse, "description": "The body did not arrive in time."},
        413: {"model": ErrorResponse, "description": "Too many inputs, or the body is too big."},
        415: {"model": ErrorResponse, "description": "The body is not sent as JSON."},
        422: {"model": ErrorResponse, "description": "Some inputs are invalid (listed by index)."},
        503: {
            "model": ErrorResponse,
            "description": "Overloaded: the queue is full or no answer came in time.",
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
    }

    @app.post("/predict", response_model=PredictResponse, responses=bad_request)
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        """Predict a batch: each answer has its label, probabilities and neighbours used."""
        service: _Service = request.app.state.service
        examples = service.validate(body.inputs)
        try:
            predictions = await service.predict(examples)
        except DataError as err:  # the model's own checks, in case they are stricter than ours
            raise InputError(422, str(err)) from None
        return {"predictions": predictions}

    @app.get("/health")
    async def health(request: Request) -> dict[str, str]:
        """Liveness: answers once the model is loaded (the server accepts no request before)."""
        return {"status": "ok", "task": request.app.state.service.task.name}

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        """Task, labels, store id and digest, model ids, retrieval settings and the limits."""
        return request.app.state.service.info()

    @app.get("/metrics")
    async def metrics(request: Request) -> dict[str, Any]:
        """Requests answered, model calls and how many inputs each batched, inputs waiting."""
        return request.app.state.service.metrics()

    return app


def clip_to_encoder(model: RetriKT, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``examples`` with each long field cut after the word holding its ``max_length``-th token.

    The encoder reads at most ``max_length`` tokens of each text, so the prediction is the
    same; but a tokenizer truncating a *pair* builds every combination of the two texts'
    overflow windows: one pair of 20,000-character fields took 5 s and 4 GB, four took 34 s
    and 15 GB (2 shared cores). Tokenizing each long field alone is linear.
    """
    tokenizer = getattr(getattr(model, "encoder", None), "tokenizer", None)
    fields = model.task.fields
    long = [(row, name) for row, ex in enumerate(examples) for name in fields
            if len(ex[name]) > CLIP_ABOVE_CHARS]  # fmt: skip
    if tokenizer is None or not long:
        return examples
    limit = model.config.max_length
    encoded = tokenizer(
        [examples[row][name] for row, name in long],
        add_special_tokens=False,
        truncation=True,
        max_length=limit,
        return_offsets_mapping=True,
    )
    clipped = [dict(example) for example in examples]
    for (row, name), ids, offsets in zip(
        long, encoded["input_ids"], encoded["offset_mapping"], strict=True
    ):
        if len(ids) < limit:
            continue
        text = clipped[row][name]
        space = _SPACE.search(text, offsets[-1][1])  # keep the whole last word
        clipped[row][name] = text[: space.start()] if space else text
    return clipped


def _serve_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the packaged assets: no CDN, so it works offline."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def _public_id(name: str) -> str:
    """A model id as a client may see it: preset names as they are, folders by name only."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


def _store_summary(model: RetriKT) -> str:
    store = model.store
    return "no retrieval" if store is None else f"store of {len(store):,} entries"
