"""A task on a sequence-classification head: inputs, loss, label distribution, teacher.

Every example becomes the rows the student encodes (``Task.encoder_inputs``): one (text,
pair) for classification and regression, one (premise + connector, choice) per choice for
COPA. A decoder LM's tokenizer has no separator token and would glue a pair together
("sat.A cat"), so there the second text starts on a new line; an encoder's tokenizer
(BERT, RoBERTa) gets a real pair. Rows are padded on the right: Llama-type classifiers
read the last non-padding token.

Heads: C logits for classification (cross-entropy); 1 for regression (MSE on the score, in
the task's units); for multiple choice 1 logit per (context, choice) row, the rows of an
example soft-maxed together (cross-entropy over the choices). transformers has no
``AutoModelForMultipleChoice`` for decoder LMs (Llama, Qwen2 and Gemma are absent from its
multiple-choice mapping), so the choice loss is built here on the 1-logit sequence
classifier; the saved model stays an ordinary sequence classifier that ``from_pretrained``
loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retrikt.errors import RetriktError
from retrikt.models import loading_cut_model, resolve_model
from retrikt.tasks import MULTIPLE_CHOICE, Example, Task

logger = logging.getLogger(__name__)

Rows = list[list[int]]  # token ids of one example's rows (C rows for multiple choice)


def load_classifier(
    name: str, task: Task | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """A sequence classifier and its tokenizer: with a fresh head sized for ``task``, or (no
    task) with the model's own head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    resolved = resolve_model(name)
    offline = resolved.preset is not None
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=offline)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    head: dict[str, Any] = {}
    if task is not None:
        head["num_labels"] = task.num_labels
        if task.task_type != MULTIPLE_CHOICE and task.label_names:
            head["id2label"] = dict(enumerate(task.label_names))
            head["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    with loading_cut_model(resolved.path, resolved.config_overrides):
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved.path,
            dtype=dtype,
            local_files_only=offline,
            **resolved.config_overrides,
            **head,
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # batches of >1 need it to find the end
    if task is not None and task.is_regression:
        model.config.problem_type = "regression"
    return model, tokenizer


def encode(task: Task, tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[Rows]:
    """Token ids of every example's rows, cut to ``max_length`` tokens."""
    if not examples:
        return []
    per = len(task.encoder_inputs(examples[0]))
    inputs = [row for ex in examples for row in task.encoder_inputs(ex)]
    texts = [text for text, _ in inputs]
    glue = "" if tokenizer.sep_token else "\n"
    pairs = None if inputs[0][1] is None else [glue + pair for _, pair in inputs]
    ids = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    return [ids[i * per : (i + 1) * per] for i in range(len(examples))]


def features(
    task: Task, tokenizer: Any, examples: Sequence[Example], max_length: int
) -> list[dict[str, Any]]:
    """Training items for ``Collator``: each example's rows, its label, and its ``length``
    (longest row), by which batches are grouped."""
    rows = encode(task, tokenizer, examples, max_length)
    return [
        {"rows": r, "labels": ex["label"], "length": max(map(len, r))}
        for r, ex in zip(rows, examples, strict=True)
    ]


def pad(rows: Rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (rows, width)."""
    width = max(map(len, rows))
    return {
        "input_ids": torch.tensor([row + [pad_id] * (width - len(row)) for row in rows]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
    }


@dataclass
class Collator:
    """The Trainer's batches: every example's rows flattened and padded, plus ``labels``."""

    pad_id: int
    regression: bool

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad([row for f in features for row in f["rows"]], self.pad_id)
        dtype = torch.float32 if self.regression else torch.long
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch


def task_scores(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Head logits (rows, num_labels) as the task's scores: (n, C), or (n,) for regression."""
    logits = logits.float()
    if task.task_type == MULTIPLE_CHOICE:
        return logits.view(-1, task.num_outputs)  # (n * C, 1) -> (n, C)
    return logits.squeeze(-1) if task.is_regression else logits


def task_loss(task: Task, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSE on the score for regression; cross-entropy over labels or choices otherwise."""
    if task.is_regression:
        return torch.nn.functional.mse_loss(scores, labels.float())
    return torch.nn.functional.cross_entropy(scores, labels.long())


def distribution(task: Task, scores: torch.Tensor) -> torch.Tensor:
    """(n, C) probabilities; for regression the (n, 1) score clipped to the task's range."""
    if task.is_regression:
        low, high = task.label_range or (-np.inf, np.inf)
        return scores.clamp(low, high)[:, None]
    return scores.softmax(-1)


def _norm(label: str) -> str:
    return label.lower().replace("-", "_").replace(" ", "_")


class ClassifierTeacher:
    """A sequence classifier as the store's teacher, with the interface of ``LLMTeacher``.

    A tuned teacher (``task_name`` set) answers for its own task only. Any other classifier
    (``roberta-large-mnli``, say) answers for a task whose labels its own labels name (its
    columns are reordered to the task's), or, failing that, has exactly the task's number of
    labels, taken in the task's order.

    Example::

        teacher = load_teacher("teachers/cb")
        probs = teacher.label_probs(get_task("cb"), examples)  # (n, 3), rows sum to 1
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        teacher_id: str,
        task_name: str | None = None,
        batch_size: int = 16,
        max_length: int = 256,
    ):
        self.model, self.tokenizer, self.id = model.eval(), tokenizer, teacher_id
        self.task_name = task_name
        self.batch_size, self.max_length = batch_size, max_length

    def columns(self, task: Task) -> list[int] | None:
        """The head's column of each of the task's labels (None: the head's order is the task's)."""
        if self.task_name is not None and self.task_name != task.name:
            raise RetriktError(
                f"teacher {self.id} was trained for {self.task_name}, not {task.name}"
            )
        config = self.model.config
        if task.task_type == MULTIPLE_CHOICE or task.is_regression:
            if config.num_labels != 1:
                raise RetriktError(
                    f"{self.id} has {config.num_labels} labels; {task.name} needs a 1-logit "
                    "head (a score per input)"
                )
            return None
        own = [_norm(config.id2label[i]) for i in range(config.num_labels)]
        wanted = [_norm(name) for name in task.label_names or ()]
        if all(name in own for name in wanted):
            return [own.index(name) for name in wanted]
        if len(own) != len(wanted):
            raise RetriktError(
                f"{self.id}: its labels ({', '.join(own)}) do not name all labels of "
                f"{task.name} ({', '.join(wanted)}), and a classifier whose labels do not match "
                f"by name must have exactly {len(wanted)} labels, taken in the task's order "
                f"(it has {len(own)})"
            )
        logger.warning("%s: labels %s taken as %s by position", self.id, own, wanted)
        return None

    @torch.no_grad()
    def label_probs(self, task: Task, examples: Sequence[Example]) -> np.ndarray:
        """(n, C) probabilities over ``task.label_names``; (n, 1) score for regression."""
        if not examples:
            return np.zeros((0, task.num_outputs), dtype=np.float32)
        columns = self.columns(task)
        # Similar lengths in a batch waste less compute on padding.
        order = sorted(range(len(examples)), key=lambda i: len(task.render(examples[i])))
        rows = encode(task, self.tokenizer, [examples[i] for i in order], self.max_length)
        out: list[torch.Tensor] = []
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"teacher {task.name}", disable=len(starts) < 4):
            chunk = rows[start : start + self.batch_size]
            batch = pad([row for ex in chunk for row in ex], self.tokenizer.pad_token_id)
            logits = self.model(**batch).logits
            out.append(task_scores(task, logits if columns is None else logits[:, columns]))
        scores = torch.cat(out)[torch.as_tensor(np.argsort(order))]  # back to the input order
        return distribution(task, scores).numpy().astype(np.float32)
