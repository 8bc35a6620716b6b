"""``train_teacher``: fine-tune an LLM (or any HF model) into the task's teacher.

LoRA or full fine-tuning run on the transformers ``Trainer``, which brings what a long CPU
run needs: checkpoints with optimizer and scheduler state that resume after a kill (a rerun
with the same ``--out`` continues from the last one), a progress bar with ETA, early stopping,
and ``accelerate launch`` for several processes. The model is selected and stopped on a
slice held out from the *training* split; the validation split is scored once, at the end.
``--tuning prompt`` runs build-store's soft-prompt teacher tuning instead, so all three
sit behind one command.

The output is a ``from_pretrained`` folder: the adapter (with the head) or the full weights,
the tokenizer, ``teacher_config.json`` (task, base model, tuning, labels and the versions
that wrote it) and ``eval_results.json`` (held-out and validation scores). Checkpoints live
in ``OUT/checkpoints`` until the run finishes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrikt.errors import ConfigError, RetriktError
from retrikt.generator.build import measure_teacher
from retrikt.generator.lm import bf16_supported
from retrikt.tasks import Example, Task, get_task, split_heldout
from retrikt.teachers.classifier import (
    ClassifierTeacher,
    Collator,
    features,
    load_classifier,
    task_loss,
    task_scores,
)
from retrikt.teachers.config import TeacherConfig
from retrikt.teachers.loading import (
    EVAL_RESULTS,
    TEACHER_CONFIG,
    TRAINING_LOG,
    Teacher,
    tuned_id,
)
from retrikt.user_task import saved_spec

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RUN_CONFIG = "run_config.json"  # in CHECKPOINTS: the settings a resumed run must share
#: Settings that do not change what a run computes, so a resumed run may differ in them.
_RESUMABLE = ("threads", "overwrite")


@dataclass
class TrainedTeacher:
    """A finished run: the teacher in memory, its scores and the Trainer's log."""

    teacher: Teacher
    results: dict[str, Any]
    out: Path
    log_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TeacherData:
    fit: list[Example]  # gradient steps
    heldout: list[Example]  # early stopping and model selection
    validation: list[Example]  # scored once at the end, never used to choose


def load_teacher_data(config: TeacherConfig) -> TeacherData:
    """The labelled training split (optionally subsampled) cut into fit and held-out, and
    the validation split."""
    task = get_task(config.task)
    train = [ex for ex in task.read("train", config.data_dir) if ex["label"] is not None]
    if len(train) < 2:
        raise RetriktError(f"{task.name}: the training split has fewer than 2 labelled examples")
    if config.train_limit and len(train) > config.train_limit:
        train = random.Random(config.seed).sample(train, config.train_limit)
    try:
        validation = task.read("validation", config.data_dir)
    except RetriktError:
        logger.warning(
            "%s: no validation split; the teacher is scored on the held-out slice only", task.name
        )
        validation = []
    fit, heldout = split_heldout(
        task, train, config.heldout_fraction, config.seed, "--heldout-fraction"
    )
    return TeacherData(fit, heldout, [ex for ex in validation if ex["label"] is not None])


def _trainer_class() -> type:
    """The ``Trainer`` subclass, built on first use: importing this module loads no transformers."""
    from transformers import Trainer

    class TeacherTrainer(Trainer):
        """The task's loss on the head's logits (choices reshaped for COPA, see
        ``classifier``); evaluation sees the same (n, C) scores."""

        def __init__(self, task: Task, **kwargs: Any):
            super().__init__(**kwargs)
            self.task = task
            self.loss_is_scaled_for_ga = False  # a per-batch mean: let Trainer divide it

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs.pop("labels")
            scores = task_scores(self.task, model(**inputs).logits)
            loss = task_loss(self.task, scores, labels)
            return (loss, {"logits": scores}) if return_outputs else loss

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            """In order, even with length-grouped training batches: ``compute_metrics``
            pairs predictions with the held-out examples (and MultiRC's question groups) by
            position. Several processes shard it in order and the gather keeps it."""
            from torch.utils.data import SequentialSampler

            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    return TeacherTrainer


def train_teacher(
    config: TeacherConfig, callbacks: list[Any] | None = None
) -> TrainedTeacher | None:
    """Tune ``config.model`` on the task and write the teacher folder to ``config.out``.

    ``callbacks`` are extra ``TrainerCallback``s (tests use them to interrupt a run).
    Under ``accelerate launch`` every process trains; only the main one writes the folder
    and returns the result (the others return None).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    task = get_task(config.task)
    data = load_teacher_data(config)
    out = Path(config.out)
    if (out / TEACHER_CONFIG).is_file() and not config.overwrite:
        raise RetriktError(f"{out} already holds a teacher; pass --overwrite to replace it")
    ours = (out / TEACHER_CONFIG).is_file() or (out / CHECKPOINTS / RUN_CONFIG).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        # The folder is deleted on --overwrite or a fresh start: never one of the user's.
        raise RetriktError(f"{out} is not empty and holds no teacher; choose a new --out")
    logger.info(
        "teacher %s on %s (%s): %d training examples, %d held out, %d validation",
        config.model,
        task.name,
        config.tuning,
        len(data.fit),
        len(data.heldout),
        len(data.validation),
    )
    if config.tuning == "prompt":
        teacher, history = _tune_prompt(config, task, data, out)
    else:
        teacher, history = _tune_classifier(config, task, data, out, callbacks or [])
    if teacher is None:  # another process of a distributed run writes the folder
        return None
    results = {
        "heldout": measure_teacher(teacher, task, data.heldout),
        "validation": measure_teacher(teacher, task, data.validation),
        "train_examples": len(data.fit),
    }
    logger.info("teacher scores on %s: %s", task.name, results)
    (out / EVAL_RESULTS).write_text(json.dumps(results, indent=1))
    (out / TRAINING_LOG).write_text(json.dumps(history, indent=1))
    # Written last: its presence marks a finished teacher.
    (out / TEACHER_CONFIG).write_text(json.dumps(_teacher_config(config, task), indent=1))
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    return TrainedTeacher(teacher, results, out, history)


def uses_bf16(precision: str) -> bool:
    """Whether training autocasts to bf16: ``auto`` does where the CPU makes it fast."""
    return bf16_supported() if precision == "auto" else precision == "bf16"


def _teacher_config(config: TeacherConfig, task: Task) -> dict[str, Any]:
    import peft
    import transformers

    from retrikt import __version__

    return {
        "task": task.name,
        "task_spec": saved_spec(task),
        "base_model": config.model,
        "tuning": config.tuning,
        "label_names": list(task.label_names) if task.label_names else None,
        "num_labels": task.num_labels,
        "max_length": config.max_length,
        # The prompt path runs the LLM as build-store does (bf16 weights where fast).
        "precision": None
        if config.tuning == "prompt"
        else ("bf16" if uses_bf16(config.precision) else "fp32"),
        # fp32 weights come back bit for bit on another CPU only with the same kernels.
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "config": config.to_dict(),
        "versions": {
            "retrikt": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }


def _tune_prompt(
    config: TeacherConfig, task: Task, data: TeacherData, out: Path
) -> tuple[Teacher, list[dict[str, Any]]]:
    """build-store's soft-prompt teacher (verbalizer or choice likelihood), saved in ``out``."""
    from retrikt.generator.prompt_tuning import SoftPromptConfig, train_teacher_prompt
    from retrikt.generator.teacher import LLMTeacher

    steps = config.max_steps or math.ceil(config.epochs * len(data.fit) / config.batch_size)
    soft = SoftPromptConfig(
        steps=steps,
        batch_size=config.batch_size,
        lr=config.learning_rate,
        num_virtual_tokens=config.num_virtual_tokens,
        seed=config.seed,
    )
    logger.info(
        "soft prompt of %d tokens, %d steps (no early stopping)", soft.num_virtual_tokens, steps
    )
    shutil.rmtree(out, ignore_errors=True)  # --overwrite of a finished teacher
    train_teacher_prompt(config.model, task, data.fit, soft, out)
    log = json.loads((out / "training.json").read_text())
    history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(log["losses"])]
    return LLMTeacher(config.model, out), history


def prepare_model(config: TeacherConfig, task: Task) -> tuple[Any, Any]:
    """The base model on a fresh task head (fp32 master weights), LoRA-wrapped for
    ``--tuning lora``, and its tokenizer; logs trainable against total parameters."""
    model, tokenizer = load_classifier(config.model, task)
    if config.tuning == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,  # the head trains in full and is saved with the adapter
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
        )
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "%s tuning of %s: %s trainable of %s parameters (%.2f%%)",
        config.tuning,
        config.model,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return model, tokenizer


def _tune_classifier(
    config: TeacherConfig, task: Task, data: TeacherData, out: Path, callbacks: list[Any]
) -> tuple[Teacher | None, list[dict[str, Any]]]:
    """LoRA or full fine-tuning with the Trainer; resumes from ``OUT/checkpoints``."""
    from accelerate import PartialState
    from datasets import Dataset  # its "length" column is what group_by_length reads
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    state = PartialState()
    with state.main_process_first():  # the main process clears or checks the folder first
        resume = _resume_point(config, out, state.is_main_process)
    set_seed(config.seed)  # the new head's initialisation
    model, tokenizer = prepare_model(config, task)
    if config.precision == "bf16" and not bf16_supported():
        logger.warning("bf16 asked for on a CPU without AVX512-BF16/AMX: it is emulated, slowly")

    def compute_metrics(prediction: Any) -> dict[str, float]:
        scores = np.asarray(prediction.predictions)
        preds = scores.tolist() if task.is_regression else scores.argmax(-1).tolist()
        return task.evaluate(preds, data.heldout)

    strategy = "steps" if config.eval_steps else "epoch"
    every = {"eval_steps": config.eval_steps, "save_steps": config.eval_steps}
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        eval_strategy=strategy,
        save_strategy=strategy,
        **(every if config.eval_steps else {}),
        logging_steps=1 if config.max_steps and config.max_steps < 50 else 10,
        load_best_model_at_end=True,
        metric_for_best_model=task.metric_names[0],
        greater_is_better=True,
        save_total_limit=2,  # the best and the latest
        bf16=uses_bf16(config.precision),  # autocast over fp32 master weights
        use_cpu=not torch.cuda.is_available(),  # Trainer's bf16 check needs it said on a CPU
        seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_pin_memory=False,  # CPU training: nothing to pin for
        label_names=["labels"],
    )
    trainer = _trainer_class()(
        task,
        model=model,
        args=args,
        train_dataset=Dataset.from_list(features(task, tokenizer, data.fit, config.max_length)),
        eval_dataset=features(task, tokenizer, data.heldout, config.max_length),
        data_collator=Collator(tokenizer.pad_token_id, task.is_regression),
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(config.patience), *callbacks],
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return None, []
    tokenizer.save_pretrained(str(out))
    model = trainer.model.merge_and_unload() if config.tuning == "lora" else trainer.model
    teacher_id = tuned_id(task.name, config.model, config.tuning, out)
    teacher = ClassifierTeacher(
        model, tokenizer, teacher_id, task.name, max_length=config.max_length
    )
    return teacher, trainer.state.log_history


def _resume_point(config: TeacherConfig, out: Path, main: bool) -> str | None:
    """The last checkpoint of an interrupted run with the same settings, or None to start.

    The main process (re)creates ``OUT/checkpoints`` and records the settings there; a
    rerun with other settings would silently mix two trainings, so it is refused unless
    ``--overwrite`` starts afresh.
    """
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = out / CHECKPOINTS
    settings = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    saved = checkpoints / RUN_CONFIG
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if not main:
        return last
    if config.overwrite or last is None or not saved.is_file():
        shutil.rmtree(out, ignore_errors=True)
        checkpoints.mkdir(parents=True)
        saved.write_text(json.dumps(settings, indent=1))
        return None
    before = json.loads(saved.read_text())
    changed = sorted(k for k in settings if before.get(k) != settings[k])
    if changed:
        raise ConfigError(
            f"{checkpoints} holds an interrupted run with other settings ("
            + ", ".join(f"{k}: {before.get(k)!r} then, {settings[k]!r} now" for k in changed)
            + "); rerun with the same flags to resume it, or pass --overwrite to start afresh"
        )
    logger.info("resuming from %s", last)
    return last
