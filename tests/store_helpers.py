"""Small deterministic stores for tests: labelled examples with their gold labels as the teacher."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retrikt.encoder import Encoder
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.tasks import Example, Task


def labelled_store(
    task: Task,
    examples: Sequence[Example],
    path: str | Path,
    encoder: str | None = None,
    rationales: Sequence[str | None] | None = None,
) -> KnowledgeStore:
    """A store of labelled examples with one-hot soft labels (regression: the gold score).

    Retrieval over it is a kNN memory of the labelled data; keys come from ``Encoder``.
    ``rationales`` (one per example) are kept as the entries' rationales.
    """
    embedder = Encoder(encoder)
    names = list(task.label_names) if task.label_names else None
    entries = []
    for i, ex in enumerate(examples):
        soft = [float(ex["label"])] if names is None else [0.0] * len(names)
        if names is not None:
            soft[int(ex["label"])] = 1.0
        entries.append(
            StoreEntry(
                fields={name: ex[name] for name in task.fields},
                text=task.render(ex),
                requested_label=ex["label"],
                soft_labels=soft,
                generator="gold",
                rationale=rationales[i] if rationales is not None else None,
            )
        )
    store = KnowledgeStore.create(
        path,
        task=task.name,
        label_names=names,
        encoder_id=embedder.model_id,
        dim=embedder.dim,
        teacher={"name": "gold labels"},
    )
    store.add(entries, embedder.encode([e.text for e in entries]))
    store.save()
    return store
