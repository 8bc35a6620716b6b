"""``TeacherConfig``: every setting of ``retrikt train-teacher``, with its flag and help.

Kept apart from the training code so that building the command line imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrikt.config import Config, option

#: What trains: LoRA adapters (and the head), every weight, or a soft prompt (verbalizer).
TUNINGS = ("lora", "full", "prompt")
#: Learning rates that suit each tuning on these models (LoRA wants ~10x full fine-tuning's).
DEFAULT_LR = {"lora": 2e-4, "full": 2e-5, "prompt": 3e-2}
#: Training arithmetic: bf16 autocast over fp32 master weights, or fp32 throughout.
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TeacherConfig(Config):
    """Hyper-parameters of teacher tuning (defaults: SmolLM2-135M LoRA on a few hundred pairs)."""

    task: str = option(None, "task name (see `retrikt tasks`) or task spec file")
    out: str = option(None, "folder to write the teacher to, e.g. teachers/cb")
    data_dir: str | None = option(None, "folder holding superglue/ and glue/ (or $RETRIKT_DATA)")
    model: str = option("smollm2-135m", "base model: LLM preset, HF folder or hub id")
    tuning: str = option(
        "lora",
        "lora: LoRA on every linear layer plus a trained head; full: every weight; prompt: "
        "the soft-prompted verbalizer teacher of build-store (no early stopping or resume)",
        choices=TUNINGS,
    )
    epochs: float = option(
        3.0, "passes over the training examples (early stopping may end sooner)", min=0
    )
    max_steps: int | None = option(None, "optimiser steps (overrides --epochs)", min=1)
    batch_size: int = option(16, "examples per step (COPA: each brings its 2 choices)", min=1)
    group_by_length: bool = option(
        True, "batch examples of similar length: a batch is padded to its longest row"
    )
    grad_accum: int = option(1, "batches accumulated into one optimiser step", min=1)
    lr: float | None = option(
        None, "learning rate (default: 2e-4 lora, 2e-5 full, 3e-2 prompt)", min=0
    )
    warmup: float = option(0.1, "share of the steps with a linear warm-up", min=0, below=1)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0)
    max_length: int = option(256, "tokens per input; longer pairs are cut", min=8)
    lora_r: int = option(16, "LoRA rank", min=1)
    lora_alpha: float = option(32.0, "LoRA scale numerator (scale = alpha / r)", min=0)
    lora_dropout: float = option(0.05, "dropout on the LoRA branch", min=0, below=1)
    num_virtual_tokens: int = option(20, "soft-prompt length (--tuning prompt)", min=1)
    heldout_fraction: float = option(
        0.1,
        "share of the TRAINING split held out for early stopping and model selection "
        "(stratified by label, seeded; the validation split is only scored at the end)",
        min=0.01,
        below=1,
    )
    eval_steps: int | None = option(
        None, "score the held-out slice and checkpoint every N steps (default: every epoch)", min=1
    )
    patience: int = option(3, "held-out evaluations without improvement before stopping", min=1)
    train_limit: int | None = option(None, "use this many random training examples", min=1)
    seed: int = option(0, "seed of the held-out slice, the head's init and the batch order")
    threads: int | None = option(None, "torch CPU threads (default: all cores)", min=1)
    precision: str = option(
        "auto",
        "arithmetic of lora and full tuning. auto: bf16 autocast where the CPU does bf16 fast "
        "(AVX512-BF16/AMX), fp32 elsewhere; bf16 or fp32 to choose. bf16 trains ~2x faster "
        "but can cost points (experiments/results/teachers.md)",
        choices=PRECISIONS,
    )
    overwrite: bool = option(False, "replace a finished teacher or the checkpoints of another run")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.tuning]
