"""``load_teacher(spec)``: any teacher build-store can use, from one string.

``spec`` is, in the order tried:

1. a ``retrikt train-teacher`` folder (it holds ``teacher_config.json``): a LoRA adapter or
   full weights on a sequence-classification head, or a soft prompt for the base LLM;
2. an LLM: a generator preset, or a folder / hub id of a causal LM - today's
   ``LLMTeacher``, reading the label words zero-shot;
3. any other Hugging Face sequence classifier, folder or hub id (``roberta-large-mnli``
   for users with a network); its labels are matched to the task's by name.

Every teacher's ``id`` names its weights (a digest of their files), so stages cached
under an old teacher are not reused after retraining.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrikt.errors import RetriktError
from retrikt.generator.lm import compute_dtype
from retrikt.generator.teacher import LLMTeacher
from retrikt.models import GENERATOR, PRESETS, resolve_model
from retrikt.tasks import Example, Task
from retrikt.teachers.classifier import ClassifierTeacher, load_classifier
from retrikt.user_task import restore_task

TEACHER_CONFIG = "teacher_config.json"
EVAL_RESULTS = "eval_results.json"
TRAINING_LOG = "training_log.json"  # the Trainer's log history
_WEIGHTS = ("adapter_model.*", "model*.safetensors", "pytorch_model*.bin")


class Teacher(Protocol):
    """What build-store needs of any teacher: an ``id`` for manifests and cache keys."""

    id: str

    def label_probs(self, task: Task, examples: Sequence[Example]) -> np.ndarray:
        """(n, C) probabilities over ``task.label_names``; (n, 1) expected score for regression."""
        ...


def weights_digest(folder: str | Path) -> str:
    """A short hash of a folder's weight files (adapter or full model)."""
    digest = hashlib.sha256()
    for pattern in _WEIGHTS:
        for path in sorted(Path(folder).glob(pattern)):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def tuned_id(task: str, base: str, tuning: str, folder: str | Path) -> str:
    """The id of a train-teacher folder: what it was tuned from, how, and its weights."""
    return f"tuned:{task}:{base}+{tuning}:{weights_digest(folder)}"


def tuned_folder_id(folder: str | Path) -> str:
    """The id of a train-teacher folder, read without loading its weights."""
    meta = json.loads((Path(folder) / TEACHER_CONFIG).read_text())
    return tuned_id(meta["task"], meta["base_model"], meta["tuning"], folder)


def is_tuned_folder(spec: str) -> bool:
    return (Path(spec) / TEACHER_CONFIG).is_file()


def _model_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except OSError as err:
        raise RetriktError(f"cannot read the model config of {path}: {err}") from None


def is_llm(spec: str) -> bool:
    """True when ``spec`` is an LLM to read zero-shot (or behind build-store's soft prompt)."""
    if is_tuned_folder(spec):
        return False
    preset = PRESETS.get(spec.partition(":")[0])
    if preset is not None:
        return preset.kind == GENERATOR
    architectures = _model_config(resolve_model(spec).path).architectures or []
    return any(name.endswith("ForCausalLM") for name in architectures)


def teacher_card(spec: str) -> dict[str, Any]:
    """What a train-teacher folder says about itself, for the store manifest and the harness:
    base model, tuning, held-out score and training seconds (empty for any other teacher)."""
    if not is_tuned_folder(spec):
        return {}
    folder = Path(spec)
    meta = json.loads((folder / TEACHER_CONFIG).read_text())
    results = _read_json(folder / EVAL_RESULTS, {})
    log = _read_json(folder / TRAINING_LOG, [])
    return {
        "base_model": meta["base_model"],
        "tuning": meta["tuning"],
        "heldout": results.get("heldout"),
        "train_seconds": next((e["train_runtime"] for e in log if "train_runtime" in e), None),
    }


def _read_json(path: Path, missing: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else missing


def load_teacher(spec: str, batch_size: int = 16) -> Teacher:
    """The teacher ``spec`` names (see the module docstring), ready to label examples."""
    if is_tuned_folder(spec):
        return _load_tuned(Path(spec), batch_size)
    if is_llm(spec):
        return LLMTeacher(spec, batch_size=batch_size)
    resolved = resolve_model(spec)
    architectures = _model_config(resolved.path).architectures or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise RetriktError(
            f"{spec} is neither an LLM, a `retrikt train-teacher` folder, nor a sequence "
            f"classifier (its architectures: {', '.join(architectures) or 'none'}); tune it "
            f"first: retrikt train-teacher --model {spec} ..."
        )
    model, tokenizer = load_classifier(spec, dtype=compute_dtype())
    local = Path(resolved.path).is_dir()
    teacher_id = f"hf:{spec}" + (f":{weights_digest(resolved.path)}" if local else "")
    return ClassifierTeacher(model, tokenizer, teacher_id, batch_size=batch_size)


def _load_tuned(folder: Path, batch_size: int) -> Teacher:
    meta = json.loads((folder / TEACHER_CONFIG).read_text())
    if meta["tuning"] == "prompt":
        return LLMTeacher(meta["base_model"], folder, batch_size=batch_size)
    task = restore_task(meta["task"], meta.get("task_spec"), str(folder / TEACHER_CONFIG))
    if meta["tuning"] == "lora":
        from peft import PeftModel

        base, tokenizer = load_classifier(meta["base_model"], task, dtype=compute_dtype())
        # Merged once: inference then costs what the base model costs.
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    else:
        model, tokenizer = load_classifier(str(folder), task, dtype=compute_dtype())
    return ClassifierTeacher(
        model, tokenizer, tuned_folder_id(folder), task.name, batch_size, meta["max_length"]
    )
