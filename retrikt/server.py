"""HTTP API for a trained RetriKT student (FastAPI), run by ``retrikt serve``.

Endpoints: ``POST /predict`` (a batch of inputs), ``GET /health``, ``GET /info`` and the
OpenAPI docs at ``/docs``. Every input is checked with ``Task.parse_input`` before the
model runs, so a bad request gets a 4xx JSON error naming the input index and field, and
never reaches (or breaks) the model. Every error, including 404/405/500, has the same shape:
``{"error": "<what is wrong>", "errors": [{"index": i, "message": ...}]}`` (``errors`` only
when individual inputs are at fault).

Inference is CPU-bound and the model is shared: one worker task runs it in a thread, one
call at a time, on every request waiting at that moment batched together (see ``_Service``).
The event loop stays free to answer ``/health`` and to reject bad requests while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import retrikt
from retrikt.errors import DataError, RetriktError
from retrikt.tasks import TASKS, Task

if TYPE_CHECKING:
    from retrikt.student import RetriKT

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
#: The longest field ``RetriKT.predict`` accepts (``Task.parse_input``'s default), which is
#: also the most a server may allow; the encoder reads only the first 128 tokens anyway.
DEFAULT_MAX_CHARS: int = inspect.signature(Task.parse_input).parameters["max_chars"].default


class PredictRequest(BaseModel):
    """A batch of inputs in the served task's field names (see ``GET /info``)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt "input" is an error, not ignored
    inputs: list[Any] = Field(
        description="Each input is an object with the task's fields, a plain string "
        "(single-text tasks) or a list of strings in field order (e.g. a text pair)."
    )


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(
        description="One per input, in order: label, probs (or score for regression) and "
        "the neighbours used, each with its text, teacher label and similarity."
    )


class InputProblem(BaseModel):
    index: int
    message: str


class ErrorResponse(BaseModel):
    error: str
    errors: list[InputProblem] | None = None


class InputError(Exception):
    """A request the client must fix; carries the HTTP status and the problems found."""

    def __init__(self, status: int, message: str, errors: list[InputProblem] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


def _error(status: int, message: str, errors: list[InputProblem] | None = None) -> JSONResponse:
    body = ErrorResponse(error=message, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(status_code=status, content=body)


@dataclass
class _Job:
    """One request's checked inputs, and the future its predictions are delivered to."""

    examples: list[dict[str, Any]]
    future: asyncio.Future


class _Service:
    """The loaded model, its limits, and the one worker that runs it.

    Requests queue their inputs; the worker takes every request waiting when it is free (up
    to ``max_batch`` inputs together), runs them as one batch in a thread, and hands each
    request its share. The model thus runs one call at a time (safe, and no oversubscribed
    cores), and under concurrent load one forward pass serves many requests instead of
    each waiting for its own turn.
    """

    def __init__(self, model: RetriKT, max_batch: int, max_chars: int):
        self.model, self.task = model, model.task
        self.max_batch, self.max_chars = max_batch, max_chars
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()

    def validate(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """Parse every input, reporting all bad ones at once so a client can fix them together."""
        if not inputs:
            raise InputError(422, "'inputs' is empty: send at least one input")
        if len(inputs) > self.max_batch:
            raise InputError(
                413,
                f"batch of {len(inputs)} inputs is larger than this server's limit of "
                f"{self.max_batch}: split it into smaller requests",
            )
        examples, problems = [], []
        for index, item in enumerate(inputs):
            try:
                examples.append(self.task.parse_input(item, f"inputs[{index}]", self.max_chars))
            except DataError as err:
                problems.append(InputProblem(index=index, message=str(err)))
        if problems:
            first = problems[0].message
            more = f" (and {len(problems) - 1} more invalid inputs)" if len(problems) > 1 else ""
            raise InputError(422, first + more, problems)
        return examples

    async def predict(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        job = _Job(examples, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return [p.to_dict() for p in await job.future]

    async def work(self) -> None:
        """Run queued requests in batches, forever (cancelled at shutdown)."""
        carry: _Job | None = None
        while True:
            jobs = [carry or await self.queue.get()]
            carry, size = None, len(jobs[0].examples)
            while not self.queue.empty():
                job = self.queue.get_nowait()
                if size + len(job.examples) > self.max_batch:
                    carry = job  # first in the next batch
                    break
                jobs.append(job)
                size += len(job.examples)
            jobs = [job for job in jobs if not job.future.done()]  # drop requests given up on
            if not jobs:
                continue
            examples = [example for job in jobs for example in job.examples]
            try:
                predictions = await run_in_threadpool(
                    self.model.predict, examples, batch_size=self.max_batch
                )
            except Exception as err:  # each request reports it (as a 422 or a 500)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            logger.debug("ran %d requests as one batch of %d inputs", len(jobs), len(examples))
            start = 0
            for job in jobs:
                if not job.future.done():
                    job.future.set_result(predictions[start : start + len(job.examples)])
                start += len(job.examples)

    def info(self) -> dict[str, Any]:
        model, task, store = self.model, self.task, self.model.store
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
                "config": asdict(model.config),
                "limits": {"max_batch": self.max_batch, "max_chars": self.max_chars},
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
        task = self.task
        example = self.example_input()
        labels = ", ".join(task.label_names) if task.label_names else "a score"
        return (
            f"Serving task **{task.name}** ({task.description}) — predicts {labels}.\n\n"
            f"Each input is `{json.dumps(example)}`, or a list of {len(task.fields)} "
            f"string(s) in that order. At most {self.max_batch} inputs per request and "
            f"{self.max_chars} characters per field."
        )


def create_app(
    model: RetriKT | str | os.PathLike,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> FastAPI:
    """The FastAPI app serving ``model``: a loaded ``RetriKT`` or a folder loaded at startup.

    Passing a folder defers the (seconds-long) load to the app's startup, so importing or
    building the app stays cheap; ``retrikt serve`` passes a loaded model instead so that a
    bad folder fails with a one-line error before the server binds its port.
    """
    check_limits(max_batch, max_chars)
    # Worst case of a valid full batch: every field of the widest task (COPA's 4) at
    # max_chars, each character \u-escaped (6 bytes); larger bodies are refused unread.
    widest = max(len(task.fields) for task in TASKS.values())
    max_body = max_batch * widest * (6 * max_chars + 64) + 65_536

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model
        if isinstance(loaded, str | os.PathLike):
            from retrikt.student import RetriKT

            logger.info("loading the student from %s", loaded)
            loaded = await run_in_threadpool(RetriKT.from_pretrained, loaded)
        service = _Service(loaded, max_batch, max_chars)
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
    )

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The default schema, with the served task's description and a valid example."""
        if app.openapi_schema is None:
            schema = default_openapi()
            service: _Service | None = getattr(app.state, "service", None)
            if service is not None:
                request = schema["components"]["schemas"]["PredictRequest"]
                request["examples"] = [{"inputs": [service.example_input()]}]
        return app.openapi_schema

    app.openapi = openapi

    def too_big() -> JSONResponse:
        return _error(
            413,
            f"request body is larger than this server's limit of {max_body:,} bytes "
            f"(at most {max_batch} inputs of at most {max_chars} characters per field)",
        )

    @app.middleware("http")
    async def refuse_big_bodies(request: Request, call_next):
        # The route's max_body_size also stops bodies without a Content-Length as they
        # stream in, but answers an announced oversize body in plain text: answer it here.
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            return too_big()
        return await call_next(request)

    @app.exception_handler(InputError)
    async def on_input_error(request: Request, err: InputError) -> JSONResponse:
        return _error(err.status, err.message, err.errors)

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
        if err.status_code == 413:  # a streamed body went over max_body_size
            return too_big()
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving %s", request.url.path)
        return _error(500, f"internal error ({type(err).__name__}); see the server log")

    bad_request = {
        400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
        413: {"model": ErrorResponse, "description": "Too many inputs, or the body is too big."},
        415: {"model": ErrorResponse, "description": "The body is not sent as JSON."},
        422: {"model": ErrorResponse, "description": "Some inputs are invalid (listed by index)."},
    }

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=bad_request,
        max_body_size=max_body,
    )
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
        """Task, labels, store size, model ids, retrieval settings and this server's limits."""
        return request.app.state.service.info()

    return app


def check_limits(max_batch: int, max_chars: int) -> None:
    """Refuse limits the server cannot honour, naming the command-line options."""
    if max_batch < 1:
        raise RetriktError(f"--max-batch must be at least 1, got {max_batch}")
    if not 1 <= max_chars <= DEFAULT_MAX_CHARS:
        raise RetriktError(
            f"--max-chars must be between 1 and {DEFAULT_MAX_CHARS} (the longest field "
            f"RetriKT.predict accepts), got {max_chars}"
        )


def _store_summary(model: RetriKT) -> str:
    store = model.store
    return "no retrieval" if store is None else f"store of {len(store):,} entries"
