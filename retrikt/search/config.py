"""``SearchConfig``: every setting of ``retrikt search-student``, with its flag and help.

Kept apart from the search code so that building the command line imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import Config, option

INITS = ("slice", "random")


@dataclass
class SearchConfig(Config):
    """A student architecture search under a latency budget (see ``retrikt.search``)."""

    task: str = option(None, "task name (see `retrikt tasks`) or task spec file")
    store: str = option(None, "knowledge store the candidates retrieve from and distil")
    latency_budget_ms: float = option(
        None, "p50 latency at batch 1 (tokenisation included) the student must meet", min=0.01
    )
    out: str = option(None, "folder for the study, the report and the chosen student")
    teacher: str | None = option(
        None,
        "hidden-state teacher: a `retrikt train-teacher --tuning lora|full` folder or an HF "
        "sequence classifier (none: logit and retrieval distillation only)",
    )
    trials: int = option(12, "architectures to try (a rerun adds trials up to this)", min=1)
    data_dir: str | None = option(None, "folder holding superglue/ and glue/ (or $RETRIKT_DATA)")
    parent: str = option("minilm-l6", "the BERT-style encoder candidates are sliced from")
    init: str = option(
        "slice", "slice: keep the parent's most important units; random: the baseline",
        choices=INITS,
    )  # fmt: skip
    proxy_size: int = option(
        64, "proxy set: training examples per trial, and store entries scored", min=4
    )
    proxy_epochs: int = option(3, "training epochs of a trial on the proxy set", min=1)
    penalty: float = option(0.1, "reward lost per ms over the latency budget", min=0)
    finalists: int = option(
        2, "best candidates within budget distilled on the training split to pick the winner",
        min=1,
    )  # fmt: skip
    incumbent: bool = option(
        True,
        "also distil the deepest full-width cut of --parent that meets the budget as a "
        "finalist, so the winner must beat the student you would pick by hand",
    )
    heldout_fraction: float = option(
        0.15, "share of the training split that scores the finalists", min=0.01, below=1
    )
    epochs: int = option(5, "epochs of the finalists' and the winner's distillation", min=1)
    batch_size: int = option(16, "training batch size", min=1)
    max_length: int = option(128, "max tokens per input", min=8)
    hidden_weight: float = option(1.0, "weight of the hidden-state loss", min=0)
    train_limit: int | None = option(None, "use a fixed random subset of the training split", min=1)
    latency_examples: int = option(
        30, "real training inputs timed one at a time per architecture", min=1
    )
    latency_threads: int = option(1, "torch threads while timing (one request's share)", min=1)
    threads: int | None = option(None, "torch threads for training (default: all cores)", min=1)
    seed: int = option(0, "seed of the sampler, the proxy split and training")
    cache_dir: str | None = option(
        None, "cache of latencies, importances and teacher states (default: OUT/cache)"
    )
