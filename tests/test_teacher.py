"""The LLM teacher: verbalizer distributions per task type, and its tuned soft prompt."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from retrikt.errors import RetriktError
from retrikt.generator.teacher import (
    LLMTeacher,
    teacher_prompt,
    verbalizer,
    verbalizer_ids,
)
from retrikt.tasks import TASKS, get_task

CB_EXAMPLES = [
    {"premise": "The dog barked all night long.", "hypothesis": "A dog made noise.", "label": 0},
    {"premise": "She never left her home town.", "hypothesis": "She moved away.", "label": 1},
    {"premise": "I think he may come tomorrow.", "hypothesis": "He will come.", "label": 2},
    {
        "premise": "The shop is closed on Sundays.",
        "hypothesis": "The shop opens daily.",
        "label": 1,
    },
]


@pytest.fixture(scope="module")
def teacher():
    return LLMTeacher("smollm2-135m", batch_size=3)


def test_every_task_has_distinct_first_tokens(teacher):
    for task in TASKS.values():
        assert len(set(verbalizer_ids(task, teacher.tokenizer))) == len(verbalizer(task))
    assert verbalizer(get_task("stsb")) == ["0", "1", "2", "3", "4", "5"]


def test_clashing_label_words_are_refused(teacher):
    class Clash:
        name, is_regression, label_words = "x", False, ("yes", "yes")

    with pytest.raises(RetriktError, match="same token"):
        verbalizer_ids(Clash(), teacher.tokenizer)


def test_prompt_shows_the_fields_and_asks_for_the_label_words(teacher):
    prompt = teacher_prompt(get_task("cb"), CB_EXAMPLES[0], teacher.tokenizer)
    assert "Premise: The dog barked all night long." in prompt
    assert "Answer with yes, no or maybe." in prompt
    assert prompt.rstrip().endswith("assistant")  # the answer word is the next token
    rte = teacher_prompt(get_task("rte"), CB_EXAMPLES[0], teacher.tokenizer)
    assert "Does the premise entail the hypothesis? Answer with yes or no." in rte


def test_copa_ranks_the_choices_as_continuations_of_the_premise(teacher):
    copa = get_task("copa")
    glass = {
        "premise": "The glass fell off the table.",
        "question": "effect",
        "choice1": "It shattered on the floor.",
        "choice2": "It sang a song.",
    }
    swapped = {**glass, "choice1": glass["choice2"], "choice2": glass["choice1"]}
    probs = teacher.label_probs(copa, [glass, swapped])
    assert np.allclose(probs[0], probs[1][::-1], atol=1e-2)  # the order of choices is irrelevant
    assert probs[0, 0] > 0.5  # breaking glass, not singing glass


def test_label_probs_shapes_per_task_type(teacher):
    cb = teacher.label_probs(get_task("cb"), CB_EXAMPLES)  # 4 rows in batches of 3
    assert cb.shape == (4, 3) and np.allclose(cb.sum(axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(row, 4)) for row in cb}) > 1  # each row scores its own example
    assert teacher.label_probs(get_task("cb"), []).shape == (0, 3)
    sts = {"sentence1": "A man sings.", "sentence2": "A man is singing."}
    score = teacher.label_probs(get_task("stsb"), [sts])
    assert score.shape == (1, 1) and 0.0 <= score[0, 0] <= 5.0


def test_order_of_scoring_does_not_change_a_rows_distribution(teacher):
    task = get_task("cb")
    forward = teacher.label_probs(task, CB_EXAMPLES)
    backward = teacher.label_probs(task, CB_EXAMPLES[::-1])[::-1]
    assert np.allclose(forward, backward, atol=2e-2)  # bf16 batches differ only by rounding


@pytest.mark.slow
def test_tuned_teacher_prompt_fits_its_training_examples(teacher, tmp_path):
    from retrikt.generator.prompt_tuning import SoftPromptConfig, train_teacher_prompt

    task = get_task("cb")
    config = SoftPromptConfig(steps=6, batch_size=4, num_virtual_tokens=4, lr=5e-2)
    out = train_teacher_prompt("smollm2-135m", task, CB_EXAMPLES, config, tmp_path / "teacher")
    losses = json.loads((out / "training.json").read_text())["losses"]
    assert losses[-1] < losses[0]
    tuned = LLMTeacher("smollm2-135m", adapter_dir=out)
    assert re.fullmatch(r"llm:smollm2-135m\+prompt:[0-9a-f]{12}", tuned.id)
    gold = [ex["label"] for ex in CB_EXAMPLES]
    before = teacher.label_probs(task, CB_EXAMPLES)[np.arange(4), gold].mean()
    after = tuned.label_probs(task, CB_EXAMPLES)[np.arange(4), gold].mean()
    assert after > before


def test_copa_teacher_prompt_trains_through_the_choice_likelihoods(tmp_path):
    from retrikt.generator.prompt_tuning import SoftPromptConfig, train_teacher_prompt

    copa = get_task("copa")
    examples = [
        {
            "premise": "The glass fell.",
            "question": "effect",
            "choice1": "It broke.",
            "choice2": "It sang.",
            "label": 0,
        },
        {
            "premise": "The man was tired.",
            "question": "cause",
            "choice1": "He ate lunch.",
            "choice2": "He ran a marathon.",
            "label": 1,
        },
    ]
    config = SoftPromptConfig(steps=3, batch_size=2, num_virtual_tokens=3, lr=5e-2)
    out = train_teacher_prompt("smollm2-135m", copa, examples, config, tmp_path / "copa")
    losses = json.loads((out / "training.json").read_text())["losses"]
    assert losses[-1] < losses[0]
    probs = LLMTeacher("smollm2-135m", adapter_dir=out).label_probs(copa, examples)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
