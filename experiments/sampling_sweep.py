"""Which temperature and top-p should the store's generator sample with? (issue 12, item 3)

Per task: the generator's supervised soft prompt as scale ``full`` tunes it (the same stage
cache as the harness's store builds, so the prompt is trained once for both), sampled at
every (temperature, top-p) of the grid; the tuned teacher labels every example. For each
setting, the quality numbers of :mod:`retrikt.generator.quality` - validity, teacher
agreement, duplicates, distinct-n, mean pairwise cosine - and ``yield``, the share of
outputs a store keeps with the right label. The chosen setting (``choose_setting``: yield
first, then the least alike) is what scale ``full`` samples with::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/sampling_sweep.py --data-dir ../shared/data \\
        --tasks copa --teacher copa=experiments/cache/teachers/copa/qwen-lora

Generations are checkpointed per setting (``generate_records``): a killed run resumes, and the
report is rewritten after every task. ``--combine`` reads the per-task reports and writes the
cross-task table that ``build-store``'s default sampling comes from::

    .venv/bin/python experiments/sampling_sweep.py --combine --out experiments/results/sampling \
        experiments/results/sampling-{cb,copa,rte,mrpc,cola,stsb}.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import ArtefactCache, write_json_atomic
from retrikt.config import DefaultsHelpFormatter
from retrikt.encoder import Encoder
from retrikt.generator.build import (
    generate_records,
    load_task_data,
    prepare_generator,
    prepare_teachers,
    score_records,
)
from retrikt.generator.quality import QUALITY_COLUMNS, choose_setting, sample_quality
from retrikt.harness.artefacts import TaskContext
from retrikt.harness.scales import DEFAULT_CACHE, SCALES, HarnessConfig
from retrikt.tasks import get_task

logger = logging.getLogger("sampling_sweep")


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def setting_name(temperature: float, top_p: float) -> str:
    return f"T={temperature:g}, top-p={top_p:g}"


def sweep_task(task_name: str, teacher: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting's quality numbers on one task; cached stages are not redone."""
    config = HarnessConfig(
        tasks=[task_name],
        methods=[],
        seeds=[0],
        scale=SCALES[args.scale],
        name="sampling-sweep",
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        teachers={task_name: Path(teacher)},
    )
    ctx = TaskContext(config, ArtefactCache(args.cache_dir), get_task(task_name))
    base = replace(ctx.build_config("none"), samples_per_label=args.samples_per_label)
    data = load_task_data(base)
    teacher_model, info, _, _ = prepare_teachers(base, data)
    adapter = prepare_generator(base, data, teacher_model, info)
    encoder = Encoder(base.encoder)
    results: dict[str, Any] = {}
    for temperature in floats(args.temperatures):
        for top_p in floats(args.top_ps):
            started = time.perf_counter()
            sampling = replace(base.sampling, temperature=temperature, top_p=top_p)
            setting = replace(base, sampling=sampling)
            records = generate_records(setting, data, adapter, teacher_model)
            scores = score_records(
                data.task, records, encoder, data.train, teacher_model.id, base.near_duplicate
            )
            metrics = sample_quality(data, records, scores, encoder, base.near_duplicate)
            name = setting_name(temperature, top_p)
            results[name] = {"temperature": temperature, "top_p": top_p, **metrics}
            logger.info(
                "%s %s: %s (%.0f s)", task_name, name, metrics, time.perf_counter() - started
            )
    return {
        "teacher": teacher_model.id,
        "generator": base.generator,
        "prompt_steps": base.generator_prompt.steps,
        "settings": results,
        "chosen": choose_setting(results),
    }


def render(command: str, args: argparse.Namespace, tasks: dict[str, Any]) -> str:
    steps = ", ".join(f"{task}: {r['prompt_steps']} steps" for task, r in tasks.items())
    lines = [
        "# Generator sampling: validity against diversity",
        "",
        "```",
        command,
        "```",
        "",
        f"The generator's supervised soft prompt as scale `{args.scale}` tunes it "
        f"({steps}), "
        f"{args.samples_per_label} samples per label and setting; the task's tuned teacher "
        "labels each one. *yield* = share of all outputs that parse, carry the requested label "
        "by the teacher, and are not near-duplicates (>= 0.95 cosine) of a training or earlier "
        "example: what a store keeps per generated example. Lower *mean pairwise cos* = more "
        "varied examples. **Chosen** (`retrikt.generator.quality.choose_setting`): the least "
        "alike of the settings within 0.05 of the best yield.",
        "",
    ]
    for task, result in tasks.items():
        lines += [f"## {task}", "", f"Teacher `{result['teacher']}`.", ""]
        lines.append("| setting | generated | " + " | ".join(t for _, t in QUALITY_COLUMNS) + " |")
        lines.append("|---" * (len(QUALITY_COLUMNS) + 2) + "|")
        for name, m in result["settings"].items():
            cells = [f"{m[key]:.3f}" if key in m else "-" for key, _ in QUALITY_COLUMNS]
            shown = f"**{name}**" if name == result["chosen"] else name
            lines.append(f"| {shown} | {m['generated']} | " + " | ".join(cells) + " |")
        lines += ["", f"Chosen: **{result['chosen']}**.", ""]
    return "\n".join(lines)


def combine(tasks: dict[str, Any]) -> dict[str, Any]:
    """One setting for every task: ``choose_setting``'s rule on each setting's yield and mean
    pairwise cosine averaged over the tasks that swept it (a setting missing from any task's
    grid is left out, so every mean is over the same tasks)."""
    swept = set.intersection(*(set(r["settings"]) for r in tasks.values()))
    shared = [name for name in next(iter(tasks.values()))["settings"] if name in swept]
    means = {
        name: {
            key: float(np.mean([r["settings"][name].get(key, np.nan) for r in tasks.values()]))
            for key in ("yield", "pairwise_cosine")
        }
        for name in shared
    }
    return {"settings": means, "chosen": choose_setting(means)}


def render_combined(command: str, tasks: dict[str, Any], sources: list[str]) -> str:
    """Each setting's yield on every task, the mean, and each task's own pick."""
    combined = combine(tasks)
    names = list(tasks)
    lines = [
        "# Generator sampling across tasks: one default",
        "",
        "```",
        command,
        "```",
        "",
        "Yield (share of all outputs that parse, carry the requested label by the teacher and "
        "are new; see each task's report) per setting and task, from "
        + ", ".join(f"[`{Path(s).stem}`]({Path(s).with_suffix('.md').name})" for s in sources)
        + ". *mean* is over the tasks; a **bold** yield is that task's own pick, and the "
        "**bold** setting is the pick across tasks: `choose_setting`'s rule (the least alike of "
        "the settings within 0.05 of the best) on the mean yield and the mean of the tasks' "
        "mean pairwise cosines.",
        "",
        "| setting | " + " | ".join(names) + " | mean | mean pairwise cos |",
        "|---" + "|---:" * (len(names) + 2) + "|",
    ]
    for name, mean in combined["settings"].items():
        cells = [
            f"**{r['settings'][name]['yield']:.2f}**"
            if name == r["chosen"]
            else f"{r['settings'][name]['yield']:.2f}"
            for r in tasks.values()
        ]
        shown = f"**{name}**" if name == combined["chosen"] else name
        lines.append(
            f"| {shown} | " + " | ".join(cells)
            + f" | {mean['yield']:.3f} | {mean['pairwise_cosine']:.3f} |"
        )  # fmt: skip
    lines += ["", f"Chosen across tasks: **{combined['chosen']}**.", ""]
    return "\n".join(lines)


def render_chart(tasks: dict[str, Any], path: Path) -> None:
    """Yield against mean pairwise cosine, one panel per task, each setting labelled."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (task, result) in zip(axes[0], tasks.items(), strict=True):
        for name, m in result["settings"].items():
            if "pairwise_cosine" not in m:
                continue
            chosen = name == result["chosen"]
            ax.scatter(m["pairwise_cosine"], m["yield"], color="C3" if chosen else "C0")
            ax.annotate(name, (m["pairwise_cosine"], m["yield"]), fontsize=7)
        ax.set(title=task, xlabel="mean pairwise cosine (lower = more varied)", ylabel="yield")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder holding superglue/ and glue/")
    parser.add_argument(
        "--tasks", default="copa,cb", help="comma-separated task names (each needs --teacher)"
    )
    parser.add_argument(
        "--teacher", action="append", default=[], metavar="TASK=DIR", help="tuned teacher"
    )
    parser.add_argument(
        "--scale",
        default="full",
        choices=sorted(SCALES),
        help="the harness scale whose store-build settings (the generator's soft prompt too) apply",
    )
    parser.add_argument(
        "--temperatures", default="0.6,0.8,1.0,1.2", help="comma-separated temperatures to sweep"
    )
    parser.add_argument(
        "--top-ps",
        default="0.9,1.0",
        help="comma-separated top-p values to sweep (each with every temperature)",
    )
    parser.add_argument(
        "--samples-per-label",
        type=int,
        default=32,
        help="examples generated per label and setting",
    )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help="the harness cache, shared with its store builds (prompts, generations)",
    )
    parser.add_argument(
        "--out",
        default="experiments/results/sampling",
        help="writes OUT.md, OUT.json and OUT.png, rewritten after each task",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--combine",
        action="store_true",
        help="sweep nothing: read the REPORTS (.json of earlier sweeps) and write OUT.md with "
        "every setting's yield on each task and the one setting chosen across them",
    )
    parser.add_argument("reports", nargs="*", help="with --combine: sweep reports (.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.combine:
        if not args.reports:
            parser.error("--combine needs the sweep reports (.json) to read")
        tasks = {}
        for report in args.reports:
            tasks.update(json.loads(Path(report).read_text())["tasks"])
        command = ".venv/bin/python " + shlex.join(sys.argv)
        out.with_suffix(".md").write_text(render_combined(command, tasks, args.reports))
        logger.info("wrote %s", out.with_suffix(".md"))
        return
    if not args.data_dir:
        parser.error("--data-dir is required to sweep (all but --combine)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    teachers = dict(item.split("=", 1) for item in args.teacher)
    command = "OMP_NUM_THREADS={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"), shlex.join(sys.argv)
    )
    tasks: dict[str, Any] = {}
    for task in args.tasks.split(","):
        if task not in teachers:
            parser.error(f"--teacher {task}=DIR is missing: the sweep scores with the tuned one")
        tasks[task] = sweep_task(task, teachers[task], args)
        write_json_atomic(out.with_suffix(".json"), {"command": command, "tasks": tasks})
        out.with_suffix(".md").write_text(render(command, args, tasks))
        render_chart(tasks, out.with_suffix(".png"))
        logger.info("wrote %s after %s", out.with_suffix(".md"), task)


if __name__ == "__main__":
    main()
