"""Searched students against ``minilm-l6:N`` truncations at equal latency (issue 14).

Per task: a store of the training split labelled by the tuned teacher (``retrikt
build-store --store-examples train``); ``retrikt search-student`` on it (seed 0) with the
same teacher's hidden states; the winner's architecture retrained from its sliced
initialisation with every seed; ``minilm-l6:N`` for every N, trained the same way (store,
logit and hidden-state distillation, same epochs and seeds); every student's p50 latency
at batch 1 (tokenisation and retrieval included, one thread, the same inputs) from the
search's latency cache; and the teacher's own latency at batch 1 on those inputs. The
report gives validation scores (mean ± sd over seeds), each student's speedup over the
teacher and its share of the teacher's score, the truncation nearest in latency to the
searched student, and the fastest student at >= 90% of the teacher's score::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/search_student.py --data-dir ../shared/data \\
        --tasks cb --teacher cb=experiments/cache/teachers/cb/qwen-lora --budget cb=10

Every unit (store, teacher states, search trials, trained students, latencies) is cached
under ``--cache-dir``; a killed run resumes, and the report is rewritten after each task.
Tasks already in the report that this run does not name are kept, each with the command
that made it, so tasks can be searched in separate runs (or on separate machines).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from retrikt.cache import ArtefactCache, key, write_json_atomic  # noqa: E402
from retrikt.config import DefaultsHelpFormatter  # noqa: E402
from retrikt.harness.artefacts import data_fingerprint  # noqa: E402
from retrikt.harness.report import format_mean_sd, mean_sd  # noqa: E402
from retrikt.latency import batch1_times_ms, percentiles_ms  # noqa: E402
from retrikt.search.config import INITS, SearchConfig  # noqa: E402
from retrikt.search.latency import cached_latency, machine  # noqa: E402
from retrikt.search.search import run_search, search_data  # noqa: E402
from retrikt.student.slicing import Architecture  # noqa: E402
from retrikt.student_folder import load_student  # noqa: E402
from retrikt.tasks import Task, get_task  # noqa: E402

logger = logging.getLogger("search_student")


def pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def score(task: Task, metrics: dict[str, float]) -> float:
    """The mean of the task's official metrics (the harness's score), x100."""
    return 100 * statistics.mean(metrics[name] for name in task.metric_names)


def build_store(cache: ArtefactCache, task: Task, teacher: str, args: argparse.Namespace) -> str:
    """The training split labelled by the teacher (no generation), built once."""
    from retrikt.generator.build import build_store as build
    from retrikt.generator.configs import BuildConfig
    from retrikt.teachers.loading import tuned_folder_id

    spec = {"task": task.name, "teacher": tuned_folder_id(teacher),
            "data": data_fingerprint(task, args.data_dir), "encoder": "minilm-l6"}  # fmt: skip

    def make(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        build(BuildConfig(task=task.name, out=str(folder / "store"), data_dir=args.data_dir,
                          teacher=teacher, store_examples="train",
                          cache_dir=str(folder / "build")))  # fmt: skip
        return {"seconds": round(time.perf_counter() - started, 1)}

    folder, _ = cache.ensure("stores", f"{task.name}-train", spec, make)
    return str(folder / "store")


def train_one(
    cache: ArtefactCache, config: Any, data_dir: str | None, label: str
) -> tuple[Path, dict]:
    """One trained student (cached): its folder and what training scored."""
    from retrikt.training import train_student

    spec = {"train": config.to_dict(), "encoder_id": _encoder_identity(config.encoder)}
    resume = cache.resume_folder("students", label, spec)

    def make(folder: Path) -> dict[str, Any]:
        result = train_student(config, data_dir, folder / "student", cache=cache,
                               checkpoint_dir=resume)  # fmt: skip
        return {"metrics": result.metrics, "train_seconds": round(result.seconds, 1)}

    folder, info = cache.ensure("students", label, spec, make)
    return folder / "student", info


def _encoder_identity(encoder: str) -> str:
    """A local encoder folder is named by its weights, not its path."""
    path = Path(encoder)
    if path.is_dir():
        return key([p.name + str(p.stat().st_size) for p in sorted(path.rglob("*.safetensors"))])
    return encoder


def teacher_latency(
    cache: ArtefactCache, teacher: str, task: Task, timed: list[dict], threads: int
) -> dict[str, Any]:
    """The teacher's p50 at batch 1 on the same inputs (``label_probs`` of one example)."""
    import torch

    from retrikt.teachers.loading import load_teacher, tuned_folder_id

    def make(_folder: Path) -> dict[str, Any]:
        model = load_teacher(teacher, batch_size=1)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            times = batch1_times_ms(lambda exs: model.label_probs(task, exs), timed)
        finally:
            torch.set_num_threads(before)
        return percentiles_ms(times)

    spec = {"teacher": tuned_folder_id(teacher), "task": task.name, "inputs": key(timed),
            "threads": threads, "machine": machine()}  # fmt: skip
    _, info = cache.ensure("latency", f"teacher-{task.name}", spec, make)
    return info


def retime(predictors: dict[str, Any], timed: list[dict], rounds: int) -> dict[str, float]:
    """p50 ms of every predictor, timed in interleaved rounds on one thread: on a machine
    shared with other jobs, cached latencies measured minutes apart see different loads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {name: [] for name in predictors}
    try:
        for _ in range(rounds):
            for name, predict in predictors.items():
                times[name] += batch1_times_ms(predict, timed)
    finally:
        torch.set_num_threads(before)
    return {name: percentiles_ms(t)["latency_ms_p50"] for name, t in times.items()}


def run_task(task: Task, args: argparse.Namespace, cache: ArtefactCache) -> dict[str, Any]:
    from retrikt.student import TrainConfig

    teacher = pairs(args.teacher)[task.name]
    hidden_teacher = pairs(args.hidden_teacher).get(task.name, teacher)
    given = pairs(args.store).get(task.name)
    store = given or build_store(cache, task, teacher, args)
    seeds = [int(s) for s in args.seeds.split(",")]
    search_name = f"{task.name}-{args.init}" + (f"-{Path(given).name}" if given else "")
    search_config = SearchConfig(
        task=task.name, store=store, latency_budget_ms=float(pairs(args.budget)[task.name]),
        out=str(Path(args.cache_dir) / "searches" / search_name),
        teacher=hidden_teacher, trials=args.trials, data_dir=args.data_dir, init=args.init,
        proxy_size=args.proxy_size, proxy_epochs=args.proxy_epochs, epochs=args.epochs,
        finalists=args.finalists,
        latency_examples=args.latency_examples, seed=seeds[0], cache_dir=args.cache_dir,
    )  # fmt: skip
    started = time.perf_counter()
    search = run_search(search_config)
    search_seconds = time.perf_counter() - started
    timed = search_data(search_config).timed

    def train_config(encoder: str, seed: int) -> Any:
        return TrainConfig(task=task.name, encoder=encoder, epochs=args.epochs, seed=seed,
                           store=store, hidden_teacher=hidden_teacher)  # fmt: skip

    def student_rows(method: str, arch: Architecture, encoder: str) -> dict[str, Any]:
        runs, folder = [], None
        for seed in seeds:
            folder, info = train_one(cache, train_config(encoder, seed), args.data_dir,
                                     f"{task.name}-{arch.name}-{method}-seed{seed}")  # fmt: skip
            runs.append({"seed": seed, "score": score(task, info["metrics"]),
                         "train_seconds": info["train_seconds"]})  # fmt: skip
        student = load_student(folder)
        predictors[f"{method} {arch.name}"] = student.predict_examples
        timing = cached_latency(cache, arch, student, timed, 1)
        mean, sd = mean_sd([r["score"] for r in runs])
        return {
            "method": method, "architecture": arch.name, "hidden": arch.hidden,
            "params_m": sum(p.numel() for p in student.parameters()) / 1e6,
            "latency_ms": timing["latency_ms_p50"], "score": mean, "sd": sd, "runs": runs,
        }  # fmt: skip

    predictors: dict[str, Any] = {}
    winner = Architecture.from_dict(search["winner"]["architecture"])
    rows = [student_rows("searched", winner, search["student"]["encoder_init"])]
    for layers in (int(n) for n in args.layers.split(",")):
        rows.append(student_rows("truncated", Architecture(layers, 12, 32, 1536),
                                 f"minilm-l6:{layers}"))  # fmt: skip
    teacher_results = json.loads((Path(teacher) / "eval_results.json").read_text())
    reference = {
        "score": score(task, teacher_results["validation"]),
        **teacher_latency(cache, teacher, task, timed, 1),
    }
    if args.retime:
        from retrikt.teachers.loading import load_teacher

        model = load_teacher(teacher, batch_size=1)
        predictors["teacher"] = lambda exs: model.label_probs(task, exs)
        together = retime(predictors, timed, args.retime)
        for row in rows:
            row["cached_latency_ms"] = row["latency_ms"]
            row["latency_ms"] = together[f"{row['method']} {row['architecture']}"]
        reference["cached_latency_ms_p50"] = reference["latency_ms_p50"]
        reference["latency_ms_p50"] = together["teacher"]
    for row in rows:
        row["speedup"] = reference["latency_ms_p50"] / row["latency_ms"]
        row["of_teacher"] = row["score"] / reference["score"]
    searched = rows[0]
    nearest = min(rows[1:], key=lambda r: abs(r["latency_ms"] - searched["latency_ms"]))
    good = [r for r in rows if r["of_teacher"] >= 0.9]
    return {
        "task": task.name,
        "store": store,
        "teacher": teacher,
        "hidden_teacher": hidden_teacher,
        "budget_ms": search_config.latency_budget_ms,
        "search": {"trials": len(search["trials"]), "winner": winner.name,
                   "seconds_this_run": round(search_seconds, 1), "out": search_config.out,
                   "front": search["front"], "recommended": search["recommended"],
                   "finalists": [finalist_row(f) for f in search["finalists"]],
                   "trial_seconds": sum(t["seconds"] or 0 for t in search["trials"])},
        "teacher_ref": reference,
        "rows": rows,
        "nearest_truncation": nearest["architecture"],
        "fastest_at_90": max(good, key=lambda r: r["speedup"]) if good else None,
    }  # fmt: skip


def finalist_row(finalist: dict) -> dict:
    """What the report says of a finalist: why it got there (proxy loss or incumbent) and
    what chose the winner (the held-out slice's score, absent when it was the only one)."""
    return {
        "architecture": finalist["name"],
        "incumbent": bool(finalist.get("incumbent")),
        "proxy_loss": finalist.get("loss"),
        "latency_ms": finalist["latency_ms_p50"],
        "heldout_metrics": finalist.get("heldout_metrics"),
        "heldout_score": finalist.get("heldout_score"),
    }


def finalists_line(finalists: list[dict]) -> str:
    """One sentence: each finalist's held-out score (x100) and how it became a finalist."""
    parts = []
    for f in finalists:
        how = "the incumbent cut" if f["incumbent"] else f"proxy loss {f['proxy_loss']:.3f}"
        held = f["heldout_metrics"]
        scores = " / ".join(f"{100 * v:.1f}" for v in held.values()) if held else "not scored"
        parts.append(f"{f['architecture']} ({how}, {f['latency_ms']:.1f} ms): {scores}")
    return "Finalists on the held-out slice of the training split: " + "; ".join(parts) + "."


def earlier_tasks(path: Path, names: list[str]) -> list[dict]:
    """The tasks of an earlier report that this run does not redo, with their commands."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    kept = [t for t in earlier["tasks"] if t["task"] not in names]
    for task in kept:  # reports written before tasks carried their command, machine and store
        task.setdefault("command", earlier.get("command", ""))
        task.setdefault("machine", earlier.get("machine"))
        task.setdefault("store", "the training split labelled by the teacher")
    return kept


def write_report(results: list[dict], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), {"tasks": results})
    lines = [
        "# Searched students against minilm-l6:N truncations",
        "",
        "Made by (every unit cached; rerun a command to resume it):",
        "",
        "```",
        *dict.fromkeys(r["command"] for r in results),
        "```",
        "",
        "Each task ran on the machine its section names (2 cores shared with other jobs). "
        "Score = mean of the task's official metrics on the validation split x100, mean ± sd "
        "over seeds; every student of a task is trained the same way (the store its section "
        "names, by default the training split labelled by the teacher; retrieval objectives, "
        f"logit and hidden-state distillation from the teacher, {args.epochs} epochs). "
        "Latency = p50 at batch 1 over "
        f"{args.latency_examples} training inputs, tokenisation and retrieval included, one "
        "thread; the teacher is timed on the same inputs"
        + (
            f", all of them together in {args.retime} interleaved rounds (the search's cached "
            "latencies, measured minutes apart under other jobs' load, are in the JSON)."
            if args.retime
            else "."
        )  # fmt: skip
        + " The search itself ran once (seed 0); its winner was then trained with every seed.",
        "",
    ]
    for r in results:
        ref, search = r["teacher_ref"], r["search"]
        lines += [
            f"## {r['task']}",
            "",
            f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores). Store: "
            f"`{r['store']}`. "
            f"Search: {search['trials']} trials ({search['trial_seconds']:.0f} s of trials; "
            f"{search['seconds_this_run']:.0f} s this run), budget {r['budget_ms']} ms, winner "
            f"**{search['winner']}**; teacher `{r['teacher']}`: {ref['score']:.1f}, "
            f"p50 {ref['latency_ms_p50']:.1f} ms.",
            "",
            "| student | architecture | params (M) | p50 ms | score | of teacher | speedup |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            shown = format_mean_sd(row["score"], row["sd"], len(row["runs"]))
            lines.append(
                f"| {row['method']} | {row['architecture']} | {row['params_m']:.1f} | "
                f"{row['latency_ms']:.2f} | {shown} | "
                f"{100 * row['of_teacher']:.0f}% | {row['speedup']:.1f}x |"
            )
        fast = r["fastest_at_90"]
        lines += [
            "",
            f"Truncation nearest in latency to the searched student: {r['nearest_truncation']}. "
            + (f"Fastest student at >= 90% of the teacher's score: {fast['method']} "
               f"{fast['architecture']}, {fast['speedup']:.1f}x faster than the teacher."
               if fast else "No student reaches 90% of the teacher's score."),
            "",
        ]  # fmt: skip
        if "finalists" in search:  # reports written before finalists were kept lack them
            lines += [finalists_line(search["finalists"]), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(results, out.with_suffix(".png"))


def plot(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        trunc = sorted((x for x in r["rows"] if x["method"] == "truncated"),
                       key=lambda x: x["latency_ms"])  # fmt: skip
        ax.errorbar([x["latency_ms"] for x in trunc], [x["score"] for x in trunc],
                    yerr=[x["sd"] for x in trunc], marker="o", label="minilm-l6:N")  # fmt: skip
        for x in trunc:
            ax.annotate(x["architecture"].split("-")[0], (x["latency_ms"], x["score"]), fontsize=7)
        s = next(x for x in r["rows"] if x["method"] == "searched")
        ax.errorbar([s["latency_ms"]], [s["score"]], yerr=[s["sd"]], marker="*", ms=14,
                    ls="", label=f"searched {s['architecture']}")  # fmt: skip
        ref = r["teacher_ref"]
        ax.axhline(
            ref["score"], ls="--", c="0.4", label=f"teacher ({ref['latency_ms_p50']:.0f} ms)"
        )
        ax.axhline(0.9 * ref["score"], ls=":", c="0.6", label="90% of teacher")
        ax.axvline(r["budget_ms"], ls="--", c="C3", label="budget")
        ax.set_xlabel("p50 latency at batch 1 (ms)")
        ax.set_ylabel("validation score")
        ax.set_title(r["task"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder holding superglue/ and glue/")
    parser.add_argument("--tasks", default="cb", help="comma-separated task names")
    parser.add_argument(
        "--teacher",
        required=True,
        help="TASK=DIR,...: the tuned teacher (retrikt train-teacher folder) that labels the "
        "store and is timed",
    )
    parser.add_argument(
        "--hidden-teacher",
        default="",
        help="TASK=DIR,...: the teacher whose hidden states are distilled (default: --teacher)",
    )
    parser.add_argument(
        "--store",
        default="",
        help="TASK=DIR,...: the store students retrieve from (default: the training split "
        "labelled by --teacher, built and cached)",
    )
    parser.add_argument(
        "--budget",
        required=True,
        help="TASK=MS,...: the p50 latency budget at batch 1 that the search penalises going over",
    )
    parser.add_argument(
        "--trials", type=int, default=12, help="architectures the search tries (Optuna TPE)"
    )
    parser.add_argument(
        "--proxy-size", type=int, default=64, help="training examples each trial distils on"
    )
    parser.add_argument(
        "--proxy-epochs", type=int, default=3, help="epochs of each trial's proxy run"
    )
    parser.add_argument(
        "--finalists",
        type=int,
        default=SearchConfig.finalists,
        help="best trials within budget distilled on the training split (besides the "
        "incumbent cut); each costs about one student's training",
    )
    parser.add_argument(
        "--epochs", type=int, default=5, help="epochs of every reported student on the whole split"
    )
    parser.add_argument(
        "--init", default="slice", choices=INITS,
        help="candidates start from minilm-l6 by layer selection and width slicing, or at random",
    )  # fmt: skip
    parser.add_argument(
        "--latency-examples", type=int, default=30, help="training inputs the p50 is taken over"
    )
    parser.add_argument("--seeds", default="0,1,2", help="seeds every reported student trains with")
    parser.add_argument(
        "--layers",
        default="1,2,3,4,5,6",
        help="N of the minilm-l6:N truncations the searched student is compared with",
    )
    parser.add_argument(
        "--retime", type=int, default=0,
        help="also time every student and the teacher together in N interleaved rounds and "
        "report those latencies (the cached ones are kept as cached_latency_ms)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument(
        "--cache-dir", default="experiments/cache/search_student", help="every unit, for resuming"
    )
    parser.add_argument(
        "--out",
        default="experiments/results/search_student",
        help="writes OUT.md, OUT.json, OUT.png",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )  # fmt: skip
    from retrikt.training import set_threads

    set_threads(args.threads)
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(["experiments/search_student.py",
                                                                   *sys.argv[1:]])  # fmt: skip
    cache = ArtefactCache(args.cache_dir)
    names = args.tasks.split(",")
    results = earlier_tasks(Path(args.out).with_suffix(".json"), names)
    for name in names:
        results.append({**run_task(get_task(name), args, cache), "command": command,
                        "machine": machine()})  # fmt: skip
        write_report(results, args)


if __name__ == "__main__":
    main()
