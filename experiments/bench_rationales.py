"""Rationale throughput: the sampler as it is, against the two costs it removed.

Every rationale prompt (:mod:`retrikt.generator.rationales`) repeats the task's instruction
and two explained demos before its own example. Three settings write rationales for the same
real training examples with the same seeds:

* **before** - the frozen LM as ``load_base`` loaded it before, every row prefilling its
  whole prompt: the prefill's last-position logits take torch's slow path for a strided
  input and a frozen weight, a copy of the vocabulary projection per row
  (:func:`retrikt.generator.lm.contiguous_logits_input`);
* **contiguous logits input** - the LM as ``load_base`` loads it, the head still prefilled
  once a row;
* **+ shared head cached** - the sampler as it is: the head every row shares is computed
  once and its KV cache repeated (:meth:`retrikt.generator.sampler.Sampler.head_cache`).

Batches are sorted by prompt length as ``build-store --rationales`` sorts them, every row is
forced to ``--tokens`` new tokens so all settings do the same work, and the settings
alternate batch by batch so that other load on the machine hits all of them alike.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_rationales.py --data-dir ../shared/data \\
        --task cola --out experiments/results/rationale_throughput.md
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shlex
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from retrikt.config import DefaultsHelpFormatter
from retrikt.doctor import cpu_features
from retrikt.generator.lm import compute_dtype, load_policy
from retrikt.generator.rationales import Demo, clean_rationale, pick_demos, rationale_prompt
from retrikt.generator.sampler import Sampler, SamplingConfig, shared_head_layout
from retrikt.models import GENERATOR, resolve_model
from retrikt.tasks import get_task

logger = logging.getLogger("bench_rationales")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", required=True, help="folder holding superglue/ and glue/")
    parser.add_argument(
        "--task", default="cola", help="task whose training examples get rationales"
    )
    parser.add_argument("--model", default="qwen2.5-0.5b", help="the rationale LLM preset")
    parser.add_argument("--batch-size", type=int, default=16, help="build-store's default")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--tokens", type=int, default=48, help="--rationale-tokens")
    parser.add_argument(
        "--out",
        default="experiments/results/rationale_throughput.md",
        help="the markdown report",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    task = get_task(args.task)
    train = [ex for ex in task.read("train", args.data_dir) if ex["label"] is not None]
    policy, tokenizer = load_policy(args.model, None)
    config = SamplingConfig(
        max_new_tokens=args.tokens, min_new_tokens=args.tokens, temperature=0.3, top_p=0.9
    )
    sampler = Sampler(policy, tokenizer, config)
    # The demos' own rationales are written zero-shot first, as build-store writes them.
    demo_examples = pick_demos(task, train, seed=0)
    written = sampler.sample(
        [rationale_prompt(task, ex, ex["label"], []) for ex in demo_examples], [0, 1]
    ).texts
    demos = [
        Demo(ex, ex["label"], clean_rationale(t) or "")
        for ex, t in zip(demo_examples, written, strict=True)
    ]
    # Warm-up batch (untimed) first, then the timed ones, each of similar prompt lengths.
    chosen = random.Random(0).sample(train, args.batch_size * (args.batches + 1))
    prompts = sorted((rationale_prompt(task, ex, ex["label"], demos) for ex in chosen), key=len)
    size = args.batch_size
    batches = [prompts[i * size : (i + 1) * size] for i in range(args.batches + 1)]
    plain = AutoModelForCausalLM.from_pretrained(
        resolve_model(args.model, GENERATOR).path, dtype=compute_dtype()
    ).eval()
    plain.requires_grad_(False)  # frozen, as load_base leaves it
    settings = {"before": Sampler(plain, tokenizer, config)}
    settings["contiguous logits input"] = Sampler(policy, tokenizer, config)
    for setting in settings.values():
        setting.head_cache = lambda *_: None  # every row prefills its whole prompt
    settings["+ shared head cached"] = sampler
    seconds = dict.fromkeys(settings, 0.0)
    heads, lengths = [], []
    for i, batch in enumerate(batches):
        _, mask, head = shared_head_layout(tokenizer, batch, sampler.pad_id)
        heads.append(head)
        lengths += mask.sum(-1).tolist()
        for name, setting in settings.items():
            started = time.perf_counter()
            setting.sample(batch, range(len(batch)))
            elapsed = time.perf_counter() - started
            logger.info("batch %d %s: %.1f s", i, name, elapsed)
            seconds[name] += elapsed if i else 0.0
    rows = args.batch_size * args.batches
    cpu = cpu_features()
    command = "OMP_NUM_THREADS={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "<unset>"), shlex.join(sys.argv)
    )
    table = [
        "| setting | seconds / rationale | new tokens / s | speed-up over before |",
        "|---|---:|---:|---:|",
    ]
    table += [
        f"| {name} | {s / rows:.2f} | {rows * args.tokens / s:.1f} | "
        f"**{seconds['before'] / s:.2f}x** |"
        for name, s in seconds.items()
    ]
    title = f"# Rationale throughput: the sampler against the costs it removed ({cpu['llm_dtype']})"
    text = "\n".join(
        [
            f"{title}\n\n```\n{command}\n```\n",
            f"{args.model} ({cpu['llm_dtype']}) on {cpu['model']} (AVX512-BF16: "
            f"{'yes' if cpu['avx512_bf16'] else 'no'}), {torch.get_num_threads()} torch "
            f"thread(s), load average {os.getloadavg()[0]:.1f} at the end; {task.name} "
            f"rationale prompts of {sum(lengths) / len(lengths):.0f} tokens on average, of "
            f"which the batch's shared head is {sum(heads) / len(heads):.0f}; batch "
            f"{args.batch_size}, {args.tokens} new tokens per row (forced); {args.batches} "
            "timed batches per setting after one warm-up batch. Made by the command above; "
            "see the script's docstring for what each setting runs.",
            "",
            *table,
            "",
        ]
    )
    Path(args.out).write_text(text)
    logger.info("wrote %s\n%s", args.out, text)


if __name__ == "__main__":
    main()
