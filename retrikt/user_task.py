"""A task from a user's own files: tickets to route, reviews to score, questions to match.

A :class:`TaskSpec` (YAML or JSON, written by ``retrikt task init`` or by hand) names the
files (CSV, TSV, JSONL, Parquet, or ``hub:DATASET[:CONFIG][@SPLIT]`` with a network), the
columns, and what the built-in tasks hard-code: label names and words, metrics, the teacher's
question and the generation template. Whatever it leaves out is inferred from the training
file and logged (:meth:`TaskSpec.complete`); what cannot be inferred is an error that says
which flag or key to add. :meth:`TaskSpec.build` makes a :class:`UserTask`, a
:class:`~retrikt.tasks.Task` like the built-ins, so ``retrikt.tasks.get_task`` resolves
``--task tickets.yaml`` as it resolves ``--task cb`` and no command special-cases it. Saved
students and teachers keep the spec (:func:`saved_spec`) and rebuild their task from it
(:func:`restore_task`) without the data files.

Bad data fails with the file, line (or Parquet row) and field: a column the spec names but
the file lacks, a validation label training does not have, a label column mixing numbers
and text, a duplicate id, a regression score outside the label range, an empty split.

Example::

    spec = TaskSpec(train="tickets.csv", text_field="body", label_field="queue",
                    val_fraction=0.2)
    task = spec.complete().build()   # logs the inferred labels, majority class and lengths
    task.read("validation")          # a seeded, stratified fifth of tickets.csv

Relations: :func:`retrikt.tasks.get_task` loads a spec file through :func:`load_task`;
``retrikt task init`` (:mod:`retrikt.cli.task`) writes one.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retrikt.config import Config, option
from retrikt.errors import ConfigError, DataError
from retrikt.tasks import (
    MULTIPLE_CHOICE,
    PAIR,
    REGRESSION,
    SINGLE,
    SPLITS,
    TASKS,
    EncoderInput,
    Example,
    Task,
    byte_position,
    get_task,
    read_jsonl,
    split_heldout,
)

logger = logging.getLogger(__name__)

#: What the label is, as users say it (``--task-type``).
CLASSIFICATION_TYPE, REGRESSION_TYPE, CHOICE_TYPE = (
    "classification",
    "regression",
    "multiple-choice",
)
TASK_TYPES = (CLASSIFICATION_TYPE, REGRESSION_TYPE, CHOICE_TYPE)
#: File formats by suffix (anything else is refused with this list).
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": "jsonl", ".parquet": "parquet"}
HUB = "hub:"
#: A numeric label column with at most this many distinct whole numbers is a set of classes.
MAX_INFERRED_CLASSES = 20
#: Metrics a user task may ask for, by task type (MultiRC's need question groups).
ALLOWED_METRICS = {
    CLASSIFICATION_TYPE: ("accuracy", "macro_f1", "f1", "mcc"),
    REGRESSION_TYPE: ("pearson", "spearman"),
    CHOICE_TYPE: ("accuracy",),
}
DEFAULT_METRICS = {
    CLASSIFICATION_TYPE: ["accuracy", "macro_f1"],
    REGRESSION_TYPE: ["pearson", "spearman"],
    CHOICE_TYPE: ["accuracy"],
}
#: The generator's prompt head by task type; ``{label}`` is the requested label.
DEFAULT_TEMPLATES = {
    CLASSIFICATION_TYPE: "Task: {description}\nLabel: {label}",
    REGRESSION_TYPE: "Task: {description}\nScore: {label}",
    CHOICE_TYPE: "Task: {description}\nCorrect choice: {label}",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class TaskSpec(Config):
    """Everything that defines a user's task; a YAML or JSON file holds one.

    The flags of ``retrikt task init`` are generated from the fields that have one; the
    others (label names, metrics, texts for the LLM) are inferred and can be edited in the
    written file.
    """

    train: str = option(
        None, "training file: .csv, .tsv, .jsonl or .parquet, or hub:DATASET[:CONFIG][@SPLIT]"
    )
    validation: str | None = option(None, "validation file (else give --val-fraction)")
    test: str | None = option(None, "test file, labelled or not (optional)")
    name: str | None = option(None, "task name (default: the spec file's name)")
    text_field: str | None = option(
        None, "column of the text (default: the only text column besides label and id)"
    )
    pair_field: str | None = option(None, "column of the second text of a pair")
    label_field: str = option("label", "column of the label")
    id_field: str | None = option(
        None, "column of unique ids (default: 'id' or 'idx' when the file has one)"
    )
    task_type: str | None = option(
        None,
        "what the label is (default: inferred: text or a few whole numbers are classes, "
        "other numbers are scores)",
        choices=TASK_TYPES,
    )
    val_fraction: float | None = option(
        None,
        "without a validation file: carve this share of train out as validation (seeded, "
        "stratified by label)",
        min=0.01,
        below=1,
    )
    seed: int = option(0, "seed of --val-fraction's split")
    choice_fields: list[str] | None = option(
        None, "multiple choice: the columns holding the choices, comma-separated"
    )
    label_names: list[str] | None = option(
        None, "the classes, in the head's order (default: train's values, sorted)", cli=False
    )
    label_words: list[str] | None = option(
        None, "one word per label for the LLM's prompts (default: the names)", cli=False
    )
    label_range: list[float] | None = option(
        None, "regression: [low, high] (default: train's min and max)", cli=False
    )
    metrics: list[str] | None = option(
        None,
        "metrics to report, comma-separated (default: accuracy,macro_f1 for classes, "
        "pearson,spearman for scores, accuracy for choices)",
    )
    description: str | None = option(None, "one line saying what the task is", cli=False)
    question: str | None = option(None, "what the teacher LLM is asked", cli=False)
    template: str | None = option(
        None, "the generator's prompt head: {description} and {label} are filled in", cli=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("choice_fields", "metrics"):  # a flag gives them as "a,b"
            if isinstance(value := getattr(self, name), str):
                setattr(self, name, [part.strip() for part in value.split(",") if part.strip()])
        if self.name is not None and (not _NAME.fullmatch(self.name) or self.name in TASKS):
            raise ConfigError(
                f"task name {self.name!r} must be letters, digits, '-', '_' or '.' and not a "
                f"built-in task ({', '.join(TASKS)})"
            )
        if self.validation and self.val_fraction:
            raise ConfigError("give either a validation file or val_fraction, not both")
        if self.label_names is not None:
            self.label_names = [_label_text(v) for v in self.label_names]
            if len(set(self.label_names)) != len(self.label_names):
                raise ConfigError(f"label_names {self.label_names} repeat a name")
        words, names = self.label_words, self.label_names
        if words is not None and names is not None and len(words) != len(names):
            raise ConfigError(f"label_words {words} must give one word per label ({names})")
        if self.label_range is not None:
            low, high = _range(self.label_range)
            self.label_range = [low, high]
        if self.choice_fields is not None and (
            self.task_type not in (None, CHOICE_TYPE)
            or len(self.choice_fields) < 2
            or self.pair_field
        ):
            raise ConfigError(
                "choice_fields needs task_type multiple-choice, at least 2 columns and no "
                "pair_field"
            )
        if self.metrics is not None and self.task_type is not None:
            allowed = ALLOWED_METRICS[self.task_type]
            wrong = [m for m in self.metrics if m not in allowed]
            if wrong or not self.metrics:
                raise ConfigError(
                    f"metrics {wrong or '[]'} do not fit a {self.task_type} task; choose from "
                    f"{', '.join(allowed)}"
                )
        if self.template is not None:
            try:
                self.template.format(description="", label="")
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(
                    f"template {self.template!r} may only use {{description}} and {{label}} "
                    f"({type(err).__name__}: {err})"
                ) from None

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskSpec:
        """Read a spec file; relative data paths are relative to the spec's folder."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"task spec {path} does not exist (write one: retrikt task init)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: not a readable YAML/JSON task spec ({err})") from None
        try:
            spec = cls.from_dict(data if data is not None else {}, str(path))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        folder = path.parent
        sources = {
            split: str((folder / source).resolve())
            for split in SPLITS
            if (source := getattr(spec, split)) and not _is_hub(source)
        }
        return replace(spec, name=spec.name or name_from(path), **sources)

    def save(self, path: str | os.PathLike) -> None:
        """Write the spec as YAML (or JSON for ``.json``) in one rename, paths made relative."""
        import json

        import yaml

        from retrikt.store.files import write_atomic

        path = Path(path)
        data = self.to_dict()
        for split in SPLITS:
            source = data[split]
            if source and not _is_hub(source):
                data[split] = os.path.relpath(Path(source).resolve(), path.parent.resolve())
        if path.suffix.lower() == ".json":
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        else:
            head = (
                "# A RetriKT task spec (written by `retrikt task init`). Edit label_words, "
                "question,\n# description and template to change what the LLM reads; use it "
                "as --task FILE.\n"
            )
            text = head + yaml.dump(
                data, Dumper=_yaml_dumper(), sort_keys=False, allow_unicode=True, width=100
            )
        write_atomic(path, text)

    # -------------------------------------------------------------- inference
    def complete(self) -> TaskSpec:
        """This spec with every missing setting inferred from the training file (and logged)."""
        if not self.train:
            raise ConfigError("no training file: add --train FILE (or train: in the spec)")
        records = read_records(self.train, "train")
        if not records:
            raise DataError(f"{self.train} holds no rows: the train split is empty")
        if not self.validation and not self.val_fraction:
            raise DataError(
                f"only a training split: add --validation FILE, or --val-fraction 0.2 to carve "
                f"a seeded, stratified validation split out of {self.train}"
            )
        where, first = records[0]
        inferred: dict[str, Any] = {}
        if self.name is None:
            inferred["name"] = name_from(Path(self.train.removeprefix(HUB).split("@")[0]))
        if self.label_field not in first:
            raise DataError(
                f"{where}: no column {self.label_field!r} for the label (columns: "
                f"{', '.join(first)}); add --label-field COLUMN"
            )
        if self.id_field is None and (found := [c for c in ("id", "idx") if c in first]):
            inferred["id_field"] = found[0]
        spec = replace(self, **inferred)
        if spec.text_field is None:
            inferred["text_field"] = spec._infer_text_field(where, first)
            spec = replace(spec, text_field=inferred["text_field"])
        for name in (spec.text_field, spec.pair_field, *(spec.choice_fields or ())):
            if name is not None and name not in first:
                raise DataError(
                    f"{where}: no column {name!r} (columns: {', '.join(first)}); fix the "
                    "field's flag or key in the spec"
                )
        column = spec.label_field
        labels = [(w, r[column]) for w, r in records if r.get(column) not in ("", None)]
        inferred |= spec._infer_labels(labels)
        spec = replace(spec, **inferred)
        type_ = spec.task_type
        words = spec.label_words or spec.label_names
        defaults = {
            "metrics": list(DEFAULT_METRICS[type_]),
            "question": spec._default_question(words),
            "template": DEFAULT_TEMPLATES[type_],
        }
        inferred |= {k: v for k, v in defaults.items() if getattr(spec, k) is None}
        spec = replace(spec, **inferred)
        if spec.description is None:
            inferred["description"] = spec._default_description(words)
            spec = replace(spec, description=inferred["description"])
        for key, value in inferred.items():
            logger.info("%s: inferred %s = %r", spec.name, key, value)
        spec._log_lengths(records)
        return spec

    def _infer_text_field(self, where: str, first: dict[str, Any]) -> str:
        taken = {self.label_field, self.id_field, self.pair_field, *(self.choice_fields or ())}
        texts = [c for c, v in first.items() if c not in taken and isinstance(v, str)]
        if len(texts) != 1:
            raise DataError(
                f"{where}: cannot tell which column holds the text (text columns: "
                f"{', '.join(texts) or 'none'}); add --text-field COLUMN (and --pair-field "
                "COLUMN for pairs of texts)"
            )
        return texts[0]

    def _infer_labels(self, labels: list[tuple[str, Any]]) -> dict[str, Any]:
        """Task type, label names or range from train's labels, checking their kinds."""
        if self.choice_fields:
            return {"task_type": CHOICE_TYPE, "label_names": list(self.choice_fields)}
        if not labels:
            raise DataError(f"{self.train}: no row has a label in column {self.label_field!r}")
        numbers = [(w, v) for w, v in labels if _as_number(v) is not None]
        texts = [(w, v) for w, v in labels if _as_number(v) is None]
        if numbers and texts:
            (w1, v1), (w2, v2) = numbers[0], texts[0]
            raise DataError(
                f"{w2}: field {self.label_field!r} holds text {v2!r} but {w1} holds the number "
                f"{v1!r}: a label column holds one kind (fix the row, or quote every label as "
                "a class name)"
            )
        values = [_as_number(v) for _, v in numbers]
        task_type = self.task_type
        if task_type is None:
            classes = len(set(values)) <= MAX_INFERRED_CLASSES
            task_type = (
                CLASSIFICATION_TYPE
                if texts or (classes and all(float(v).is_integer() for v in values))
                else REGRESSION_TYPE
            )
        inferred: dict[str, Any] = {"task_type": task_type} if self.task_type is None else {}
        if task_type == CHOICE_TYPE:
            raise ConfigError("a multiple-choice task needs choice_fields: the choice columns")
        if task_type == REGRESSION_TYPE:
            if texts:
                where, value = texts[0]
                raise DataError(
                    f"{where}: field {self.label_field!r} holds {value!r}, not a number, but "
                    "the task is a regression"
                )
            if self.label_range is None:
                inferred["label_range"] = [min(values), max(values)]
                logger.info(
                    "%s: scores from %g to %g (mean %.3g); validation scores outside that "
                    "range are an error (set label_range in the spec to widen it)",
                    self.name, min(values), max(values), sum(values) / len(values),
                )  # fmt: skip
            return inferred
        counts = Counter(_label_text(v) for _, v in labels)
        if self.label_names is None:
            key = (lambda s: (float(s), s)) if not texts else None
            inferred["label_names"] = sorted(counts, key=key)
        names = self.label_names or inferred["label_names"]
        if len(names) < 2:
            raise DataError(
                f"{self.train}: every label is {names[0]!r}; a classifier needs at least two"
            )
        majority, count = counts.most_common(1)[0]
        logger.info(
            "%s: %d classes, %s; majority class %r (%.1f%% of train: the score of always "
            "answering it)",
            self.name, len(names), ", ".join(f"{n} {counts[n]}" for n in names), majority,
            100 * count / len(labels),
        )  # fmt: skip
        return inferred

    def _default_description(self, words: list[str] | None) -> str:
        about = _title(self.text_field)
        if self.pair_field:
            about = f"pair of {about} and {_title(self.pair_field)}"
        if self.task_type == REGRESSION_TYPE:
            low, high = _range(self.label_range or [0, 1])
            return f"Score each {about} from {low:g} to {high:g}."
        if self.task_type == CHOICE_TYPE:
            return f"Pick the choice that fits each {about}."
        return f"Classify each {about} as {' or '.join(words or ())}."

    def _default_question(self, words: list[str] | None) -> str:
        about = f"the {_title(self.text_field)}"
        if self.pair_field:
            about += f" and the {_title(self.pair_field)}"
        if self.task_type == REGRESSION_TYPE:
            low, high = _range(self.label_range or [0, 1])
            return f"What score from {low:g} to {high:g} fits {about}?"
        if self.task_type == CHOICE_TYPE:
            return f"Which choice fits {about} best?"
        return f"Which label fits {about}: {', '.join(words or ())}?"

    def _log_lengths(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        for name in (self.text_field, self.pair_field, *(self.choice_fields or ())):
            if name is None:
                continue
            lengths = [len(str(r.get(name) or "").split()) for _, r in records]
            logger.info(
                "%s: column %r has %.1f words on average (longest %d) over %d training rows",
                self.name, name, sum(lengths) / len(lengths), max(lengths), len(records),
            )  # fmt: skip

    # ---------------------------------------------------------------- the task
    def build(self) -> UserTask:
        """The task of a complete spec (see :meth:`complete`)."""
        missing = [
            key
            for key in (
                "name",
                "text_field",
                "task_type",
                "metrics",
                "description",
                "question",
                "template",
            )
            if getattr(self, key) is None
        ]
        if self.task_type in (CLASSIFICATION_TYPE, CHOICE_TYPE) and self.label_names is None:
            missing.append("label_names")
        if self.task_type == REGRESSION_TYPE and self.label_range is None:
            missing.append("label_range")
        if missing:
            raise ConfigError(f"task spec {self.name}: {', '.join(missing)} not set")
        assert self.text_field is not None and self.task_type is not None
        fields = (self.text_field, *([self.pair_field] if self.pair_field else []),
                  *(self.choice_fields or ()))  # fmt: skip
        kind = {REGRESSION_TYPE: REGRESSION, CHOICE_TYPE: MULTIPLE_CHOICE}.get(
            self.task_type, PAIR if self.pair_field else SINGLE
        )
        names = tuple(self.label_names) if self.task_type != REGRESSION_TYPE else None
        return UserTask(
            name=str(self.name),
            benchmark="user",
            folder="",
            task_type=kind,
            fields=fields,
            label_names=names,
            metric_names=tuple(self.metrics or ()),
            description=str(self.description),
            hub=("", ""),
            label_words=tuple(self.label_words or names or ()),
            label_range=tuple(self.label_range) if self.label_range else None,  # type: ignore[arg-type]
            question=str(self.question),
            choice_fields=tuple(self.choice_fields or ()),
            template=str(self.template),
            spec=self,
        )


@dataclass(frozen=True)
class UserTask(Task):
    """A task defined by a :class:`TaskSpec`: read from its files, checked row by row."""

    spec: TaskSpec | None = None

    @property
    def _spec(self) -> TaskSpec:
        assert self.spec is not None, "a UserTask is built by TaskSpec.build"
        return self.spec

    @property
    def splits(self) -> tuple[str, ...]:
        spec = self._spec
        carved = ("validation",) if spec.val_fraction else ()
        return tuple(s for s in SPLITS if getattr(spec, s) or s in carved)

    def read(self, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """One split from the spec's files (``data_dir`` is for built-in tasks only)."""
        spec = self._spec
        if split not in self.splits:
            raise DataError(
                f"{self.name}: no {split} split (the spec gives {', '.join(self.splits)})"
            )
        if spec.val_fraction and split in ("train", "validation"):
            examples = self._read_source(spec.train, "train")
            rest, held = split_heldout(self, examples, spec.val_fraction, spec.seed, "val_fraction")
            return held if split == "validation" else rest
        return self._read_source(getattr(spec, split), split)

    def _read_source(self, source: str, split: str) -> list[Example]:
        records = read_records(source, split)
        if not records:
            raise DataError(f"{source} holds no rows: the {self.name} {split} split is empty")
        examples = [self._normalise(raw, where, split != "test") for where, raw in records]
        id_field = self._spec.id_field
        if id_field is not None:
            seen: dict[Any, str] = {}
            for (where, _), example in zip(records, examples, strict=True):
                key = example["idx"]
                if key in seen:
                    raise DataError(
                        f"{where}: field {id_field!r}: duplicate id {key!r} (first at "
                        f"{seen[key]}); ids must be unique"
                    )
                seen[key] = where
        return examples

    def _normalise(self, raw: dict[str, Any], where: str, labelled: bool = False) -> Example:
        spec = self._spec
        needed = [*self.fields, *([spec.label_field] if labelled else [])]
        needed += [spec.id_field] if spec.id_field else []
        missing = [name for name in needed if name not in raw]
        if missing:
            raise DataError(
                f"{where}: no column {missing[0]!r} (this row has: {', '.join(map(str, raw))})"
            )
        idx = raw[spec.id_field] if spec.id_field else None
        label = self._raw_label(raw.get(spec.label_field), where)
        example = super()._normalise({**raw, "label": label, "idx": idx}, where, labelled)
        if self.is_regression and example["label"] is not None:
            low, high = self.label_range or (float("-inf"), float("inf"))
            if not low <= example["label"] <= high:
                raise DataError(
                    f"{where}: field {spec.label_field!r}: score {example['label']:g} is outside "
                    f"the label range [{low:g}, {high:g}] (the spec's label_range, or train's "
                    "min and max): widen label_range in the spec if the score is right"
                )
        return example

    def _raw_label(self, value: Any, where: str) -> Any:
        """A class label as the index of its name; a name training does not have is an error."""
        if value is None or value == "" or self.task_type in (REGRESSION, MULTIPLE_CHOICE):
            return value
        names = self.label_names or ()
        text = _label_text(value)
        if text not in names:
            raise DataError(
                f"{where}: field {self._spec.label_field!r}: label {text!r} is not one of the "
                f"task's labels ({', '.join(names)}, from train or the spec's label_names)"
            )
        return names.index(text)

    def parse_input(self, item: Any, where: str = "input", max_chars: int = 20_000) -> Example:
        """As for built-in tasks, in the user's column names (label and id columns included)."""
        spec = self._spec
        if isinstance(item, dict):
            item = dict(item)
            if spec.label_field in item:
                item["label"] = self._raw_label(item.pop(spec.label_field), where)
            if spec.id_field and spec.id_field in item:
                item["idx"] = item.pop(spec.id_field)
        return super().parse_input(item, where, max_chars)

    def encoder_inputs(self, example: Example) -> list[EncoderInput]:
        """Multiple choice: (text, choice) per choice; otherwise as for built-in tasks."""
        if self.choice_fields:
            return [(example[self.fields[0]], example[name]) for name in self.choice_fields]
        return super().encoder_inputs(example)

    def choice_context(self, example: Example) -> str:
        return example[self.fields[0]]


# ------------------------------------------------------------------ reading files
def read_records(source: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every row of a CSV, TSV, JSONL or Parquet file or a hub split.

    ``where`` is ``file:line`` (``file: row N`` for Parquet and the hub), for error messages.
    """
    if _is_hub(source):
        return _read_hub(source.removeprefix(HUB), split)
    path = Path(source)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown file type {path.suffix or '(none)'!r}; give a .csv, .tsv, .jsonl "
            "or .parquet file, or hub:DATASET[:CONFIG][@SPLIT]"
        )
    if not path.is_file():
        raise DataError(f"{split} file {path} does not exist")
    if fmt == "jsonl":
        return [(f"{path}:{line}", record) for line, record in read_jsonl(path)]
    if fmt == "parquet":
        return _read_parquet(path)
    return _read_delimited(path, fmt)


def _read_delimited(path: Path, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{byte_position(path, err)}: not UTF-8 text ({err.reason})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for record in reader:
            where = f"{path}:{reader.line_num}"
            columns = reader.fieldnames or []
            extra = record.pop(None, None)  # type: ignore[call-overload]
            if extra is not None or None in record.values():
                cells = sum(v is not None for v in record.values()) + len(extra or [])
                raise DataError(
                    f"{where}: {cells} cells, but the header (line 1) has {len(columns)} columns"
                )
            rows.append((where, record))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not readable ({err})") from None
    return rows


def _read_parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    return [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_hub(name: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Networked path: ``DATASET[:CONFIG][@SPLIT]`` through ``datasets`` (not reachable offline)."""
    from datasets import load_dataset

    dataset, _, hub_split = name.partition("@")
    dataset, _, config = dataset.partition(":")
    rows = load_dataset(dataset, config or None, split=hub_split or split)
    return [(f"{HUB}{name} row {i}", dict(row)) for i, row in enumerate(rows, start=1)]


# ------------------------------------------------------------------ saving and loading
def load_task(path: str | os.PathLike) -> UserTask:
    """The task of a spec file, missing settings inferred (what ``get_task`` calls)."""
    return TaskSpec.load(path).complete().build()


def saved_spec(task: Task) -> dict[str, Any] | None:
    """What a saved student or teacher keeps to rebuild ``task`` (None for a built-in task)."""
    return task.spec.to_dict() if isinstance(task, UserTask) and task.spec else None


def restore_task(name: str, spec: dict[str, Any] | None, source: str) -> Task:
    """The task a saved folder was made for: a built-in by name, or its user task's spec."""
    if spec is None:
        return get_task(name)
    task = TaskSpec.from_dict(spec, f"{source} (task_spec)").build()
    if task.name != name:
        raise ConfigError(f"{source}: task {name!r} but its task_spec is for {task.name!r}")
    return task


# ------------------------------------------------------------------ helpers
def _yaml_dumper() -> type:
    """A safe YAML dumper that writes multi-line strings (templates) as ``|`` blocks."""
    import yaml

    class BlockDumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    BlockDumper.add_representer(str, text)
    return BlockDumper


def _is_hub(source: str) -> bool:
    return source.startswith(HUB)


def name_from(path: Path) -> str:
    """A task name from a file name: ``Support Tickets.csv`` -> ``support-tickets``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.").lower() or "task"
    return f"{name}-task" if name in TASKS else name


def _title(name: str | None) -> str:
    return (name or "text").replace("_", " ")


def _label_text(value: Any) -> str:
    """A label as its class name: ``true``, ``3`` (also for 3.0), or the text itself."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _range(values: Any) -> tuple[float, float]:
    numbers = [_as_number(v) for v in values] if isinstance(values, list | tuple) else []
    if len(numbers) != 2 or None in numbers or not numbers[0] < numbers[1]:  # type: ignore[operator]
        raise ConfigError(f"label_range must be [low, high] with low < high, not {values!r}")
    return float(numbers[0]), float(numbers[1])  # type: ignore[arg-type]
