"""Task readers on the real release files and on hand-written fixtures in the official schema."""

import json

import pytest

from retrikt.cli import main
from retrikt.errors import DataError
from retrikt.tasks import TASKS, get_task

# (task, split) -> (examples, label counts) from ../shared/data/SOURCES.md.
REAL_SPLITS = {
    ("cb", "train"): (250, {"entailment": 115, "contradiction": 119, "neutral": 16}),
    ("cb", "validation"): (56, {"entailment": 23, "contradiction": 28, "neutral": 5}),
    ("copa", "train"): (400, {"choice1": 195, "choice2": 205}),
    ("copa", "validation"): (100, {"choice1": 55, "choice2": 45}),
    ("rte", "validation"): (277, {"entailment": 146, "not_entailment": 131}),
    ("glue-rte", "train"): (2490, {"entailment": 1249, "not_entailment": 1241}),
    ("mrpc", "train"): (3668, {"not_equivalent": 1194, "equivalent": 2474}),
    ("mrpc", "validation"): (408, {"not_equivalent": 129, "equivalent": 279}),
    ("cola", "train"): (8551, {"unacceptable": 2528, "acceptable": 6023}),
    ("cola", "validation"): (1043, {"unacceptable": 322, "acceptable": 721}),
    ("sst2", "validation"): (872, {"negative": 428, "positive": 444}),
}
TEST_SIZES = {"cb": 250, "copa": 500, "rte": 3000, "mrpc": 1725, "cola": 1063, "stsb": 1379}


@pytest.mark.parametrize(("task", "split"), sorted(REAL_SPLITS))
def test_real_split_sizes_and_labels(data_dir, task, split):
    size, labels = REAL_SPLITS[task, split]
    info = get_task(task).describe_split(get_task(task).read(split, data_dir))
    assert info["examples"] == size
    assert info["labels"] == labels


@pytest.mark.parametrize("task", sorted(TEST_SIZES))
def test_real_test_splits_are_unlabelled(data_dir, task):
    examples = get_task(task).read("test", data_dir)
    assert len(examples) == TEST_SIZES[task]
    assert all(ex["label"] is None for ex in examples)


def test_stsb_scores_are_floats(data_dir):
    examples = get_task("stsb").read("validation", data_dir)
    assert len(examples) == 1500
    assert examples[0]["label"] == 5.0
    assert examples[0]["sentence1"] == "A man with a hard hat is dancing."
    assert all(0.0 <= ex["label"] <= 5.0 for ex in examples)


def test_mrpc_reads_bom_header_and_keeps_quotes(data_dir):
    first = get_task("mrpc").read("train", data_dir)[0]
    assert first["label"] == 1
    assert first["sentence1"].startswith(
        'Amrozi accused his brother , whom he called " the witness "'
    )


def test_copa_inputs_are_one_per_choice(data_dir):
    task = get_task("copa")
    ex = task.read("validation", data_dir)[0]
    inputs = task.encoder_inputs(ex)
    assert inputs == [
        ("The man turned on the faucet. so", "The toilet filled with water."),
        ("The man turned on the faucet. so", "Water flowed from the spout."),
    ]
    assert ex["label"] == 1


def test_wic_fixture(fixture_data_dir):
    task = get_task("wic")
    train = task.read("train", fixture_data_dir)
    assert [ex["label"] for ex in train] == [0, 1, 0]
    assert train[0]["start1"] == 13
    assert task.encoder_inputs(train[1]) == [
        ("run: I run every morning.", "They run five miles a day.")
    ]
    assert all(ex["label"] is None for ex in task.read("test", fixture_data_dir))


def test_wsc_fixture_flattens_target(fixture_data_dir):
    task = get_task("wsc")
    train = task.read("train", fixture_data_dir)
    assert train[0]["span1_text"] == "Mark" and train[0]["span2_index"] == 13
    assert [ex["label"] for ex in train] == [1, 0]
    assert "Does 'He' refer to 'Mark'?" in task.encoder_inputs(train[0])[0][1]


def test_boolq_fixture(fixture_data_dir):
    task = get_task("boolq")
    val = task.read("validation", fixture_data_dir)
    assert [(ex["question"], ex["label"]) for ex in val] == [
        ("is the sun a star", 1),
        ("is a whale a fish", 0),
    ]


def test_multirc_fixture_one_row_per_answer_and_official_metrics(fixture_data_dir):
    task = get_task("multirc")
    val = task.read("validation", fixture_data_dir)
    assert len(val) == 7
    assert val[0]["idx"] == {"paragraph": 0, "question": 0, "answer": 0}
    assert [ex["label"] for ex in val] == [1, 0, 1, 1, 0, 1, 0]
    # Wrong only on the third answer of question 0: EM 2/3 questions; F1a tp3 fp0 fn1.
    preds = [1, 0, 0, 1, 0, 1, 0]
    scores = task.evaluate(preds, val)
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1a"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert all(ex["label"] is None for ex in task.read("test", fixture_data_dir))


def test_every_task_has_metrics_and_labels():
    for task in TASKS.values():
        assert task.metric_names
        assert task.is_regression == (task.label_names is None)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_malformed_json_names_file_and_line(tmp_path):
    good = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
    _write(tmp_path / "superglue/CB/train.jsonl", good + "\n{not json\n")
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid JSON"):
        get_task("cb").read("train", tmp_path)


def test_unknown_label_names_file_line_and_choices(tmp_path):
    row = json.dumps({"premise": "a", "hypothesis": "b", "label": "maybe", "idx": 0})
    _write(tmp_path / "superglue/CB/val.jsonl", row + "\n")
    with pytest.raises(DataError, match=r"val\.jsonl:1: unknown label 'maybe'.*entailment"):
        get_task("cb").read("validation", tmp_path)


def test_missing_field_and_missing_split(tmp_path):
    _write(tmp_path / "superglue/CB/train.jsonl", json.dumps({"premise": "a", "label": 0}) + "\n")
    with pytest.raises(DataError, match="missing field.*hypothesis"):
        get_task("cb").read("train", tmp_path)
    with pytest.raises(DataError, match=r"no validation split at .*superglue/CB/val\.jsonl"):
        get_task("cb").read("validation", tmp_path)


def test_malformed_tsv_row(tmp_path):
    _write(tmp_path / "glue/STS-B/dev.tsv", "index\tsentence1\tsentence2\tscore\n0\tonly one\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: missing column 'sentence2'"):
        get_task("stsb").read("validation", tmp_path)


def test_data_source_from_environment(monkeypatch, fixture_data_dir, tmp_path):
    monkeypatch.setenv("RETRIKT_DATA", str(fixture_data_dir))
    assert len(get_task("boolq").read("train")) == 3
    monkeypatch.delenv("RETRIKT_DATA")
    with pytest.raises(DataError, match="--data-dir"):
        get_task("boolq").read("train")
    with pytest.raises(DataError, match="does not exist"):
        get_task("boolq").read("train", tmp_path / "nowhere")


def test_parse_input_accepts_dicts_strings_and_pairs():
    cb, cola = get_task("cb"), get_task("cola")
    assert cb.parse_input(["p", "h"])["hypothesis"] == "h"
    assert cola.parse_input("A sentence.")["sentence"] == "A sentence."
    assert cb.parse_input({"premise": "p", "hypothesis": "h", "label": "neutral"})["label"] == 2


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"premise": "p"}, "missing field 'hypothesis'"),
        ({"premise": "p", "hypothesis": "  "}, "field 'hypothesis' is empty"),
        ({"premise": 1, "hypothesis": "h"}, "must be a string, got int"),
        (42, "expected an object"),
        (["only one"], "needs 2 text"),
        ({"premise": "p" * 30, "hypothesis": "h"}, "30 characters"),
    ],
)
def test_parse_input_rejects_bad_input(item, message):
    with pytest.raises(DataError, match=message):
        get_task("cb").parse_input(item, max_chars=20)


# ------------------------------------------------------------- issue 18: bad data is an error
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"premise": "a", "hypothesis": "b", "label": 0}\n\xff\xfe\n', r"train\.jsonl:2: not "
         r"UTF-8 text \(byte 0xff at column 1\)"),
        (b"[" * 100_000 + b"\n", r"train\.jsonl:1: JSON nested too deeply"),
        (b'{"premise": 3, "hypothesis": "b", "label": 0}\n', "'premise' must be a string, got int"),
        (b'{"premise": null, "hypothesis": "b", "label": 0}\n', "'premise' must be a string, got "
         "null"),
        (b'{"premise": "a", "hypothesis": "b"}\n', r"train\.jsonl:1: no label"),
        (b"", r"train\.jsonl holds no examples: the cb train split is empty"),
        (b"\n  \n", "holds no examples"),
    ],
)  # fmt: skip
def test_bad_training_files_are_errors_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "superglue/CB/train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        get_task("cb").read("train", tmp_path)


def test_an_unlabelled_test_split_is_fine_but_an_unlabelled_validation_split_is_not(tmp_path):
    row = json.dumps({"premise": "a", "hypothesis": "b", "idx": 0}) + "\n"
    _write(tmp_path / "superglue/CB/test.jsonl", row)
    _write(tmp_path / "superglue/CB/val.jsonl", row)
    assert get_task("cb").read("test", tmp_path)[0]["label"] is None
    with pytest.raises(DataError, match=r"val\.jsonl:1: no label"):
        get_task("cb").read("validation", tmp_path)


def test_non_utf8_tsv_names_the_line(tmp_path):
    path = tmp_path / "glue/MRPC/train.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes(
        b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n1\t1\t2\t\xe9\tb\n"
    )
    with pytest.raises(DataError, match=r"train\.tsv:3: not UTF-8 text"):
        get_task("mrpc").read("train", tmp_path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"\xff\n", "not UTF-8 text"), (b"[" * 100_000, "nested too deeply"),
     (b'{"premise": null, "hypothesis": "b", "label": 0}\n', "must be a string"), (b"", "empty")],
)  # fmt: skip
def test_inspect_data_exits_1_with_one_line(tmp_path, caplog, capsys, content, needle):
    """Issue 18.4/18.5: these used to be tracebacks, or exit 0 with '0 examples'."""
    path = tmp_path / "superglue/CB/train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert main(["inspect-data", "--task", "cb", "--data-dir", str(tmp_path)]) == 1
    assert needle in caplog.text and "Traceback" not in capsys.readouterr().err


def test_predictions_are_what_evaluate_scores():
    import numpy as np

    outputs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    assert get_task("cb").predictions(outputs) == [1, 0]
    assert get_task("copa").predictions(outputs[:, :2]) == [1, 0]
    assert get_task("stsb").predictions(np.array([[3.5], [1.25]])) == [3.5, 1.25]
    golds = [{"label": 1}, {"label": 2}]
    assert get_task("cb").evaluate(get_task("cb").predictions(outputs), golds)["accuracy"] == 0.5
