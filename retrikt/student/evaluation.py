"""Scoring a student (or any predictor of the same shape) with the task's official metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from retrikt.errors import RetriktError
from retrikt.tasks import Example, Task

if TYPE_CHECKING:
    from retrikt.student.model import RetriKT


def label_predictions(task: Task, probs: np.ndarray) -> list:
    """What ``Task.evaluate`` scores: class/choice indices, or scores for regression."""
    if task.is_regression:
        return [float(p) for p in probs[:, 0]]
    return [int(i) for i in probs.argmax(-1)]


def evaluate_model(
    model: RetriKT, task: Task, examples: Sequence[Example], batch_size: int = 32
) -> dict[str, float]:
    """The task's official metrics of ``model`` on labelled ``examples``."""
    if model.task.name != task.name:
        raise RetriktError(f"this student was trained for {model.task.name}, not {task.name}")
    probs = model.predict_examples(examples, batch_size)
    return task.evaluate(label_predictions(task, probs), list(examples))
