"""``retrikt evaluate``: official metrics for one trained student, or the comparison harness.

Two forms share the command because they answer the same question at two sizes:

- ``--model DIR --task T``: score one student folder on a split and print the metrics;
- ``--tasks T1,T2 --methods ... --seeds ... --name NAME``: the harness
  (:mod:`retrikt.harness`), which trains and scores RetriKT and its baselines per task and seed
  and writes ``experiments/results/NAME.md/.json/.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from retrikt.errors import RetriktError

EPILOG = """\
examples:
  # one student, validation split
  retrikt evaluate --task cb --data-dir ../shared/data --model runs/cb-student
  # the results table: every method, three seeds, cached and resumable
  retrikt evaluate --tasks cb,copa,rte,mrpc,cola,stsb --seeds 0,1,2 --scale demo \\
      --methods llm-zeroshot,llm-prompt,student-ft,student-kd,retrikt,knn-only,setfit \\
      --name table --data-dir ../shared/data
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from retrikt import harness

    sub = subparsers.add_parser(
        "evaluate",
        help="score a student, or run the RetriKT-vs-baselines harness over tasks and seeds",
        description=(
            "With --model: load a student folder written by 'retrikt train-student', predict "
            "every example of the split (validation by default) and print the task's official "
            "metrics (e.g. CB accuracy and macro-F1, STS-B Pearson and Spearman) as JSON. "
            "With --tasks: run the evaluation harness (each method trained and scored per task "
            "and seed, artefacts cached by config hash so a rerun only redoes what changed) "
            "and write a Markdown/JSON/PNG results table."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    sub.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    single = sub.add_argument_group("trained students (--model)")
    single.add_argument(
        "--model",
        action="append",
        default=[],
        help="student folder; repeat to compare several students of one task",
    )
    single.add_argument("--task", help="task name (default: the students' own)")
    single.add_argument("--split", default="validation", choices=("train", "validation"))
    single.add_argument("--batch-size", type=int, default=32)
    single.add_argument("--out", help="also write the metrics to this JSON file")
    single.add_argument(
        "--format",
        choices=("json", "table"),
        help="what to print: JSON (default for one model) or a Markdown table (for several)",
    )
    harness.add_arguments(sub.add_argument_group("the harness (--tasks)"))
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model and args.tasks:
        raise RetriktError("give either --model (one student) or --tasks (the harness), not both")
    if args.tasks:
        from retrikt import harness

        return harness.run(args)
    if not args.model:
        raise RetriktError(
            "nothing to evaluate: give --model DIR (one student) or --tasks T1,T2 --name NAME "
            "(the harness); see 'retrikt evaluate --help'"
        )
    return evaluate_students(args)


def evaluate_students(args: argparse.Namespace) -> int:
    from retrikt.student import RetriKT, evaluate_model
    from retrikt.tasks import get_task
    from retrikt.training import set_threads

    set_threads(args.threads)
    results = []
    for folder in args.model:
        model = RetriKT.from_pretrained(folder)
        task = get_task(args.task or model.task.name)
        if task.name != model.task.name:
            raise RetriktError(f"{folder} is a {model.task.name} student, not {task.name}")
        examples = task.read(args.split, args.data_dir)
        started = time.perf_counter()
        metrics = evaluate_model(model, task, examples, args.batch_size)
        results.append({
            "task": task.name,
            "split": args.split,
            "examples": len(examples),
            "model": folder,
            "retrieval": model.config.retrieval is not None,
            "metrics": metrics,
            "examples_per_s": round(len(examples) / (time.perf_counter() - started), 1),
        })  # fmt: skip
    payload: Any = results[0] if len(results) == 1 else results
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
    if (args.format or ("json" if len(results) == 1 else "table")) == "json":
        print(json.dumps(payload, indent=2))
    else:
        print(markdown_table(results))
    return 0


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per student: its official metrics (x100) and prediction speed."""
    names = list(results[0]["metrics"])
    lines = [
        f"{results[0]['task']} {results[0]['split']} ({results[0]['examples']} examples)",
        "",
        "| model | retrieval | " + " | ".join(names) + " | examples/s |",
        "|---|---|" + "---:|" * (len(names) + 1),
    ]
    for r in results:
        scores = " | ".join(f"{100 * r['metrics'][name]:.1f}" for name in names)
        retrieval = "yes" if r["retrieval"] else "no"
        lines.append(f"| {r['model']} | {retrieval} | {scores} | {r['examples_per_s']} |")
    return "\n".join(lines)
