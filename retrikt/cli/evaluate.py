"""``retrikt evaluate``: official metrics for one trained student, or the comparison harness.

Two forms share the command because they answer the same question at two sizes:

- ``--model DIR --task T``: score one student folder on a split and print the metrics;
- ``--tasks T1,T2 --methods ... --seeds ... --name NAME``: the harness
  (:mod:`retrikt.harness`), which trains and scores RetriKT and its baselines per task and seed
  and writes ``experiments/results/NAME.md/.json/.png``. Its settings are generated from
  :class:`~retrikt.harness.scales.HarnessConfig` and, as overrides of the scale preset, from
  :class:`~retrikt.harness.scales.Scale`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from retrikt.config import add_arguments, from_args
from retrikt.errors import RetriktError
from retrikt.harness.methods import METHODS
from retrikt.harness.scales import SCALES, HarnessConfig, Scale
from retrikt.tasks import get_task

#: Scale fields that are not flags: the preset's name, and the batch size (``--batch-size``
#: is the scoring batch of the --model form).
_NOT_SCALE_FLAGS = ("name", "batch_size")

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
    single.add_argument("--task", help="task name or task spec file (default: the students' own)")
    single.add_argument("--split", default="validation", choices=("train", "validation"))
    single.add_argument("--batch-size", type=int, default=32)
    single.add_argument("--out", help="also write the metrics to this JSON file")
    single.add_argument(
        "--format",
        choices=("json", "table"),
        help="what to print: JSON (default for one model) or a Markdown table (for several)",
    )
    add_harness_arguments(sub.add_argument_group("the harness (--tasks)"))
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model and args.tasks:
        raise RetriktError("give either --model (one student) or --tasks (the harness), not both")
    if args.tasks:
        return run_harness(args)
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
        task = get_task(args.task) if args.task else model.task
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


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_harness_arguments(parser: argparse._ActionsContainer) -> None:
    """The multi-task options of ``retrikt evaluate`` (the harness form)."""
    parser.add_argument("--tasks", help="comma-separated tasks, e.g. cb,copa,rte,mrpc,cola,stsb")
    parser.add_argument(
        "--methods",
        default="student-ft,knn-only,setfit",
        help=f"comma-separated methods among: {', '.join(METHODS)}",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="demo",
        help="data and compute per run (stated in the results file); the flags below that "
        "name a scale setting override the preset",
    )
    add_arguments(parser, HarnessConfig)
    parser.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="the store for TASK: used as it is, or, when DIR holds none yet, built there "
        "first (the scale's settings, labelled by --teacher). Results that use it are keyed by "
        "its identity: keep the folder and they are found again wherever it goes",
    )
    parser.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="a tuned teacher for TASK (a `retrikt train-teacher` folder): it labels the "
        "stores and is the `teacher` row (without one the LLM's soft prompt labels them)",
    )
    add_arguments(parser, Scale, exclude=_NOT_SCALE_FLAGS)


def harness_config(args: argparse.Namespace) -> HarnessConfig:
    """The harness run the flags describe (the scale preset with the overrides given)."""
    if not args.tasks or not getattr(args, "name", None):
        raise RetriktError("the multi-task form of 'retrikt evaluate' needs --tasks and --name")
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(Scale)
        if f.name not in _NOT_SCALE_FLAGS and hasattr(args, f.name)
    }
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise RetriktError(
            f"--seeds must be comma-separated integers, got {args.seeds!r}"
        ) from None
    scale = SCALES[args.scale]
    return from_args(
        HarnessConfig,
        args,
        tasks=[get_task(t).name for t in _csv(args.tasks)],
        methods=_csv(args.methods),
        seeds=seeds,
        scale=replace(scale, name=f"{scale.name}*" if overrides else scale.name, **overrides),
        stores=_paths_by_task(args.store, "--store"),
        teachers=_paths_by_task(args.teacher, "--teacher"),
        command=_command_line(),
    )


def _paths_by_task(items: list[str], flag: str) -> dict[str, Path]:
    """``TASK=DIR`` flags as {task name: folder}."""
    paths = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise RetriktError(f"{flag} expects TASK=DIR, got {item!r}")
        paths[get_task(task).name] = Path(path)
    return paths


def _command_line() -> str:
    """The command as typed, for the head of the results file."""
    program = Path(sys.argv[0])
    if program.name == "retrikt":
        head = ["retrikt"]
    elif program.name == "__main__.py":
        head = ["python", "-m", program.parent.name]
    else:
        head = ["python", str(program)]
    return shlex.join(head + sys.argv[1:])


def run_harness(args: argparse.Namespace) -> int:
    """The multi-task ``retrikt evaluate``: 0 if every run succeeded, else 1."""
    from retrikt.harness.report import write_report
    from retrikt.harness.running import run_harness as run_all

    config = harness_config(args)
    rows = run_all(config)
    paths = write_report(config, rows)
    print(paths["md"].read_text())
    return 1 if any(r["status"] == "failed" for r in rows) else 0
