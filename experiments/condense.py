"""How small can a store be? The RetriKT student on condensed stores (issue 15).

For every task, condensing method, store size (share of the source store's entries kept per
label) and seed, ``retrikt.condense`` cuts the source store, the harness trains and scores the
RetriKT student on it (``--student``, at ``--scale``: the harness's own training and
measurement, so the numbers compare with ``retrikt evaluate``), and this script records the
store's memory (bytes of ``vectors.npy`` + ``index.faiss``) and the p50 time of one query's
top-``--search-k`` search at batch 1 (validation examples embedded by the store's encoder).
At 100% every method keeps the whole store, so the 100% point is the source store itself,
trained once per seed and shared by all methods.

The source store is given (``--store TASK=DIR``) or built through the harness and its cache:
the store of ``--student`` (``retrikt-train-store``: the whole training split labelled by the
tuned teacher given with ``--teacher TASK=DIR``). Every unit is cached and resumable: a
condensed store is a unit of the harness cache (``condensed/``), keyed by the source's content
digest and the condense settings; a trained student and its scores are harness results
keyed by the store's identity. The report is rewritten after every unit, and units run in
order of interest (``--first-methods`` x ``--first-sizes`` first, seed by seed), so a run
stopped early leaves the most useful partial curve and the same command completes it::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/condense.py --data-dir ../shared/data \\
        --tasks cb,copa --teacher cb=experiments/cache/teachers/cb/qwen-lora \\
        --teacher copa=experiments/cache/teachers/copa/qwen-lora --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import DONE, ArtefactCache, write_json_atomic
from retrikt.cli.evaluate import _paths_by_task
from retrikt.condense import METHODS as CONDENSERS
from retrikt.condense import CondenseConfig, condense
from retrikt.config import DefaultsHelpFormatter
from retrikt.harness.artefacts import TaskContext
from retrikt.harness.methods import METHODS, StudentMethod
from retrikt.harness.report import format_mean_sd, mean_sd
from retrikt.harness.running import result_path, run_method
from retrikt.harness.scales import SCALES, HarnessConfig
from retrikt.store import KnowledgeStore
from retrikt.store.manifest import INDEX_NAME, VECTORS_NAME
from retrikt.tasks import get_task

logger = logging.getLogger("condense")

FULL = 100  # percent: the source store itself


@dataclass(frozen=True)
class Unit:
    task: str
    method: str
    size: int  # percent of each label's entries kept
    seed: int


class TaskRun:
    """One task's source store, the harness context around it and the search queries."""

    def __init__(self, task: str, args: argparse.Namespace, cache: ArtefactCache):
        self.task = get_task(task)
        self.args = args
        self.cache = cache
        self.student = METHODS[args.student]
        assert isinstance(self.student, StudentMethod) and self.student.rl is not None
        ctx = self.context(args.stores.get(self.task.name))
        artefact = ctx.store(self.student.rl, self.student.examples)
        self.source = KnowledgeStore.open(artefact.path)
        self.source_seconds = artefact.seconds
        self.eval = ctx.eval
        self._queries: np.ndarray | None = None

    def context(self, store: Path | None) -> TaskContext:
        """The harness's view of this task, retrieving from ``store`` (None: its own store)."""
        args = self.args
        config = HarnessConfig(
            tasks=[self.task.name],
            methods=[args.student],
            seeds=args.seeds,
            scale=SCALES[args.scale],
            name="condense",
            data_dir=args.data_dir,
            encoder=args.encoder,
            cache_dir=args.cache_dir,
            stores={self.task.name: store} if store is not None else {},
            teachers=args.teachers,
            threads=args.threads,
        )
        return TaskContext(config, self.cache, self.task)

    def queries(self) -> np.ndarray:
        """The validation examples embedded as the store's entries are (``store_text``)."""
        if self._queries is None:
            from retrikt.encoder import Encoder
            from retrikt.generator.build import store_text

            encoder = Encoder(self.args.encoder)
            if encoder.model_id != self.source.encoder_id:
                raise SystemExit(
                    f"--encoder {self.args.encoder} is {encoder.model_id}, but the store was "
                    f"embedded with {self.source.encoder_id}"
                )
            texts = [store_text(self.task, ex, encoder) for ex in self.eval]
            self._queries = encoder.encode(texts)
        return self._queries

    def measure(self, store: KnowledgeStore) -> dict[str, Any]:
        """Entries, bytes of vectors + index, and the p50 of one query's search at batch 1."""
        queries = self.queries()
        k = min(self.args.search_k, len(store))
        for query in queries[:3]:  # warm-up
            store.search(query, k)
        times = []
        for query in queries:
            started = time.perf_counter()
            store.search(query, k)
            times.append((time.perf_counter() - started) * 1000)
        files = store.manifest["files"]
        return {
            "entries": len(store),
            "bytes": files[VECTORS_NAME]["size"] + files[INDEX_NAME]["size"],
            "search_ms_p50": round(float(np.percentile(times, 50)), 4),
            "search_queries": len(times),
        }

    def store(self, unit: Unit, make: bool = True) -> tuple[Path, dict[str, Any]] | None:
        """The unit's store and its measurements, from the cache (made there unless ``make``
        is False: then None when it is not cached)."""
        source_id = {"digest": self.source.digest, "entries": len(self.source)}
        if unit.size == FULL:
            label = f"{self.task.name}-full"
            spec: dict[str, Any] = {"source": source_id, "condense": None}

            def maker(_: Path) -> dict[str, Any]:
                return self.measure(self.source)

        else:
            config = CondenseConfig(ratio=unit.size / 100, method=unit.method, seed=unit.seed)
            condense_spec = config.to_dict()
            label = f"{self.task.name}-{unit.method}-{unit.size}pct"
            if CONDENSERS[unit.method].seeded:
                label += f"-s{unit.seed}"
            else:  # one store serves every seed
                condense_spec["seed"] = None
            spec = {"source": source_id, "condense": condense_spec}

            def maker(folder: Path) -> dict[str, Any]:
                started = time.perf_counter()
                store = condense(self.source, folder / "store", config)
                seconds = time.perf_counter() - started
                return {"condense_seconds": round(seconds, 3), **self.measure(store)}

        if not make and not (self.cache.folder("condensed", label, spec) / DONE).is_file():
            return None
        folder, info = self.cache.ensure("condensed", label, spec, maker)
        return (self.source.path if unit.size == FULL else folder / "store"), info

    def run(self, unit: Unit, cached_only: bool = False) -> dict[str, Any] | None:
        """The unit's row: its store, the student trained on it and their measurements.

        ``cached_only``: None unless every part is cached already (nothing is computed).
        """
        found = self.store(unit, make=not cached_only)
        if found is None:
            return None
        path, info = found
        ctx = self.context(path)
        if cached_only and not result_path(ctx.units, self.student.spec(ctx, unit.seed)).is_file():
            return None
        result = run_method(ctx, self.student, unit.seed)
        return {
            "task": unit.task,
            "method": unit.method,
            "size": unit.size,
            "seed": unit.seed,
            **{k: info.get(k) for k in ("entries", "bytes", "search_ms_p50", "condense_seconds")},
            "score": result["score"],
            "metrics": result["metrics"],
            "student_latency_ms_p50": result["latency_ms_p50"],
            "train_seconds": result["train_seconds"],
            "eval_examples": result["eval_examples"],
            "store": str(path),
            "result_key": result["key"],
        }


def units(args: argparse.Namespace) -> list[Unit]:
    """Every (task, method, size, seed) in order of interest: the ``--first-methods`` x
    ``--first-sizes`` ones first; within those, seed by seed, size by size in the order
    given (the whole store, the reference, first by default), every task at that point
    before the next point, so an early stop leaves comparable slices of all tasks."""
    everything = [
        Unit(task, FULL_METHOD if size == FULL else method, size, seed)
        for task in args.tasks
        for seed in args.seeds
        for size in args.sizes
        for method in args.methods
    ]
    unique = list(dict.fromkeys(everything))
    order = args.first_sizes + [s for s in args.sizes if s not in args.first_sizes]

    def priority(unit: Unit) -> tuple[int, int, int, int]:
        first = unit.size in args.first_sizes and (
            unit.size == FULL or unit.method in args.first_methods
        )
        where = (args.seeds.index(unit.seed), order.index(unit.size), args.tasks.index(unit.task))
        return (0 if first else 1, *where)

    return sorted(unique, key=priority)


#: The method name of the 100% rows: every method keeps the whole store.
FULL_METHOD = "full store"


def write_report(rows: list[dict[str, Any]], runs: dict[str, TaskRun], args) -> None:
    out = Path(args.out)
    lines = [
        "# Condensed stores: accuracy, search latency and memory against store size",
        "",
        "Made by (every unit cached; rerun the same command to resume or complete it):",
        "",
        "```",
        "OMP_NUM_THREADS=1 .venv/bin/python experiments/condense.py " + shlex.join(args.argv),
        "```",
        "",
        f"The student is the harness's `{args.student}` "
        f"({METHODS[args.student].description}) at {SCALES[args.scale].describe()}. Each "
        "store keeps the given share of every label's entries of the source store "
        "(`retrikt store condense`, methods in `retrikt/condense.py`); 100% is the source "
        "store itself, shared by every method. Score: the task's official metrics' mean on "
        "the scale's validation examples, ×100, mean ± sample sd over seeds (`n` runs). Search: "
        f"p50 ms of one validation query's top-{args.search_k} `KnowledgeStore.search` at "
        "batch 1; memory: bytes of vectors.npy + index.faiss. One process with "
        f"{args.threads} torch thread(s) on a 2-core machine shared with other jobs: "
        "times are indicative.",
        "",
        f"**{len(rows)} of {args.total_units} units finished** (units run in the order of "
        "`--first-methods`, `--first-sizes`, seed; rerun the command to add the rest).",
        "",
    ]
    data: dict[str, Any] = {"command": lines[5], "tasks": {}}
    for name, run in runs.items():
        task_rows = [r for r in rows if r["task"] == name]
        source = run.source
        teacher = source.manifest["teacher"]
        teacher = json.dumps(teacher.get("id", teacher) if isinstance(teacher, dict) else teacher)
        lines += [
            f"## {name}",
            "",
            f"Source store `{source.path}`: {len(source)} entries, digest "
            f"`{source.digest[:16]}`, teacher `{teacher}`; {len(run.eval)} validation examples.",
            "",
        ]
        sizes = sorted({r["size"] for r in task_rows})
        if not sizes:
            lines += ["No unit has finished yet.", ""]
            continue
        full = [r["score"] for r in task_rows if r["size"] == FULL]
        lines += [
            "| method | " + " | ".join(f"{s}%" for s in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for method in args.methods:
            cells = []
            for size in sizes:
                scores = full if size == FULL else [
                    r["score"] for r in task_rows if r["method"] == method and r["size"] == size
                ]  # fmt: skip
                if scores:
                    mean, sd = mean_sd(scores)
                    cells.append(f"{format_mean_sd(100 * mean, 100 * sd, len(scores))} "
                                 f"(n={len(scores)})")  # fmt: skip
                else:
                    cells.append("—")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| size | entries | vectors + index bytes | search p50 ms | student p50 ms | "
            "student train s | runs |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for size in sizes:
            at = [r for r in task_rows if r["size"] == size]
            lines.append(
                f"| {size}% | {statistics.median(r['entries'] for r in at):.0f} | "
                f"{statistics.median(r['bytes'] for r in at):,.0f} | "
                f"{statistics.median(r['search_ms_p50'] for r in at):.3f} | "
                f"{statistics.median(r['student_latency_ms_p50'] for r in at):.1f} | "
                f"{statistics.mean(r['train_seconds'] for r in at):.0f} | {len(at)} |"
            )
        seconds = {
            m: statistics.mean(r["condense_seconds"] for r in task_rows if r["method"] == m)
            for m in args.methods
            if any(r["method"] == m for r in task_rows)
        }
        if seconds:
            lines += [
                "",
                "Seconds to condense and write the store (mean over sizes and seeds): "
                + ", ".join(f"{m} {v:.3f}" for m, v in seconds.items())
                + ".",
            ]
        lines.append("")
        data["tasks"][name] = {
            "source": {"path": str(source.path), "digest": source.digest, "entries": len(source)},
            "runs": task_rows,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    write_json_atomic(out.with_suffix(".json"), data)
    render_chart(rows, list(runs), args, out.with_suffix(".png"))


def render_chart(rows: list[dict], tasks: list[str], args, path: Path) -> None:
    """Score against store size, one line per method, seed sd as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task]
        full = [r["score"] for r in task_rows if r["size"] == FULL]
        for method in args.methods:
            points = []
            for size in sorted({r["size"] for r in task_rows}):
                scores = full if size == FULL else [
                    r["score"] for r in task_rows if r["method"] == method and r["size"] == size
                ]  # fmt: skip
                if scores:
                    points.append((size, *mean_sd(scores)))
            if any(size != FULL for size, _, _ in points):
                x, mean, sd = (np.asarray(v) for v in zip(*points, strict=True))
                ax.errorbar(x, 100 * mean, yerr=100 * sd, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(args.sizes, [f"{s}%" for s in args.sizes])
        ax.set_xlabel("store size (share of each label's entries kept)")
        ax.set_ylabel("task score (×100, validation)")
        ax.set_title(f"{task}: {args.student}, scale {args.scale}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder holding superglue/ and glue/")
    parser.add_argument("--tasks", default="cb,copa", help="comma-separated task names")
    parser.add_argument(
        "--teacher", action="append", default=[], metavar="TASK=DIR", help="tuned teacher"
    )
    parser.add_argument(
        "--store", action="append", default=[], metavar="TASK=DIR", help="source store"
    )
    parser.add_argument(
        "--student",
        default="retrikt-train-store",
        choices=[n for n, m in METHODS.items() if isinstance(m, StudentMethod) and m.rl],
        help="harness student method trained on each store (its store is the source)",
    )
    parser.add_argument(
        "--scale", default="full", choices=list(SCALES), help="the harness scale students train at"
    )
    parser.add_argument("--encoder", default="minilm-l6", help="student encoder preset")
    parser.add_argument(
        "--methods", default=",".join(CONDENSERS), help="comma-separated condensing methods"
    )
    parser.add_argument("--sizes", default="5,10,20,50,100", help="percent of each label kept")
    parser.add_argument("--seeds", default="0,1,2", help="student seeds")
    parser.add_argument(
        "--first-methods",
        default="random,kcenter,kmeans,knn-shapley",
        help="methods run first (with --first-sizes), so a stopped run leaves a useful curve",
    )
    parser.add_argument("--first-sizes", default="100,5,20", help="sizes run first, in this order")
    parser.add_argument("--search-k", type=int, default=16, help="neighbours per timed search")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache-dir", default="experiments/cache", help="the harness cache")
    parser.add_argument(
        "--out",
        default="experiments/results/condense.md",
        help="the report; .json and .png beside it",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="write the report from the units already cached and run nothing (as the "
        "harness's --cached-only)",
    )
    args = parser.parse_args()
    args.argv = [a for a in sys.argv[1:] if a != "--cached-only"]  # the command that runs it
    args.tasks = [get_task(t).name for t in args.tasks.split(",")]
    args.methods = args.methods.split(",")
    args.first_methods = args.first_methods.split(",")
    unknown = sorted(set(args.methods + args.first_methods) - set(CONDENSERS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(CONDENSERS)}")
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.first_sizes = [int(s) for s in args.first_sizes.split(",")]
    if not all(0 < s <= FULL for s in args.sizes):
        parser.error("--sizes are percentages in 1..100")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.teachers = _paths_by_task(args.teacher, "--teacher")
    args.stores = _paths_by_task(args.store, "--store")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    from retrikt.training import set_threads

    set_threads(args.threads)
    cache = ArtefactCache(args.cache_dir)
    runs = {task: TaskRun(task, args, cache) for task in args.tasks}
    args.total_units = len(units(args))
    # Everything cached goes into the report first, so a rerun's report is never partial.
    rows: list[dict[str, Any]] = []
    todo: list[Unit] = []
    for unit in units(args):
        row = runs[unit.task].run(unit, cached_only=True)
        if row is None:
            todo.append(unit)
        else:
            rows.append(row)
    logger.info("%d units cached, %d to run", len(rows), len(todo))
    if rows:
        write_report(rows, runs, args)
    if args.cached_only:
        return
    started = time.perf_counter()
    for number, unit in enumerate(todo, start=1):
        logger.info("unit %d/%d: %s", number, len(todo), unit)
        row = runs[unit.task].run(unit)
        assert row is not None
        rows.append(row)
        write_report(rows, runs, args)
        logger.info("%.1f min so far", (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
