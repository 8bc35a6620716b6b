"""Condensing a knowledge store: keep a small, class-balanced part that teaches as much.

A store is the student's memory and part of its training data, so its size is memory,
search time and training time. ``retrikt store condense SRC --out DST --ratio R --method M``
keeps about ``R`` of every label's entries (of every score bucket for a regression task,
so a condensed store keeps the source's label balance) chosen by one of :data:`METHODS`,
and writes them as an ordinary store whose manifest records the lineage (source digest,
method, ratio, seed). Every method sees one label's entries at a time:

- ``random``: the baseline every other method must beat;
- ``kcenter``: k-center greedy (farthest-point) coreset, so no entry is far from a kept one;
- ``kmeans``: faiss k-means with as many centroids as entries to keep; each keeps its medoid;
- ``herding``: entries whose running mean best matches the label's mean embedding;
- ``confident-diverse``: k-center within the entries the teacher agrees with most;
- ``knn-shapley``: the entries of highest kNN-Shapley value for the store's own real entries.

Per-label quotas are ``round(R * n)``. A label the source has entries of but whose quota is
zero is an error naming the smallest ratio that keeps it, never a silent drop. A label the
source has no entries of is not the condenser's to invent: it is logged and stays absent.

This module imports only numpy at load time (``retrikt --help`` builds the CLI from
:class:`CondenseConfig`); the store and faiss are imported where used.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrikt.config import Config, option
from retrikt.errors import ConfigError, StoreError
from retrikt.generator.configs import TRAIN_SOURCE

if TYPE_CHECKING:
    from retrikt.store import KnowledgeStore

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the entries
class Source:
    """What the methods read from the store: vectors, labels and the teacher's agreement."""

    def __init__(self, store: KnowledgeStore, buckets: int):
        self.store = store
        self.vectors = np.ascontiguousarray(store.embeddings(), dtype=np.float32)
        self.soft = store.soft_label_matrix()
        self.labels = store.requested_labels()
        self.regression = store.label_names is None
        scores = self.labels.astype(np.float64)
        self.low = float(scores.min()) if len(scores) else 0.0
        self.span = float(scores.max()) - self.low if len(scores) else 0.0
        self.buckets = buckets
        self.memo: dict[Any, np.ndarray] = {}  # per-store results shared by the labels

    def __len__(self) -> int:
        return len(self.vectors)

    def groups(self) -> dict[str, np.ndarray]:
        """Row positions of each label (classification, choice) or score bucket (regression).

        Buckets are ``buckets`` equal widths of the store's score range, the last one closed.
        """
        if not self.regression:
            names = self.store.label_names or []
            return {name: np.flatnonzero(self.labels == i) for i, name in enumerate(names)}
        width = self.span / self.buckets if self.span > 0 else 1.0
        index = np.minimum(((self.labels - self.low) // width).astype(np.int64), self.buckets - 1)
        groups = {}
        for b in range(self.buckets):
            lo, hi = self.low + b * width, self.low + (b + 1) * width
            closing = "]" if b == self.buckets - 1 else ")"
            groups[f"score [{lo:.3g}, {hi:.3g}{closing}"] = np.flatnonzero(index == b)
        return groups

    @cached_property
    def confidence(self) -> np.ndarray:
        """(N,) the teacher's agreement with each entry's label, in [0, 1].

        The teacher's probability of the label (of the right choice for a choice task); for
        regression ``1 - |teacher score - label| / range``.
        """
        if self.regression:
            span = self.span if self.span > 0 else 1.0
            return np.clip(1.0 - np.abs(self.soft[:, 0] - self.labels) / span, 0.0, 1.0)
        return self.soft[np.arange(len(self)), self.labels.astype(np.int64)]

    def utility(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """u[i, j]: how right entry ``rows[i, j]``'s teacher label is for query ``queries[i]``.

        The teacher's probability of the query's label (its closeness for regression): the
        value each neighbour's vote adds to a kNN prediction of that query.
        """
        if self.regression:
            span = self.span if self.span > 0 else 1.0
            gap = np.abs(self.soft[rows, 0] - self.labels[queries][:, None])
            return np.clip(1.0 - gap / span, 0.0, 1.0)
        return self.soft[rows, self.labels[queries].astype(np.int64)[:, None]]


# ---------------------------------------------------------------------------- methods
@dataclass
class Group:
    """One label's entries: the rows a method chooses ``size`` of."""

    name: str
    rows: np.ndarray  # positions in the source store
    source: Source = field(repr=False)
    rng: np.random.Generator = field(repr=False)
    config: CondenseConfig = field(repr=False)

    @property
    def vectors(self) -> np.ndarray:
        return self.source.vectors[self.rows]


#: A method: the group and how many of its entries to keep -> positions into ``group.rows``.
Select = Callable[[Group, int], np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    select: Select
    seeded: bool  # False: the choice does not depend on the seed
    description: str


def _random(group: Group, size: int) -> np.ndarray:
    return group.rng.choice(len(group.rows), size, replace=False)


def _farthest_first(vectors: np.ndarray, size: int, first: int) -> np.ndarray:
    """k-center greedy: from ``first``, repeatedly keep the entry farthest from all kept.

    A 2-approximation of the smallest radius covering every entry (Gonzalez, 1985);
    O(n * size) distance evaluations, no n x n matrix.
    """
    chosen = [first]
    nearest = np.sum((vectors - vectors[first]) ** 2, axis=1)
    # A kept entry is never the farthest again, even when the rest are copies of kept ones
    # (distance 0 too, and argmax would pick the first tie: a kept entry, twice).
    nearest[first] = -np.inf
    for _ in range(size - 1):
        far = int(np.argmax(nearest))
        chosen.append(far)
        np.minimum(nearest, np.sum((vectors - vectors[far]) ** 2, axis=1), out=nearest)
        nearest[far] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def _kcenter(group: Group, size: int) -> np.ndarray:
    return _farthest_first(group.vectors, size, int(group.rng.integers(len(group.rows))))


def _kmeans(group: Group, size: int) -> np.ndarray:
    """faiss k-means with ``size`` centroids; each keeps its nearest entry not yet kept."""
    import faiss

    vectors = group.vectors
    if size == len(vectors):
        return np.arange(size)
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        size,
        niter=group.config.kmeans_iterations,
        nredo=group.config.kmeans_restarts,
        seed=int(group.rng.integers(2**31 - 1)),
        min_points_per_centroid=1,  # a small label has few points per centroid by design
        max_points_per_centroid=10**9,  # and k-means sees all of them
    )
    kmeans.train(vectors)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    distances, candidates = index.search(kmeans.centroids, min(len(vectors), 16))
    # Centroids closest to an entry choose first; two centroids never share a medoid.
    taken = np.zeros(len(vectors), dtype=bool)
    chosen = []
    for centroid in np.argsort(distances[:, 0], kind="stable"):
        free = candidates[centroid][~taken[candidates[centroid]]]
        if len(free):
            medoid = int(free[0])
        else:  # its 16 nearest are all kept: the nearest of the rest
            gap = np.sum((vectors - kmeans.centroids[centroid]) ** 2, axis=1)
            gap[taken] = np.inf
            medoid = int(np.argmin(gap))
        taken[medoid] = True
        chosen.append(medoid)
    return np.asarray(chosen, dtype=np.int64)


def _herding(group: Group, size: int) -> np.ndarray:
    """Greedy herding (Welling 2009, as iCaRL keeps exemplars): each step keeps the entry
    that brings the mean of those kept closest to the label's mean embedding."""
    vectors = group.vectors.astype(np.float64)
    target = vectors.mean(axis=0)
    total = np.zeros_like(target)
    available = np.ones(len(vectors), dtype=bool)
    chosen = []
    for step in range(1, size + 1):
        gap = np.sum((target - (total + vectors) / step) ** 2, axis=1)
        gap[~available] = np.inf
        best = int(np.argmin(gap))
        available[best] = False
        total += vectors[best]
        chosen.append(best)
    return np.asarray(chosen, dtype=np.int64)


def _confident_diverse(group: Group, size: int) -> np.ndarray:
    """k-center greedy over the ``pool * size`` entries the teacher agrees with most.

    Confidence first (an entry whose teacher label contradicts its own label teaches the
    wrong answer to every query that retrieves it), then diversity within those: ``pool`` 1
    keeps the most confident alone, a pool as large as the label is plain k-center. The
    start is the most confident entry.
    """
    confidence = group.source.confidence[group.rows]
    pool_size = min(len(group.rows), max(size, math.ceil(group.config.pool * size)))
    pool = np.argsort(-confidence, kind="stable")[:pool_size]
    return pool[_farthest_first(group.vectors[pool], size, 0)]


def _knn_shapley(group: Group, size: int) -> np.ndarray:
    """The entries of highest kNN-Shapley value (:func:`knn_shapley_values`)."""
    values = knn_shapley_values(group.source, group.config)[group.rows]
    return np.argsort(-values, kind="stable")[:size]


def knn_shapley_values(source: Source, config: CondenseConfig) -> np.ndarray:
    """(N,) each entry's exact kNN-Shapley value (Jia et al., 2019) for the store's own entries.

    The game: a kNN classifier over the store, with utility ``(1/K) * sum over the K nearest
    of u(neighbour, query)`` (``Source.utility``: how right the neighbour's teacher label is
    for the query's label, the vote the student's retrieval adds). Its Shapley values have a
    closed form over each query's neighbours sorted by similarity, O(N log N) per query
    instead of exponential. Queries are the store's real (``generator="train"``) entries when
    it has any, else all its entries; each query is left out of its own neighbours
    (leave-one-out). Truncated: a query values only its ``shapley_neighbours`` nearest
    entries (those farther get 0 from it); values are averaged over queries. An entry that
    misleads the queries near it gets a negative value. For a choice task (COPA) the label
    is the index of the right choice, so the value is only as telling as a vote of whole
    questions on that index.
    """
    memo = ("knn-shapley", config.shapley_k, config.shapley_neighbours)
    if memo in source.memo:
        return source.memo[memo]
    generators = np.asarray(source.store.column("generator").to_pylist())
    queries = np.flatnonzero(generators == TRAIN_SOURCE)
    if len(queries) == 0:
        queries = np.arange(len(source))
    vectors = source.vectors
    n = len(vectors)
    t = min(config.shapley_neighbours, n - 1)
    k = config.shapley_k
    values = np.zeros(n, dtype=np.float64)
    if t < 1:
        return values
    # 1-based rank i of each neighbour: min(K, i) / i weights the gap to the next neighbour.
    rank = np.arange(1, t + 1, dtype=np.float64)
    weight = np.minimum(k, rank) / (k * rank)
    for start in range(0, len(queries), 256):
        batch = queries[start : start + 256]
        sims = vectors[batch] @ vectors.T
        sims[np.arange(len(batch)), batch] = -np.inf  # leave the query itself out
        top = np.argpartition(-sims, t - 1, axis=1)[:, :t]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        neighbours = np.take_along_axis(top, order, axis=1)  # (b, t), nearest first
        u = source.utility(neighbours, batch)
        shapley = np.empty_like(u)
        shapley[:, -1] = u[:, -1] / t  # s_T = u_T / T, then the recursion towards the nearest
        for i in range(t - 2, -1, -1):
            shapley[:, i] = shapley[:, i + 1] + (u[:, i] - u[:, i + 1]) * weight[i]
        np.add.at(values, neighbours.ravel(), shapley.ravel())
    values /= len(queries)
    source.memo[memo] = values
    return values


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("random", _random, True, "uniformly random entries (the baseline)"),
        Method("kcenter", _kcenter, True, "k-center greedy coreset in the store's vectors"),
        Method("kmeans", _kmeans, True, "medoids of faiss k-means, one per kept entry"),
        Method("herding", _herding, False, "herding towards the label's mean embedding"),
        Method(
            "confident-diverse",
            _confident_diverse,
            False,
            "k-center among the entries the teacher agrees with most",
        ),
        Method(
            "knn-shapley",
            _knn_shapley,
            False,
            "highest kNN-Shapley value for kNN prediction of the store's real entries",
        ),
    )
}


# ---------------------------------------------------------------------------- config
@dataclass
class CondenseConfig(Config):
    """One ``retrikt store condense`` run: the single source of its flags, help and checks."""

    ratio: float = option(
        None,
        "share of every label's entries to keep, in (0, 1]; each label keeps round(ratio * n)",
        above=0,
        max=1,
    )
    method: str = option(
        None,
        "how each label's entries are chosen (the methods are described above)",
        choices=tuple(METHODS),
    )
    seed: int = option(0, "seed of the random choices (random, kcenter's start, k-means)")
    buckets: int = option(5, "regression: equal-width score buckets kept in balance", min=1)
    pool: float = option(
        2.0,
        "confident-diverse: k-center runs over the pool x quota entries the teacher agrees "
        "with most (1: confidence alone; large: diversity alone)",
        min=1,
    )
    shapley_k: int = option(5, "knn-shapley: the k of the kNN classifier valued", min=1)
    shapley_neighbours: int = option(
        32,
        "knn-shapley: each query values its nearest this many entries, the rest get 0 from it "
        "(32: the largest k the student's retrieval tunes)",
        min=1,
    )
    kmeans_iterations: int = option(20, "kmeans: faiss k-means iterations", min=1)
    kmeans_restarts: int = option(
        5, "kmeans: runs from different random centroids; the lowest-error one is kept", min=1
    )

    def settings(self) -> dict[str, Any]:
        """The options besides method, ratio and seed (recorded in the lineage)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("method", "ratio", "seed")}


# ---------------------------------------------------------------------------- condensing
@dataclass
class Plan:
    """Which source rows to keep, per label: what ``condense`` writes and records."""

    rows: np.ndarray  # sorted source positions
    kept: dict[str, list[int]]  # label -> [entries in the source, kept]
    seconds: float


def quotas(source: Source, ratio: float, path: str | Path) -> dict[str, tuple[np.ndarray, int]]:
    """Each label's rows and how many to keep: ``round(ratio * n)`` (half up), at least 1.

    Raises ConfigError when a label with entries would keep none, naming the smallest
    ratio that keeps one of each.
    """
    if len(source) == 0:
        raise StoreError(f"{path} is empty: there is nothing to condense")
    plan = {}
    for name, rows in source.groups().items():
        if len(rows) == 0:
            if not source.regression:
                logger.warning(
                    "%s has no %r entries: the condensed store has none either", path, name
                )
            continue
        size = math.floor(ratio * len(rows) + 0.5)
        if size < 1:
            smallest = max(0.5 / len(r) for r in source.groups().values() if len(r))
            raise ConfigError(
                f"CondenseConfig.ratio (--ratio) {ratio} keeps none of the {len(rows)} "
                f"{name!r} entries of {path}; "
                f"the smallest ratio that keeps one entry of every label is "
                f"{math.ceil(smallest * 1000) / 1000}"
            )
        plan[name] = (rows, size)
    return plan


def plan(store: KnowledgeStore, config: CondenseConfig) -> Plan:
    """Choose the rows to keep, label by label, with ``config.method``."""
    started = time.perf_counter()
    method = METHODS[config.method]
    source = Source(store, config.buckets)
    chosen, kept = [], {}
    for number, (name, (rows, size)) in enumerate(quotas(source, config.ratio, store.path).items()):
        rng = np.random.default_rng([config.seed, number])
        local = method.select(Group(name, rows, source, rng, config), size)
        if len(np.unique(local)) != size:  # a method bug would otherwise write a smaller store
            raise AssertionError(f"{config.method} chose {len(np.unique(local))} of {size}")
        chosen.append(rows[local])
        kept[name] = [len(rows), size]
        logger.info("%s: keeping %d of %d %r entries", config.method, size, len(rows), name)
    rows = np.sort(np.concatenate(chosen))
    return Plan(rows, kept, time.perf_counter() - started)


def condense(
    source: str | Path | KnowledgeStore, out: str | Path, config: CondenseConfig
) -> KnowledgeStore:
    """Write the condensed store at ``out`` (a new or empty folder) and return it.

    The source is opened with a full verify: its content digest goes into the lineage.
    """
    from retrikt.store import KnowledgeStore

    store = source if isinstance(source, KnowledgeStore) else KnowledgeStore.open(source)
    chosen = plan(store, config)
    manifest = store.manifest
    lineage = {
        "path": str(store.path),
        "store_id": store.store_id,
        "version": store.version,
        "digest": store.digest,
        "entries": len(store),
        "method": config.method,
        "ratio": float(config.ratio),
        "seed": config.seed,
        "settings": config.settings(),
        "kept": chosen.kept,
        "condensed_from": manifest.get("condensed_from"),
    }
    new = store.subset(chosen.rows, out, condensed_from=lineage)
    logger.info(
        "condensed %s (%d entries) to %s (%d) by %s in %.2f s",
        store.path, len(store), new.path, len(new), config.method, chosen.seconds,
    )  # fmt: skip
    return new
