"""Compare the examples written by the plain instruction-prompted LLM, the supervised soft
prompt and the RL-refined soft prompt on CB, RTE and COPA.

Every stage goes through ``retrikt.generator.build`` with its caches (prompts, RL adapters,
generation checkpoints), so an interrupted run resumes and a finished one only re-renders
the report. The markdown is rewritten after each task, so partial results are visible.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/generator_report.py \\
        --data-dir ../shared/data --out experiments/results/generator.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrikt.config import DefaultsHelpFormatter
from retrikt.encoder import Encoder
from retrikt.generator.build import (
    BuildConfig,
    generate_records,
    load_task_data,
    prepare_generator,
    prepare_teacher,
    prepare_teachers,
    score_records,
)
from retrikt.generator.configs import RLConfig, SamplingConfig, SoftPromptConfig
from retrikt.generator.quality import QUALITY_COLUMNS, sample_quality

logger = logging.getLogger("generator_report")


def rl_summary(adapter: Path | None) -> str:
    log = adapter / "rl_log.jsonl" if adapter else None
    if not log or not log.is_file():
        return ""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    key = "reward" if "reward" in rows[0] else next(k for k in rows[0] if "reward" in k)
    first, last = rows[0], rows[-1]
    kl = f", KL {last['kl']:.3f} at the end" if "kl" in last else ""
    return f"RL reward {first[key]:.3f} at step 1 -> {last[key]:.3f} at step {len(rows)}{kl}"


def example_lines(task, records, scores_by_id, k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for r in rng.sample(records, min(k, len(records))):
        wanted = task.label_name(r["label"])
        if r["fields"] is None:
            raw = " ".join(r["text"].split())[:300]
            lines.append(f"- asked **{wanted}** - unparsable: `{raw}`")
            continue
        soft = r["soft_labels"]
        if task.is_regression:
            verdict = f"teacher {soft[0]:.2f}"
        else:
            verdict = f"teacher {task.label_name(int(np.argmax(soft)))} ({max(soft):.2f})"
        dup = " (duplicate)" if scores_by_id[r["id"]]["diversity"] == 0 else ""
        lines.append(f"- asked **{wanted}**, {verdict}{dup}: {task.render(r['fields'])}")
    return lines


def render(command: str, args, sections: list[str], teacher_rows: list[str]) -> str:
    scale = (
        f"Scale (kept small: 2 shared CPU cores): {args.samples_per_label} samples per label and "
        f"setting, {args.max_new_tokens} new tokens at most, temperature {args.temperature}, "
        f"top-p {args.top_p} (the store's and PPO's rollouts' sampler); "
        f"soft prompts of {args.virtual_tokens} virtual tokens trained {args.prompt_steps} steps "
        f"(generator) and {args.teacher_steps} steps (teacher) at batch 8 on at most "
        f"{args.train_limit} training examples; PPO {args.rl_steps} steps of "
        f"{args.rl_batch} rollouts. The teacher labels every example; metrics over the valid "
        "ones, embeddings from minilm-l6 over the whole rendered example."
    )
    return "\n".join(
        [
            "# Generator: plain prompt vs soft prompt vs RL-refined soft prompt",
            "",
            "```",
            command,
            "```",
            "",
            scale,
            "",
            "## Teacher (SmolLM2-135M), validation",
            "",
            "CB and RTE: label-word probabilities after a chat question; COPA: each choice's",
            "length-normalised likelihood as the continuation of the premise. *tuned* adds the",
            f"teacher's own soft prompt ({args.teacher_steps} steps), which the store uses.",
            "",
            "| task | examples | metric | zero-shot | tuned | majority class |",
            "|---|---|---|---|---|---|",
            *teacher_rows,
            "",
            "Columns: *valid* = share of outputs that parse into the task's fields (closing",
            "`###`, every field, sane lengths); *teacher agrees* = share of valid ones whose",
            "teacher argmax is the requested label; *p(requested)* = mean teacher probability of",
            "it; *distinct-n* = unique n-grams / all n-grams; *mean pairwise cos* = mean cosine",
            "between valid examples (lower = more varied); *nearest-train cos* = mean cosine to",
            "the closest training example (high = copying); *copies* = share at or above 0.95 to",
            "a training example; *duplicates* = share that are exact or near (>= 0.95) duplicates",
            "of a training example or an earlier generated one (dropped by build-store);",
            "*yield* = share of all outputs that are valid, agreed and not duplicates.",
            "",
            *sections,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder holding superglue/ and glue/")
    parser.add_argument(
        "--out",
        default="experiments/results/generator.md",
        help="the markdown report, rewritten after each task",
    )
    parser.add_argument("--tasks", default="copa,rte,cb", help="comma-separated task names")
    parser.add_argument(
        "--samples-per-label",
        type=int,
        default=8,
        help="examples generated per label and setting",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=144, help="token limit per generated example"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature (also PPO's rollouts)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        help="nucleus sampling mass, 1 = the full distribution (also PPO's rollouts)",
    )
    parser.add_argument(
        "--prompt-steps",
        type=int,
        default=30,
        help="tuning steps of the generator's soft prompt (the supervised and PPO settings)",
    )
    parser.add_argument(
        "--teacher-steps",
        type=int,
        default=30,
        help="tuning steps of the teacher's soft prompt (the tuned teacher that labels)",
    )
    parser.add_argument(
        "--virtual-tokens",
        type=int,
        default=16,
        help="length in tokens of every soft prompt (generator and teacher)",
    )
    parser.add_argument(
        "--rl-steps", type=int, default=4, help="PPO steps (one rollout batch each)"
    )
    parser.add_argument(
        "--rl-batch",
        type=int,
        default=6,
        help="rollouts per PPO step (all in one gradient update)",
    )
    parser.add_argument(
        "--train-limit",
        type=int,
        default=400,
        help="random training examples the soft prompts train on and outputs are compared with",
    )
    parser.add_argument(
        "--teacher-eval-limit",
        type=int,
        default=100,
        help="random validation examples the teacher is measured on",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    parser.add_argument("--cache-dir", help="stage cache (default: $RETRIKT_CACHE/build)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = "OMP_NUM_THREADS={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"), shlex.join(sys.argv)
    )
    encoder = Encoder("minilm-l6")
    sections: list[str] = []
    teacher_rows: list[str] = []
    for name in args.tasks.split(","):
        started = time.perf_counter()
        prompt = SoftPromptConfig(steps=0, num_virtual_tokens=args.virtual_tokens)
        base = BuildConfig(
            task=name,
            data_dir=args.data_dir,
            out="unused",
            rl="none",
            generator_prompt=prompt,
            teacher_prompt=replace(prompt, steps=args.teacher_steps),
            rl_config=RLConfig(
                steps=args.rl_steps, batch_size=args.rl_batch, mini_batch_size=args.rl_batch
            ),
            sampling=SamplingConfig(
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                batch_size=args.batch_size,
            ),
            samples_per_label=args.samples_per_label,
            train_limit=args.train_limit,
            teacher_eval_limit=args.teacher_eval_limit,
            cache_dir=args.cache_dir,
        )
        data = load_task_data(base)
        task = data.task
        _, zero_shot = prepare_teacher(replace(base, teacher_prompt=prompt), data)
        teacher, info, _, _ = prepare_teachers(base, data)
        metric = task.metric_names[0]
        val = info["validation"]
        golds = Counter(ex["label"] for ex in data.validation)
        majority = max(golds.values()) / sum(golds.values())
        teacher_rows.append(
            f"| {task.name} | {val['examples']} | {metric} | {zero_shot['validation'][metric]:.3f} "
            f"| {val[metric]:.3f} | {majority:.3f} |"
        )
        tuned = replace(prompt, steps=args.prompt_steps)
        settings = {
            "plain instruction prompt": base,
            "soft prompt (supervised)": replace(base, generator_prompt=tuned),
            "soft prompt + PPO": replace(base, generator_prompt=tuned, rl="ppo"),
        }
        table = [
            "| setting | generated | " + " | ".join(title for _, title in QUALITY_COLUMNS) + " |",
            "|---" * (len(QUALITY_COLUMNS) + 2) + "|",
        ]
        shown: list[str] = []
        notes: list[str] = []
        for label, config in settings.items():
            adapter = prepare_generator(config, data, teacher, info)
            records = generate_records(config, data, adapter, teacher)
            scores = score_records(
                task, records, encoder, data.train, teacher.id, config.near_duplicate
            )
            m = sample_quality(data, records, scores, encoder, config.near_duplicate)
            cells = [f"{m[key]:.3f}" if key in m else "-" for key, _ in QUALITY_COLUMNS]
            table.append(f"| {label} | {m['generated']} | " + " | ".join(cells) + " |")
            if summary := rl_summary(adapter if config.rl != "none" else None):
                notes.append(f"{label}: {summary}.")
            by_id = {r["id"]: s for r, s in zip(records, scores, strict=True)}
            shown += ["", f"**{label}** (10 random outputs)", ""]
            shown += example_lines(task, records, by_id, 10, seed=0)
        minutes = (time.perf_counter() - started) / 60
        sections += [f"## {task.name}", "", *table, "", *notes]
        timing = f"({minutes:.1f} min for this task in this run; cached stages are not redone.)"
        sections += ["", timing, "", *shown, ""]
        Path(args.out).write_text(render(command, args, sections, teacher_rows))
        logger.info("wrote %s after %s", args.out, task.name)


if __name__ == "__main__":
    main()
