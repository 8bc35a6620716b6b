"""``retrikt build-store``: generate a task's knowledge store with the LLM."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Generate a knowledge store of new, teacher-labelled examples of TASK.

Stages (each cached under --cache-dir by a hash of its inputs, so a rerun reuses them):
  1. teacher prompt: a soft prompt that makes the LLM answer the task (--teacher-steps;
     0 = zero-shot); its validation score is logged and kept in the store manifest.
  2. generator prompt: a soft prompt that writes a whole example given the label it must
     have (--prompt-steps; 0 = the plain instruction-prompted LLM).
  3. RL: refine the generator prompt with reward = teacher accuracy + diversity + validity
     (--rl ppo|grpo|none, --rl-steps).
  4. generation: --samples-per-label examples per label, in batches with a KV cache;
     every batch is parsed, labelled by the teacher and checkpointed, so a killed run
     resumes where it stopped. Run N processes with `accelerate launch --multi_gpu
     --num_processes N -m retrikt build-store ...` (on a CPU-only machine accelerate
     needs --multi_gpu to start more than one process; it then runs them on the CPU) or
     `torchrun --nproc_per_node N -m retrikt build-store ...`: process 0 trains the
     prompts, every process generates its shard, process 0 merges them into the store.
  5. selection: unparsable outputs and exact/near duplicates are dropped; the rest are
     embedded with the student encoder and written to --out.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-store",
        help="generate a task's knowledge store with the LLM",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (see `retrikt tasks`)")
    p.add_argument("--data-dir", help="folder holding superglue/ and glue/ (or $RETRIKT_DATA)")
    p.add_argument("--out", required=True, help="store folder to write, e.g. knowledge_store/cb")
    p.add_argument("--generator", default="smollm2-135m", help="generator LLM preset or folder")
    p.add_argument("--teacher", help="teacher LLM preset or folder (default: the generator)")
    p.add_argument("--encoder", default="minilm-l6", help="student encoder that embeds entries")
    p.add_argument("--samples-per-label", type=int, default=100, help="examples per label")
    p.add_argument("--rl", choices=("ppo", "grpo", "none"), default="ppo", help="RL method")
    p.add_argument("--prompt-steps", type=int, default=100, help="generator prompt-tuning steps")
    p.add_argument("--teacher-steps", type=int, default=100, help="teacher prompt-tuning steps")
    p.add_argument("--rl-steps", type=int, default=20, help="RL optimisation steps")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    p.add_argument("--max-new-tokens", type=int, default=96, help="token limit per example")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    p.add_argument("--train-limit", type=int, help="use this many random training examples")
    p.add_argument(
        "--teacher-eval-limit",
        type=int,
        default=200,
        help="validation examples to score the teacher",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--cache-dir", help="stage cache (default: $RETRIKT_CACHE/build)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.generator.build import BuildConfig, build_store
    from retrikt.generator.generation import shard_info
    from retrikt.store import KnowledgeStore

    config = BuildConfig(
        task=args.task,
        data_dir=args.data_dir,
        out=args.out,
        generator=args.generator,
        teacher=args.teacher,
        encoder=args.encoder,
        samples_per_label=args.samples_per_label,
        rl=args.rl,
        prompt_steps=args.prompt_steps,
        teacher_steps=args.teacher_steps,
        rl_steps=args.rl_steps,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        train_limit=args.train_limit,
        teacher_eval_limit=args.teacher_eval_limit,
        seed=args.seed,
        cache_dir=args.cache_dir,
        overwrite=args.overwrite,
    )
    out = build_store(config)
    if shard_info()[0] == 0:
        store = KnowledgeStore.open(out, verify=False)
        summary = {"store": str(out), "entries": len(store), **store.manifest["generator"]["stats"]}
        print(json.dumps(summary, indent=1))
    return 0
