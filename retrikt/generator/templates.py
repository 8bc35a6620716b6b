"""A label-conditioned text format for every task that the code can parse back.

The generator continues a prompt that names the task and the label the example must have,
then writes the task's fields one per line and closes with ``###``::

    Task: CommitmentBank: does the premise commit to the hypothesis?
    Label: contradiction
    Premise: <generated>
    Hypothesis: <generated>
    ###

The prompt ends after the first field's title, so the model starts writing content at
once. Values are single lines (whitespace is collapsed), which makes parsing a line split.
A continuation without the closing marker was cut by the token limit and is unparsable:
``parse_example`` returns ``None`` and the caller counts and drops it, never stores it.
"""

from __future__ import annotations

import re
from typing import Any

from retrikt.tasks import MULTIPLE_CHOICE, Example, Task

END = "###"
MAX_FIELD_CHARS = 2000
_TITLES = {
    "choice1": "Choice 1",
    "choice2": "Choice 2",
    "sentence1": "Sentence 1",
    "sentence2": "Sentence 2",
    "span1_text": "Noun phrase",
    "span2_text": "Pronoun",
}


def field_title(name: str) -> str:
    return _TITLES.get(name, name.replace("_", " ").capitalize())


def label_options(task: Task) -> list[int]:
    """The labels generation can ask for: class indices, or integer score buckets (STS-B)."""
    if task.is_regression:
        low, high = task.label_range or (0.0, 5.0)
        return list(range(int(low), int(high) + 1))
    return list(range(len(task.label_names or ())))


def score_bucket(task: Task, score: float) -> int:
    """The integer bucket a regression score is written as in prompts."""
    low, high = task.label_range or (0.0, 5.0)
    return int(min(max(round(float(score)), low), high))


def label_value(task: Task, label: Any) -> str:
    """The requested label as written in prompts: a name, a choice number, or a score bucket."""
    if task.is_regression:
        return str(score_bucket(task, label))
    index = task.parse_label(label)
    if task.task_type == MULTIPLE_CHOICE:
        return str(index + 1)
    return (task.label_names or ())[index]


def label_line(task: Task, label: Any) -> str:
    """The line that states the requested label (an index, a name, or a score)."""
    value = label_value(task, label)
    if task.is_regression:
        high = int((task.label_range or (0.0, 5.0))[1])
        return f"Similarity: {value} out of {high}"
    return f"{'Correct choice' if task.task_type == MULTIPLE_CHOICE else 'Label'}: {value}"


def generation_prompt(task: Task, label: Any) -> str:
    """What the policy continues: task, requested label (in the task's own template, if it
    has one), and the first field's title."""
    head = (
        task.template.format(description=task.description, label=label_value(task, label))
        if task.template
        else f"Task: {task.description}\n{label_line(task, label)}"
    )
    return f"{head}\n{field_title(task.fields[0])}:"


def format_example(task: Task) -> str:
    """The field layout with placeholders, for instructions to a model without a soft prompt."""
    lines = [f"{field_title(name)}: <{name.replace('_', ' ')}>" for name in task.fields]
    return "\n".join([*lines, END])


def instruction_prompt(task: Task, label: Any, tokenizer: Any) -> str:
    """The plain instruction-prompted baseline: a chat turn that explains the format.

    The assistant turn is opened with the first field's title, so the continuation parses
    with ``parse_example`` exactly as a soft-prompted one does.
    """
    request = (
        f"{task.description}\nWrite one new, realistic example of this task. "
        f"Its answer must be: {label_line(task, label)}.\n"
        f"Use exactly this format, one field per line, then {END} on its own line:\n"
        f"{format_example(task)}"
    )
    messages = [{"role": "user", "content": request}]
    head = (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if getattr(tokenizer, "chat_template", None)
        else request + "\n\n"
    )
    return f"{head}{field_title(task.fields[0])}:"


def _clean(value: Any) -> str:
    return " ".join(str(value).split())


def render_target(task: Task, example: Example) -> str:
    """The continuation of ``generation_prompt`` that writes ``example`` (SFT target)."""
    first, *rest = task.fields
    lines = [f" {_clean(example[first])}"]
    lines += [f"{field_title(name)}: {_clean(example[name])}" for name in rest]
    return "\n".join([*lines, END])


def parse_example(task: Task, text: str, label: Any) -> Example | None:
    """Parse a continuation back into an example with ``label``; ``None`` if malformed.

    Malformed means: no closing ``###`` (cut off), a missing, extra or misnamed field line,
    an empty or overlong value, or a value the task forbids (COPA question not
    cause/effect or identical choices; WSC spans absent from the text).
    """
    body, marker, _ = text.partition(END)
    if not marker:
        return None
    lines = [line.strip() for line in body.strip().split("\n") if line.strip()]
    if len(lines) != len(task.fields):
        return None
    example: Example = {task.fields[0]: lines[0]}
    for name, line in zip(task.fields[1:], lines[1:], strict=True):
        title, colon, value = line.partition(":")
        if not colon or title.strip().lower() != field_title(name).lower():
            return None
        example[name] = value.strip()
    if any(not v or len(v) > MAX_FIELD_CHARS for v in example.values()):
        return None
    if not _task_constraints_hold(task, example):
        return None
    example["idx"] = None
    example["label"] = float(label) if task.is_regression else task.parse_label(label)
    return example


def _task_constraints_hold(task: Task, example: Example) -> bool:
    """Field checks a task needs beyond non-emptiness (adds WSC's span word indices)."""
    for name, values in task.allowed.items():
        example[name] = example[name].lower()
        if example[name] not in values:
            return False
    choices = [example[name].lower() for name in task.choice_fields]
    if len(set(choices)) < len(choices):
        return False
    for span in task.spans:
        index = word_index(example["text"], example[f"{span}_text"])
        if index is None:
            return False
        example[f"{span}_index"] = index
    return True


def word_index(text: str, span: str) -> int | None:
    """Position of ``span``'s first word among ``text``'s words (punctuation/case ignored)."""

    def norm(word: str) -> str:
        return re.sub(r"\W", "", word.lower())

    words, target = [norm(w) for w in text.split()], [norm(w) for w in span.split()]
    for start in range(len(words) - len(target) + 1):
        if target and words[start : start + len(target)] == target:
            return start
    return None
