"""Quality numbers of generated examples, on hand-made records with a fake encoder.

Every expected number is counted by hand from the four records below: one good example,
one the teacher labels otherwise, one unparsable and one near-copy of the training example.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrikt.generator.build import TaskData, score_records
from retrikt.generator.quality import choose_setting, distinct_n, sample_quality
from retrikt.tasks import get_task

RTE = get_task("rte")
TRAIN = {"premise": "A cat sat on the mat.", "hypothesis": "A cat sat.", "label": 0}
VECTORS = {  # unit vectors; the near-copy is at cosine 0.97 from the training example
    ("A cat sat on the mat.", "A cat sat."): [1.0, 0.0, 0.0],
    ("Dogs bark at night.", "Dogs bark."): [0.6, 0.8, 0.0],
    ("Birds sing at dawn.", "Birds sing."): [0.0, 0.0, 1.0],
    ("A cat was on the mat.", "A cat sat."): [0.97, np.sqrt(1 - 0.97**2), 0.0],
}


class FakeEncoder:
    """Maps each rendered example to its chosen vector; an unknown text fails the test."""

    vectors = {
        RTE.render({"premise": p, "hypothesis": h}): np.asarray(v) for (p, h), v in VECTORS.items()
    }

    def encode(self, texts):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32).reshape(len(texts), 3)


def record(premise: str, hypothesis: str, label: int, soft: list[float] | None) -> dict:
    """A record as ``generate_records`` writes it (the continuation after 'Premise:')."""
    parsed = soft is not None
    return {
        "id": f"{premise}-{label}",
        "label": label,
        "text": f" {premise}\nHypothesis: {hypothesis}\n###" if parsed else " cut off mid-",
        "fields": {"premise": premise, "hypothesis": hypothesis} if parsed else None,
        "soft_labels": soft,
    }


RECORDS = [
    record("Dogs bark at night.", "Dogs bark.", 0, [0.9, 0.1]),  # valid, agreed, new
    record("Birds sing at dawn.", "Birds sing.", 1, [0.8, 0.2]),  # the teacher says label 0
    record("never", "closed", 1, None),  # unparsable
    record("A cat was on the mat.", "A cat sat.", 0, [0.7, 0.3]),  # copies the training one
]


def test_sample_quality_counts_validity_agreement_duplicates_and_yield():
    data = TaskData(RTE, [TRAIN], [])
    scores = score_records(RTE, RECORDS, FakeEncoder(), [TRAIN], "fake-teacher", 0.95)
    m = sample_quality(data, RECORDS, scores, FakeEncoder(), near_duplicate=0.95)

    assert m["generated"] == 4
    assert m["validity"] == pytest.approx(3 / 4)
    assert m["agreement"] == pytest.approx(2 / 3)
    assert m["p_requested"] == pytest.approx((0.9 + 0.2 + 0.7) / 3)
    assert m["copies"] == pytest.approx(1 / 3)  # only the near-copy is >= 0.95 from training
    assert m["duplicates"] == pytest.approx(1 / 3)
    assert m["yield"] == pytest.approx(1 / 4)  # the one valid, agreed, non-duplicate example
    # cosines between the valid three: (dogs, birds) 0, (dogs, copy) 0.6*0.97+0.8*0.243,
    # (birds, copy) 0; the mean over ordered pairs is that sum over 3 pairs.
    assert m["pairwise_cosine"] == pytest.approx((0.582 + 0.8 * np.sqrt(1 - 0.97**2)) / 3, 1e-5)
    assert m["nearest_train"] == pytest.approx((0.6 + 0.0 + 0.97) / 3, 1e-5)


def test_sample_quality_of_nothing_valid_yields_nothing():
    data = TaskData(RTE, [TRAIN], [])
    scores = score_records(RTE, RECORDS[2:3], FakeEncoder(), [TRAIN], "fake-teacher", 0.95)
    m = sample_quality(data, RECORDS[2:3], scores, FakeEncoder(), near_duplicate=0.95)
    assert m == {"generated": 1, "validity": 0.0, "yield": 0.0}


def test_distinct_n_counts_unique_ngrams_over_all():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["A b", "a B"], 2) == pytest.approx(1 / 2)  # case does not count
    assert distinct_n([], 2) == 0.0


def test_choose_setting_takes_yield_first_then_the_most_varied():
    results = {
        "t0.6": {"yield": 0.50, "pairwise_cosine": 0.60},
        "t0.8": {"yield": 0.47, "pairwise_cosine": 0.40},  # within 0.05 of the best, varied
        "t1.2": {"yield": 0.20, "pairwise_cosine": 0.10},  # the most varied, but wasteful
    }
    assert choose_setting(results) == "t0.8"
    assert choose_setting(results, tolerance=0.0) == "t0.6"
    # A setting with no valid pair has no diversity to show: it never wins a tie on it.
    assert (
        choose_setting(
            {
                "a": {"yield": 0.3, "pairwise_cosine": float("nan")},
                "b": {"yield": 0.3, "pairwise_cosine": 0.9},
            }
        )
        == "b"
    )
    with pytest.raises(ValueError, match="no sampling settings"):
        choose_setting({})
