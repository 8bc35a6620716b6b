"""Issue 13: several teachers and their rationales in one store (what TinyLLM brings).

Every row is the harness's ``retrikt-train-store`` student at scale ``full`` (the whole
training split as the store, labelled by the teachers; 5 epochs, ``--tune-retrieval``), on
the whole validation split, over seeds; only the store (and the rationale options) change:

* ``single``: the first ``--teacher`` alone (the lead's tuned Qwen2.5-0.5B LoRA on CB);
* ``multi-<rule>``: every ``--teacher``, the store's label their combination by ``<rule>``
  (mean, heldout, confidence, learned; see ``retrikt.teachers.ensemble``);
* ``...+rationale-loss`` / ``...+rationale-keys``: the same store built with
  ``--rationales`` (``--rationale-model`` writes one per training example, teacher-forced
  with the gold label and two explained demos), the student trained with the auxiliary
  rationale-alignment loss, or with keys that embed each entry's rationale.

Next to the students: each store's label scored on the validation split (what the
combination rule itself is worth), the teachers' agreement and the rationale cost. Every
unit (teacher labels, store, rationales, student) is cached under ``--cache-dir``, so a
rerun resumes and the report is rewritten after every unit::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/multi_teacher.py --data-dir ../shared/data \\
        --tasks cb --teacher cb=experiments/cache/teachers/cb/qwen-lora \\
        --teacher cb=experiments/cache/teachers/cb/gemma-lora \\
        --teacher cb=experiments/cache/teachers/cb/mpnet-full --seeds 0,1,2 --threads 1

Seeds run outermost: every variant gets seed 0 before any gets seed 1. Runs of other
variants or tasks may go in parallel, one a core (``--variants single`` beside
``--variants multi-mean``): each keeps the rows the others wrote, with its own command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retrikt.cache import ArtefactCache, write_json_atomic
from retrikt.config import DefaultsHelpFormatter
from retrikt.harness.artefacts import TaskContext
from retrikt.harness.methods import METHODS
from retrikt.harness.report import format_mean_sd, mean_sd
from retrikt.harness.scales import SCALES, HarnessConfig
from retrikt.tasks import get_task
from retrikt.teachers.ensemble import RULES

logger = logging.getLogger("multi_teacher")
METHOD = "retrikt-train-store"  # the harness method whose settings every row shares


@dataclass(frozen=True)
class Variant:
    name: str
    multi: bool  # every teacher, or the first alone
    rule: str = "mean"
    rationales: bool = False
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides

    @property
    def store(self) -> str:
        teachers = f"multi-{self.rule}" if self.multi else "single"
        return teachers + ("+rationales" if self.rationales else "")


def variants(rationale_rule: str) -> list[Variant]:
    rows = [Variant("single", False)]
    rows += [Variant(f"multi-{rule}", True, rule) for rule in RULES]
    for multi in (False, True):
        base = f"multi-{rationale_rule}" if multi else "single"
        rows += [
            Variant(f"{base}+rationale-loss", multi, rationale_rule, True, {"rationale_loss": 1.0}),
            Variant(
                f"{base}+rationale-keys", multi, rationale_rule, True, {"rationale_keys": True}
            ),
        ]
    return rows


def _teachers(args: argparse.Namespace, task: str) -> list[str]:
    found = [spec.partition("=")[2] for spec in args.teacher if spec.partition("=")[0] == task]
    if not found:
        raise SystemExit(f"no --teacher {task}=DIR given")
    return found


def store_for(
    ctx: TaskContext, cache: ArtefactCache, variant: Variant, teachers: list[str], args: Any
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The variant's store (built once and cached): path, cache spec and marker."""
    from retrikt.generator.build import build_store
    from retrikt.teachers.loading import tuned_folder_id

    used = teachers if variant.multi else teachers[:1]
    config = replace(
        ctx.build_config("ppo", examples="train"),
        teacher=",".join(used),
        teacher_combination=variant.rule if variant.multi else "mean",
        rationales=variant.rationales,
        rationale_model=args.rationale_model if variant.rationales else None,
    )
    build = config.key_dict()
    for local in ("out", "data_dir", "cache_dir", "overwrite"):
        build.pop(local)
    build["teacher"] = ",".join(tuned_folder_id(t) for t in used)  # a teacher is its weights
    spec = {**ctx.base_spec, "build": build}

    def make(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        build_store(replace(config, out=str(folder / "store")))
        return {"seconds": round(time.perf_counter() - started, 1)}

    folder, info = cache.ensure("stores", f"{ctx.task.name}-{variant.store}", spec, make)
    return folder / "store", spec, info


def student_for(
    ctx: TaskContext,
    cache: ArtefactCache,
    variant: Variant,
    store: Path,
    store_spec: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The variant's student for one seed (trained once and cached): metrics and seconds."""
    from retrikt.training import train_student

    config = replace(METHODS[METHOD].train_config(ctx, seed, store), **variant.train)
    train = config.key_dict()
    train.pop("store")
    spec = {**ctx.base_spec, "method": METHOD, "seed": seed, "train": train, "store": store_spec}

    label = f"{ctx.task.name}-{variant.name}-s{seed}"
    resume = cache.resume_folder("models", label, spec)

    def make(folder: Path) -> dict[str, Any]:
        result = train_student(config, ctx.config.data_dir, folder / "model",
                               checkpoint_dir=resume)  # fmt: skip
        return {"metrics": result.metrics, "seconds": round(result.seconds, 1)}

    return cache.ensure("models", label, spec, make)[1]


def store_summary(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    from retrikt.store import KnowledgeStore
    from retrikt.teachers.ensemble import teacher_report

    store = KnowledgeStore.open(path, verify=False)
    manifest = store.manifest
    stats = manifest["generator"]["stats"]
    return {
        "entries": len(store),
        "build_seconds": info["seconds"],
        "label_validation": manifest["teacher"].get("validation"),
        "teachers": [
            {k: t.get(k) for k in ("id", "model", "heldout", "heldout_common", "validation")}
            for t in manifest.get("teachers") or []
        ],
        "combination": manifest.get("combination"),
        "report": teacher_report(store),
        "rationales": {k: v for k, v in stats.get("rationales", {}).items() if k != "demos"},
        "demos": stats.get("rationales", {}).get("demos"),
        "rationale_examples": [
            {"fields": e.fields, "label": e.requested_label, "rationale": e.rationale}
            for e in store.entries(list(range(min(3, len(store)))))
            if e.rationale
        ],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from retrikt.training import set_threads

    set_threads(args.threads)
    cache = ArtefactCache(args.cache_dir)
    chosen = [v for v in variants(args.rationale_rule) if not args.variants
              or v.name in args.variants]  # fmt: skip
    results: dict[str, Any] = {}
    for seed in args.seeds:
        for task_name in args.tasks:
            teachers = _teachers(args, task_name)
            harness = HarnessConfig(
                tasks=[task_name], methods=[METHOD], seeds=args.seeds, scale=SCALES["full"],
                name="multi_teacher", data_dir=args.data_dir, cache_dir=args.cache_dir,
            )  # fmt: skip
            ctx = TaskContext(harness, cache, get_task(task_name))
            for variant in chosen:
                logger.info("%s %s seed %d", task_name, variant.name, seed)
                store, spec, info = store_for(ctx, cache, variant, teachers, args)
                row = {
                    "store": {"name": variant.store, **store_summary(store, info)},
                    "train": variant.train,
                    "command": args.command,  # rows of one task may come from several runs
                }
                if not args.stores_only:
                    row["seeds"] = {str(seed): student_for(ctx, cache, variant, store, spec, seed)}
                results = record(args, task_name, variant.name, row)
        if args.stores_only:
            break  # stores do not depend on the seed
    return results


def record(args: argparse.Namespace, task: str, variant: str, row: dict[str, Any]) -> dict:
    """Add one row's unit to the results and rewrite the report.

    The results are re-read before each write, so runs of other variants or tasks in parallel
    (one per core, an hour a student) keep each other's rows. A task's rows are grouped by
    their lead (first) teacher: a teacher retrained on another machine has other weights,
    and its seeds must not be averaged with the old teacher's.
    """
    path = Path(args.results_dir) / "multi_teacher.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    teachers = [t["id"] for t in row["store"]["teachers"]]
    section = f"{task} / {teachers[0]}"
    entry = results.setdefault(section, {"task": task, "variants": {}})
    kept = entry["variants"].setdefault(variant, {})
    earlier = [t["id"] for t in kept["store"]["teachers"]] if kept else teachers
    if earlier != teachers:
        raise SystemExit(
            f"{path}: {section!r} holds {variant!r} rows of the teachers {earlier}, this "
            f"run's are {teachers}; give them another --results-dir"
        )
    seeds = {**kept.get("seeds", {}), **row.pop("seeds", {})}
    kept.update(row, seeds=seeds)
    write_report(results, args)
    return results


def _over_seeds(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return format_mean_sd(100 * mean, 100 * sd, len(values))


def _scores(metrics: dict[str, Any] | None, names: tuple[str, ...]) -> str:
    if not metrics:
        return ""
    return ", ".join(f"{100 * metrics[n]:.1f}" for n in names if n in metrics)


def write_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    out = Path(args.results_dir)
    write_json_atomic(out / "multi_teacher.json", {"results": results})
    commands = dict.fromkeys(
        row["command"] for entry in results.values() for row in entry["variants"].values()
    )
    lines = [
        "# Several teachers and their rationales in one store (issue 13)",
        "",
        "Made by (every unit cached; rerun one to resume or extend its task):",
        "",
        "```",
        *commands,
        "```",
        "",
        f"Every row is the harness's `{METHOD}` student (minilm-l6) at scale `full`: the "
        "store is the whole training split with the teachers' soft labels, "
        f"{SCALES['full'].epochs} epochs, "
        "`--tune-retrieval`; scored on the whole validation split, mean ± sd over the seeds "
        "done. Only the store and the rationale options differ. *store label* is the "
        "store's label for the validation examples (the combined teacher) scored the same "
        "way. Scores x100, the task's official metrics. Times are of one process with its "
        f"command's `--threads` torch threads on a {os.cpu_count()}-core machine shared with "
        "other jobs: upper bounds. A section is a task and its lead (first) teacher: a teacher "
        "retrained on another machine has other weights, so its rows get a section of their own.",
        "",
    ]
    for section, entry in results.items():
        task = get_task(entry["task"])
        names = task.metric_names
        metric = ", ".join(names)
        lines += [f"## {section}", "", "Teachers (`--teacher`, in order):", ""]
        first = next(iter(entry["variants"].values()))["store"]
        multi = next((v["store"] for k, v in entry["variants"].items()
                      if k.startswith("multi-")), first)  # fmt: skip
        for teacher in multi["teachers"]:
            held = teacher.get("heldout") or {}
            lines.append(
                f"- `{teacher['id']}`: validation {_scores(teacher.get('validation'), names)}; "
                f"own held-out {_scores(held, names)}"
                + (
                    f"; common held-out score {teacher['heldout_common']:.3f}"
                    if teacher.get("heldout_common") is not None
                    else ""
                )  # fmt: skip
            )
        agree = multi["report"]["agreement"]
        if agree.get("pairs"):
            lines += [
                "",
                f"The teachers agree (argmax) on {100 * agree['all']:.1f}% of the "
                f"{agree['entries']} training entries; pairs: "
                + ", ".join(f"{k} {100 * v:.1f}%" for k, v in agree["pairs"].items())
                + ". On those training entries (90% of which the tuned teachers were "
                f"trained on; *store label* is {multi['name']}'s): "
                + "; ".join(f"{k} {_scores(v, names)}" for k, v in multi["report"]["train"].items())
                + ".",
            ]
        lines += [
            "",
            f"| variant | store | store label ({metric}) | student ({metric}) | seeds | "
            "store build min | student train min |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for name, row in entry["variants"].items():
            runs = list(row["seeds"].values())
            student = ", ".join(_over_seeds([r["metrics"][n] for r in runs]) for n in names if runs)
            train_min = f"{statistics.mean(r['seconds'] for r in runs) / 60:.1f}" if runs else ""
            store = row["store"]
            lines.append(
                f"| {name} | {store['name']} | {_scores(store['label_validation'], names)} | "
                f"{student if runs else 'not run yet'} | {len(runs)} | "
                f"{store['build_seconds'] / 60:.1f} | {train_min} |"
            )
        weights = [
            (name, row["store"]["combination"])
            for name, row in entry["variants"].items()
            if name.startswith("multi-") and "+" not in name and row["store"]["combination"]
        ]
        if weights:
            lines += ["", "Combination weights (teachers in order):", ""]
            for name, combination in weights:
                weights = combination.get("weights")
                if weights:
                    shown = ", ".join(f"{w:.3f}" for w in weights)
                    if combination.get("biases"):
                        shown += " (class biases " + ", ".join(
                            f"{b:.3f}" for b in combination["biases"]) + ")"  # fmt: skip
                else:
                    shown = {"mean": "equal", "confidence": "per example, each teacher's "
                             "highest probability"}.get(combination["rule"], "")  # fmt: skip
                lines.append(f"- {name}: {shown}")
        costs = [row["store"] for row in entry["variants"].values() if row["store"]["rationales"]]
        if costs:
            seen = {}
            for store in costs:
                seen.setdefault(store["name"], store)
            lines += ["", "Rationales, and what the store's build spent on them:", ""]
            for store in seen.values():
                r = store["rationales"]
                new = r.get("generated_tokens")  # not in stores built before it was recorded
                minutes = f"{r['seconds'] / 60:.1f} min"
                if new is None:
                    spent = f"{minutes}, resumed rows not told apart"
                else:
                    spent = f"generated {new} in {minutes} ({new / r['seconds']:.1f} tok/s)"
                distinct = f" ({r['distinct']} distinct)" if "distinct" in r else ""
                lines.append(
                    f"- {store['name']}: {r['written']} of {r['entries']} written by "
                    f"{r['model']}{distinct}, {r['tokens']} tokens; the build {spent}"
                )
            example = next((s for s in seen.values() if s["rationale_examples"]), None)
            if example:
                lines += ["", "Examples of stored rationales:", ""]
                for item in example["rationale_examples"]:
                    fields = " | ".join(f"{k}: {v}" for k, v in item["fields"].items())
                    label = task.label_name(item["label"])
                    lines.append(f"- {fields} → **{label}**: {item['rationale']}")
        lines.append("")
    (out / "multi_teacher.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder holding superglue/ and glue/")
    parser.add_argument(
        "--tasks", default="cb", type=lambda s: s.split(","), help="comma-separated task names"
    )
    parser.add_argument(
        "--teacher", action="append", default=[], metavar="TASK=DIR",
        help="a tuned teacher (retrikt train-teacher folder); the first of a task is 'single'",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")],
        help="student seeds of every variant",
    )  # fmt: skip
    parser.add_argument(
        "--variants", default=None, type=lambda s: s.split(","),
        help="comma-separated variants to run (default: all; an unknown name lists them)",
    )  # fmt: skip
    parser.add_argument(
        "--rationale-model", default="smollm2-135m", help="LLM preset that writes the rationales"
    )
    parser.add_argument(
        "--rationale-rule", default="mean", choices=RULES,
        help="combination rule of the multi-teacher store the rationale variants use",
    )  # fmt: skip
    parser.add_argument(
        "--stores-only", action="store_true", help="build the variants' stores, train nothing"
    )
    parser.add_argument("--cache-dir", default="experiments/cache", help="every unit, for resuming")
    parser.add_argument(
        "--results-dir", default="experiments/results", help="writes multi_teacher.md and .json"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    known = [v.name for v in variants(args.rationale_rule)]
    unknown = sorted(set(args.variants or ()) - set(known))
    if unknown:  # a typo would otherwise run (and report) nothing
        parser.error(f"unknown --variants {', '.join(unknown)}; known: {', '.join(known)}")
    args.command = "OMP_NUM_THREADS=1 .venv/bin/python experiments/multi_teacher.py " + shlex.join(
        argv
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
