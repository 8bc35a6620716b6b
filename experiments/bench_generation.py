"""Generation throughput: the soft-prompted sampler, cached and uncached, against bare ``generate``.

Three ways to write the same number of tokens for the same prompts and batch:

* **bare** - ``model.generate(input_ids, do_sample=True)`` on the LM without a soft prompt,
  with the same temperature/top-p: the ceiling;
* **RetriKT sampler** - :class:`retrikt.generator.sampler.Sampler` with a soft prompt: cached
  ``generate`` on ``inputs_embeds``, per-row seeded Gumbel-max, log-prob bookkeeping, stop
  tokens and decoding (what ``build-store`` and the RL rollouts run);
* **soft prompt, no cache** - :func:`retrikt.generator.sampler.greedy_without_cache`: every
  step recomputes the whole sequence, which is what peft's glue fell back to when it lost the
  cache (transformers 5.24 + peft 0.21). (``generate(inputs_embeds=..., use_cache=False)``
  is no such baseline: transformers keeps a cache for embedding inputs whatever the flag;
  measured here, 7.3 s vs 7.6 s with the cache, against 24.9 s for ``input_ids``.)

Every row is forced to ``--max-new-tokens`` (``min_new_tokens``) so all do the same work, and
the settings alternate batch by batch so load from other processes hits all of them alike.
Targets (issue 11): the sampler >= 2x the uncached path at 128 new tokens, and >= 80% of bare.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/bench_generation.py \\
        --out experiments/results/generation_throughput.md
    RETRIKT_FP32=1 ...   # the float32 path of CPUs without AVX512-BF16/AMX
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from retrikt.config import DefaultsHelpFormatter
from retrikt.doctor import cpu_features
from retrikt.generator.lm import load_base, load_policy
from retrikt.generator.sampler import Sampler, SamplingConfig, greedy_without_cache
from retrikt.generator.templates import generation_prompt, label_options
from retrikt.tasks import get_task

logger = logging.getLogger("bench_generation")


def random_soft_prompt(generator: str, tokens: int):
    """A soft prompt drawn from the vocabulary: its speed is that of a trained one."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    base, tokenizer = load_base(generator)
    torch.manual_seed(0)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    return get_peft_model(base, config).eval(), tokenizer


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--task", default="cb", help="task whose generation prompts are sampled")
    parser.add_argument("--generator", default="smollm2-135m", help="generator LM preset")
    parser.add_argument("--adapter", help="soft-prompt adapter folder (default: a random one)")
    parser.add_argument(
        "--virtual-tokens",
        type=int,
        default=16,
        help="length in tokens of the random soft prompt (unused with --adapter)",
    )
    parser.add_argument(
        "--batch-sizes", default="8,32", help="comma-separated batch sizes, one table row each"
    )
    parser.add_argument("--batches", type=int, default=2, help="timed batches per setting")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=128,
        help="new tokens every row writes (forced: no early stop)",
    )
    parser.add_argument(
        "--out",
        default="experiments/results/generation_throughput.md",
        help="the markdown report (also printed)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    task = get_task(args.task)
    if args.adapter:
        policy, tokenizer = load_policy(args.generator, args.adapter)
    else:
        policy, tokenizer = random_soft_prompt(args.generator, args.virtual_tokens)
    n = args.max_new_tokens
    config = SamplingConfig(max_new_tokens=n, min_new_tokens=n, temperature=0.8, top_p=0.95)
    sampler = Sampler(policy, tokenizer, config)
    base = sampler.base
    load_before = os.getloadavg()[0]
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        labels = label_options(task)
        prompts = [generation_prompt(task, labels[i % len(labels)]) for i in range(batch_size)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        common = dict(
            max_new_tokens=n, min_new_tokens=n, pad_token_id=sampler.pad_id, eos_token_id=None
        )
        runs: dict[str, Callable[[], object]] = {
            "bare": lambda enc=enc, common=common: base.generate(
                **enc, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, **common
            ),
            "sampler": lambda prompts=prompts: sampler.sample(prompts, range(len(prompts))),
            "uncached": lambda prompts=prompts: greedy_without_cache(policy, tokenizer, prompts, n),
        }
        seconds = {name: 0.0 for name in runs}
        for i in range(args.batches + 1):  # batch 0 warms every path up and is not timed
            for name, run in runs.items():
                elapsed = timed(run)
                logger.info("batch %d #%d %s: %.1f s", batch_size, i, name, elapsed)
                if i:
                    seconds[name] += elapsed
        tokens = batch_size * n * args.batches
        rate = {name: tokens / s for name, s in seconds.items()}
        rows.append(
            f"| {batch_size} | {rate['bare']:.1f} | {rate['sampler']:.1f} | "
            f"{rate['uncached']:.1f} | **{rate['sampler'] / rate['uncached']:.1f}x** | "
            f"**{rate['sampler'] / rate['bare']:.0%}** |"
        )
    cpu = cpu_features()
    command = "OMP_NUM_THREADS={} RETRIKT_FP32={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"),
        os.environ.get("RETRIKT_FP32", "<unset>"),
        shlex.join(sys.argv),
    )
    text = "\n".join(
        [
            "# Generation throughput: soft-prompted sampler vs bare `generate` "
            f"({cpu['llm_dtype']})",
            "",
            "```",
            command,
            "```",
            "",
            f"Generator {args.generator} with a {args.virtual_tokens}-token soft prompt"
            + (f" ({args.adapter})" if args.adapter else " (random)")
            + f", {cpu['llm_dtype']} weights on {cpu['model']} (AVX512-BF16: "
            f"{'yes' if cpu['avx512_bf16'] else 'no'}), {torch.get_num_threads()} torch "
            f"thread(s), task {task.name} generation prompts, {n} new tokens per row (forced), "
            f"temperature 0.8, top-p 0.95, {args.batches} timed batches per size after one "
            f"warm-up, the three paths alternating. Load average of the 2-core machine: "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
            "",
            "| batch | bare tok/s | RetriKT sampler tok/s | soft prompt, no cache tok/s "
            "| sampler / no cache | sampler / bare |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Targets: sampler >= 2x the uncached path, and >= 80% of bare `generate`.",
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
