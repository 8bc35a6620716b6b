"""The student's memory: the store rows it retrieves from, with their keys and values.

COPA's rows are per choice: one row per (entry, choice), keyed by that choice's encoder input
and valued by the teacher's probability that this choice is the answer, so a neighbour's
choice is compared with the input's choice directly (choice order is arbitrary).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrikt.errors import StoreError
from retrikt.retrieval import exact_search, top_k
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.tasks import CHOICE, EncoderInput, Example, Task

#: Field added to the rows of a COPA student's store: which choice (0-based) the key embeds.
CHOICE_FIELD = "choice"


def origin_key(task: Task, fields: dict[str, Any]) -> str:
    """The example a store row comes from (its task fields), to leave an example's own rows out."""
    return json.dumps([fields.get(name) for name in task.fields], ensure_ascii=False)


def memory_rows(task: Task, entries: Sequence[StoreEntry]) -> list[StoreEntry]:
    """The rows of a student's store: the entries, or for COPA one row per (entry, choice)."""
    for i, entry in enumerate(entries):
        missing = [name for name in task.fields if name not in entry.fields]
        if missing:
            raise StoreError(f"store entry {i} ({entry.id}) has no field(s) {', '.join(missing)}")
    if task.head != CHOICE:
        return list(entries)
    rows = []
    for entry in entries:
        example = {**entry.fields, "label": None}
        for choice, (context, text) in enumerate(task.encoder_inputs(example)):
            rows.append(
                StoreEntry(
                    fields={**entry.fields, CHOICE_FIELD: choice},
                    text=f"{context} {text}",
                    requested_label=entry.requested_label,
                    soft_labels=list(entry.soft_labels),
                    rewards=dict(entry.rewards),
                    generator=entry.generator,
                    rationale=entry.rationale,
                    source=entry.source,
                )
            )
    return rows


class Memory:
    """What retrieval reads from the student's store rows: texts, values, labels, keys.

    ``values`` are what a neighbour votes with: the teacher's soft labels (classification),
    its score (regression) or the plausibility of the row's choice (COPA), one row each.
    """

    def __init__(
        self,
        task: Task,
        fields: list[dict[str, Any]],
        texts: list[str],
        soft_labels: np.ndarray,
        keys: np.ndarray,
        rationales: list[str | None] | None = None,
    ):
        self.task = task
        self.fields = fields
        self.texts = texts
        #: Why each row's label holds (``build-store --rationales``), None where not written.
        self.rationales = rationales if rationales is not None else [None] * len(texts)
        self.rows: list[StoreEntry] | None = None  # entries to write, until the store is saved
        self.origins = [origin_key(task, f) for f in fields]
        if task.head == CHOICE:
            choice = np.array([int(f[CHOICE_FIELD]) for f in fields], dtype=np.int64)
            self.values = soft_labels[np.arange(len(fields)), choice][:, None]
        else:
            self.values = soft_labels
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        self.keys = keys
        self.store: KnowledgeStore | None = None  # the saved student store, once there is one

    @classmethod
    def from_rows(cls, task: Task, rows: Sequence[StoreEntry], dim: int) -> Memory:
        soft = np.array([r.soft_labels for r in rows], dtype=np.float32).reshape(len(rows), -1)
        keys = np.zeros((len(rows), dim), dtype=np.float32)
        memory = cls(
            task, [r.fields for r in rows], [r.text for r in rows], soft, keys,
            [r.rationale for r in rows],
        )  # fmt: skip
        memory.rows = list(rows)
        return memory

    @classmethod
    def from_store(cls, task: Task, store: KnowledgeStore) -> Memory:
        fields = [json.loads(f) for f in store.column("fields").to_pylist()]
        memory = cls(
            task, fields, store.texts(), store.soft_label_matrix(), store.embeddings(),
            store.column("rationale").to_pylist(),
        )  # fmt: skip
        memory.store = store
        return memory

    def __len__(self) -> int:
        return len(self.texts)

    def inputs(self, rationales: bool = False) -> list[EncoderInput]:
        """What each row's key embeds: the entry's input, or for COPA its choice's input;
        with ``rationales`` the row's rationale is appended to the input's last text."""
        inputs = []
        for fields, rationale in zip(self.fields, self.rationales, strict=True):
            choice = int(fields.get(CHOICE_FIELD, 0))
            item = self.task.encoder_inputs({**fields, "label": None})[choice]
            if rationales and rationale:
                text, pair = item
                item = (text, f"{pair} {rationale}") if pair else (f"{text} {rationale}", None)
            inputs.append(item)
        return inputs

    def label(self, row: int) -> str:
        """How a neighbour is shown: its teacher label (plausible/implausible for COPA)."""
        value = self.values[row]
        if self.task.head == CHOICE:
            return "plausible" if value[0] >= 0.5 else "implausible"
        if self.task.is_regression:
            return self.task.label_name(float(value[0]))
        return (self.task.label_names or ())[int(value.argmax())]

    def search(
        self, queries: np.ndarray, k: int, examples: Sequence[Example] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of normalised queries, through the saved store's index when there is
        one (else exact over the keys); with ``examples`` (the queries' own, choices in order)
        the rows of each query's own example are left out."""
        if self.store is not None:
            store = self.store

            def search(q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
                result = store.search(q, n)
                return result.scores, result.indices

        else:
            search = exact_search(self.keys)
        own = None
        if examples is not None:
            per = len(queries) // max(len(examples), 1)
            own = (self.origins, [origin_key(self.task, ex) for ex in examples for _ in range(per)])
        return top_k(search, queries, k, len(self), own)
