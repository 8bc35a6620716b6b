"""Teacher tuning cost: seconds per training step by base model, tuning and dtype.

Issue 12 asks to measure the cost before planning the teacher runs. Each setting runs in a
process of its own with one torch thread (``OMP_NUM_THREADS=1``: the 2 cores are shared
with other jobs) and ``RETRIKT_FP32=1`` for the fp32 rows. A step is what ``retrikt
train-teacher``'s Trainer does: the model from ``retrikt.teachers.tuning.prepare_model``,
forward and task loss (under bf16 autocast where ``bf16_supported()``), backward and an
AdamW step, on 16 random RTE training pairs cut at 256 tokens. One warm-up step, then
``--steps`` timed ones.

    .venv/bin/python experiments/bench_teacher_cost.py --data-dir ../shared/data \\
        --out experiments/results/teacher_cost.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from retrikt.config import DefaultsHelpFormatter

#: (model, tuning, fp32, length-grouped batches); one ungrouped row prices the padding.
SETTINGS = [
    ("smollm2-135m", "lora", True, True),
    ("smollm2-135m", "lora", False, True),
    ("smollm2-135m", "lora", False, False),
    ("smollm2-135m", "full", True, True),
    ("smollm2-135m", "full", False, True),
    ("qwen2.5-0.5b", "lora", True, True),
    ("qwen2.5-0.5b", "lora", False, True),
]
BATCH = 16
#: Training examples of the tasks whose epochs the table prices (issue 12, scale full).
EPOCHS = {"CB": 250, "RTE": 2490, "CoLA": 8551}


def measure(model_name: str, tuning: str, grouped: bool, steps: int, data_dir: str | None) -> dict:
    """Time ``steps`` training steps of one setting in this process, on batches drawn at
    random from an epoch's batches (length-grouped ones start with the longest)."""
    import torch
    from transformers import set_seed
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from retrikt.generator.lm import bf16_supported
    from retrikt.tasks import get_task
    from retrikt.teachers.classifier import Collator, features, task_loss, task_scores
    from retrikt.teachers.config import TeacherConfig
    from retrikt.teachers.tuning import prepare_model

    task = get_task("rte")
    train = task.read("train", data_dir)
    config = TeacherConfig(task="rte", out="unused", model=model_name, tuning=tuning)
    set_seed(0)
    model, tokenizer = prepare_model(config, task)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    collate = Collator(tokenizer.pad_token_id, regression=False)
    bf16 = bf16_supported()
    items = features(task, tokenizer, train, config.max_length)
    if grouped:  # the batches train-teacher's Trainer draws (train_sampling_strategy)
        sampler = LengthGroupedSampler(BATCH, lengths=[item["length"] for item in items])
        order = list(sampler)
    else:
        order = random.Random(0).sample(range(len(items)), len(items))
    batches = [order[i : i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]
    seconds, tokens, widths = [], [], []
    for step, chosen in enumerate(random.Random(0).sample(batches, 1 + steps)):
        batch = collate([items[i] for i in chosen])
        labels = batch.pop("labels")
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = task_loss(task, task_scores(task, model(**batch).logits), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step pays for allocation and kernel selection
            seconds.append(time.perf_counter() - start)
            tokens.append(int(batch["attention_mask"].sum()))
            widths.append(batch["input_ids"].shape[1])
    return {
        "dtype": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in model.parameters()),
        "seconds": seconds,
        "tokens_per_batch": statistics.mean(tokens),
        "padded_width": statistics.mean(widths),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_setting(
    model: str, tuning: str, fp32: bool, grouped: bool, args: argparse.Namespace
) -> dict:
    """One setting in a fresh process (threads and dtype are fixed at start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RETRIKT_FP32", None)
    if fp32:
        env["RETRIKT_FP32"] = "1"
    command = [sys.executable, __file__, "--one", model, tuning, "--steps", str(args.steps)]
    command += [] if grouped else ["--random-batches"]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        logging.warning("%s %s: %s", model, tuning, reason)
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(model: str, tuning: str, fp32: bool, grouped: bool, result: dict) -> str:
    batches = "grouped" if grouped else "random"
    if "error" in result:
        dtype = "fp32" if fp32 else "bf16"
        return f"| {model} | {tuning} | {dtype} | {batches} | skipped: {result['error']} |||||||||"
    median = statistics.median(result["seconds"])
    epochs = " | ".join(f"{math.ceil(n / BATCH) * median / 60:.0f}" for n in EPOCHS.values())
    times = ", ".join(f"{s:.1f}" for s in result["seconds"])
    return (
        f"| {model} | {tuning} | {result['dtype']} | {batches} | **{median:.1f}** | {times} | "
        f"{result['trainable'] / 1e6:.1f}M / {result['total'] / 1e6:.1f}M | "
        f"{result['tokens_per_batch']:.0f} / {BATCH * result['padded_width']:.0f} | "
        f"{result['peak_rss_gb']:.1f} | {epochs} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder holding superglue/ (default: $RETRIKT_DATA)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument(
        "--out", default="experiments/results/teacher_cost.md", help="the markdown report"
    )
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "TUNING"), help=argparse.SUPPRESS)
    parser.add_argument("--random-batches", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.one:
        grouped = not args.random_batches
        print(json.dumps(measure(*args.one, grouped, args.steps, args.data_dir)))
        return
    from retrikt.doctor import cpu_features

    load_before = os.getloadavg()[0]
    cpu = cpu_features()
    settings = SETTINGS
    if not cpu["bf16_fast"]:  # a bf16 row would time fp32 again under another name
        settings = [(m, t, fp32, grouped) for m, t, fp32, grouped in SETTINGS
                    if fp32 or not grouped]  # fmt: skip
        logging.info("no bf16 on this CPU: timing fp32 only")
    lines = []
    for setting in settings:
        lines.append(row(*setting, run_setting(*setting, args)))
        logging.info("%s", lines[-1])
    text = "\n".join(
        [
            "# Teacher tuning cost: seconds per training step",
            "",
            "```",
            f".venv/bin/python {shlex.join(sys.argv)}",
            "```",
            "",
            f"One torch thread per setting (`OMP_NUM_THREADS=1`) on {cpu['model']} "
            f"(AVX512-BF16: {'yes' if cpu['avx512_bf16'] else 'no'}); the machine's 2 cores are "
            "shared with other agents' jobs, so these are contended times (load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after). A step: forward, "
            f"loss, backward and AdamW on a batch of {BATCH} random RTE training pairs (max 256 "
            "tokens), as `retrikt train-teacher` runs it (`prepare_model`, bf16 autocast with "
            f"fp32 master weights where bf16 is supported); 1 warm-up step, then {args.steps} "
            "timed, drawn at random from one epoch's batches. *grouped*: the length-grouped "
            "batches train-teacher draws by default (`--no-group-by-length` turns them off); "
            "*random*: plain "
            "random batches, padded to their longest pair. LoRA: r 16 on every linear layer, "
            "head trained in full. Epoch minutes = steps per epoch x median step (no "
            "evaluation), to plan the runs; every column is priced with these RTE-length "
            "batches, so CoLA's (short single sentences) is an upper bound.",
            "",
            "| model | tuning | dtype | batches | s/step (median) | timed steps (s) "
            "| trainable / total | real / padded tokens per batch | peak RSS (GB) | "
            + " | ".join(f"{name} epoch (min, {n} ex)" for name, n in EPOCHS.items())
            + " |",
            "|---|---|---|---|---:|---|---|---:|---:|" + "---:|" * len(EPOCHS),
            *lines,
            "",
        ]
    )
    Path(args.out).write_text(text)
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
