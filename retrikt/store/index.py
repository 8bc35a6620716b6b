"""The vector index of a store: which FAISS index fits its size, and exact search over it.

Index choice comes from experiments/results/store_benchmark.md; the manifest records the
choice (``IndexConfig``) so that a reader rebuilds and searches the index exactly as written.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from retrikt.errors import StoreError
from retrikt.store.manifest import INDEX_KINDS

logger = logging.getLogger(__name__)

IVF_KINDS = ("ivfpq", "ivfsq")

# Index choice, from experiments/results/store_benchmark.md (2 shared cores, 384-dim): exact
# search stays within 5 ms p50 at batch 1 up to 100k entries; past that ``auto`` takes IVF
# with 6-bit scalar codes (recall@10 0.96 at 1M in 0.19 of the flat memory), where IVF-PQ
# (0.13) plateaus at 0.93. HNSW is faster at 100k but larger than the flat vectors and slow to
# build, so it is chosen only by flag.
AUTO_EXACT_MAX = 100_000
AUTO_LARGE = "ivfsq"
IVF_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
IVF_MIN_ENTRIES = 20_000  # fewer entries than this: exact search is fast and IVF trains badly
IVF_TRAIN_POINTS_PER_LIST = 64  # k-means sample: 64 points per list keeps 1M builds in minutes
IVF_NPROBE = {"ivfpq": 16, "ivfsq": 16}
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 128  # recall@10 0.98 at 100k in the benchmark (64: 0.96)
EXACT_BLAS_BATCH = 16  # from this many queries one BLAS product beats the fp16 scan
EXACT_CANDIDATES = 64  # fp16 candidates re-scored exactly before the exactness certificate
# fp16 rounds each component with relative error <= 2**-11; twice that also covers float32
# accumulation over a few thousand dimensions.
FP16_ERROR = 2.0**-10
_ADD_CHUNK = 65_536


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index a store uses and how it is built and searched (kept in the manifest)."""

    kind: str  # "flat" (certified exact), "hnsw", "ivfpq" or "ivfsq"
    factory: str  # a faiss.index_factory string, inner-product metric
    search_params: dict[str, int] = field(default_factory=dict)  # nprobe / efSearch
    build_params: dict[str, int] = field(default_factory=dict)  # efConstruction / train_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "search_params": dict(self.search_params),
            "build_params": dict(self.build_params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        return cls(
            kind=data["kind"],
            factory=data["factory"],
            search_params=dict(data.get("search_params", {})),
            build_params=dict(data.get("build_params", {})),
        )


def _ivf_codec(kind: str, dim: int) -> str:
    """Per-vector codes of the IVF kinds, as faiss.index_factory spells them."""
    if kind == "ivfsq":
        return "SQ6"  # 6 bits per dimension: 0.19 of float32
    # PQ with two dimensions per 8-bit sub-quantizer (0.125 of float32); "np" skips the
    # polysemous training faiss would otherwise run (minutes of CPU, unused here).
    return f"PQ{dim // 2 if dim % 2 == 0 else dim}x8np"


def choose_index(requested: str, n: int, dim: int) -> IndexConfig:
    """The index for ``n`` vectors: the requested kind, or by size for ``auto``.

    The IVF kinds need enough vectors to train; below ``IVF_MIN_ENTRIES`` the store searches
    exactly until it grows (exact search is fast at that size anyway).
    """
    if requested not in INDEX_KINDS:
        raise StoreError(
            f"unknown index kind {requested!r}; choose one of {', '.join(INDEX_KINDS)}"
        )
    kind = requested
    if kind == "auto":
        kind = "flat" if n <= AUTO_EXACT_MAX else AUTO_LARGE
    if kind in IVF_KINDS and n < IVF_MIN_ENTRIES:
        kind = "flat"
    if kind == "flat":
        # fp16 codes are scanned, then the best candidates re-scored from the float32 vectors.
        return IndexConfig("flat", "SQfp16", {"candidates": EXACT_CANDIDATES})
    if kind == "hnsw":
        return IndexConfig(
            "hnsw",
            f"HNSW{HNSW_M},Flat",
            {"efSearch": HNSW_EF_SEARCH},
            {"efConstruction": HNSW_EF_CONSTRUCTION},
        )
    # About 4 * sqrt(n) lists, a power of two so the config (and a rebuild) changes only when
    # the store has grown about fourfold, and never fewer training points than faiss wants.
    nlist = 2 ** int(math.log2(min(4 * math.sqrt(n), n / IVF_MIN_POINTS_PER_LIST)))
    return IndexConfig(
        kind,
        f"IVF{nlist},{_ivf_codec(kind, dim)}",
        {"nprobe": min(IVF_NPROBE[kind], nlist)},
        {"train_size": min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)},
    )


class VectorIndex:
    """A FAISS index plus what searching it takes.

    For ``flat`` the index holds fp16 codes (half the bytes to scan of float32); the best
    ``candidates`` are re-scored from the float32 vectors and a bound on the fp16 rounding
    error certifies that no other vector can enter the top k, falling back to a full float32
    search when it cannot. faiss's IndexRefine does the two stages but gives no such
    guarantee, and would keep a second float32 copy of the vectors in memory.
    """

    def __init__(self, config: IndexConfig, index: faiss.Index, max_norm: float):
        self.config = config
        self.index = index
        self.max_norm = max_norm
        params = faiss.ParameterSpace()
        for name, value in config.search_params.items():
            if name != "candidates":
                params.set_index_parameter(index, name, value)

    @classmethod
    def build(cls, config: IndexConfig, vectors: np.ndarray, seed: int = 0) -> VectorIndex:
        dim = vectors.shape[1]
        index = faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
        if config.kind == "hnsw":
            index.hnsw.efConstruction = config.build_params["efConstruction"]
        if not index.is_trained:
            size = min(len(vectors), config.build_params.get("train_size", len(vectors)))
            rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
            if isinstance(ivf, faiss.IndexIVFPQ):  # PQ codebooks: 64 points per centroid do
                ivf.pq.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
            logger.info("training %s on %d of %d vectors", config.factory, size, len(vectors))
            index.train(np.ascontiguousarray(vectors[rows]))
        built = cls(config, index, 0.0)
        built.add(vectors)
        return built

    @classmethod
    def from_bytes(cls, config: IndexConfig, data: bytes, max_norm: float) -> VectorIndex:
        return cls(config, faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), max_norm)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def nbytes(self) -> int:
        """Size of the serialised index, which is what it occupies in memory to within a few %."""
        return int(faiss.serialize_index(self.index).nbytes)

    def add(self, vectors: np.ndarray) -> None:
        chunks = range(0, len(vectors), _ADD_CHUNK)
        for start in tqdm(chunks, desc=f"indexing ({self.config.kind})", disable=len(chunks) < 4):
            chunk = np.ascontiguousarray(vectors[start : start + _ADD_CHUNK], dtype=np.float32)
            self.index.add(chunk)
            self.max_norm = max(self.max_norm, float(np.linalg.norm(chunk, axis=1).max()))

    def search(
        self, queries: np.ndarray, k: int, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products; ``vectors`` are the store's float32 rows (used by ``flat``)."""
        if self.config.kind == "flat":
            scores, indices = self._exact_search(queries, k, vectors)
        else:
            scores, indices = self.index.search(queries, k)
        indices = indices.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        scores[indices < 0] = -np.inf
        return scores, indices

    def _exact_search(
        self, queries: np.ndarray, k: int, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(vectors)
        candidates = min(n, max(self.config.search_params.get("candidates", 0), 2 * k))
        if len(queries) >= EXACT_BLAS_BATCH or candidates == n:
            with _blas_from(EXACT_BLAS_BATCH):
                return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        approx, cand = self.index.search(queries, candidates)
        exact = np.matmul(vectors[cand], queries[:, :, None])[:, :, 0]
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(exact, order, axis=1)
        indices = np.take_along_axis(cand, order, axis=1)
        # Any vector outside the candidates has an fp16 score <= approx[:, -1], hence a true
        # score <= approx[:, -1] + error; if the k-th exact score clears that, the top k is exact.
        error = FP16_ERROR * self.max_norm * np.linalg.norm(queries, axis=1)
        unsure = np.flatnonzero(scores[:, -1] < approx[:, -1] + error)
        if len(unsure):
            scores[unsure], indices[unsure] = faiss.knn(
                queries[unsure], vectors, k, metric=faiss.METRIC_INNER_PRODUCT
            )
        return scores, indices


@contextlib.contextmanager
def _blas_from(queries: int) -> Iterator[None]:
    """Let faiss's brute-force search use BLAS from ``queries`` queries on.

    faiss 1.15 defaults to BLAS only from 128000 queries; at batch 64 over 100k vectors its
    SIMD scan costs six times the CPU of one BLAS product (measured on this machine). The
    setting is process-global: a concurrent search may briefly see either value, which changes
    its speed, never its result.
    """
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = queries
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous
