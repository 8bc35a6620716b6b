"""Generation throughput: RetriKT's pipeline against a bare ``model.generate`` on the same batches.

The pipeline is ``run_generation`` end to end: planning, tokenising with left padding, the
per-row seeded Gumbel-max sampler, stop tokens, decoding, parsing every output and an fsynced
JSONL checkpoint per batch. The bare baseline is ``model.generate(do_sample=True)`` with the
same temperature/top-p, batch and token limit, and nothing else. Both are forced to write
exactly ``--max-new-tokens`` per row (``min_new_tokens``) so they do the same model work, and
they alternate batch by batch so that load from other processes hits both alike.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_generation.py \\
        --out experiments/results/generation_throughput.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from retrikt.generator.generation import SamplingConfig, plan_jobs, run_generation
from retrikt.generator.lm import compute_dtype, load_policy
from retrikt.generator.templates import generation_prompt, label_options, parse_example
from retrikt.tasks import get_task


def bare_generate(model, tokenizer, prompts: list[str], config: SamplingConfig) -> float:
    start = time.perf_counter()
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        model.generate(
            **batch,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0,
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    return time.perf_counter() - start


def pipeline_generate(model, tokenizer, task, jobs, config: SamplingConfig) -> float:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:

        def annotate(records):
            for r in records:
                r["valid"] = parse_example(task, r["text"], r["label"]) is not None

        run_generation(model, tokenizer, jobs, config, work, annotate=annotate)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cb")
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--adapter", help="soft-prompt adapter folder (default: the bare LM)")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="experiments/results/generation_throughput.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    task = get_task(args.task)
    model, tokenizer = load_policy(args.generator, args.adapter)
    load_before = os.getloadavg()[0]
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        config = SamplingConfig(args.max_new_tokens, batch_size, min_new_tokens=args.max_new_tokens)
        labels = label_options(task)
        jobs = plan_jobs(
            task.name,
            labels,
            batch_size * (args.batches + 1),
            lambda label: generation_prompt(task, label),
        )
        batches = [jobs[i * batch_size : (i + 1) * batch_size] for i in range(args.batches + 1)]
        bare_times, pipe_times = [], []
        for i, batch in enumerate(batches):  # batch 0 warms both paths up and is not timed
            bare = bare_generate(model, tokenizer, [j.prompt for j in batch], config)
            pipe = pipeline_generate(model, tokenizer, task, batch, config)
            if i:
                bare_times.append(bare)
                pipe_times.append(pipe)
            print(
                f"batch {batch_size} #{i}: bare {bare:.1f}s pipeline {pipe:.1f}s", file=sys.stderr
            )
        tokens = batch_size * args.max_new_tokens * args.batches
        examples = batch_size * args.batches
        bare_s, pipe_s = sum(bare_times), sum(pipe_times)
        rows.append(
            f"| {batch_size} | {tokens / bare_s:.1f} | {tokens / pipe_s:.1f} | "
            f"{60 * examples / bare_s:.1f} | {60 * examples / pipe_s:.1f} | "
            f"**{bare_s / pipe_s:.0%}** |"
        )
    command = "OMP_NUM_THREADS={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"), shlex.join(sys.argv)
    )
    text = "\n".join(
        [
            "# Generation throughput: pipeline vs bare `model.generate`",
            "",
            "```",
            command,
            "```",
            "",
            f"Generator {args.generator}"
            + (f" with soft prompt {args.adapter}" if args.adapter else " (no soft prompt)")
            + f", {str(compute_dtype()).removeprefix('torch.')} weights, "
            f"{torch.get_num_threads()} torch thread(s), task {task.name} generation prompts, "
            f"{args.max_new_tokens} new tokens per row (forced, so both sides do the same work), "
            f"{args.batches} timed batches per size after one warm-up, bare and pipeline "
            f"alternating batch by batch. Load average of the shared 2-core machine: "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
            "",
            "| batch | bare tok/s | pipeline tok/s | bare ex/min | pipeline ex/min "
            "| pipeline / bare |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "The pipeline adds per-row seeded sampling (Gumbel-max with one generator per row),",
            "stop-token handling, decoding, parsing and an fsynced JSONL checkpoint per batch.",
            "Absolute rates follow the machine's load (other jobs share its 2 cores; unloaded,",
            "SmolLM2-135M writes ~73 tok/s at batch 8 and ~129 at batch 32 with 2 threads);",
            "the ratio in the last column is what the target (>= 80%) is about.",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
