"""``retrikt train-student``: train the student, plain or retrieving from a knowledge store.

Every training flag is generated from :class:`retrikt.student.config.TrainConfig` (its defaults and
help live there); this module only adds where the data comes from and goes to.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from retrikt.config import add_arguments, from_args
from retrikt.errors import RetriktError

#: TrainConfig fields that only matter with a store; shown in their own help group.
RETRIEVAL_FIELDS = (
    "k",
    "train_k",
    "retrieval_temperature",
    "mix",
    "combined_ce",
    "retrieval_loss",
    "distill",
    "refresh_every",
    "tune_retrieval",
    "tune_fraction",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from retrikt.student.config import TrainConfig

    sub = subparsers.add_parser(
        "train-student",
        help="train the small student encoder (with a knowledge store, or --no-retrieval)",
        description=(
            "Fine-tune a student encoder (default minilm-l6) with a task head on the task's "
            "train split (pairs as pair input, COPA as two-choice, STS-B as regression). With "
            "--store it becomes the RetriKT student: it learns to retrieve the store's "
            "teacher-labelled examples and mixes their soft labels into its prediction "
            "(objectives: combined cross-entropy, retrieval KL, distillation; each can be "
            "switched off). It is saved as a from_pretrained folder in --out (with its own "
            "copy of the store) and scored on the validation split (OUT/eval_results.json). "
            "Every epoch is checkpointed in OUT/checkpoint: after a kill, the same command "
            "resumes from the last finished epoch."
        ),
    )
    names = [f.name for f in fields(TrainConfig)]

    def all_but(*keep: str) -> list[str]:
        return [name for name in names if name not in keep]

    add_arguments(sub, TrainConfig, exclude=("store", *RETRIEVAL_FIELDS), required=("task",))
    sub.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    sub.add_argument("--out", required=True, help="folder to write the trained student to")
    sub.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    mode = sub.add_mutually_exclusive_group()
    add_arguments(mode, TrainConfig, exclude=all_but("store"))
    mode.add_argument(
        "--no-retrieval", action="store_true", help="train the plain fine-tuned student"
    )
    group = sub.add_argument_group("retrieval (with --store)")
    add_arguments(group, TrainConfig, exclude=all_but(*RETRIEVAL_FIELDS))
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "store", None) and not args.no_retrieval:
        raise RetriktError(
            "say which student to train: --store PATH (retrieve from a knowledge store, "
            "built with 'retrikt build-store') or --no-retrieval (plain fine-tuning)"
        )
    from retrikt.student.config import TrainConfig
    from retrikt.training import set_threads, train_student

    set_threads(args.threads)
    result = train_student(from_args(TrainConfig, args), args.data_dir, args.out)
    print(json.dumps({"model": args.out, "metrics": result.metrics}, indent=2))
    return 0
