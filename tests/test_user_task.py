"""A task from a user's own files: inference, the spec file, and every kind of bad input."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from retrikt.cli import main
from retrikt.errors import ConfigError, DataError, RetriktError
from retrikt.generator.templates import generation_prompt
from retrikt.tasks import PAIR, REGRESSION, SINGLE, get_task
from retrikt.user_task import TaskSpec, UserTask, read_records, restore_task, saved_spec

USER = Path(__file__).resolve().parent / "fixtures" / "user"
TICKETS, QUESTIONS, RATINGS = USER / "tickets.csv", USER / "questions.jsonl", USER / "ratings.tsv"


def _init(tmp_path: Path, *flags: str, out: str = "task.yaml") -> int:
    return main(["task", "init", *flags, "--out", str(tmp_path / out)])


def test_init_infers_a_classification_task_from_a_csv(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="retrikt"):
        code = _init(tmp_path, "--train", str(TICKETS), "--label-field", "queue",
                     "--val-fraction", "0.34", out="tickets.yaml")  # fmt: skip
    assert code == 0
    log = caplog.text
    assert "inferred text_field = 'body'" in log and "inferred id_field = 'id'" in log
    assert "majority class 'billing' (33.3% of train" in log
    assert "column 'body' has 9.2 words on average (longest 11)" in log
    report = json.loads(capsys.readouterr().out.split("\nuse it as")[0])
    # 18 rows, a seeded and stratified third held out as validation: 2 of each class.
    assert report["splits"]["validation"]["labels"] == {"billing": 2, "shipping": 2,
                                                        "technical": 2}  # fmt: skip
    task = get_task(str(tmp_path / "tickets.yaml"))
    assert isinstance(task, UserTask) and task.task_type == SINGLE
    assert (task.name, task.fields) == ("tickets", ("body",))
    assert task.label_names == ("billing", "shipping", "technical")
    assert task.metric_names == ("accuracy", "macro_f1")
    assert "billing, shipping, technical" in task.teacher_question
    assert generation_prompt(task, 1).endswith("Label: shipping\nBody:")
    train, validation = task.read("train"), task.read("validation")
    assert len(train) == 12 and len(validation) == 6
    assert not {ex["idx"] for ex in train} & {ex["idx"] for ex in validation}


def test_init_infers_a_pair_task_from_jsonl_with_boolean_labels(tmp_path):
    assert _init(tmp_path, "--train", str(QUESTIONS), "--text-field", "q1", "--pair-field",
                 "q2", "--label-field", "same", "--val-fraction", "0.3") == 0  # fmt: skip
    task = get_task(str(tmp_path / "task.yaml"))
    assert task.task_type == PAIR and task.label_names == ("false", "true")
    example = task.read("train")[0]
    assert task.encoder_inputs(example) == [(example["q1"], example["q2"])]
    # predict's input: the user's own column names, the label column included.
    item = {"q1": "Is it free?", "q2": "Does it cost nothing?", "same": True}
    assert task.parse_input(item)["label"] == 1


def test_init_infers_a_regression_task_from_a_tsv_and_writes_json(tmp_path):
    assert _init(tmp_path, "--train", str(RATINGS), "--label-field", "stars",
                 "--val-fraction", "0.25", out="ratings.json") == 0  # fmt: skip
    spec = json.loads((tmp_path / "ratings.json").read_text())
    assert spec["task_type"] == "regression" and spec["label_range"] == [1.0, 5.0]
    assert not Path(spec["train"]).is_absolute()  # the spec moves with its data
    assert (tmp_path / spec["train"]).resolve() == RATINGS
    task = get_task(str(tmp_path / "ratings.json"))
    assert task.task_type == REGRESSION and task.metric_names == ("pearson", "spearman")
    assert generation_prompt(task, 4).startswith("Task: Score each review from 1 to 5.\nScore: 4")


def test_a_spec_round_trips_and_a_saved_spec_rebuilds_the_task(tmp_path):
    spec = TaskSpec(train=str(TICKETS), label_field="queue", val_fraction=0.3, name="t")
    spec = spec.complete()
    spec.save(tmp_path / "t.yaml")
    loaded = TaskSpec.load(tmp_path / "t.yaml")
    assert loaded == spec  # paths are written relative to the spec and resolved back
    task = loaded.build()
    rebuilt = restore_task("t", saved_spec(task), "test")
    assert rebuilt == task and saved_spec(get_task("cb")) is None


def test_a_hand_written_spec_sets_words_metrics_and_template(tmp_path):
    (tmp_path / "tickets.csv").write_text(TICKETS.read_text())
    (tmp_path / "spec.yaml").write_text(
        "train: tickets.csv\nval_fraction: 0.3\nlabel_field: queue\ntext_field: body\n"
        "label_words: [money, parcel, bug]\nmetrics: [accuracy, mcc]\n"
        "template: 'Route this ticket to {label}.'\n"
    )
    task = get_task(str(tmp_path / "spec.yaml"))
    assert task.name == "spec" and task.label_words == ("money", "parcel", "bug")
    assert task.metric_names == ("accuracy", "mcc")
    assert generation_prompt(task, 2) == "Route this ticket to technical.\nBody:"


def _copy(tmp_path: Path, source: Path, edit=None, name: str | None = None) -> Path:
    path = tmp_path / (name or source.name)
    text = source.read_text()
    path.write_text(edit(text) if edit else text)
    return path


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each: task init flags, and what the error must say (file:line and field)."""
    tickets = ["--train", str(TICKETS), "--label-field", "queue"]
    val_unknown = _copy(tmp_path, TICKETS, lambda t: t.replace(",technical", ",sales", 1),
                        "val.csv")  # fmt: skip
    mixed = _copy(tmp_path, TICKETS, lambda t: t.replace(",billing\n", ",3\n", 1), "mixed.csv")
    dup = _copy(tmp_path, TICKETS, lambda t: t.replace("\n5,", "\n4,", 1), "dup.csv")
    empty = _copy(tmp_path, TICKETS, lambda t: t.splitlines()[0] + "\n", "empty.csv")
    short = _copy(tmp_path, TICKETS, lambda t: t.replace("3,The app", "3", 1), "short.csv")
    high = _copy(tmp_path, RATINGS, lambda t: t.replace("\t4.5", "\t7.5"), "high.tsv")
    return {
        "unknown column": (
            [*tickets, "--text-field", "message", "--val-fraction", "0.3"],
            rf"{TICKETS}:2: no column 'message' \(columns: id, body, queue\)",
        ),
        "unknown label column": (
            ["--train", str(TICKETS), "--val-fraction", "0.3"],
            "no column 'label' for the label .*add --label-field",
        ),
        "validation label unknown to train": (
            [*tickets, "--validation", str(val_unknown)],
            rf"{val_unknown}:4: field 'queue': label 'sales' is not one of the task's labels",
        ),
        "one split only": (
            tickets,
            "only a training split: add --validation FILE, or --val-fraction 0.2",
        ),  # fmt: skip
        "empty split": ([*tickets, "--validation", str(empty)], f"{empty} holds no rows"),
        "mixed label types": (
            ["--train", str(mixed), "--label-field", "queue", "--val-fraction", "0.3"],
            rf"{mixed}:3: field 'queue' holds text 'shipping' but {mixed}:2 holds the number",
        ),
        "duplicate ids": (
            [*tickets, "--validation", str(dup)],
            rf"{dup}:6: field 'id': duplicate id '4' \(first at {dup}:5\)",
        ),
        "a row with a missing cell": (
            [*tickets, "--validation", str(short)],
            rf"{short}:4: 2 cells, but the header \(line 1\) has 3 columns",
        ),
        "score above the inferred range": (
            ["--train", str(RATINGS), "--label-field", "stars", "--validation", str(high)],
            rf"{high}:3: field 'stars': score 7.5 is outside the label range \[1, 5\]",
        ),
        "text where a score belongs": (
            [*tickets, "--task-type", "regression", "--val-fraction", "0.3"],
            rf"{TICKETS}:2: field 'queue' holds 'billing', not a number",
        ),
        "a fraction with a validation file": (
            [*tickets, "--validation", str(TICKETS), "--val-fraction", "0.3"],
            "either a validation file or val_fraction",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown column",
        "unknown label column",
        "validation label unknown to train",
        "one split only",
        "empty split",
        "mixed label types",
        "duplicate ids",
        "a row with a missing cell",
        "score above the inferred range",
        "text where a score belongs",
        "a fraction with a validation file",
    ],
)
def test_bad_input_names_file_line_and_field_and_writes_nothing(tmp_path, caplog, case):
    flags, message = _bad_cases(tmp_path)[case]
    assert _init(tmp_path, *flags) == 1
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert re.search(message, error), error
    assert not (tmp_path / "task.yaml").exists()
    assert not list(tmp_path.glob(".task.yaml*"))


def test_a_spec_range_makes_train_scores_outside_it_an_error(tmp_path):
    spec = TaskSpec(train=str(RATINGS), label_field="stars", val_fraction=0.3, label_range=[2, 5])
    task = spec.complete().build()
    with pytest.raises(DataError, match=r"ratings.tsv:5: field 'stars': score 1 is outside"):
        task.read("train")


def test_spec_file_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: x.csv\nlabel_feild: queue\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*unknown TaskSpec keys label_feild"):
        get_task(str(bad))
    bad.write_text("train: x.csv\nmetrics: [pearson]\ntask_type: classification\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*metrics \['pearson'\] do not fit"):
        get_task(str(bad))
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not a readable YAML"):
        get_task(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        get_task(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="built-in task"):
        TaskSpec(train="x.csv", name="cb")


def test_unsupported_files_and_ambiguous_text_columns_say_what_to_add(tmp_path):
    with pytest.raises(DataError, match=r"unknown file type '.xlsx'; give a .csv"):
        read_records(str(tmp_path / "data.xlsx"), "train")
    two = _copy(tmp_path, TICKETS, lambda t: t.replace("id,", "subject,"), "two.csv")
    with pytest.raises(RetriktError, match="text columns: subject, body\\); add --text-field"):
        TaskSpec(train=str(two), label_field="queue", val_fraction=0.3).complete()


def test_parquet_reads_like_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"Review number {i}, quite {'good' if i % 2 else 'bad'}.",
             "label": "pos" if i % 2 else "neg"} for i in range(10)]  # fmt: skip
    rows[7]["label"] = "meh"
    pq.write_table(pa.Table.from_pylist(rows[:6]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), tmp_path / "val.parquet")
    spec = TaskSpec(train=str(tmp_path / "train.parquet"), validation=str(tmp_path / "val.parquet"))
    task = spec.complete().build()
    assert task.label_names == ("neg", "pos") and len(task.read("train")) == 6
    with pytest.raises(DataError, match=r"val.parquet: row 2: field 'label': label 'meh'"):
        task.read("validation")


def test_inspect_data_reads_a_spec_without_a_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETRIKT_DATA", raising=False)
    shutil.copy(QUESTIONS, tmp_path / "q.jsonl")
    (tmp_path / "q.yaml").write_text(
        "train: q.jsonl\nval_fraction: 0.3\ntext_field: q1\npair_field: q2\nlabel_field: same\n"
    )
    assert main(["inspect-data", "--task", str(tmp_path / "q.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train +10 examples +\{'false': 5, 'true': 5\}", out), out
    assert "test" not in out


def test_init_builds_a_multiple_choice_task_from_choice_columns(tmp_path):
    assert _init(tmp_path, "--train", str(USER / "situations.jsonl"), "--text-field",
                 "situation", "--choice-fields", "a, b", "--label-field", "answer",
                 "--val-fraction", "0.3") == 0  # fmt: skip
    task = get_task(str(tmp_path / "task.yaml"))
    assert task.head == "choice" and task.label_names == ("a", "b")
    examples = task.read("train") + task.read("validation")
    example = next(ex for ex in examples if ex["situation"] == "The train was cancelled.")
    assert example["label"] == 1  # "b": the column of the right choice
    assert task.encoder_inputs(example) == [(example["situation"], example["a"]),
                                            (example["situation"], example["b"])]  # fmt: skip
    assert task.choice_context(example) == example["situation"]
    assert generation_prompt(task, 1).split("\n")[1] == "Correct choice: 2"


def test_hub_sources_go_to_datasets_with_config_and_split(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"text": "A fine film.", "label": 1}, {"text": "A dull film.", "label": 0}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = TaskSpec(train="hub:org/reviews:plain", validation="hub:org/reviews:plain@test")
    task = spec.complete().build()
    assert (task.name, task.label_names) == ("reviews-plain", ("0", "1"))
    assert task.read("validation")[0]["label"] == 1
    assert calls[-1] == ("org/reviews", "plain", "test") and calls[0][2] == "train"
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"text": "x", "label": 7}])
    with pytest.raises(DataError, match=r"hub:org/reviews:plain@test row 1: field 'label'"):
        task.read("validation")
