"""The official SuperGLUE / GLUE metrics, computed with scikit-learn and scipy.

Each metric takes predictions and gold labels as sequences (class indices, or floats for
regression) and returns a float. MultiRC's exact match also needs the question each answer
belongs to (``groups``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(preds: Sequence, golds: Sequence) -> float:
    return float(accuracy_score(golds, preds))


def f1(preds: Sequence, golds: Sequence) -> float:
    """Binary F1 of the positive class (label index 1), as GLUE reports for MRPC."""
    return float(f1_score(golds, preds, average="binary", pos_label=1, zero_division=0))


def macro_f1(preds: Sequence, golds: Sequence) -> float:
    """Unweighted mean of per-class F1, as SuperGLUE reports for CB (over all 3 classes)."""
    labels = sorted(set(golds) | set(preds))
    return float(f1_score(golds, preds, average="macro", labels=labels, zero_division=0))


def mcc(preds: Sequence, golds: Sequence) -> float:
    return float(matthews_corrcoef(golds, preds))


def pearson(preds: Sequence, golds: Sequence) -> float:
    return _correlation(pearsonr, preds, golds)


def spearman(preds: Sequence, golds: Sequence) -> float:
    return _correlation(spearmanr, preds, golds)


def _correlation(fn: Callable, preds: Sequence, golds: Sequence) -> float:
    # A constant prediction has no correlation; scipy warns and returns nan. Report 0.0 so
    # that tables stay numeric (a model that predicts a constant explains nothing).
    if np.std(np.asarray(preds, dtype=float)) == 0:
        return 0.0
    return float(fn(np.asarray(preds, dtype=float), np.asarray(golds, dtype=float))[0])


def f1a(preds: Sequence, golds: Sequence) -> float:
    """MultiRC F1a: binary F1 over every answer option of every question."""
    return f1(preds, golds)


def exact_match(preds: Sequence, golds: Sequence, groups: Sequence[Hashable]) -> float:
    """MultiRC EM: share of questions whose answer options are all labelled correctly."""
    correct: dict[Hashable, bool] = defaultdict(lambda: True)
    for pred, gold, group in zip(preds, golds, groups, strict=True):
        correct[group] = correct[group] and pred == gold
    return float(np.mean(list(correct.values()))) if correct else 0.0


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
    "f1a": f1a,
    "exact_match": exact_match,
}


def compute(
    names: Sequence[str],
    preds: Sequence,
    golds: Sequence,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Compute the named metrics; ``groups`` is required by ``exact_match`` only."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold labels")
    out = {}
    for name in names:
        if name == "exact_match":
            if groups is None:
                raise ValueError("exact_match needs the question id of every answer (groups)")
            out[name] = exact_match(preds, golds, groups)
        else:
            out[name] = METRICS[name](preds, golds)
    return out
