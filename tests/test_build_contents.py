"""What a store holds (``--store-examples``): generated examples, the real training examples
with the teacher's soft labels (marked ``generator="train"``), or both (issue 12.3)."""

from __future__ import annotations

import numpy as np
import pytest
from test_build_store import BagOfWords, _record

import retrikt.generator.build as build
from retrikt.errors import RetriktError
from retrikt.generator.build import BuildConfig
from retrikt.generator.configs import TRAIN_SOURCE
from retrikt.store import KnowledgeStore
from retrikt.tasks import get_task

CB = get_task("cb")
TRAIN = [
    {"idx": 0, "premise": "The cat sat on the mat.", "hypothesis": "A cat sat.", "label": 0},
    {"idx": 1, "premise": "Nobody came to the party.", "hypothesis": "Guests came.", "label": 1},
]


class FixedTeacher:
    """Soft labels that depend on the example, so a mix-up between entries shows."""

    id = "fixed-teacher"

    def label_probs(self, task, examples):
        rows = [[0.7, 0.2, 0.1] if "cat" in ex["premise"] else [0.1, 0.8, 0.1] for ex in examples]
        return np.asarray(rows, dtype=np.float32)


def _stub_stages(monkeypatch, records):
    """Everything before selection is stubbed: the models are not what is tested here."""
    stubs = {
        "shard_info": lambda: (0, 1),
        "load_task_data": lambda config: build.TaskData(CB, TRAIN, []),
        "prepare_teacher": lambda config, data, rank: (FixedTeacher(), {"id": "fixed-teacher"}),
        "prepare_generator": lambda *args: None,
        "generate_records": lambda *args: records,
    }
    for name, stub in stubs.items():
        monkeypatch.setattr(build, name, stub)
    monkeypatch.setattr("retrikt.encoder.Encoder", lambda name: BagOfWords())


def _build(tmp_path, store_examples):
    config = BuildConfig(
        task="cb", out=str(tmp_path / store_examples), rl="none", store_examples=store_examples
    )
    return KnowledgeStore.open(build.build_store(config))


GENERATED = [
    _record(0, "Snow covered the hills.", "It was winter.", 0, [0.6, 0.2, 0.2]),
    _record(1, "The shop was closed all week.", "The shop was open.", 1, [0.1, 0.7, 0.2]),
]


@pytest.mark.parametrize("contents", ["train", "generated", "both"])
def test_the_store_holds_what_was_asked_with_the_teachers_labels(contents, tmp_path, monkeypatch):
    _stub_stages(monkeypatch, GENERATED)
    store = _build(tmp_path, contents)
    by_premise = {e.fields["premise"]: e for e in store.entries()}
    real = {ex["premise"] for ex in TRAIN}
    made = {r["fields"]["premise"] for r in GENERATED}
    expected = {"train": real, "generated": made, "both": real | made}[contents]
    assert set(by_premise) == expected
    for example in TRAIN if contents != "generated" else []:
        entry = by_premise[example["premise"]]
        assert entry.generator == TRAIN_SOURCE
        assert entry.requested_label == example["label"]
        expected_probs = FixedTeacher().label_probs(CB, [example])[0]
        np.testing.assert_allclose(entry.soft_labels, expected_probs)
    for record in GENERATED if contents != "train" else []:
        entry = by_premise[record["fields"]["premise"]]
        assert entry.generator != TRAIN_SOURCE
        np.testing.assert_allclose(entry.soft_labels, record["soft_labels"])
    stats = store.manifest["generator"]["stats"]
    assert stats.get("training_examples", 0) == (0 if contents == "generated" else len(TRAIN))
    assert ("generated" in stats) == (contents != "train")


def test_a_train_only_store_runs_no_generation(tmp_path, monkeypatch):
    _stub_stages(monkeypatch, GENERATED)

    def must_not_run(*args):
        raise AssertionError("generation ran for a train-only store")

    monkeypatch.setattr(build, "prepare_generator", must_not_run)
    monkeypatch.setattr(build, "generate_records", must_not_run)
    store = _build(tmp_path, "train")
    assert len(store) == len(TRAIN)
    assert store.manifest["generator"]["rl"] is None


def test_failed_generation_is_an_error_even_with_training_examples(tmp_path, monkeypatch):
    """Asked-for generation that keeps nothing must not pass as a store of real examples."""
    cut = [_record(i, f"Premise {i}", "", 0, None, valid=False) for i in range(3)]
    _stub_stages(monkeypatch, cut)
    with pytest.raises(RetriktError, match="cb: 0 of 3 outputs parsed"):
        _build(tmp_path, "both")
    assert not (tmp_path / "both").exists()


def test_the_flag_is_validated():
    with pytest.raises(RetriktError, match="store_examples"):
        BuildConfig(task="cb", out="s", store_examples="everything")
    assert BuildConfig(task="cb", out="s").store_examples == "both"
