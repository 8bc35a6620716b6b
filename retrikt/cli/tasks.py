"""``retrikt tasks`` and ``retrikt inspect-data``: the benchmark, and what a data folder holds."""

from __future__ import annotations

import argparse
import json

from retrikt.tasks import TASKS, get_task


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "tasks",
        help="list the SuperGLUE / GLUE tasks with their type, labels and official metrics",
    )
    sub.set_defaults(func=list_tasks)

    sub = subparsers.add_parser(
        "inspect-data",
        help="print split sizes and label distribution of a task's data files",
        description=(
            "Read every split of a task from the data folder (laid out as the official "
            "releases: <data>/superglue/CB/train.jsonl, <data>/glue/MRPC/dev.tsv, ...) and "
            "report sizes and label counts. Fails with the file and line of any malformed "
            "record or unknown label, and with the expected path when a split is missing."
        ),
    )
    sub.add_argument(
        "--task",
        required=True,
        help=f"one of: {', '.join(TASKS)}; or a task spec file (retrikt task init)",
    )
    sub.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(func=inspect_data)


def list_tasks(args: argparse.Namespace) -> int:
    print(f"{'task':9} {'benchmark':9} {'type':16} {'labels':38} metrics")
    for task in TASKS.values():
        labels = ", ".join(task.label_names) if task.label_names else "score 0-5"
        print(
            f"{task.name:9} {task.benchmark:9} {task.task_type:16} {labels:38} "
            f"{', '.join(task.metric_names)}"
        )
    return 0


def inspect_data(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    report = {split: task.describe_split(task.read(split, args.data_dir)) for split in task.splits}
    if args.json:
        print(json.dumps({"task": task.name, "splits": report}, indent=2))
        return 0
    print(f"{task.name}: {task.description}")
    for split, info in report.items():
        detail = info.get("labels") or {
            k: info[k] for k in ("label_mean", "label_min", "label_max") if k in info
        }
        print(f"  {split:10} {info['examples']:6} examples  {detail}")
    return 0
