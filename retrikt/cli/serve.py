"""``retrikt serve``: serve a trained student over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging

from retrikt.errors import RetriktError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "serve",
        help="serve a trained student over HTTP",
        description=(
            "Serve a trained student (a folder written by 'retrikt train-student') over HTTP. "
            'POST /predict takes {"inputs": [...]} (objects in the task\'s field names, plain '
            'strings, or [text, pair] lists) and answers {"predictions": [...]} with each '
            "label, its probabilities and the neighbours used; GET /health, GET /info (task, "
            "labels, store id and digest, model ids, limits); interactive docs at /docs "
            "(served from packaged assets, so they work offline). Bad inputs get a 4xx JSON "
            "error naming the input and field; GET /metrics counts the inputs each model call "
            "batched. The model is loaded once; requests that arrive while it is busy, or "
            "within --batch-wait-ms of each other, are run together as one batch. Load is shed "
            "rather than queued without bound: see the limits below."
        ),
    )
    sub.add_argument("--model", required=True, metavar="DIR", help="trained student folder")
    sub.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    sub.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    limits = sub.add_argument_group("limits (all shown by GET /info)")
    limits.add_argument(
        "--max-batch",
        type=int,
        default=64,
        metavar="N",
        help="most inputs per request; larger batches get HTTP 413 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-chars",
        type=int,
        default=20_000,
        metavar="N",
        help="most characters per input field, at most 20000 (what the student accepts); "
        "longer get HTTP 422 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="most inputs waiting for the model, all requests together; a request that does "
        "not fit gets HTTP 503 with Retry-After at once (default: 4 x --max-batch)",
    )
    limits.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a queued request may wait for its answer before HTTP 503 with "
        "Retry-After (default: %(default)s)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a client has to send its whole request body before HTTP 408 "
        "(default: %(default)s)",
    )
    sub.add_argument(
        "--batch-wait-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="when a request finds the model idle, how long it waits for more requests to "
        "run in the same batch, up to --max-batch inputs (0: at once; under load requests "
        "are batched without waiting; default: %(default)s)",
    )
    sub.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise RetriktError(f"--port {args.port} is not a TCP port (0-65535)")
    import uvicorn

    from retrikt.server import Limits, create_app
    from retrikt.student_folder import load_student

    max_queue = 4 * args.max_batch if args.max_queue is None else args.max_queue
    Limits(
        args.max_batch,
        args.max_chars,
        max_queue,
        args.timeout,
        args.body_timeout,
        args.batch_wait_ms,
    ).check()
    # Load here rather than in the app's startup, so a bad folder is a one-line error
    # before the port is bound, not a traceback from inside uvicorn.
    model = load_student(args.model)
    app = create_app(
        model,
        max_batch=args.max_batch,
        max_chars=args.max_chars,
        max_queue=max_queue,
        timeout=args.timeout,
        body_timeout=args.body_timeout,
        batch_wait_ms=args.batch_wait_ms,
    )
    logger.info("serving %s on http://%s:%d (docs at /docs)", args.model, args.host, args.port)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, access_log=not args.no_access_log, log_config=None
    )
    try:
        uvicorn.Server(config).run()
    except SystemExit:  # uvicorn exits this way when it cannot bind, after logging why
        raise RetriktError(
            f"could not serve on {args.host}:{args.port} (see the error above; if the port is "
            "in use, pick another with --port)"
        ) from None
    return 0
