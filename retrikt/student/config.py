"""The student's configs: what ``config.json`` holds, and how one is trained (``TrainConfig``).

Light to import (no torch), so the command line builds its flags from them instantly.

Loading refuses keys this version does not know (``Config.from_dict``), so a folder written
by a newer RetriKT, or edited by hand, fails with the key's name instead of losing it. The
file records the library versions that wrote it, as sentence-transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Self

from retrikt.config import Config, option
from retrikt.tasks import CHOICE, CLASSIFICATION, SCORE

CONFIG_NAME, HEAD_NAME, ENCODER_DIR, STORE_DIR = (
    "config.json",
    "head.safetensors",
    "encoder",
    "store",
)
#: 2: the retrieval temperature is saved as ``log_retrieval_temperature``; the encoder folder
#: is a sentence-transformers folder (modules.json), read by version 1 loaders as a plain HF one.
FORMAT_VERSION = 2
_LIBRARIES = (
    "retrikt",
    "torch",
    "transformers",
    "sentence-transformers",
    "faiss-cpu",
    "onnx",
    "onnxruntime",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved student depends on (missing ones are left out)."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class RetrievalConfig(Config):
    """How the student retrieves: ``k`` neighbours, mixed with weight ``mix`` (lambda).

    Training and inference read the same ``mix``; tuning (``--tune-retrieval``) rewrites
    ``k``, ``mix`` and the retrieval temperature and records what it chose in ``tuning``.
    """

    k: int = option(8, "neighbours retrieved per input", min=1)
    mix: float = option(0.5, "weight of the model's own prediction (lambda)", min=0, max=1)
    store_encoder_id: str = option("", "encoder id of DIR/store (unique to these weights)")
    store_manifest_sha256: str = option("", "DIR/store's manifest checksum when it was saved")
    source: dict[str, Any] = option(default_factory=dict, help="the store it was trained from")
    tuning: dict[str, Any] = option(default_factory=dict, help="how k, mix were chosen")
    rationale_keys: bool = option(
        False, "keys embed each entry's input with its rationale appended"
    )


@dataclass
class StudentConfig(Config):
    """Everything needed to rebuild a student from its folder (saved as ``config.json``)."""

    task: str = option(help="task name")
    encoder: str = option(help="the preset or folder the encoder started from (provenance)")
    head: str = option(help="the task head", choices=(CLASSIFICATION, CHOICE, SCORE))
    max_length: int = option(128, "max tokens per encoder input", min=8)
    dropout: float = option(0.1, "dropout before the head", min=0, below=1)
    retrieval: RetrievalConfig | None = option(None, "retrieval settings (None: plain student)")
    task_spec: dict[str, Any] | None = option(
        None, "a user task's spec (retrikt task init): the task is rebuilt from it"
    )
    format_version: int = option(FORMAT_VERSION, "student folder format", min=1)
    training: dict[str, Any] = option(default_factory=dict, help="how it was trained")
    versions: dict[str, str] = option(default_factory=dict, help="libraries that wrote it")

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["task_spec"] is None:
            del data["task_spec"]  # students of built-in tasks stay readable by older RetriKT
        if data["retrieval"] is not None and not data["retrieval"]["rationale_keys"]:
            del data["retrieval"]["rationale_keys"]  # the same for students without it
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Self:
        """Strict loading of the config and of its nested retrieval settings."""
        if isinstance(data, dict) and isinstance(data.get("retrieval"), dict):
            retrieval = RetrievalConfig.from_dict(data["retrieval"], f"{source} (retrieval)")
            data = {**data, "retrieval": retrieval}
        return super().from_dict(data, source)


@dataclass
class TrainConfig(Config):
    """Hyper-parameters of one training run (saved inside the student's config).

    ``retrikt train-student`` has one flag per field, generated from this class.
    """

    task: str = option(help="task name (see 'retrikt tasks') or task spec file")
    encoder: str = option("minilm-l6", "encoder preset, 'minilm-l6:N' or folder")
    epochs: int = option(3, "training epochs", min=1)
    lr: float = option(5e-5, "encoder learning rate", min=0)
    #: The head starts from random weights; a larger step lets it catch up within the few
    #: hundred steps a low-resource task offers (the encoder keeps the small ``lr``).
    head_lr: float = option(1e-3, "task head learning rate", min=0)
    batch_size: int = option(16, "training batch size", min=1)
    max_length: int = option(128, "max tokens per input", min=8)
    seed: int = option(0, "random seed of initialisation, batches and the tuning split")
    train_limit: int | None = option(
        None, "train on a fixed random subset of this many examples", min=1
    )
    warmup_ratio: float = option(0.1, "share of the steps with a linear warmup", min=0, max=1)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)", min=0)
    max_grad_norm: float = option(1.0, "gradient norm clipping", min=0)
    log_every: int = option(20, "steps between loss logs", min=1)
    eval_batch_size: int = option(32, "batch size when scoring the validation split", min=1)
    # --- retrieval (used with a store)
    store: str | None = option(None, "knowledge store folder to retrieve from")
    k: int = option(8, "neighbours retrieved per input at inference", min=1)
    train_k: int = option(16, "candidate neighbours per input in the retrieval objectives", min=1)
    retrieval_temperature: float = option(
        0.05, "initial temperature of the neighbour softmax (then learned)", min=1e-4
    )
    mix: float = option(
        0.5, "weight of the model's own prediction (lambda), in training and at inference",
        min=0, max=1,
    )  # fmt: skip
    combined_ce: bool = option(
        True, "supervise the model's own prediction instead of the combined one"
    )
    retrieval_loss: bool = option(True, "no KL objective that teaches retrieval")
    distill: bool = option(True, "no distillation on the store's entries")
    refresh_every: int = option(1, "epochs between re-embeddings of the store", min=1)
    tune_retrieval: bool = option(
        False,
        "after training, choose k, mix and the retrieval temperature on training examples "
        "held out from the gradient steps; replaces --k and --mix (the choice is logged and "
        "saved in the student's config)",
    )
    tune_fraction: float = option(
        0.15, "share of the training examples held out by --tune-retrieval", min=0.01, below=1
    )
    # --- rationales (a store built with --rationales)
    rationale_loss: float = option(
        0.0,
        "weight of an auxiliary loss pulling each training input's embedding towards the "
        "embedding of its rationale in the store (0: off)",
        min=0,
    )
    rationale_keys: bool = option(
        False, "store keys embed each entry's input with its rationale appended"
    )
    # --- hidden-state distillation (retrikt.student.hidden)
    hidden_teacher: str | None = option(
        None,
        "also match every student layer's pooled output to a teacher layer's (student layer "
        "i <-> teacher layer round((i+1)*L_t/L_s), through learned projections): a "
        "`retrikt train-teacher --tuning lora|full` folder or an HF sequence classifier",
    )
    hidden_weight: float = option(1.0, "weight of the hidden-state loss", min=0)

    LATER_OPTIONS = ("rationale_loss", "rationale_keys", "hidden_teacher", "hidden_weight")


@dataclass
class ExportConfig(Config):
    """What ``retrikt export`` writes: a trained student folder in a runtime for serving."""

    model: str = option(help="the trained (PyTorch) student folder to export")
    out: str = option(help="the exported student folder to write (a new or empty folder)")
    format: str = option("onnx", "what the encoder is exported to", choices=("onnx",))
    quantize: str | None = option(
        None, "int8: dynamic int8 quantisation of the encoder's weights", choices=("int8",)
    )
