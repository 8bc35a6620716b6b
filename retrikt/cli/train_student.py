"""``retrikt train-student``: train the student, plain or retrieving from a knowledge store."""

from __future__ import annotations

import argparse
import json

from retrikt.errors import RetriktError


def register(subparsers: argparse._SubParsersAction) -> None:
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
            "copy of the store) and scored on the validation split (OUT/eval_results.json)."
        ),
    )
    sub.add_argument("--task", required=True, help="task name (see 'retrikt tasks')")
    sub.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    sub.add_argument("--out", required=True, help="folder to write the trained student to")
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--store", help="knowledge store folder to retrieve from")
    mode.add_argument(
        "--no-retrieval", action="store_true", help="train the plain fine-tuned student"
    )
    sub.add_argument(
        "--encoder", default="minilm-l6", help="encoder preset, 'minilm-l6:N' or folder"
    )
    sub.add_argument("--epochs", type=int, default=3)
    sub.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate")
    sub.add_argument("--head-lr", type=float, default=1e-3, help="task head learning rate")
    sub.add_argument("--batch-size", type=int, default=16)
    sub.add_argument("--max-length", type=int, default=128, help="max tokens per input")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument(
        "--train-limit", type=int, help="train on a fixed random subset of this many examples"
    )
    sub.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    group = sub.add_argument_group("retrieval (with --store)")
    group.add_argument("--k", type=int, default=8, help="neighbours at inference (then tuned)")
    group.add_argument("--train-k", type=int, default=16, help="neighbours per training input")
    group.add_argument("--temperature", type=float, default=0.05, help="initial temperature")
    group.add_argument("--mix", type=float, default=0.5, help="initial weight of the model")
    group.add_argument(
        "--no-combined-ce",
        action="store_true",
        help="supervise the model's own prediction instead of the combined one",
    )
    group.add_argument(
        "--no-retrieval-loss", action="store_true", help="no KL that teaches retrieval"
    )
    group.add_argument("--no-distill", action="store_true", help="no distillation on the store")
    group.add_argument(
        "--refresh-every", type=int, default=1, help="epochs between re-embeddings of the store"
    )
    group.add_argument(
        "--tune-fraction",
        type=float,
        default=0.15,
        help="share of the training examples held out to tune k and mix (0: keep the flags')",
    )
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.store and not args.no_retrieval:
        raise RetriktError(
            "say which student to train: --store PATH (retrieve from a knowledge store, "
            "built with 'retrikt build-store') or --no-retrieval (plain fine-tuning)"
        )
    from retrikt.training import TrainConfig, set_threads, train_student

    set_threads(args.threads)
    config = TrainConfig(
        task=args.task,
        encoder=args.encoder,
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        train_limit=args.train_limit,
        store=args.store,
        k=args.k,
        train_k=args.train_k,
        temperature=args.temperature,
        mix=args.mix,
        combined_ce=not args.no_combined_ce,
        retrieval_loss=not args.no_retrieval_loss,
        distill=not args.no_distill,
        refresh_every=args.refresh_every,
        tune_fraction=args.tune_fraction,
    )
    result = train_student(config, args.data_dir, args.out)
    print(json.dumps({"model": args.out, "metrics": result.metrics}, indent=2))
    return 0
