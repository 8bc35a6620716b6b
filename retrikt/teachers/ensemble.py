"""Several teachers as one: each teacher's soft labels, and the rule that combines them.

TinyLLM (Tian et al., WSDM 2025) distils from several LLMs at once. A multi-teacher store
(``retrikt build-store --teacher a,b,c``) keeps every teacher's soft labels on every entry
(``StoreEntry.teacher_labels``) and, as the label the student learns from and votes with
(``soft_labels``), their combination by one of :data:`RULES`:

* ``mean`` - the plain average of the teachers' distributions (scores for regression);
* ``heldout`` - a weighted average, each teacher weighted by its score (the mean of the
  task's metrics) on the training examples held out from every tuned teacher's training;
* ``confidence`` - per example, each teacher weighted by its confidence (its highest
  probability), so a teacher that is sure counts for more there (not for regression);
* ``learned`` - fit on those held-out training examples: log-linear pooling
  ``softmax(sum_t a_t log p_t + b)`` with a weight ``a_t >= 0`` per teacher (an inverse
  temperature) and a bias per class, by L2-penalised maximum likelihood (``scipy``'s
  L-BFGS-B); for regression, ``sklearn``'s ``LinearRegression(positive=True)`` of the gold
  score on the teachers' scores. Few parameters (T + C) because the held-out slice is
  small (26 examples for CB); a full multinomial regression over all T x C log-probs
  would also leave a class absent from the slice (CB's neutral can be) at probability 0.

The combination is recorded in the store manifest (``combination``: rule, weights, held-out
scores) so the store says how its labels were made, and :class:`EnsembleTeacher` is the
``Teacher`` that build-store uses everywhere a single teacher was used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import key as cache_key
from retrikt.errors import ConfigError
from retrikt.tasks import Example, Task

RULES = ("mean", "heldout", "confidence", "learned")
#: Floor of a teacher's held-out weight, so a teacher at 0 (or a negative correlation) is
#: not dropped by a division by zero; its share is then negligible.
MIN_SCORE = 1e-3
#: L2 penalty of the learned pooling weights and biases (per held-out example summed NLL).
LEARNED_L2 = 1.0
_EPS = 1e-6


def stack(probs: dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
    """(T, n, C) float64 array of the teachers' outputs in ``ids`` order."""
    return np.stack([np.asarray(probs[i], dtype=np.float64) for i in ids])


def weighted_mean(stacked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_t w_t p_t / sum_t w_t``; ``weights`` is (T,) or per example (T, n)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w[:, None, None] if w.ndim == 1 else w[:, :, None]
    return (w * stacked).sum(0) / w.sum(0)


def confidence_weights(stacked: np.ndarray) -> np.ndarray:
    """(T, n) each teacher's highest probability on each example."""
    return stacked.max(-1)


def pooled(stacked: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Log-linear pooling ``softmax(sum_t a_t log p_t + b)`` of (T, n, C) distributions."""
    logits = np.einsum("t,tnc->nc", a, np.log(np.clip(stacked, _EPS, None))) + b
    logits -= logits.max(-1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(-1, keepdims=True)


def fit_pooling(stacked: np.ndarray, gold: np.ndarray, l2: float = LEARNED_L2) -> tuple:
    """(a, b, nll): the pooling weights and class biases of maximum penalised likelihood.

    Starts from equal weights ``1/T`` (a geometric mean) and no bias; the penalty pulls
    towards that start, so few examples cannot push the weights far.
    """
    from scipy.optimize import minimize

    n_teachers, _, classes = stacked.shape
    logs = np.log(np.clip(stacked, _EPS, None))
    start = np.concatenate([np.full(n_teachers, 1.0 / n_teachers), np.zeros(classes)])
    rows = np.arange(len(gold))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[:n_teachers], theta[n_teachers:]
        logits = np.einsum("t,tnc->nc", a, logs) + b
        logits -= logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(-1))
        nll = float((log_z - logits[rows, gold]).sum())
        p = np.exp(logits - log_z[:, None])
        p[rows, gold] -= 1.0  # d nll / d logits
        grad = np.concatenate([np.einsum("nc,tnc->t", p, logs), p.sum(0)])
        diff = theta - start
        return nll + l2 * float(diff @ diff), grad + 2 * l2 * diff

    bounds = [(0.0, None)] * n_teachers + [(None, None)] * classes
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return result.x[:n_teachers], result.x[n_teachers:], float(result.fun)


@dataclass
class Combination:
    """How a store's ``soft_labels`` were made from its teachers' (saved in the manifest)."""

    rule: str
    teachers: list[str]  # teacher ids, the order of ``weights``
    weights: list[float] | None = None  # mean, heldout, learned (a_t)
    biases: list[float] | None = None  # learned: class biases (classification), intercept
    heldout: dict[str, Any] = field(default_factory=dict)  # scores and examples it was fit on

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown teacher combination {self.rule!r}: choose from {RULES}")

    def apply(self, probs: dict[str, np.ndarray], regression: bool = False) -> np.ndarray:
        """(n, C) float32 combined labels from each teacher's (n, C) outputs."""
        stacked = stack(probs, self.teachers)
        if self.rule == "confidence":
            if regression:
                raise ConfigError("the confidence rule needs distributions, not scores")
            out = weighted_mean(stacked, confidence_weights(stacked))
        elif self.rule == "learned" and not regression:
            assert self.weights is not None and self.biases is not None
            out = pooled(stacked, np.asarray(self.weights), np.asarray(self.biases))
        elif self.rule == "learned":
            assert self.weights is not None and self.biases is not None
            out = np.einsum("t,tnc->nc", np.asarray(self.weights), stacked) + self.biases[0]
        else:
            weights = np.ones(len(self.teachers)) if self.weights is None else self.weights
            out = weighted_mean(stacked, np.asarray(weights))
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "teachers": list(self.teachers),
            "weights": self.weights,
            "biases": self.biases,
            "heldout": self.heldout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combination:
        return cls(**data)


def heldout_score(task: Task, probs: np.ndarray, examples: Sequence[Example]) -> float:
    """The mean of the task's metrics of one teacher's outputs on labelled examples."""
    metrics = task.evaluate(task.predictions(probs), list(examples))
    return float(np.mean([metrics[name] for name in task.metric_names]))


def fit_combination(
    rule: str,
    task: Task,
    teachers: Sequence[str],
    heldout_probs: dict[str, np.ndarray],
    heldout: Sequence[Example],
) -> Combination:
    """The combination ``rule`` of ``teachers``, fit (heldout, learned) on the held-out
    training examples and each teacher's outputs on them; their scores are recorded for all
    rules."""
    teachers = list(teachers)
    if rule == "confidence" and task.is_regression:
        raise ConfigError(
            f"{task.name} is a regression task: its teachers give scores, not distributions, "
            "so the confidence rule does not apply (use mean, heldout or learned)"
        )
    scores = {
        t: round(heldout_score(task, heldout_probs[t], heldout), 6) if heldout else None
        for t in teachers
    }
    record: dict[str, Any] = {"examples": len(heldout), "scores": scores}
    if rule in ("mean", "confidence") or len(teachers) == 1:
        return Combination(rule, teachers, None, None, record)
    if not heldout:
        raise ConfigError(
            f"the {rule} rule is fit on training examples held out from every teacher, and "
            "there are none; use mean or confidence"
        )
    if rule == "heldout":
        weights = [max(float(scores[t] or 0.0), MIN_SCORE) for t in teachers]
        total = sum(weights)
        return Combination(rule, teachers, [w / total for w in weights], None, record)
    stacked = stack(heldout_probs, teachers)
    if task.is_regression:
        from sklearn.linear_model import LinearRegression

        gold = np.array([float(ex["label"]) for ex in heldout])
        fit = LinearRegression(positive=True).fit(stacked[:, :, 0].T, gold)
        record["r2"] = round(float(fit.score(stacked[:, :, 0].T, gold)), 6)
        return Combination(rule, teachers, fit.coef_.tolist(), [float(fit.intercept_)], record)
    gold = np.array([task.parse_label(ex["label"]) for ex in heldout], dtype=np.int64)
    a, b, loss = fit_pooling(stacked, gold)
    record["penalised_nll"] = round(loss, 6)
    return Combination(rule, teachers, a.tolist(), b.tolist(), record)


class CachedTeacher:
    """A teacher whose outputs are kept on disk, one JSON line per example, so a build with
    other teachers, another combination rule or more examples labels nothing twice.

    Keyed by the teacher's id (it names its weights) and each example's fields; lines
    are appended and flushed per call, so a killed run keeps what it labelled.
    """

    def __init__(self, teacher: Any, folder: Path):
        self.teacher = teacher
        self.id = teacher.id
        self.path = Path(folder) / f"{cache_key([self.id])}.jsonl"
        self._rows: dict[str, list[float]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.endswith("}"):  # a line torn by a kill is relabelled
                    record = json.loads(line)
                    self._rows[record["key"]] = record["probs"]

    def __getattr__(self, name: str) -> Any:  # the model, its batch size ...
        return getattr(self.teacher, name)

    def label_probs(self, task: Task, examples: Sequence[Example]) -> np.ndarray:
        keys = [cache_key([task.name, _fields(ex)]) for ex in examples]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._rows}.values())
        if todo:
            probs = np.asarray(self.teacher.label_probs(task, [examples[i] for i in todo]))
            lines = []
            for i, row in zip(todo, probs, strict=True):
                self._rows[keys[i]] = [float(p) for p in row]
                lines.append(json.dumps({"key": keys[i], "probs": self._rows[keys[i]]}) + "\n")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write("".join(lines))
        width = task.num_outputs
        return np.asarray([self._rows[k] for k in keys], dtype=np.float32).reshape(-1, width)


def _fields(example: Example) -> dict[str, Any]:
    return {k: v for k, v in example.items() if k not in ("idx", "label")}


class EnsembleTeacher:
    """Several teachers behind the one ``Teacher`` interface: ``label_probs`` is their
    combination; :meth:`label_all` also returns each teacher's own outputs.

    One member alone is that member (same id, same outputs), so a single-teacher build is
    unchanged.
    """

    def __init__(self, members: Sequence[Any], combination: Combination):
        self.members = list(members)
        self.combination = combination
        ids = [m.id for m in self.members]
        if ids != combination.teachers:
            raise ConfigError(f"the combination is of {combination.teachers}, not of {ids}")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"the same teacher is given twice: {ids}")
        self.id = ids[0] if len(ids) == 1 else f"ensemble:{combination.rule}[{','.join(ids)}]"

    def label_all(
        self, task: Task, examples: Sequence[Example]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(combined (n, C), {teacher id: its (n, C)})."""
        probs = {m.id: np.asarray(m.label_probs(task, examples)) for m in self.members}
        if len(self.members) == 1:
            return probs[self.members[0].id].astype(np.float32), probs
        return self.combination.apply(probs, task.is_regression), probs

    def label_probs(self, task: Task, examples: Sequence[Example]) -> np.ndarray:
        return self.label_all(task, examples)[0]


def agreement(labels: dict[str, np.ndarray], regression: bool = False) -> dict[str, Any]:
    """How often the teachers agree: on the argmax (classification) or within 0.5 of a
    score (regression); all of them, and each pair."""
    ids = sorted(labels)
    if regression:
        values = {t: np.asarray(labels[t])[:, 0] for t in ids}
        same = lambda x, y: np.abs(x - y) <= 0.5  # noqa: E731
    else:
        values = {t: np.asarray(labels[t]).argmax(-1) for t in ids}
        same = lambda x, y: x == y  # noqa: E731
    n = len(next(iter(values.values()))) if values else 0
    everyone = np.ones(n, dtype=bool)
    pairs = {}
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            agree = same(values[a], values[b])
            everyone &= agree
            pairs[f"{a} | {b}"] = float(agree.mean()) if n else None
    return {"entries": n, "all": float(everyone.mean()) if n else None, "pairs": pairs}


def teacher_report(store: Any) -> dict[str, Any]:
    """Each teacher's labels in the store: how often the teachers agree (all entries that
    every one labelled) and each one's official metrics on the real training examples
    (``generator="train"``, whose requested label is the gold one)."""
    from retrikt.errors import RetriktError
    from retrikt.generator.configs import TRAIN_SOURCE
    from retrikt.tasks import get_task

    entries = store.entries()
    ids = sorted({t for e in entries for t in e.teacher_labels})
    regression = store.label_names is None
    both = [e for e in entries if all(t in e.teacher_labels for t in ids)]
    agree = agreement({t: [e.teacher_labels[t] for e in both] for t in ids}, regression)
    report: dict[str, Any] = {"teachers": ids, "agreement": agree, "train": {}}
    train = [e for e in entries if e.generator == TRAIN_SOURCE]
    try:
        task = get_task(store.task)
    except RetriktError:  # a user task's spec is not at hand: agreement only
        return report
    for teacher in ["store label", *ids]:
        rows = [e for e in train if teacher == "store label" or teacher in e.teacher_labels]
        if not rows:
            continue
        labels = [e.soft_labels if teacher == "store label" else e.teacher_labels[teacher]
                  for e in rows]  # fmt: skip
        preds = [p[0] if regression else max(range(len(p)), key=p.__getitem__) for p in labels]
        examples = [{**e.fields, "label": e.requested_label} for e in rows]
        report["train"][teacher] = {**task.evaluate(preds, examples), "examples": len(rows)}
    return report
