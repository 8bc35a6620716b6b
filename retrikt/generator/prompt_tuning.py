"""Supervised soft prompts (PEFT prompt tuning) for the generator and for the teacher.

The base LLM stays frozen; only ``num_virtual_tokens`` input embeddings train. Two prompts
come out of the same loop with different losses:

* the *generator* prompt learns to write ``render_target(task, ex)`` after
  ``generation_prompt(task, ex["label"])`` (language-model loss on the target tokens only);
* the *teacher* prompt learns to give the gold label the highest teacher score
  (cross-entropy over ``teacher.label_logits``: the verbalizer tokens only, or the choices'
  likelihoods for COPA).

A plain loop instead of trl's ``SFTTrainer``: the teacher variant's verbalizer loss is not a
language-model loss, and one small loop serving both is shorter and easier to audit than an
``SFTTrainer`` plus a custom ``Trainer`` (datasets, collators and arguments) around ~100 steps.
Prompts are saved as PEFT adapter folders (``save_pretrained``) with a ``training.json``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from retrikt.generator.configs import SoftPromptConfig
from retrikt.generator.lm import load_base, load_policy
from retrikt.generator.teacher import label_logits
from retrikt.generator.templates import (
    generation_prompt,
    label_options,
    render_target,
    score_bucket,
)
from retrikt.models import GENERATOR, resolve_model
from retrikt.tasks import Example, Task

__all__ = ["SoftPromptConfig", "load_policy", "train_generator_prompt", "train_teacher_prompt"]

logger = logging.getLogger(__name__)

TRAINING_LOG = "training.json"


def _peft_model(generator: str, init_text: str, config: SoftPromptConfig) -> tuple[Any, Any]:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    model, tokenizer = load_base(generator)
    init = PromptTuningInit.TEXT if config.init == "text" else PromptTuningInit.SAMPLE_VOCAB
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init=init,
        prompt_tuning_init_text=init_text if init == PromptTuningInit.TEXT else None,
        tokenizer_name_or_path=resolve_model(generator, GENERATOR).path,
    )
    return get_peft_model(model, peft_config), tokenizer


def _train(
    model: Any,
    loss_fn: Callable[[list[Example]], torch.Tensor],
    examples: Sequence[Example],
    config: SoftPromptConfig,
    desc: str,
) -> list[float]:
    """Adam on the soft prompt over random mini-batches; returns the loss per step."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=desc)
    for _ in bar:
        batch = rng.sample(list(examples), min(config.batch_size, len(examples)))
        loss = loss_fn(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    return losses


def _save(
    model: Any,
    out_dir: Path,
    kind: str,
    task: Task,
    config: SoftPromptConfig,
    losses: list[float],
    generator: str,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    log = {
        "kind": kind,
        "task": task.name,
        "generator": generator,
        "config": config.to_dict(),
        "losses": losses,
    }
    (out_dir / TRAINING_LOG).write_text(json.dumps(log, indent=1))
    return out_dir


def _rounds_label(task: Task, example: Example) -> Any:
    """The label as generation asks for it (an integer bucket for regression)."""
    return score_bucket(task, example["label"]) if task.is_regression else example["label"]


def train_generator_prompt(
    generator: str,
    task: Task,
    examples: Sequence[Example],
    config: SoftPromptConfig,
    out_dir: str | Path,
) -> Path:
    """Tune a soft prompt to write each training example given its label; save it."""
    model, tokenizer = _peft_model(
        generator, f"Write a new, varied example for the task. {task.description}", config
    )
    eos = tokenizer.eos_token

    def loss_fn(batch: list[Example]) -> torch.Tensor:
        prompt_ids = [
            tokenizer.encode(generation_prompt(task, _rounds_label(task, ex))) for ex in batch
        ]
        target_ids = [
            tokenizer.encode(render_target(task, ex) + eos, add_special_tokens=False)[
                : config.max_target_tokens
            ]
            for ex in batch
        ]
        width = max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids, strict=True))
        pad = tokenizer.pad_token_id
        ids, labels, mask = [], [], []
        for p, t in zip(prompt_ids, target_ids, strict=True):
            fill = width - len(p) - len(t)  # right padding: real tokens keep their positions
            ids.append(p + t + [pad] * fill)
            labels.append([-100] * len(p) + t + [-100] * fill)
            mask.append([1] * (len(p) + len(t)) + [0] * fill)
        # PEFT prepends the virtual tokens and pads labels/mask for them itself.
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            labels=torch.tensor(labels),
        ).loss

    losses = _train(model, loss_fn, examples, config, f"generator prompt {task.name}")
    return _save(model, Path(out_dir), "generator", task, config, losses, generator)


def train_teacher_prompt(
    generator: str,
    task: Task,
    examples: Sequence[Example],
    config: SoftPromptConfig,
    out_dir: str | Path,
) -> Path:
    """Tune a soft prompt so that the teacher scores the gold label highest."""
    model, tokenizer = _peft_model(generator, f"{task.description} Answer correctly.", config)

    def loss_fn(batch: list[Example]) -> torch.Tensor:
        logits = label_logits(model, tokenizer, task, batch)
        if task.is_regression:  # the teacher reads score buckets as classes
            buckets = label_options(task)
            gold = [buckets.index(score_bucket(task, ex["label"])) for ex in batch]
        else:
            gold = [int(ex["label"]) for ex in batch]
        return torch.nn.functional.cross_entropy(logits, torch.tensor(gold))

    losses = _train(model, loss_fn, examples, config, f"teacher prompt {task.name}")
    return _save(model, Path(out_dir), "teacher", task, config, losses, generator)
