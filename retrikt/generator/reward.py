"""The RL reward for generated examples: accuracy + diversity + validity.

* **accuracy** - the teacher's probability that the parsed example has the label it was
  asked for; for regression ``1 - |expected score - requested| / range`` (clipped to [0, 1]).
* **diversity** - ``1 - highest cosine similarity`` in the encoder's space to the reference
  (training) examples and to every example accepted so far (including earlier ones of the
  same batch). Exact duplicates (same text up to case and whitespace) and near duplicates
  (similarity >= ``near_duplicate``) score 0 and are not remembered again.
* **validity** - ``+1`` when the completion parses into the task's fields
  (:func:`retrikt.generator.templates.parse_example`) and every field has a sane length,
  ``-1`` otherwise.

``total`` is always the weighted sum ``w_acc * accuracy + w_div * diversity + w_val *
validity``. An invalid completion has nothing to score, so its accuracy and diversity are 0
and its total is ``-weights.validity``: a penalty, where a valid one earns at least
``+weights.validity``; RL logs each term beside the total.

Examples are embedded as ``task.render(example)``; pass the reference examples the same
way (``[task.render(ex) for ex in train]``) so that both sides live in the same space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from retrikt.generator.templates import parse_example
from retrikt.tasks import Example, Task

logger = logging.getLogger(__name__)


@dataclass
class RewardWeights:
    """Weights of the reward terms; the total reward is their weighted sum."""

    accuracy: float = 1.0
    diversity: float = 0.5
    validity: float = 0.5

    @property
    def terms(self) -> dict[str, float]:
        """Term name -> weight, in a fixed order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class RewardFunction:
    """Scores completions written for requested labels; remembers the accepted ones.

    ``teacher.label_probs(task, examples)`` gives an (n, C) label distribution ((n, 1)
    expected score for regression); ``encoder.encode(texts)`` gives (n, d) unit vectors.
    """

    def __init__(
        self,
        task: Task,
        teacher: Any,
        encoder: Any,
        reference_texts: list[str],
        weights: RewardWeights,
        near_duplicate: float = 0.95,
        min_field_chars: int = 2,
        max_field_chars: int = 1000,
    ):
        self.task, self.teacher, self.encoder, self.weights = task, teacher, encoder, weights
        self.near_duplicate = near_duplicate
        self.min_field_chars, self.max_field_chars = min_field_chars, max_field_chars
        # Memory: reference texts and accepted examples, as normalised text and as vectors.
        self._seen = {_normalise(t) for t in reference_texts}
        self._bank = np.asarray(encoder.encode(list(reference_texts)), dtype=np.float32)
        #: Rendered texts of the generated examples accepted so far (valid, not duplicates).
        self.accepted: list[str] = []

    def __call__(self, completions: list[str], labels: list) -> list[dict[str, float]]:
        """One dict per completion with ``accuracy``, ``diversity``, ``validity`` and ``total``."""
        if len(completions) != len(labels):
            raise ValueError(f"{len(completions)} completions but {len(labels)} labels")
        parsed = [
            parse_example(self.task, text, label)
            for text, label in zip(completions, labels, strict=True)
        ]
        valid = [i for i, ex in enumerate(parsed) if ex is not None and self._sane(ex)]
        scores = [{"accuracy": 0.0, "diversity": 0.0, "validity": -1.0} for _ in completions]
        if valid:
            examples = [parsed[i] for i in valid]
            accuracy = self._accuracy(examples, [labels[i] for i in valid])
            diversity = self._diversity([self.task.render(ex) for ex in examples])
            for i, acc, div in zip(valid, accuracy, diversity, strict=True):
                scores[i] = {"accuracy": float(acc), "diversity": float(div), "validity": 1.0}
        for score in scores:
            score["total"] = sum(w * score[name] for name, w in self.weights.terms.items())
        return scores

    def _sane(self, example: Example) -> bool:
        lengths = [len(str(example[name]).strip()) for name in self.task.fields]
        return all(self.min_field_chars <= n <= self.max_field_chars for n in lengths)

    def _accuracy(self, examples: list[Example], labels: list) -> np.ndarray:
        probs = np.asarray(self.teacher.label_probs(self.task, examples), dtype=np.float64)
        if self.task.is_regression:
            low, high = self.task.label_range or (0.0, 1.0)
            requested = np.asarray(labels, dtype=np.float64)
            return np.clip(1.0 - np.abs(probs[:, 0] - requested) / (high - low), 0.0, 1.0)
        requested = np.asarray([self.task.parse_label(label) for label in labels])
        return probs[np.arange(len(examples)), requested]

    def _diversity(self, texts: list[str]) -> list[float]:
        """Score texts in order, each against the memory and the earlier accepted ones."""
        vectors = np.asarray(self.encoder.encode(texts), dtype=np.float32)
        n = len(texts)
        nearest_in_bank = (
            (self._bank @ vectors.T).max(axis=0) if len(self._bank) else np.full(n, -np.inf)
        )
        within_batch = vectors @ vectors.T
        kept: list[int] = []
        scores = []
        for i, text in enumerate(texts):
            nearest = max([nearest_in_bank[i], *(within_batch[i, j] for j in kept)])
            key = _normalise(text)
            if key in self._seen or nearest >= self.near_duplicate:
                scores.append(0.0)
                continue
            scores.append(float(min(1.0, 1.0 - nearest)))
            kept.append(i)
            self._seen.add(key)
            self.accepted.append(text)
        if kept:
            self._bank = np.concatenate([self._bank.reshape(-1, vectors.shape[1]), vectors[kept]])
        return scores
