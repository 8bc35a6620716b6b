"""Retrieval: the nearest store rows of a query, and how their labels mix into a prediction.

The one place for the rule the student uses at inference, the training objectives learn and
the kNN baseline votes with::

    w_i   = softmax_i(similarity_i / retrieval_temperature)   over the k neighbours
    vote  = sum_i w_i * value_i                     the teacher's view of the neighbourhood
    final = mix * model + (1 - mix) * vote          (mix is the paper's lambda)

``value_i`` is a neighbour's teacher soft labels (classification), its teacher score
(regression) or, for a multiple-choice task, the plausibility of the row's choice: there each
choice input is voted on separately and the votes are normalised over the example's choices.

Search (:func:`top_k`) wraps any ``(queries, n) -> (similarities, rows)`` function (a FAISS
store's, or :func:`exact_search` over a key matrix) and can leave out the rows that come from
the query's own example, which training and tuning on data that is also in the store need.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from retrikt.tasks import CHOICE

#: ``search(queries, n)`` -> (similarities, rows), each (len(queries), <= n), rows -1 if none.
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def exact_search(keys: np.ndarray) -> SearchFn:
    """Exact inner-product search over ``keys`` (M, d); ties go to the lower row."""

    def search(queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ keys.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(scores, rows, axis=1), rows

    return search


def top_k(
    search: SearchFn,
    queries: np.ndarray,
    k: int,
    size: int,
    own: tuple[Sequence[str], Sequence[str]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each query as (similarities, rows), both (n, k).

    Missing neighbours (fewer than ``k`` rows of ``size``) are padded with similarity
    ``-inf`` and row -1. ``own`` = (origin of every row, origin of every query) leaves out
    each query's own rows (exclude-self): a few more rows are fetched and those dropped.
    """
    row_origins, query_origins = own if own is not None else ((), ())
    extra = max(Counter(row_origins).values(), default=0)
    sims, rows = search(queries, min(k + extra, size))
    sims = np.where(rows >= 0, sims, -np.inf)  # an index may pad with any score
    if own is not None:
        mine = [
            [r >= 0 and row_origins[r] == origin for r in row]
            for row, origin in zip(rows, query_origins, strict=True)
        ]
        sims = np.where(np.array(mine, dtype=bool).reshape(sims.shape), -np.inf, sims)
        order = np.argsort(-sims, axis=1, kind="stable")
        sims = np.take_along_axis(sims, order, axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
    rows = np.where(np.isfinite(sims), rows, -1)
    pad = k - sims.shape[1]
    if pad > 0:
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return sims[:, :k].astype(np.float32), rows[:, :k]


def neighbour_logits(
    sims: torch.Tensor, retrieval_temperature: torch.Tensor | float
) -> torch.Tensor:
    """similarity / temperature, -inf for missing neighbours.

    Missing ones are divided as 0 and masked after, so no ``inf / T`` reaches the gradient
    of a learned temperature (it would turn it into NaN).
    """
    missing = ~torch.isfinite(sims)
    logits = sims.masked_fill(missing, 0.0) / retrieval_temperature
    return logits.masked_fill(missing, -torch.inf)


def neighbour_weights(
    sims: torch.Tensor, retrieval_temperature: torch.Tensor | float
) -> torch.Tensor:
    """softmax(similarity / temperature) over the last axis; missing neighbours (-inf) get 0."""
    weights = torch.softmax(neighbour_logits(sims, retrieval_temperature), dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # a row with no neighbour at all


def neighbour_vote(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the neighbours' values: weights (m, k), values (m, k, V) -> (m, V)."""
    return (weights.unsqueeze(-1) * values).sum(1)


def combine(
    model: torch.Tensor, vote: torch.Tensor, found: torch.Tensor, mix: float, head: str
) -> torch.Tensor:
    """``mix * model + (1 - mix) * vote`` per example.

    ``model`` is (n, C) probabilities or (n, 1) scores. ``vote`` is (n, C) / (n, 1) likewise,
    or for a choice head the (n * choices, 1) plausibilities of each choice input, normalised
    here over the example's choices. ``found`` (one bool per vote row) marks rows that had
    neighbours; an example with a row without any keeps the model's own prediction.
    """
    n = model.shape[0]
    found = found.view(n, -1).all(-1, keepdim=True)
    if head == CHOICE:
        plausibility = vote.view(n, -1)
        total = plausibility.sum(-1, keepdim=True)
        uniform = torch.full_like(plausibility, 1.0 / plausibility.shape[-1])
        vote = torch.where(total > 0, plausibility / total.clamp_min(1e-12), uniform)
    vote = torch.where(found, vote, model)
    return mix * model + (1 - mix) * vote


def mix_neighbours(
    model: torch.Tensor,
    sims: torch.Tensor,
    values: torch.Tensor,
    retrieval_temperature: torch.Tensor | float,
    mix: float,
    head: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final prediction and the neighbour weights, from the neighbours' similarities
    (m, k; -inf where missing) and values (m, k, V); differentiable (training uses it)."""
    weights = neighbour_weights(sims, retrieval_temperature)
    found = torch.isfinite(sims).any(-1)
    return combine(model, neighbour_vote(weights, values), found, mix, head), weights


def mix_rows(
    model: np.ndarray,
    sims: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    retrieval_temperature: float,
    mix: float,
    head: str,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mix_neighbours` for search results: rows index ``values`` (M, V), -1 if none."""
    final, weights = mix_neighbours(
        torch.from_numpy(np.ascontiguousarray(model)),
        torch.from_numpy(np.ascontiguousarray(sims)),
        torch.from_numpy(values[np.maximum(rows, 0)]),
        retrieval_temperature,
        mix,
        head,
    )
    return final.numpy(), weights.numpy()
