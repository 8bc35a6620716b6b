"""How good a batch of generated examples is: validity, label agreement and diversity.

The generator report compares prompts with these numbers, and the sampling sweep chooses the
store's temperature and top-p from them. ``yield`` is what a store gains per generated
example: the share that parses, carries the requested label (by the teacher) and is not a
near-duplicate that ``build-store`` would drop.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from retrikt.generator.build import TaskData

#: (metric key, column title) in the order the reports print them.
QUALITY_COLUMNS = [
    ("validity", "valid"),
    ("agreement", "teacher agrees"),
    ("p_requested", "p(requested)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("pairwise_cosine", "mean pairwise cos"),
    ("nearest_train", "nearest-train cos"),
    ("copies", "copies (>= 0.95)"),
    ("duplicates", "duplicates"),
    ("yield", "yield"),
]


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of the texts (lower-cased words)."""
    grams: Counter = Counter()
    for text in texts:
        words = text.lower().split()
        grams.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(grams) / max(sum(grams.values()), 1)


def sample_quality(
    data: TaskData,
    records: list[dict[str, Any]],
    scores: list[dict[str, float]],
    encoder: Any,
    near_duplicate: float,
) -> dict[str, float]:
    """The quality numbers of generated ``records`` (as ``generate_records`` returns them),
    given their reward terms (``score_records``, which callers also use to show examples).

    Validity is over all records; the rest over the valid ones, with embeddings from
    ``encoder`` over each whole rendered example.
    """
    task = data.task
    valid = [(r, s) for r, s in zip(records, scores, strict=True) if s["validity"] > 0]
    metrics: dict[str, float] = {
        "generated": len(records),
        "validity": len(valid) / max(len(records), 1),
    }
    if not valid:
        return {**metrics, "yield": 0.0}
    texts = [task.render(r["fields"]) for r, _ in valid]
    if task.is_regression:
        agree = [abs(r["soft_labels"][0] - r["label"]) < 0.5 for r, _ in valid]
    else:
        agree = [int(np.argmax(r["soft_labels"])) == r["label"] for r, _ in valid]
    kept = [a and s["diversity"] > 0 for a, (_, s) in zip(agree, valid, strict=True)]
    vectors = encoder.encode(texts)
    train_vectors = encoder.encode([task.render(ex) for ex in data.train])
    nearest_train = (vectors @ train_vectors.T).max(axis=1)
    n = len(vectors)
    pairwise = (vectors @ vectors.T)[~np.eye(n, dtype=bool)].mean() if n > 1 else float("nan")
    return {
        **metrics,
        "agreement": float(np.mean(agree)),
        "p_requested": float(np.mean([s["accuracy"] for _, s in valid])),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "pairwise_cosine": float(pairwise),
        "nearest_train": float(nearest_train.mean()),
        "copies": float((nearest_train >= near_duplicate).mean()),
        "duplicates": float(np.mean([s["diversity"] == 0 for _, s in valid])),
        "yield": sum(kept) / len(records),
    }


def choose_setting(results: dict[str, dict[str, float]], tolerance: float = 0.05) -> str:
    """The sampling setting a store should use: yield first, then diversity.

    Among the settings whose yield is within ``tolerance`` of the best, the one whose
    examples are least alike (lowest mean pairwise cosine): more distinct, correctly
    labelled entries per generated token, and the most varied of those.
    """
    if not results:
        raise ValueError("no sampling settings to choose from")
    best = max(m["yield"] for m in results.values())
    close = [name for name, m in results.items() if m["yield"] >= best - tolerance]

    def alike(name: str) -> float:  # fewer than two valid examples: no diversity to show
        cosine = results[name].get("pairwise_cosine", float("nan"))
        return float("inf") if np.isnan(cosine) else cosine

    return min(close, key=alike)
