"""``retrikt build-store``: generate a task's knowledge store with the LLM."""

from __future__ import annotations

import argparse
import json
from typing import Any

DESCRIPTION = """\
Generate a knowledge store of new, teacher-labelled examples of TASK.

Stages (each cached under --cache-dir by a hash of its inputs, so a rerun reuses them):
  1. teacher prompt: a soft prompt that makes the LLM answer the task (--teacher-steps;
     0 = zero-shot); its validation score is logged and kept in the store manifest.
  2. generator prompt: a soft prompt that writes a whole example given the label it must
     have (--prompt-steps; 0 = the plain instruction-prompted LLM).
  3. RL: refine the generator prompt with reward = teacher accuracy + diversity + validity
     (--rl ppo|grpo|none, --rl-steps); rollouts are sampled with the same
     temperature, top-p, stop tokens and token limit as the store.
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
    from retrikt.config import add_arguments
    from retrikt.generator.configs import BuildConfig, RLConfig, SamplingConfig, SoftPromptConfig

    add_arguments(p, BuildConfig, required=("task", "out"))
    add_arguments(
        p.add_argument_group("sampling (the store's and the RL rollouts')"),
        SamplingConfig,
        exclude=("seed",),  # --seed of the build seeds every stage
    )
    tuning = ("steps", "num_virtual_tokens", "lr", "batch_size")
    add_arguments(p.add_argument_group("teacher prompt"), SoftPromptConfig, prefix="teacher_",
                  include=tuning)  # fmt: skip
    add_arguments(p.add_argument_group("generator prompt"), SoftPromptConfig, prefix="prompt_",
                  include=tuning)  # fmt: skip
    add_arguments(p.add_argument_group("RL (--rl ppo|grpo)"), RLConfig, prefix="rl_",
                  include=("steps", "batch_size", "mini_batch_size", "lr", "kl_coef",
                           "num_generations"))  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.generator.build import build_store
    from retrikt.generator.generation import shard_info
    from retrikt.store import KnowledgeStore

    config = config_from_args(args)
    out = build_store(config)
    if shard_info()[0] == 0:
        store = KnowledgeStore.open(out, verify=False)
        summary = {"store": str(out), "entries": len(store), **store.manifest["generator"]["stats"]}
        print(json.dumps(summary, indent=1))
    return 0


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``BuildConfig`` (with its nested configs) from the parsed flags."""
    from retrikt.config import from_args
    from retrikt.generator.configs import BuildConfig, RLConfig, SamplingConfig, SoftPromptConfig

    return from_args(
        BuildConfig,
        args,
        sampling=from_args(SamplingConfig, args),
        teacher_prompt=from_args(SoftPromptConfig, args, prefix="teacher_"),
        generator_prompt=from_args(SoftPromptConfig, args, prefix="prompt_"),
        rl_config=from_args(RLConfig, args, prefix="rl_"),
    )
