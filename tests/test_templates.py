"""The generation template round-trips every task type and rejects malformed output."""

from __future__ import annotations

import pytest

from retrikt.generator.templates import (
    END,
    field_title,
    generation_prompt,
    instruction_prompt,
    label_line,
    label_options,
    parse_example,
    render_target,
)
from retrikt.tasks import TASKS, get_task

# One hand-written example per task, in the task's own field names.
EXAMPLES = {
    "cb": {"premise": "It rained all day.  The streets\nwere wet.", "hypothesis": "It rained."},
    "rte": {"premise": "Paris is the capital of France.", "hypothesis": "Paris is in France."},
    "glue-rte": {"sentence1": "A cat sat on the mat.", "sentence2": "A cat sat."},
    "copa": {
        "premise": "The man broke his toe.",
        "question": "cause",
        "choice1": "He dropped a hammer on his foot.",
        "choice2": "He got a hole in his sock.",
    },
    "wic": {"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank lent."},
    "wsc": {
        "text": "Mark told Pete many lies about himself, which Pete included in his book.",
        "span1_text": "Pete",
        "span2_text": "his",
    },
    "boolq": {"question": "is the sky blue", "passage": "The sky appears blue by day."},
    "multirc": {"paragraph": "Sam fed the dog.", "question": "Who fed it?", "answer": "Sam"},
    "mrpc": {"sentence1": "He left early.", "sentence2": "He departed early."},
    "cola": {"sentence": "The book was read by her."},
    "sst2": {"sentence": "a warm , funny film"},
    "stsb": {"sentence1": "A man plays guitar.", "sentence2": "A man is playing a guitar."},
}


def test_every_task_has_an_example():
    assert set(EXAMPLES) == set(TASKS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_round_trip_every_task(name):
    task = get_task(name)
    for label in label_options(task):
        example = {**EXAMPLES[name], "label": float(label) if task.is_regression else label}
        prompt = generation_prompt(task, label)
        assert prompt.endswith(f"\n{field_title(task.fields[0])}:")
        assert label_line(task, label) in prompt
        parsed = parse_example(task, render_target(task, example), label)
        assert parsed is not None
        for field in task.fields:
            assert parsed[field] == " ".join(EXAMPLES[name][field].split())
        assert parsed["label"] == example["label"]


def test_wsc_spans_get_word_indices():
    task = get_task("wsc")
    parsed = parse_example(task, render_target(task, EXAMPLES["wsc"]), 1)
    words = EXAMPLES["wsc"]["text"].split()
    assert words[parsed["span1_index"]] == "Pete"
    assert words[parsed["span2_index"]] == "his"


def test_regression_label_is_a_bucket_in_the_prompt_and_a_float_in_the_example():
    task = get_task("stsb")
    assert label_options(task) == [0, 1, 2, 3, 4, 5]
    assert "Similarity: 4 out of 5" in generation_prompt(task, 3.6)
    parsed = parse_example(task, render_target(task, EXAMPLES["stsb"]), 4)
    assert parsed["label"] == 4.0 and isinstance(parsed["label"], float)


def test_copa_prompt_names_the_correct_choice():
    task = get_task("copa")
    assert "Correct choice: 2" in generation_prompt(task, 1)
    assert "Correct choice: 1" in generation_prompt(task, "choice1")


@pytest.mark.parametrize(
    "name, text",
    [
        ("cb", " A premise.\nHypothesis: cut off by the token lim"),  # no closing marker
        ("cb", f" A premise.\n{END}"),  # a field is missing
        ("cb", f" A premise.\nHypothesis: x\nHypothesis: y\n{END}"),  # one field too many
        ("cb", f" A premise.\nConclusion: x\n{END}"),  # misnamed field
        ("cb", f" \nHypothesis: x\n{END}"),  # empty first field
        ("cb", f" {'long ' * 500}\nHypothesis: x\n{END}"),  # overlong field
        ("copa", f" P.\nQuestion: why\nChoice 1: a\nChoice 2: b\n{END}"),  # not cause/effect
        ("copa", f" P.\nQuestion: effect\nChoice 1: Same.\nChoice 2: same.\n{END}"),  # same
        ("wsc", f" Ann met Bo.\nNoun phrase: Cy\nPronoun: she\n{END}"),  # spans not in text
    ],
)
def test_malformed_output_is_unparsable(name, text):
    task = get_task(name)
    assert parse_example(task, text, task.label_names[0] if task.label_names else 3) is None


def test_text_after_the_marker_is_ignored_and_case_of_titles_is_not_checked():
    task = get_task("rte")
    text = f" P.\nhypothesis: H.\n{END}\nTask: something else the model went on with"
    assert parse_example(task, text, "entailment")["hypothesis"] == "H."


class _PlainTokenizer:
    chat_template = None


class _ChatTokenizer:
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_instruction_prompt_explains_the_format_and_opens_the_first_field():
    task = get_task("cb")
    for tokenizer in (_PlainTokenizer(), _ChatTokenizer()):
        prompt = instruction_prompt(task, 1, tokenizer)
        assert "Label: contradiction" in prompt
        assert "Hypothesis: <hypothesis>" in prompt
        assert prompt.endswith("Premise:")
    assert "<assistant>Premise:" in instruction_prompt(task, 1, _ChatTokenizer())
