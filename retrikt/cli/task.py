"""``retrikt task init``: define a task from your own data files and write its spec."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from retrikt.errors import RetriktError

DESCRIPTION = """\
Read your training file (and validation file, or carve validation out of train with
--val-fraction), infer what you did not say, check every row, and write a task spec
(YAML or JSON) that every command takes as --task FILE, wherever a built-in task name goes.

  files     .csv, .tsv, .jsonl or .parquet; with a network also hub:DATASET[:CONFIG][@SPLIT]
            (a Hugging Face dataset). Relative paths in the spec are relative to its folder.
  inferred  the task type (text or a few whole numbers: classes; other numbers: scores), the
            label names (sorted) or score range, the text column when there is only one,
            the id column ('id' or 'idx'), metrics, and the question and generation template
            the LLM reads; each is logged, with the majority class and the text lengths.
            Edit the written file to change any of them (label_words, question, template...).
  checked   unknown columns, validation labels that train does not have, a label column
            mixing numbers and text, duplicate ids, scores outside the range, empty splits.
            Any of them is an error naming file, line and field, and nothing is written.
"""

EPILOG = """\
example:
  retrikt task init --train tickets.csv --val-fraction 0.2 --text-field body \\
      --label-field queue --out tickets.yaml
  retrikt inspect-data --task tickets.yaml
  retrikt build-store --task tickets.yaml --out knowledge_store/tickets ...
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from retrikt.config import add_arguments
    from retrikt.user_task import TaskSpec

    sub = subparsers.add_parser(
        "task",
        help="define a task from your own files (CSV, TSV, JSONL, Parquet): task init",
        description="Define a task from your own data: 'retrikt task init --help'.",
    )
    actions = sub.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="infer and check a task from your files, and write its spec",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(init, TaskSpec, required=("train",))
    init.add_argument("--out", required=True, help="spec file to write: .yaml, .yml or .json")
    init.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    init.set_defaults(func=init_task)


def init_task(args: argparse.Namespace) -> int:
    from retrikt.config import from_args
    from retrikt.tasks import SPEC_SUFFIXES
    from retrikt.user_task import TaskSpec, name_from

    out = Path(args.out)
    if out.suffix.lower() not in SPEC_SUFFIXES:
        raise RetriktError(f"--out {out}: a task spec ends in {', '.join(SPEC_SUFFIXES)}")
    if out.exists() and not args.overwrite:
        raise RetriktError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise RetriktError(f"--out {out}: folder {out.parent} does not exist")
    spec = from_args(TaskSpec, args)
    spec = replace(spec, name=spec.name or name_from(out)).complete()
    task = spec.build()
    # Every row of every split is read and checked before anything is written.
    report = {split: task.describe_split(task.read(split)) for split in task.splits}
    spec.save(out)
    print(json.dumps({"spec": str(out), "task": task.name, "task_type": spec.task_type,
                      "fields": list(task.fields), "splits": report}, indent=1))  # fmt: skip
    print(f"use it as: --task {out}")
    return 0
