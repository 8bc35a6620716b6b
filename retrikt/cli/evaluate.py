"""``retrikt evaluate``: score a trained student on a split with the task's official metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "evaluate",
        help="score a trained student on a task split with the official metrics",
        description=(
            "Load a student folder written by 'retrikt train-student', predict every example "
            "of the split (validation by default) and print the task's official metrics "
            "(e.g. CB accuracy and macro-F1, STS-B Pearson and Spearman) as JSON."
        ),
    )
    sub.add_argument("--task", required=True, help="task name (must match the student's)")
    sub.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    sub.add_argument("--model", required=True, help="student folder")
    sub.add_argument("--split", default="validation", choices=("train", "validation"))
    sub.add_argument("--batch-size", type=int, default=32)
    sub.add_argument("--out", help="also write the metrics to this JSON file")
    sub.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.student import RetriKT, evaluate_model
    from retrikt.tasks import get_task
    from retrikt.training import set_threads, write_results

    set_threads(args.threads)
    task = get_task(args.task)
    model = RetriKT.from_pretrained(args.model)
    examples = task.read(args.split, args.data_dir)
    metrics = evaluate_model(model, task, examples, args.batch_size)
    result = {
        "task": task.name,
        "split": args.split,
        "examples": len(examples),
        "model": args.model,
        "metrics": metrics,
    }
    if args.out:
        write_results(Path(args.out), **result)
    print(json.dumps(result, indent=2))
    return 0
