"""The ``retrikt`` command line: one subcommand per user-facing job.

Each subcommand lives in its own module under ``retrikt.cli`` and exposes
``register(subparsers)``; heavy imports (torch, transformers, faiss) happen inside the
command functions so that ``retrikt --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from retrikt.errors import RetriktError

# Order is the order shown by --help: the pipeline first, then the utilities.
_COMMAND_MODULES = [
    "task",
    "train_teacher",
    "build_store",
    "train_student",
    "search_student",
    "export",
    "predict",
    "evaluate",
    "serve",
    "store",
    "models",
    "tasks",
    "doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrikt",
        description=(
            "RetriKT: retrieval-based knowledge transfer. Build a knowledge store of "
            "LLM-written, teacher-labelled examples, train a tiny student that retrieves "
            "from it, and serve or evaluate that student on CPU."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"retrikt.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # one INFO line per process
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RetriktError as err:
        logging.getLogger("retrikt").error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
