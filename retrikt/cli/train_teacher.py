"""``retrikt train-teacher``: fine-tune an LLM into the task's teacher (its own step)."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Tune a teacher for TASK on its whole training split and write it to --out, a folder that
`retrikt build-store --teacher OUT` labels the store with.

  --tuning lora    LoRA on every linear layer of --model plus a trained classification head
                   (default); full: every weight; prompt: build-store's soft-prompted
                   verbalizer teacher.
  heads            classification: one logit per label; STS-B: a regression score (MSE);
                   COPA: one score per (premise + because/so, choice), cross-entropy over
                   the choices.
  selection        --heldout-fraction of the TRAINING split (stratified, seeded) chooses the
                   best checkpoint and stops early (--patience); the validation split is
                   scored once at the end (OUT/eval_results.json).
  resume           checkpoints go to OUT/checkpoints; rerun the same command after a kill
                   and it continues from the last one. Several processes:
                   `accelerate launch --multi_gpu --num_processes N -m retrikt train-teacher ...`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-teacher",
        help="fine-tune an LLM (LoRA, full or soft prompt) into the task's teacher",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from retrikt.config import add_arguments
    from retrikt.teachers.config import TeacherConfig

    add_arguments(p, TeacherConfig, required=("task", "out"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.config import from_args
    from retrikt.teachers.config import TeacherConfig
    from retrikt.teachers.tuning import train_teacher

    result = train_teacher(from_args(TeacherConfig, args))
    if result is not None:
        print(
            json.dumps(
                {"teacher": str(result.out), "id": result.teacher.id, **result.results}, indent=1
            )
        )
    return 0
