"""Reward terms on hand-made cases, with a fake teacher and a fake encoder.

The fakes are test doubles with hand-set outputs, so every expected reward below is
computed by hand: the teacher's probabilities are fixed per premise, and the encoder maps
each rendered example to a chosen unit vector (an unknown text fails the test, which also
checks that examples are embedded as ``task.render(example)``).
"""

from __future__ import annotations

import numpy as np
import pytest

from retrikt.generator.reward import RewardFunction, RewardWeights
from retrikt.tasks import get_task

RTE = get_task("rte")
STSB = get_task("stsb")


class FakeTeacher:
    id = "fake-teacher"

    def __init__(self, probs: dict[str, list[float]]):
        self.probs, self.calls = probs, []

    def label_probs(self, task, examples):
        self.calls.append([ex[task.fields[0]] for ex in examples])
        return np.array([self.probs[ex[task.fields[0]]] for ex in examples])


class FakeEncoder:
    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = {text: np.asarray(v) / np.linalg.norm(v) for text, v in vectors.items()}

    def encode(self, texts):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32).reshape(len(texts), 3)


def completion(premise: str, hypothesis: str) -> str:
    """What the policy writes after RTE's generation prompt (which ends in 'Premise:')."""
    return f" {premise}\nHypothesis: {hypothesis}\n###"


def rendered(premise: str, hypothesis: str) -> str:
    return RTE.render({"premise": premise, "hypothesis": hypothesis})


REFERENCE = rendered("A cat sat on the mat.", "A cat sat.")
# cos(NOVEL, REFERENCE) = 0.6; cos(NEAR, REFERENCE) = 0.97; cos(CLOSE, REFERENCE) = 0.94.
VECTORS = {
    REFERENCE: [1.0, 0.0, 0.0],
    rendered("Dogs bark at night.", "Dogs bark."): [0.6, 0.8, 0.0],
    rendered("A cat was on the mat.", "A cat sat."): [0.97, np.sqrt(1 - 0.97**2), 0.0],
    rendered("A cat lay on a rug.", "A cat lay."): [0.94, np.sqrt(1 - 0.94**2), 0.0],
    rendered("Birds sing at dawn.", "Birds sing."): [0.0, 0.0, 1.0],
    rendered("Birds sing at dusk.", "Birds sing."): [0.0, 0.6, 0.8],
    # A different vector for a case/whitespace variant of the reference: only text catches it.
    rendered("a cat  sat on the mat.", "A CAT sat."): [0.0, 1.0, 0.0],
}
PROBS = {
    "Dogs bark at night.": [0.8, 0.2],
    "A cat was on the mat.": [0.9, 0.1],
    "A cat lay on a rug.": [0.7, 0.3],
    "Birds sing at dawn.": [0.25, 0.75],
    "Birds sing at dusk.": [0.5, 0.5],
    "a cat  sat on the mat.": [1.0, 0.0],
}


def make_reward(weights: RewardWeights | None = None) -> tuple[RewardFunction, FakeTeacher]:
    teacher = FakeTeacher(PROBS)
    reward = RewardFunction(
        RTE, teacher, FakeEncoder(VECTORS), [REFERENCE], weights or RewardWeights()
    )
    return reward, teacher


def test_novel_valid_example_scores_each_term_and_weights_them():
    weights = RewardWeights(accuracy=2.0, diversity=3.0, validity=0.25)
    reward, _ = make_reward(weights)
    # Asked for not_entailment (1): the teacher gives it 0.2; cosine to the reference is 0.6.
    [score] = reward([completion("Dogs bark at night.", "Dogs bark.")], [1])
    assert score["validity"] == 1.0
    assert score["accuracy"] == pytest.approx(0.2)
    assert score["diversity"] == pytest.approx(0.4, abs=1e-6)
    assert score["total"] == pytest.approx(2.0 * 0.2 + 3.0 * 0.4 + 0.25 * 1.0, abs=1e-6)


def test_unparsable_completion_is_penalised_and_never_reaches_the_teacher():
    reward, teacher = make_reward()
    cut_off = " Dogs bark at night.\nHypothesis: Dogs"  # no closing ###: the token limit hit
    wrong_field = " Dogs bark at night.\nConclusion: Dogs bark.\n###"
    scores = reward(
        [cut_off, wrong_field, completion("Dogs bark at night.", "Dogs bark.")], [0, 0, 0]
    )
    for score in scores[:2]:
        assert score == {"accuracy": 0.0, "diversity": 0.0, "validity": -1.0, "total": -0.5}
    assert scores[2]["validity"] == 1.0 and scores[2]["accuracy"] == pytest.approx(0.8)
    assert teacher.calls == [["Dogs bark at night."]]


def test_field_too_short_is_invalid():
    reward, teacher = make_reward()
    [score] = reward([completion("Dogs bark at night.", "D")], [0])
    assert score["validity"] == -1.0 and score["total"] == -0.5
    assert teacher.calls == []


def test_exact_duplicate_of_a_training_example_scores_zero_diversity():
    reward, _ = make_reward()
    # Same text as the reference up to case and spacing; its (fake) vector is orthogonal to
    # the reference, so only the text comparison can find the duplicate.
    [score] = reward([completion("a cat  sat on the mat.", "A CAT sat.")], [0])
    assert score["diversity"] == 0.0
    assert score["validity"] == 1.0 and score["accuracy"] == 1.0


def test_near_duplicate_threshold():
    reward, _ = make_reward()
    near, close = reward(
        [
            completion("A cat was on the mat.", "A cat sat."),  # cosine 0.97 >= 0.95
            completion("A cat lay on a rug.", "A cat lay."),  # cosine 0.94 < 0.95
        ],
        [0, 0],
    )
    assert near["diversity"] == 0.0
    assert close["diversity"] == pytest.approx(0.06, abs=1e-5)
    assert reward.accepted == [rendered("A cat lay on a rug.", "A cat lay.")]


def test_diversity_counts_what_was_generated_so_far():
    reward, _ = make_reward()
    dawn = completion("Birds sing at dawn.", "Birds sing.")
    first, repeat = reward([dawn, dawn], [1, 1])
    # Orthogonal to the reference: fully novel; its repeat in the same batch is a duplicate.
    assert first["diversity"] == pytest.approx(1.0)
    assert repeat["diversity"] == 0.0
    assert first["accuracy"] == repeat["accuracy"] == pytest.approx(0.75)
    [again] = reward([dawn], [1])
    assert again["diversity"] == 0.0
    # Dusk is 0.8 similar to the accepted dawn example (0.0 to the reference): 1 - 0.8.
    [dusk] = reward([completion("Birds sing at dusk.", "Birds sing.")], [0])
    assert dusk["diversity"] == pytest.approx(0.2, abs=1e-6)
    assert len(reward.accepted) == 2


def test_regression_accuracy_is_one_minus_relative_error():
    sentence1, sentence2 = "A man plays a guitar.", "A man plays music."
    text = STSB.render({"sentence1": sentence1, "sentence2": sentence2})
    teacher = FakeTeacher({sentence1: [3.5]})  # the teacher's expected score
    reward = RewardFunction(
        STSB, teacher, FakeEncoder({text: [0, 1, 0]}), [], RewardWeights(1.0, 0.0, 0.0)
    )
    [score] = reward([f" {sentence1}\nSentence 2: {sentence2}\n###"], [2.0])
    assert score["accuracy"] == pytest.approx(1 - 1.5 / 5)
    assert score["diversity"] == pytest.approx(1.0)  # nothing to compare with yet
    assert score["total"] == pytest.approx(0.7)


def test_labels_must_match_completions():
    reward, _ = make_reward()
    with pytest.raises(ValueError, match="2 completions but 1 labels"):
        reward(["a", "b"], [0])
