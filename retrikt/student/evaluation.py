"""Scoring a student (or any predictor of the same shape) with the task's official metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from retrikt.errors import RetriktError
from retrikt.tasks import Example, Task

if TYPE_CHECKING:
    from retrikt.student.model import RetriKT


def evaluate_model(
    model: RetriKT, task: Task, examples: Sequence[Example], batch_size: int = 32
) -> dict[str, float]:
    """The task's official metrics of ``model`` on labelled ``examples``."""
    if model.task.name != task.name:
        raise RetriktError(f"this student was trained for {model.task.name}, not {task.name}")
    probs = model.predict_examples(examples, batch_size)
    return task.evaluate(task.predictions(probs), list(examples))
