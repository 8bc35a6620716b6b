"""The kNN baseline's algorithm: the store's similarity-weighted vote with no trained head."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrikt.retrieval import mix_rows
from retrikt.student.memory import Memory, memory_rows
from retrikt.tasks import CHOICE, Example, Task

logger = logging.getLogger(__name__)


class KnnVote:
    """kNN over a student-style memory of store rows, keyed by a fixed encoder."""

    def __init__(self, task: Task, encoder: Any, memory: Any):
        self.task = task
        self.encoder = encoder
        self.memory = memory

    @classmethod
    def from_store(cls, task: Task, store: Any, encoder: Any) -> KnnVote:
        memory = Memory.from_rows(task, memory_rows(task, store.entries()), encoder.dim)
        memory.keys = encoder.encode(memory.inputs())
        return cls(task, encoder, memory)

    def search(
        self, examples: Sequence[Example], k: int, exclude_own: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (similarities, memory rows) of every encoder input of ``examples``.

        Exact search: the memory is a few thousand rows at most here, and COPA's per-choice
        keys are not what the store's FAISS index holds.
        """
        inputs = [item for ex in examples for item in self.task.encoder_inputs(ex)]
        return self.memory.search(self.encoder.encode(inputs), k, examples if exclude_own else None)

    def vote(
        self, sims: np.ndarray, rows: np.ndarray, k: int, retrieval_temperature: float
    ) -> np.ndarray:
        """The combination rule of the student with no model share (``mix`` = 0)."""
        per = self.task.num_outputs if self.task.head == CHOICE else 1
        # Where no neighbour exists the rule falls back on the model: here the store's mean.
        prior = np.broadcast_to(self._prior(), (len(rows) // per, self.task.num_outputs))
        final, _ = mix_rows(
            prior.copy(),
            sims[:, :k],
            rows[:, :k],
            self.memory.values,
            retrieval_temperature,
            0.0,
            self.task.head,
        )
        return final

    def _prior(self) -> np.ndarray:
        if self.task.head == CHOICE:
            return np.full(self.task.num_outputs, 1.0 / self.task.num_outputs, dtype=np.float32)
        return self.memory.values.mean(0)

    def predict(
        self, examples: Sequence[Example], k: int, retrieval_temperature: float
    ) -> np.ndarray:
        return self.vote(*self.search(examples, k), k, retrieval_temperature)

    def tune(
        self, examples: Sequence[Example], ks: Sequence[int], temperatures: Sequence[float]
    ) -> tuple[int, float]:
        """The (k, retrieval temperature) with the best official score on ``examples``
        (training data, each leaving its own store rows out)."""
        sims, rows = self.search(examples, max(ks), exclude_own=True)
        best: tuple[float, int, float] | None = None
        for k in ks:
            for temperature in temperatures:
                probs = self.vote(sims, rows, k, temperature)
                metrics = self.task.evaluate(self.task.predictions(probs), list(examples))
                score = float(np.mean(list(metrics.values())))
                if best is None or score > best[0]:
                    best = (score, k, temperature)
        assert best is not None
        logger.info(
            "knn-only %s: k=%d retrieval temperature %.2f (train score %.4f)",
            self.task.name, *best[1:], best[0],
        )  # fmt: skip
        return best[1], best[2]
