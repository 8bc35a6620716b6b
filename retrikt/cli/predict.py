"""``retrikt predict``: predict with a trained student (JSON lines in, JSON lines out)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from retrikt.errors import DataError, RetriktError
from retrikt.tasks import Task

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "predict",
        help="predict with a trained student (JSON lines in, JSON lines out)",
        description=(
            "Read one input per line (JSON: an object in the task's field names, e.g. "
            '{"premise": ..., "hypothesis": ...}; a string for single-text tasks; or a '
            "[text, pair] list) and write one JSON line per input with the predicted label, "
            "its probabilities (or score), the neighbours that explain it and, for a store built "
            "with --rationales, their rationales (explanation: those of the neighbours that "
            "vote for the answer, heaviest first). Blank lines "
            "are skipped. A bad line stops the run with its line number and exit code 1, "
            'unless --skip-invalid, which writes {"error": ..., "line": N} in its place. '
            "An output file is only written when the run succeeds."
        ),
    )
    sub.add_argument("--model", required=True, metavar="DIR", help="trained student folder")
    sub.add_argument(
        "--input", default="-", metavar="FILE", help="JSON lines to read, '-' for stdin (default)"
    )
    sub.add_argument(
        "--output", default="-", metavar="FILE", help="where to write, '-' for stdout (default)"
    )
    sub.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="inputs per forward pass (default: %(default)s)",
    )
    sub.add_argument(
        "--skip-invalid",
        action="store_true",
        help='write {"error": ..., "line": N} for a bad line instead of stopping',
    )
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise RetriktError("--batch-size must be at least 1")
    from tqdm import tqdm

    from retrikt.student_folder import load_student

    # Open both ends before the slow model load, so a wrong path fails at once.
    with _open_input(args.input) as source, _open_output(args.output) as sink:
        model = load_student(args.model)
        name = _where(args.input, "stdin")
        written = invalid = 0
        pending: list[tuple[int, dict[str, Any] | DataError]] = []

        def flush() -> None:
            nonlocal written
            examples = [item for _, item in pending if not isinstance(item, DataError)]
            predictions = iter(model.predict(examples, batch_size=args.batch_size))
            for line, item in pending:
                if isinstance(item, DataError):
                    record = {"error": str(item), "line": line}
                else:
                    record = next(predictions).to_dict()
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += len(pending)
            pending.clear()

        lines = tqdm(source, desc="predict", unit=" lines", disable=None)
        for line, item in _parse_lines(lines, name, model.task):
            if isinstance(item, DataError):
                if not args.skip_invalid:
                    raise DataError(f"{item} (fix the line, or pass --skip-invalid)")
                invalid += 1
            pending.append((line, item))
            if len(pending) >= args.batch_size:
                flush()
        flush()
    if invalid:
        logger.warning("%d of %d lines were invalid and written as errors", invalid, written)
    elif not written:
        logger.warning("%s held no inputs; nothing was predicted", name)
    logger.info("wrote %d predictions to %s", written - invalid, _where(args.output))
    return 0


def _parse_lines(
    lines: Iterator[str], name: str, task: Task
) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(line number, checked example or the DataError that says what is wrong with it)."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{name}:{number}"
        try:
            yield number, task.parse_input(json.loads(text), where)
        except json.JSONDecodeError as err:
            yield number, DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
        except RecursionError:
            yield number, DataError(f"{where}: JSON nested too deeply (an input is flat)")
        except DataError as err:
            yield number, err


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[str]]:
    if path != "-" and not Path(path).is_file():
        raise DataError(f"--input {path}: no such file (give a JSON-lines file, or '-' for stdin)")
    with contextlib.ExitStack() as stack:
        fh = sys.stdin if path == "-" else stack.enter_context(open(path, encoding="utf-8"))
        try:
            yield fh
        except UnicodeDecodeError as err:
            raise DataError(f"{_where(path, 'stdin')} is not UTF-8 text ({err.reason})") from None


@contextlib.contextmanager
def _open_output(path: str) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed onto ``path`` only if the whole run succeeds."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    if not target.parent.is_dir():
        raise RetriktError(f"--output {path}: folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _where(path: str, dash: str = "stdout") -> str:
    return dash if path == "-" else path
