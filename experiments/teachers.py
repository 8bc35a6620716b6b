"""Which teacher knows the task? Tune every candidate this machine can train and score it.

Issue 12: a store carries no more than its teacher knows, so the teacher must beat the student
it teaches. For every task and candidate this runs ``retrikt train-teacher`` (the whole
training split less a 10% held-out slice for early stopping; validation is scored once at
the end) in a process of its own, and records its wall time and peak memory (the child's
``ru_maxrss``). Next to it stands ``student-ft``: the harness's fine-tuned student at scale
``full`` (whole training split, whole validation split, 3 seeds), from the harness's
committed results (``experiments/results/units``).

Every unit is cached: a finished teacher folder is reused; a killed one resumes from its last
checkpoint (``train-teacher`` resumes), and the wall time of every attempt is summed. The
report is rewritten after every unit, so a partial run leaves a partial table::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/teachers.py --data-dir ../shared/data \\
        --tasks cb,copa,rte,mrpc,stsb,cola --threads 1

Teachers are written to ``experiments/cache/teachers/TASK/CANDIDATE``, ready for
``retrikt build-store --teacher DIR`` and ``retrikt evaluate --teacher TASK=DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from retrikt.cache import write_json_atomic
from retrikt.config import DefaultsHelpFormatter
from retrikt.harness.report import format_mean_sd, mean_sd
from retrikt.tasks import Task
from retrikt.teachers.config import PRECISIONS
from retrikt.teachers.loading import EVAL_RESULTS, TEACHER_CONFIG, TRAINING_LOG

logger = logging.getLogger("teachers")


@dataclass(frozen=True)
class Candidate:
    name: str
    model: str
    tuning: str
    extra: tuple[str, ...] = ()  # more train-teacher flags


CANDIDATES = {
    c.name: c
    for c in (
        Candidate("smollm2-lora", "smollm2-135m", "lora"),
        Candidate("smollm2-full", "smollm2-135m", "full"),
        # The non-LLM reference: a sentence encoder fine-tuned as a cross-encoder.
        Candidate("mpnet-full", "mpnet-base", "full"),
        # Half batches, two accumulated: the same step as the others in less memory (a batch
        # of 16 long CB pairs took 12 GB for SmolLM2 LoRA; Qwen is ~4x that model).
        Candidate("gemma-lora", "gemma-3-270m", "lora", ("--batch-size", "8", "--grad-accum", "2")),
        Candidate("qwen-lora", "qwen2.5-0.5b", "lora", ("--batch-size", "8", "--grad-accum", "2")),
    )
}

#: Training budget per task: small tasks get epochs; large ones are scored on the held-out
#: slice every ``eval_steps`` (early stopping and the best checkpoint) within ``max_steps``,
#: because one epoch of CoLA costs ~1 hour per 135M model on one core (teacher_cost.md).
BUDGETS: dict[str, tuple[str, ...]] = {
    "cb": ("--epochs", "3"),
    "copa": ("--epochs", "3"),
    # One epoch: Qwen LoRA costs ~25 s a step on one core here (~1 hour an epoch).
    "rte": ("--epochs", "1", "--eval-steps", "35"),
    "mrpc": ("--max-steps", "400", "--eval-steps", "100"),
    "stsb": ("--max-steps", "400", "--eval-steps", "100"),
    "cola": ("--max-steps", "400", "--eval-steps", "100"),
}


def teacher_command(task: str, candidate: Candidate, out: Path, args: argparse.Namespace) -> list:
    command = [sys.executable, "-m", "retrikt", "train-teacher", "--task", task]
    command += ["--model", candidate.model, "--tuning", candidate.tuning, "--out", str(out)]
    command += [*BUDGETS[task], *candidate.extra, "--threads", str(args.threads)]
    command += ["--precision", args.precision]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return command


def run_teacher(task: str, candidate: Candidate, args: argparse.Namespace) -> dict:
    """Train (or resume, or reuse) one teacher; returns its scores and costs."""
    out = Path(args.cache_dir) / "teachers" / task / candidate.name
    cost_path = out.with_suffix(".cost.json")  # beside the folder: train-teacher owns it
    cost = json.loads(cost_path.read_text()) if cost_path.is_file() else {"attempts": []}
    if not (out / TEACHER_CONFIG).is_file():
        command = teacher_command(task, candidate, out, args)
        logger.info("%s", shlex.join(command))
        started = time.perf_counter()
        process = subprocess.Popen(command)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        cost["attempts"].append(
            {
                "seconds": round(seconds, 1),
                "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
                "cpu": _cpu(args.precision),
            }
        )
        cost["command"] = shlex.join(command)
        write_json_atomic(cost_path, cost)
        if os.waitstatus_to_exitcode(status) != 0:
            return {"status": "failed", **cost}
    results = json.loads((out / EVAL_RESULTS).read_text())
    log = json.loads((out / TRAINING_LOG).read_text())
    steps = max((entry.get("step", 0) for entry in log), default=0)
    attempts = cost["attempts"]
    return {
        "status": "ok",
        "folder": str(out),
        "model": candidate.model,
        "tuning": candidate.tuning,
        "heldout": results["heldout"],
        "validation": results["validation"],
        "train_examples": results["train_examples"],
        "steps": steps,
        "minutes": round(sum(a["seconds"] for a in attempts) / 60, 1) if attempts else None,
        "peak_rss_gb": max((a["peak_rss_gb"] for a in attempts), default=None),
        "cpu": " + ".join(dict.fromkeys(a["cpu"] for a in attempts if "cpu" in a)) or None,
        "command": cost.get("command"),
    }


def student_ft(task: str, args: argparse.Namespace) -> dict | None:
    """``student-ft`` at scale ``full`` over the seeds, through the harness and its cache."""
    from retrikt.harness.running import run_harness
    from retrikt.harness.scales import SCALES, HarnessConfig

    config = HarnessConfig(
        tasks=[task],
        methods=["student-ft"],
        seeds=args.seeds,
        scale=SCALES["full"],
        name=f"teachers-student-ft-{task}",
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        results_dir=str(Path(args.cache_dir) / "reports"),  # the table here is teachers.md
        units_dir=str(Path(args.out).parent / "units"),  # the harness's committed results
        threads=args.threads,
    )
    rows = [r for r in run_harness(config) if r["status"] == "ok"]
    if not rows:
        return None
    names = list(rows[0]["metrics"])
    return {
        "seeds": len(rows),
        "metrics": {n: list(mean_sd([r["metrics"][n] for r in rows])) for n in names},
        "minutes": round(statistics.mean(r["train_seconds"] for r in rows) / 60, 1),
    }


def write_report(results: dict, args: argparse.Namespace) -> None:
    from retrikt.tasks import get_task

    lines = [
        "# Teachers: which LLM knows the task",
        "",
        "Made by these commands (every unit cached; rerun one to resume or extend it):",
        "",
        "```",
        *sorted(
            {
                "OMP_NUM_THREADS=1 .venv/bin/python experiments/teachers.py " + shlex.join(argv)
                for entry in results.values()
                for argv in entry.get("commands", [])
            }
        ),
        "```",
        "",
        "Each teacher is `retrikt train-teacher` (its command is in teachers.json) on the whole "
        "training split less a 10% held-out slice (early stopping and the best checkpoint "
        "are chosen on it), then scored once on the whole validation split. `student-ft` "
        "is the harness's fine-tuned minilm-l6 student at scale `full` (the whole training "
        "split, mean ± sd over seeds). Scores x100, the task's official metrics. Minutes "
        "and peak memory are of one process with one torch thread on a 2-core machine "
        "shared with other jobs, so times are upper bounds; *CPU* is the machine each "
        "teacher trained on and its arithmetic (`--precision`; by default bf16 autocast "
        "where that CPU has it and fp32 where not; compare times only within a CPU).",
        "",
    ]
    for task_name, entry in results.items():
        task = get_task(task_name)
        student = entry.get("student-ft")
        lines += [f"## {task_name}", ""]
        head = "| teacher | tuning | held-out | validation (" + ", ".join(task.metric_names)
        lines += [
            head + ") | vs student-ft | steps | minutes | peak GB | CPU |",
            "|---|---|---:|---|---:|---:|---:|---:|---|",
        ]
        if student:
            scores = ", ".join(
                format_mean_sd(100 * m, 100 * s, student["seeds"])
                for m, s in student["metrics"].values()
            )
            lines.append(
                f"| student-ft (minilm-l6, {student['seeds']} seed{'s' * (student['seeds'] != 1)}) "
                f"| full | | {scores} | | | "
                f"{student['minutes']} | | |"
            )
        for name, r in entry.get("teachers", {}).items():
            if r["status"] != "ok":
                lines.append(f"| {name} | {CANDIDATES[name].tuning} | {r['status']} ||||||||")
                continue
            scores = ", ".join(f"{100 * r['validation'][n]:.1f}" for n in task.metric_names)
            gap = ""
            if student:
                means = {n: m for n, (m, _) in student["metrics"].items()}
                gap = f"{100 * (score(task, r['validation']) - score(task, means)):+.1f}"
            lines.append(
                f"| {name} | {r['tuning']} | {100 * score(task, r['heldout']):.1f} | {scores} | "
                f"{gap} | {r['steps']} | {r['minutes']} | {r['peak_rss_gb']} | "
                f"{r.get('cpu') or 'not recorded'} |"
            )
        best = best_teacher(task, entry)
        if best:
            lines += ["", f"Best by held-out score (mean of the metrics): **{best}**."]
        lines += [f"\n{note}" for note in entry.get("notes", [])]  # observations between runs
        lines.append("")
    out = Path(args.out)
    out.write_text("\n".join(lines))
    write_json_atomic(out.with_suffix(".json"), results)


def score(task: Task, metrics: dict) -> float:
    """The mean of the task's official metrics (the harness's score)."""
    return statistics.mean(metrics[name] for name in task.metric_names)


def best_teacher(task: Task, entry: dict) -> str | None:
    """The candidate with the best held-out score: chosen without looking at validation."""
    ok = {n: r for n, r in entry.get("teachers", {}).items() if r["status"] == "ok"}
    if not ok:
        return None
    return max(ok, key=lambda n: score(task, ok[n]["heldout"]))


def best_flags(results: dict, tasks: list[str]) -> list[str]:
    """``--teacher TASK=DIR`` for the best measured teacher of each task that has one."""
    from retrikt.tasks import get_task

    flags = []
    for name in tasks:
        best = best_teacher(get_task(name), results.get(name, {}))
        if best:
            flags.append(f"--teacher {name}={results[name]['teachers'][best]['folder']}")
    return flags


def _cpu(precision: str) -> str:
    """This machine's CPU, the dtype train-teacher runs in on it and torch's kernels.

    Times depend on all three, and the weights too: a run gives the same weights again only on
    the same kernels and dtype (README, "Teachers that know the task").
    """
    from retrikt.doctor import cpu_features
    from retrikt.teachers.tuning import uses_bf16

    cpu = cpu_features()
    return f"{cpu['model']}, {'bf16' if uses_bf16(precision) else 'fp32'}, {cpu['kernels']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder holding superglue/ and glue/")
    parser.add_argument(
        "--tasks", default="cb,copa,rte,mrpc,stsb,cola", help="comma-separated task names"
    )
    parser.add_argument(
        "--teachers", default=",".join(CANDIDATES), help="comma-separated candidates to tune"
    )
    parser.add_argument("--seeds", default="0,1,2", help="student-ft seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="train-teacher's --precision (a teacher folder keeps the one it was trained with: "
        "give another --cache-dir to compare)",
    )
    parser.add_argument(
        "--cache-dir", default="experiments/cache", help="teachers go to CACHE_DIR/teachers/TASK/"
    )
    parser.add_argument(
        "--out", default="experiments/results/teachers.md", help="the report; .json beside it"
    )
    parser.add_argument("--no-student", action="store_true", help="teachers only")
    parser.add_argument(
        "--no-teachers",
        action="store_true",
        help="student-ft only (the teacher rows already in the report are kept; none is "
        "trained): fills the student column of tasks whose teachers' folders are gone",
    )
    parser.add_argument(
        "--print-best",
        action="store_true",
        help="print `--teacher TASK=DIR` flags of the best measured teachers (for `retrikt "
        "evaluate`) and exit",
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = Path(args.out).with_suffix(".json")
    if args.print_best:
        print(" ".join(best_flags(load_results(path), args.tasks.split(","))))
        return

    def record(task: str, teachers: dict | None = None, student: dict | None = None) -> None:
        """Re-read the results before each write, so runs on other tasks or teachers in
        parallel (one per core, hours each) keep each other's rows."""
        results = load_results(path)
        entry = results.setdefault(task, {"teachers": {}})
        if args.argv not in entry.setdefault("commands", []):
            entry["commands"].append(args.argv)
        entry["teachers"].update(teachers or {})
        if student is not None:
            entry["student-ft"] = student
        write_report(results, args)

    for task in args.tasks.split(","):
        for name in [] if args.no_teachers else args.teachers.split(","):
            record(task, teachers={name: run_teacher(task, CANDIDATES[name], args)})
        if not args.no_student:
            record(task, student=student_ft(task, args))


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    main()
