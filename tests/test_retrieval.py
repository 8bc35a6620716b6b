"""Retrieval: top-k search with exclude-self, neighbour weights and the mixing rule, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrikt.retrieval import (
    combine,
    exact_search,
    mix_rows,
    neighbour_vote,
    neighbour_weights,
    top_k,
)
from retrikt.tasks import CHOICE, CLASSIFICATION, SCORE

KEYS = np.eye(4, dtype=np.float32)
QUERY = np.array([[0.9, 0.5, 0.3, 0.1]], dtype=np.float32)


# ------------------------------------------------------------------------ search
def test_top_k_orders_by_similarity_and_pads_missing_neighbours():
    sims, rows = top_k(exact_search(KEYS), QUERY, 2, len(KEYS))
    assert rows.tolist() == [[0, 1]] and sims.tolist()[0] == pytest.approx([0.9, 0.5])
    sims, rows = top_k(exact_search(KEYS[:2]), QUERY, 3, 2)  # a store smaller than k
    assert rows.tolist() == [[0, 1, -1]] and sims[0, 2] == -np.inf


def test_top_k_leaves_out_every_row_of_the_query_own_example():
    origins = ["a", "a", "b", "c"]  # rows 0 and 1 come from example "a" (COPA: 2 choices)
    sims, rows = top_k(exact_search(KEYS), QUERY, 2, len(KEYS), own=(origins, ["a"]))
    assert rows.tolist() == [[2, 3]] and sims.tolist()[0] == pytest.approx([0.3, 0.1])
    sims, rows = top_k(exact_search(KEYS), QUERY, 3, len(KEYS), own=(origins, ["a"]))
    assert rows.tolist() == [[2, 3, -1]]  # nothing else left to retrieve


def test_an_index_that_pads_with_minus_one_counts_as_missing():
    def faiss_like(queries, n):
        return np.array([[0.9, -3.4e38]]), np.array([[2, -1]])

    sims, rows = top_k(faiss_like, QUERY, 2, 1)
    assert rows.tolist() == [[2, -1]] and sims[0, 1] == -np.inf


# ------------------------------------------------------------------ mixing rule
def test_combination_rule_classification_by_hand():
    # sims / T differ by ln 3, so the weights are 3/4 and 1/4; the third neighbour is missing.
    temperature = 0.1
    sims = torch.tensor([[0.5 + temperature * math.log(3), 0.5, -math.inf]])
    values = torch.tensor([[[1.0, 0.0, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0]]])
    weights = neighbour_weights(sims, temperature)
    assert weights.tolist()[0] == pytest.approx([0.75, 0.25, 0.0])
    vote = neighbour_vote(weights, values)  # 0.75 * [1, 0, 0] + 0.25 * [.2, .4, .4]
    assert vote.tolist()[0] == pytest.approx([0.8, 0.1, 0.1])
    model = torch.tensor([[0.2, 0.6, 0.2]])
    final = combine(model, vote, torch.tensor([True]), 0.5, CLASSIFICATION)
    assert final.tolist()[0] == pytest.approx([0.5, 0.35, 0.15])
    final = combine(model, vote, torch.tensor([True]), 0.25, CLASSIFICATION)
    assert final.tolist()[0] == pytest.approx([0.65, 0.225, 0.125])


def test_combination_rule_regression_by_hand():
    temperature = 0.05
    sims = torch.tensor([[0.8 + temperature * math.log(3), 0.8]])
    vote = neighbour_vote(neighbour_weights(sims, temperature), torch.tensor([[[4.0], [2.0]]]))
    assert vote.item() == pytest.approx(3.5)  # 0.75 * 4 + 0.25 * 2
    final = combine(torch.tensor([[1.5]]), vote, torch.tensor([True]), 0.5, SCORE)
    assert final.item() == pytest.approx(2.5)


def test_combination_rule_copa_per_choice_by_hand():
    temperature = 0.1
    # Choice 1's input: plausibilities 0.9 and 0.5 weighted 3/4, 1/4 -> 0.8.
    # Choice 2's input: plausibilities 0.1 and 0.3 at equal similarity -> 0.2.
    sims = torch.tensor([[0.6 + temperature * math.log(3), 0.6], [0.4, 0.4]])
    values = torch.tensor([[[0.9], [0.5]], [[0.1], [0.3]]])
    vote = neighbour_vote(neighbour_weights(sims, temperature), values)
    assert vote.squeeze(-1).tolist() == pytest.approx([0.8, 0.2])
    model = torch.tensor([[0.4, 0.6]])
    final = combine(model, vote, torch.tensor([True, True]), 0.5, CHOICE)
    # vote over choices: [0.8, 0.2] / 1.0; final = 0.5 * [.4, .6] + 0.5 * [.8, .2]
    assert final.tolist()[0] == pytest.approx([0.6, 0.4])


def test_combination_without_neighbours_keeps_the_model():
    model = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    sims = torch.full((2, 3), -math.inf)
    vote = neighbour_vote(neighbour_weights(sims, 0.1), torch.ones(2, 3, 2))
    final = combine(model, vote, torch.tensor([False, False]), 0.2, CLASSIFICATION)
    assert torch.allclose(final, model)


def test_mix_rows_reads_values_of_the_retrieved_rows():
    values = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    sims = np.array([[0.5, -np.inf]], dtype=np.float32)
    final, weights = mix_rows(np.array([[0.5, 0.5]], np.float32), sims, np.array([[1, -1]]),
                              values, 0.1, 0.5, CLASSIFICATION)  # fmt: skip
    assert weights.tolist() == [[1.0, 0.0]]
    assert final.tolist()[0] == pytest.approx([0.25, 0.75])


def test_missing_neighbours_leave_the_temperature_gradient_finite():
    """Padding (-inf) must not turn a learned temperature's gradient into NaN."""
    log_temperature = torch.tensor(math.log(0.05), requires_grad=True)
    sims = torch.tensor([[0.8, 0.6, -math.inf], [-math.inf, -math.inf, -math.inf]])
    values = torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3])
    model = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    final = combine(model, neighbour_vote(neighbour_weights(sims, log_temperature.exp()), values),
                    torch.isfinite(sims).any(-1), 0.5, CLASSIFICATION)  # fmt: skip
    final[:, 0].sum().backward()
    assert torch.isfinite(log_temperature.grad) and log_temperature.grad != 0
    assert final[1].tolist() == [0.5, 0.5]  # no neighbour: the model alone
