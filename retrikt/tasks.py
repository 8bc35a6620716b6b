"""The benchmark tasks: where their files live, how to read them, and how to score them.

An example is a plain ``dict`` holding the task's own field names (as in the official
release), plus ``label`` (an index into ``Task.label_names``, a float for regression, or
``None`` on unlabelled test splits) and ``idx``. Every stage downstream (generator, store,
student, evaluation) speaks in these dicts, so a user's own input for ``predict`` looks
exactly like a line of the official files.

Data comes from a folder laid out as the official releases (``superglue/CB/train.jsonl``,
``glue/MRPC/train.tsv``, ...) given by ``--data-dir`` or ``RETRIKT_DATA``; or, with a
network, from the Hugging Face hub when the source is written ``hub:`` (e.g. ``hub:``
alone uses the task's default hub dataset).

What makes a task special lives on its :class:`Task` and nowhere else: the student's inputs
(``inputs``), the store key (``store_key``), the teacher's question (``question``), fields
limited to a few values (``allowed``), the multiple-choice rules (``choice_fields``,
``connectives``: COPA's "because"/"so"), WSC's spans and nested records. Code downstream asks
the task (``task.head``, ``task.is_multi_answer``) instead of testing its name.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrikt.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
#: A ``--task`` ending so names a user's task spec file instead of a built-in task.
SPEC_SUFFIXES = (".yaml", ".yml", ".json")

#: Kinds of task; they decide the student's head and how inputs are built.
SINGLE, PAIR, MULTIPLE_CHOICE, REGRESSION, MULTI_ANSWER = (
    "single",
    "pair",
    "multiple_choice",
    "regression",
    "multi_answer",
)

#: The student's head for each kind of task (and how neighbours are mixed into it).
CLASSIFICATION, CHOICE, SCORE = "classification", "choice", "regression"

Example = dict[str, Any]
#: One encoder input: a text, or a text pair (second part may be ``None``).
EncoderInput = tuple[str, str | None]
InputBuilder = Callable[[Example], list[EncoderInput]]


@dataclass(frozen=True)
class Task:
    """A benchmark task: its schema, files, label names and official metrics."""

    name: str
    benchmark: str  # "superglue" or "glue"
    folder: str  # folder under <data>/<benchmark>/
    task_type: str
    fields: tuple[str, ...]  # input fields, in the order they are shown to models
    label_names: tuple[str, ...] | None  # None for regression
    metric_names: tuple[str, ...]
    description: str
    hub: tuple[str, str]  # (hub dataset id, config) for the networked code path
    #: GLUE tsv only: column of each field in the header, or its position when headerless.
    columns: dict[str, str | int] = field(default_factory=dict)
    label_column: str | int = "label"
    has_header: bool = True
    #: Natural-language words for each label, used by LLM prompts and generation templates.
    label_words: tuple[str, ...] = ()
    label_range: tuple[float, float] | None = None  # regression only
    #: What the teacher LLM is asked about an example (default: from the description).
    question: str = ""
    #: The student's encoder inputs of an example (default: the first field, paired with the
    #: second when there is one).
    inputs: InputBuilder | None = None
    #: Fields limited to a few values (COPA's question), checked on user input and generation.
    allowed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Multiple choice: the fields holding the choices, and the word joining the context to a
    #: choice for each value of ``question`` (COPA: "because" for a cause, "so" for an effect).
    choice_fields: tuple[str, ...] = ()
    connectives: dict[str, str] = field(default_factory=dict)
    #: Span fields (WSC): ``<span>_text`` must occur in ``text``; ``<span>_index`` is its word.
    spans: tuple[str, ...] = ()
    #: A nested object of the official records whose keys are lifted to the top (WSC's target).
    nested: str | None = None
    #: The generator's prompt head, ``{description}`` and ``{label}`` filled in (default:
    #: ``Task: <description>`` and the label line of ``retrikt.generator.templates``).
    template: str = ""

    # ----------------------------------------------------------------- files
    @property
    def is_regression(self) -> bool:
        return self.task_type == REGRESSION

    @property
    def num_labels(self) -> int:
        """Classes of the head: 1 for regression and for a multiple-choice scorer."""
        if self.task_type in (REGRESSION, MULTIPLE_CHOICE):
            return 1
        return len(self.label_names or ())

    @property
    def head(self) -> str:
        """The student's head: a distribution over labels or choices, or a score."""
        if self.task_type == MULTIPLE_CHOICE:
            return CHOICE
        return SCORE if self.is_regression else CLASSIFICATION

    @property
    def is_multi_answer(self) -> bool:
        """Scored per group of answers (MultiRC's exact match), not per example."""
        return self.task_type == MULTI_ANSWER

    @property
    def teacher_question(self) -> str:
        """What the teacher is asked: ``question``, else the description after its colon."""
        if self.question:
            return self.question
        _, _, question = self.description.partition(": ")
        return question[:1].upper() + question[1:] if question else self.description

    @property
    def num_outputs(self) -> int:
        """Size of the predicted distribution (choices for COPA, classes otherwise)."""
        return 1 if self.is_regression else len(self.label_names or ())

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this task has files for."""
        return SPLITS

    def split_path(self, split: str, data_dir: str | os.PathLike) -> Path:
        ext = "jsonl" if self.benchmark == "superglue" else "tsv"
        stem = {"train": "train", "validation": "val" if ext == "jsonl" else "dev", "test": "test"}
        if split not in stem:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return Path(data_dir) / self.benchmark / self.folder / f"{stem[split]}.{ext}"

    def read(self, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """Read one split as a list of examples; fails with the file and line on bad data."""
        source = resolve_data_source(data_dir)
        if source.startswith("hub:"):
            return self._read_hub(split, source.removeprefix("hub:") or None)
        path = self.split_path(split, source)
        if not path.is_file():
            fmt = (
                "one JSON object per line (SuperGLUE jsonl)"
                if self.benchmark == "superglue"
                else "tab-separated GLUE tsv"
            )
            raise DataError(
                f"{self.name}: no {split} split at {path} (expected {fmt}, laid out as "
                f"<data>/{self.benchmark}/{self.folder}/{path.name})"
            )
        rows = read_jsonl(path) if self.benchmark == "superglue" else self._read_tsv(path)
        labelled = split != "test"  # a training or validation example without a label is a bug
        examples = [self._normalise(raw, f"{path}:{line}", labelled) for line, raw in rows]
        if not examples:
            raise DataError(f"{path} holds no examples: the {self.name} {split} split is empty")
        return examples

    def _read_tsv(self, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataError(f"{byte_position(path, err)}: not UTF-8 text ({err.reason})") from None
        try:
            rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
        except csv.Error as err:
            raise DataError(f"{path}: not a readable TSV file ({err})") from None
        # Headerless files (CoLA train/dev) still have a header in their test split.
        header = rows[0] if rows and (self.has_header or rows[0][:1] == ["index"]) else None
        first = 2 if header else 1
        for line, row in enumerate(rows[1:] if header else rows, start=first):
            if row:
                yield line, self._tsv_row(row, header, f"{path}:{line}", line - first)

    def _tsv_row(
        self, row: list[str], header: list[str] | None, where: str, position: int
    ) -> dict[str, Any]:
        def cell(col: str | int, name: str) -> str | None:
            if header is not None:
                col = name if isinstance(col, int) else col
                if col not in header:
                    return None
                col = header.index(col)
            return row[col] if isinstance(col, int) and col < len(row) else None

        out: dict[str, Any] = {}
        for name, col in self.columns.items():
            value = cell(col, name)
            if value is None:
                raise DataError(f"{where}: missing column {col!r} for field {name!r}")
            out[name] = value
        out["label"] = cell(self.label_column, "label")
        index = cell("index", "index")
        out["idx"] = int(index) if index and index.isdecimal() else position
        return out

    def _read_hub(self, split: str, dataset_id: str | None) -> list[Example]:
        """Networked path: read the split from the hub with ``datasets`` (not reachable offline)."""
        from datasets import load_dataset

        hub_id, config = self.hub
        rows = load_dataset(dataset_id or hub_id, config, split=split)
        where = f"hub:{dataset_id or hub_id}/{config}"
        examples = []
        for row in map(dict, rows):
            if self.is_multi_answer:  # hub MultiRC rows are already one per answer
                row["group"] = (row["idx"]["paragraph"], row["idx"]["question"])
            # Unlabelled hub test rows carry label -1.
            row["label"] = None if row.get("label") == -1 else row.get("label")
            examples.append(self._normalise(row, where, labelled=split != "test"))
        return examples

    # ------------------------------------------------------------ normalising
    def _normalise(self, raw: dict[str, Any], where: str, labelled: bool = False) -> Example:
        if self.nested is not None and self.nested in raw:
            if not isinstance(raw[self.nested], dict):
                raise DataError(f"{where}: {self.nested!r} must be an object")
            raw = {**raw, **raw.pop(self.nested)}
        missing = [f for f in self.fields if f not in raw]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)} for task {self.name}")
        for name in self.fields:
            if not isinstance(raw[name], str):
                kind = "null" if raw[name] is None else type(raw[name]).__name__
                raise DataError(f"{where}: field {name!r} must be a string, got {kind}")
        example: Example = {f: raw[f] for f in self.fields}
        for extra in ("span1_index", "span2_index", "start1", "end1", "start2", "end2", "group"):
            if extra in raw:
                example[extra] = raw[extra]
        example["idx"] = raw.get("idx")
        example["label"] = self.parse_label(raw.get("label"), where)
        if labelled and example["label"] is None:
            raise DataError(
                f"{where}: no label, but every training and validation example needs one"
            )
        return example

    def parse_label(self, value: Any, where: str = "input") -> int | float | None:
        """Turn a label as written in any official file (name, index, bool, score) into ours."""
        if value is None or value == "":
            return None
        if self.is_regression:
            try:
                score = float(value)
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"{where}: label {value!r} is not a number") from None
            return score
        names = self.label_names or ()
        if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
            value = int(value)  # JSON Schema counts 1.0 as an integer too
        if isinstance(value, str) and value in names:
            return names.index(value)
        if isinstance(value, str) and value.lstrip("-").isdecimal():
            value = int(value)
        if isinstance(value, int) and 0 <= value < len(names):
            return value
        raise DataError(
            f"{where}: unknown label {value!r} for task {self.name} "
            f"(expected one of {', '.join(names)} or their index)"
        )

    # --------------------------------------------------------------- inputs
    def parse_input(self, item: Any, where: str = "input", max_chars: int = 20_000) -> Example:
        """Check a user's input for prediction and turn it into an example.

        Accepts a dict in the task's field names, a plain string (single-text tasks), or a
        list of strings in field order (e.g. a text pair). Raises DataError saying exactly
        what is wrong, so the CLI and the HTTP server can answer with it.
        """
        if isinstance(item, str):
            item = [item]
        if isinstance(item, list | tuple):
            if len(item) != len(self.fields):
                raise DataError(
                    f"{where}: {self.name} needs {len(self.fields)} text(s) "
                    f"({', '.join(self.fields)}), got {len(item)}"
                )
            item = dict(zip(self.fields, item, strict=True))
        if not isinstance(item, dict):
            raise DataError(
                f"{where}: expected an object with fields {', '.join(self.fields)}, "
                f"got {type(item).__name__}"
            )
        example: Example = {}
        for name in self.fields:
            if name not in item:
                raise DataError(f"{where}: missing field {name!r} (task {self.name} needs "
                                f"{', '.join(self.fields)})")  # fmt: skip
            value = item[name]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: field {name!r} must be a string, got {type(value).__name__}"
                )
            if not value.strip():
                raise DataError(f"{where}: field {name!r} is empty")
            # JSON can smuggle in lone surrogates ("\\ud800"), which no tokenizer can encode.
            if not value.isascii() and _has_lone_surrogate(value):
                raise DataError(f"{where}: field {name!r} is not valid Unicode (lone surrogate)")
            if len(value) > max_chars:
                raise DataError(
                    f"{where}: field {name!r} has {len(value)} characters (max {max_chars})"
                )
            example[name] = value
        for name, values in self.allowed.items():
            if example[name] not in values:
                raise DataError(f"{where}: field {name!r} must be {' or '.join(map(repr, values))}")
        example["idx"] = item.get("idx")
        example["label"] = self.parse_label(item.get("label"), where)
        return example

    def encoder_inputs(self, example: Example) -> list[EncoderInput]:
        """What the student encodes: one (text, pair) per choice for COPA, else exactly one."""
        if self.inputs is not None:
            return self.inputs(example)
        if self.choice_fields:
            context = f"{example['premise']} {self.connective(example)}"
            return [(context, example[name]) for name in self.choice_fields]
        pair = example[self.fields[1]] if len(self.fields) > 1 else None
        return [(example[self.fields[0]], pair)]

    def choice_context(self, example: Example) -> str:
        """Multiple choice: the open sentence the teacher LLM ends with each choice."""
        return f"{example['premise'].strip().rstrip('.!?')} {self.connective(example)}"

    def connective(self, example: Example) -> str:
        """The word joining a multiple-choice context to its choices ("because", "so")."""
        return self.connectives[example["question"]]

    def store_key(self, example: Example) -> EncoderInput:
        """What a store entry of ``example`` is found by: its first encoder input, or for a
        multiple-choice task its context alone (a new question shares its situation with a
        stored one, not its choices)."""
        text, pair = self.encoder_inputs(example)[0]
        return (text, None) if self.choice_fields else (text, pair)

    def render(self, example: Example) -> str:
        """One readable line for logs, stores and explanations: ``field: value | ...``."""
        return " | ".join(f"{name}: {example[name]}" for name in self.fields)

    def label_name(self, label: int | float | None) -> str:
        if label is None:
            return "?"
        if self.is_regression:
            return f"{float(label):.2f}"
        return (self.label_names or ())[int(label)]

    # ---------------------------------------------------------------- metrics
    def evaluate(self, preds: list, examples: list[Example]) -> dict[str, float]:
        """The task's official metrics of ``preds`` against the examples' gold labels."""
        # Imported here: scikit-learn and scipy take ~1.7 s to import, and every CLI command
        # (even ``retrikt --help``) loads the task registry.
        from retrikt import metrics

        golds = [ex["label"] for ex in examples]
        if any(g is None for g in golds):
            raise DataError(f"{self.name}: cannot score a split without gold labels")
        groups = [ex.get("group") for ex in examples] if self.is_multi_answer else None
        return metrics.compute(self.metric_names, preds, golds, groups)

    def predictions(self, outputs: Any) -> list:
        """What :meth:`evaluate` scores, from a model's ``(n, num_outputs)`` array: the
        argmax class or choice, or the score column for regression."""
        if self.is_regression:
            return [float(p) for p in outputs[:, 0]]
        return [int(i) for i in outputs.argmax(-1)]

    def describe_split(self, examples: list[Example]) -> dict[str, Any]:
        """Size and label distribution, for ``retrikt inspect-data``."""
        labels = [ex["label"] for ex in examples if ex["label"] is not None]
        info: dict[str, Any] = {"examples": len(examples), "labelled": len(labels)}
        if self.is_regression and labels:
            info["label_mean"] = round(sum(labels) / len(labels), 3)
            info["label_min"], info["label_max"] = min(labels), max(labels)
        elif labels:
            info["labels"] = self.label_counts(labels)
        return info

    def label_counts(self, labels: list[int]) -> dict[str, int]:
        """How often each class occurs in ``labels``, by name: a split's gold labels, or a
        model's predictions (one class alone means it has collapsed to it)."""
        counts = Counter(labels)
        return {self.label_name(k): counts[k] for k in sorted(counts)}


def byte_position(path: Path, err: UnicodeDecodeError) -> str:
    """``path:line`` of the byte a decoder choked on."""
    line = err.object[: err.start].count(b"\n") + 1
    return f"{path}:{line}"


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line, record); MultiRC's nested passages become one row per answer."""
    with path.open("rb") as fh:
        for line, data in enumerate(fh, start=1):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column "
                    f"{err.start + 1})"
                ) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{line}: JSON nested too deeply") from None
            if not isinstance(record, dict):
                kind = type(record).__name__
                raise DataError(f"{path}:{line}: expected a JSON object, got {kind}")
            if "passage" in record and isinstance(record["passage"], dict):
                yield from ((line, row) for row in _flatten_multirc(record, f"{path}:{line}"))
            else:
                yield line, record


def _flatten_multirc(record: dict[str, Any], where: str) -> Iterator[dict[str, Any]]:
    try:
        passage = record["passage"]
        for question in passage["questions"]:
            for answer in question["answers"]:
                yield {
                    "paragraph": passage["text"],
                    "question": question["question"],
                    "answer": answer["text"],
                    "label": answer.get("label"),
                    "idx": {
                        "paragraph": record["idx"],
                        "question": question["idx"],
                        "answer": answer["idx"],
                    },
                    "group": (record["idx"], question["idx"]),
                }
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where}: malformed MultiRC record ({type(err).__name__}: {err})"
        ) from None


def split_heldout(
    task: Task, examples: list[Example], fraction: float, seed: int, setting: str
) -> tuple[list[Example], list[Example]]:
    """(rest, held): a seeded slice of the examples (at least one), stratified by label for
    classification so that a rare class (CB's neutral) is not left out of it."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        key = None if task.is_regression else ex["label"]
        groups.setdefault(key, []).append(i)
    held: set[int] = set()
    for members in groups.values():
        held.update(rng.sample(members, round(len(members) * fraction)))
    if not held:
        held.add(rng.randrange(len(examples)))
    if len(held) == len(examples):
        raise ConfigError(f"{setting} {fraction} leaves no example to train on")
    rest = [ex for i, ex in enumerate(examples) if i not in held]
    return rest, [examples[i] for i in sorted(held)]


def resolve_data_source(data_dir: str | os.PathLike | None) -> str:
    """``--data-dir`` if given, else ``RETRIKT_DATA``; a clear error when neither is set."""
    source = data_dir if data_dir is not None else os.environ.get("RETRIKT_DATA")
    if not source:
        raise DataError(
            "no data folder given: pass --data-dir DIR (the folder holding superglue/ and glue/) "
            "or set RETRIKT_DATA; with a network, 'hub:' reads from the Hugging Face hub"
        )
    source = str(source)
    if not source.startswith("hub:") and not Path(source).is_dir():
        raise DataError(f"data folder {source} does not exist")
    return source


_SG = "aps/super_glue"
_GLUE = "nyu-mll/glue"

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "cb", "superglue", "CB", PAIR, ("premise", "hypothesis"),
            ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"),
            "CommitmentBank: does the premise commit to the hypothesis?", (_SG, "cb"),
            label_words=("yes", "no", "maybe"),
        ),
        Task(
            "copa", "superglue", "COPA", MULTIPLE_CHOICE,
            ("premise", "question", "choice1", "choice2"), ("choice1", "choice2"),
            ("accuracy",), "Choice of Plausible Alternatives: pick the cause or effect.",
            (_SG, "copa"), label_words=("1", "2"), allowed={"question": ("cause", "effect")},
            choice_fields=("choice1", "choice2"),
            connectives={"cause": "because", "effect": "so"},
        ),
        Task(
            "rte", "superglue", "RTE", PAIR, ("premise", "hypothesis"),
            ("entailment", "not_entailment"), ("accuracy",),
            "Recognising Textual Entailment (SuperGLUE release).", (_SG, "rte"),
            label_words=("yes", "no"), question="Does the premise entail the hypothesis?",
        ),
        Task(
            "wic", "superglue", "WiC", PAIR, ("word", "sentence1", "sentence2"),
            ("False", "True"), ("accuracy",),
            "Words in Context: is the word used in the same sense in both sentences?",
            (_SG, "wic"), label_words=("no", "yes"),
            inputs=lambda f: [(f"{f['word']}: {f['sentence1']}", f["sentence2"])],
        ),
        Task(
            "wsc", "superglue", "WSC", PAIR, ("text", "span1_text", "span2_text"),
            ("False", "True"), ("accuracy",),
            "Winograd Schema: does the pronoun (span2) refer to the noun phrase (span1)?",
            (_SG, "wsc.fixed"), label_words=("no", "yes"), spans=("span1", "span2"),
            nested="target",
            inputs=lambda f: [
                (f["text"], f"Does '{f['span2_text']}' refer to '{f['span1_text']}'?")
            ],
        ),
        Task(
            "boolq", "superglue", "BoolQ", PAIR, ("question", "passage"), ("False", "True"),
            ("accuracy",), "Boolean Questions: answer a yes/no question about a passage.",
            (_SG, "boolq"), label_words=("no", "yes"),
            question="Based on the passage, is the answer to the question yes or no?",
        ),
        Task(
            "multirc", "superglue", "MultiRC", MULTI_ANSWER,
            ("paragraph", "question", "answer"), ("False", "True"), ("f1a", "exact_match"),
            "Multi-Sentence Reading Comprehension: is each candidate answer correct?",
            (_SG, "multirc"), label_words=("no", "yes"), question="Is the answer correct?",
            inputs=lambda f: [(f["paragraph"], f"{f['question']} {f['answer']}")],
        ),
        Task(
            "mrpc", "glue", "MRPC", PAIR, ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"), ("f1", "accuracy"),
            "Microsoft Research Paraphrase Corpus: are the sentences paraphrases?",
            (_GLUE, "mrpc"), columns={"sentence1": "#1 String", "sentence2": "#2 String"},
            label_column="Quality", label_words=("no", "yes"),
        ),
        Task(
            "cola", "glue", "CoLA", SINGLE, ("sentence",), ("unacceptable", "acceptable"),
            ("mcc",), "Corpus of Linguistic Acceptability: is the sentence grammatical?",
            (_GLUE, "cola"), columns={"sentence": 3}, label_column=1, has_header=False,
            label_words=("no", "yes"),
        ),
        Task(
            "stsb", "glue", "STS-B", REGRESSION, ("sentence1", "sentence2"), None,
            ("pearson", "spearman"), "Semantic Textual Similarity: a score from 0 to 5.",
            (_GLUE, "stsb"), columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            label_column="score", label_range=(0.0, 5.0),
            question="How similar in meaning are the two sentences, from 0 (unrelated) to 5 "
            "(same)?",
        ),
        Task(
            "glue-rte", "glue", "RTE", PAIR, ("sentence1", "sentence2"),
            ("entailment", "not_entailment"), ("accuracy",),
            "Recognising Textual Entailment (GLUE release).", (_GLUE, "rte"),
            columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            label_words=("yes", "no"), question="Does the first sentence entail the second?",
        ),
        Task(
            "sst2", "glue", "SST-2", SINGLE, ("sentence",), ("negative", "positive"),
            ("accuracy",), "Stanford Sentiment Treebank: is the sentence positive?",
            (_GLUE, "sst2"), columns={"sentence": "sentence"},
            label_words=("negative", "positive"),
            question="Is the sentiment of the sentence negative or positive?",
        ),
    ]
}  # fmt: skip


def get_task(name: str) -> Task:
    """A built-in task by name (case-insensitive; ``sts-b``/``sst-2`` spellings accepted), or
    a user's task from its spec file (``tickets.yaml``, see :mod:`retrikt.user_task`)."""
    if Path(name).suffix.lower() in SPEC_SUFFIXES:
        from retrikt.user_task import load_task

        return load_task(name)
    key = name.lower().replace("sts-b", "stsb").replace("sst-2", "sst2")
    if key not in TASKS:
        raise DataError(
            f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, or a task spec file "
            "(.yaml/.json, written by 'retrikt task init')"
        )
    return TASKS[key]
