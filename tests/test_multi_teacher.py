"""Several teachers in one store (issue 13): combination rules, per-teacher provenance, the
multi-teacher build, format-1 stores, merge and ``store info``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_build_contents import _stub_stages
from test_build_store import BagOfWords

import retrikt.generator.build as build
from retrikt.cli import main
from retrikt.errors import ConfigError, StoreError
from retrikt.generator.configs import TRAIN_SOURCE, BuildConfig
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.store import files as fs
from retrikt.store.manifest import ENTRIES_NAME, MANIFEST_NAME, write_manifest
from retrikt.student.config import TrainConfig
from retrikt.tasks import get_task
from retrikt.teachers.ensemble import (
    CachedTeacher,
    Combination,
    EnsembleTeacher,
    agreement,
    fit_combination,
    pooled,
)

CB, RTE, STSB = get_task("cb"), get_task("rte"), get_task("stsb")
A, B = "teacher-a", "teacher-b"


# ----------------------------------------------------------------------- combination rules
def test_mean_averages_the_teachers():
    probs = {A: np.array([[0.8, 0.1, 0.1]]), B: np.array([[0.2, 0.6, 0.2]])}
    out = Combination("mean", [A, B]).apply(probs)
    np.testing.assert_allclose(out, [[0.5, 0.35, 0.15]], atol=1e-6)


def _rte(labels):
    return [{"premise": f"p{i}", "hypothesis": "h", "label": y} for i, y in enumerate(labels)]


def test_heldout_weights_each_teacher_by_its_score_on_the_heldout_slice():
    heldout = _rte([0, 0, 1, 1])
    # a is right on 3 of 4 (accuracy 0.75), b on 1 of 4 (0.25): weights 0.75 and 0.25.
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    b = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1]])
    combination = fit_combination("heldout", RTE, [A, B], {A: a, B: b}, heldout)
    assert combination.weights == pytest.approx([0.75, 0.25])
    assert combination.heldout["scores"] == {A: 0.75, B: 0.25}
    new = {A: np.array([[1.0, 0.0]]), B: np.array([[0.0, 1.0]])}
    np.testing.assert_allclose(combination.apply(new), [[0.75, 0.25]], atol=1e-6)


def test_confidence_weights_each_teacher_per_example():
    probs = {A: np.array([[0.9, 0.1], [0.5, 0.5]]), B: np.array([[0.4, 0.6], [0.0, 1.0]])}
    out = Combination("confidence", [A, B]).apply(probs)
    # row 0: weights 0.9 and 0.6; row 1: 0.5 and 1.0
    expected = [[(0.81 + 0.24) / 1.5, (0.09 + 0.36) / 1.5], [0.25 / 1.5, 1.25 / 1.5]]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="regression"):
        fit_combination("confidence", STSB, [A, B], {}, [])


def test_learned_pooling_trusts_the_teacher_that_is_right_on_the_heldout_slice():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=40)
    right = np.where(gold[:, None] == np.arange(2), 0.8, 0.2)  # a: always right, unsure
    wrong = rng.dirichlet([1, 1], size=40)  # b: noise
    heldout = _rte(gold.tolist())
    combination = fit_combination("learned", RTE, [A, B], {A: right, B: wrong}, heldout)
    weight_a, weight_b = combination.weights
    assert weight_a > 2 * weight_b and weight_a > 0.5  # more weight, and sharper than a alone
    out = combination.apply({A: right, B: wrong})
    assert (out.argmax(-1) == gold).all()
    mean = Combination("mean", [A, B]).apply({A: right, B: wrong})
    nll = lambda p: -np.log(p[np.arange(len(gold)), gold]).mean()  # noqa: E731
    assert nll(out) < nll(mean)
    # the formula itself, by hand: softmax(a log p_a + b log p_b + bias)
    logits = weight_a * np.log(right) + weight_b * np.log(wrong) + combination.biases
    by_hand = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(out, by_hand, atol=1e-5)
    np.testing.assert_allclose(pooled(np.stack([right]), np.ones(1), np.zeros(2)), right)


def test_learned_regression_is_a_non_negative_linear_fit():
    heldout = [{"sentence1": "a", "sentence2": "b", "label": float(y)} for y in range(6)]
    a = np.arange(6, dtype=float)[:, None]  # exact
    b = np.full((6, 1), 2.5)  # constant: no information
    combination = fit_combination("learned", STSB, [A, B], {A: a, B: b}, heldout)
    assert combination.weights[0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(combination.apply({A: a, B: b}, regression=True), a, atol=1e-5)


def test_fit_rules_need_a_heldout_slice_and_unknown_rules_are_refused():
    with pytest.raises(ConfigError, match="held out"):
        fit_combination("learned", RTE, [A, B], {A: np.zeros((0, 2)), B: np.zeros((0, 2))}, [])
    with pytest.raises(ConfigError, match="unknown teacher combination"):
        Combination("median", [A, B])
    with pytest.raises(ConfigError, match="teacher_combination"):
        BuildConfig(task="cb", out="s", teacher_combination="median")


def test_agreement_counts_all_and_each_pair():
    labels = {
        A: np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]]),
        B: np.array([[0.8, 0.2], [0.2, 0.8], [0.3, 0.7]]),
        "c": np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]),
    }
    report = agreement(labels)
    assert report["all"] == pytest.approx(1 / 3)
    assert report["pairs"][f"{A} | {B}"] == pytest.approx(2 / 3)


class Fixed:
    def __init__(self, id_, rows):
        self.id, self.rows = id_, rows

    def label_probs(self, task, examples):
        return np.asarray([self.rows[ex["premise"]] for ex in examples], dtype=np.float32)


def test_one_teacher_is_itself_and_an_ensemble_names_its_rule_and_members():
    a = Fixed(A, {"x": [0.7, 0.2, 0.1]})
    solo = EnsembleTeacher([a], Combination("mean", [A]))
    assert solo.id == A
    np.testing.assert_allclose(solo.label_probs(CB, [{"premise": "x"}]), [[0.7, 0.2, 0.1]])
    both = EnsembleTeacher([a, Fixed(B, {"x": [0.1, 0.2, 0.7]})], Combination("mean", [A, B]))
    assert both.id == f"ensemble:mean[{A},{B}]"
    combined, each = both.label_all(CB, [{"premise": "x"}])
    np.testing.assert_allclose(combined, [[0.4, 0.2, 0.4]], atol=1e-6)
    assert set(each) == {A, B}


class Counting(Fixed):
    def __init__(self, id_, rows):
        super().__init__(id_, rows)
        self.asked = []

    def label_probs(self, task, examples):
        self.asked += [ex["premise"] for ex in examples]
        return super().label_probs(task, examples)


def test_a_cached_teacher_labels_each_example_once_across_runs(tmp_path):
    rows = {"x": [0.7, 0.2, 0.1], "y": [0.1, 0.1, 0.8]}
    first = Counting(A, rows)
    out = CachedTeacher(first, tmp_path).label_probs(CB, [{"premise": "x"}, {"premise": "x"}])
    np.testing.assert_allclose(out, [rows["x"], rows["x"]])
    assert first.asked == ["x"]
    again = Counting(A, rows)
    out = CachedTeacher(again, tmp_path).label_probs(CB, [{"premise": "y"}, {"premise": "x"}])
    np.testing.assert_allclose(out, [rows["y"], rows["x"]], atol=1e-7)
    assert again.asked == ["y"]
    other = Counting(B, rows)  # another teacher has its own file
    CachedTeacher(other, tmp_path).label_probs(CB, [{"premise": "x"}])
    assert other.asked == ["x"]


# ----------------------------------------------------------------------- the store
def _entries():
    return [
        StoreEntry(
            fields={"premise": f"Premise {i}.", "hypothesis": "A thing."},
            text=f"Premise {i}. [SEP] A thing.",
            requested_label=i % 3,
            soft_labels=[0.5, 0.3, 0.2],
            generator=TRAIN_SOURCE if i < 3 else "gen",
            rationale=f"Because {i}." if i % 2 else None,
            teacher_labels={A: [0.8, 0.1, 0.1], B: [0.1 * (i % 3), 0.5, 0.5 - 0.1 * (i % 3)]},
        )
        for i in range(5)
    ]


def _store(path, entries=None, **metadata):
    entries = _entries() if entries is None else entries
    encoder = BagOfWords()
    store = KnowledgeStore.create(
        path, task="cb", label_names=list(CB.label_names), encoder_id=encoder.model_id,
        dim=encoder.dim, teacher={"id": "ensemble"}, **metadata,
    )  # fmt: skip
    store.add(entries, encoder.encode([e.text for e in entries]))
    store.save()
    return store


TEACHERS = [{"id": A, "heldout": {"accuracy": 0.7}}, {"id": B, "heldout": {"accuracy": 0.5}}]


def test_teacher_labels_and_provenance_round_trip_and_the_store_verifies(tmp_path):
    combination = Combination("heldout", [A, B], [0.6, 0.4]).to_dict()
    _store(tmp_path / "s", teachers=TEACHERS, combination=combination)
    store = KnowledgeStore.open(tmp_path / "s")
    assert store.verify().entry_count == 5
    assert store.manifest["format_version"] == 2
    assert store.manifest["teachers"] == TEACHERS
    assert store.manifest["combination"] == combination
    by_id = {e.id: e for e in store.entries()}
    for want in _entries():
        got = next(e for e in by_id.values() if e.fields == want.fields)
        assert set(got.teacher_labels) == {A, B}
        for teacher in (A, B):
            np.testing.assert_allclose(got.teacher_labels[teacher], want.teacher_labels[teacher])
        assert got.rationale == want.rationale
    assert main(["store", "verify", str(tmp_path / "s")]) == 0


def test_a_teachers_labels_must_have_the_tasks_width(tmp_path):
    bad = _entries()[:1]
    bad[0].teacher_labels = {A: [0.5, 0.5]}
    with pytest.raises(StoreError, match="teacher 'teacher-a' has 2 label values"):
        _store(tmp_path / "s", bad)


def _as_format_1(path):
    """Rewrite a store as RetriKT wrote it before format 2: no teacher_labels column, no
    teachers and combination in the manifest, format_version 1."""
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    entries = path / manifest["data"] / ENTRIES_NAME
    table = pq.read_table(entries)
    pq.write_table(table.drop_columns(["teacher_labels"]), entries, compression="zstd")
    manifest["files"][ENTRIES_NAME] = {
        "size": entries.stat().st_size,
        "sha256": fs.sha256_file(entries),
    }
    for key in ("teachers", "combination", "manifest_sha256"):
        manifest.pop(key)
    manifest["format_version"] = 1
    write_manifest(path, manifest)


def test_a_format_1_store_still_opens_verifies_and_is_saved_as_format_2(tmp_path):
    _store(tmp_path / "old")
    _as_format_1(tmp_path / "old")
    old = KnowledgeStore.open(tmp_path / "old")
    assert old.manifest["format_version"] == 1
    assert old.verify().entry_count == 5
    assert all(e.teacher_labels == {} for e in old.entries())
    assert [e.rationale for e in old.entries()] == [e.rationale for e in _entries()]
    more = StoreEntry({"premise": "New.", "hypothesis": "x"}, "New. [SEP] x", 0, [1.0, 0.0, 0.0])
    old.add([more], BagOfWords().encode([more.text]))
    old.save()
    again = KnowledgeStore.open(tmp_path / "old")
    assert again.manifest["format_version"] == 2 and len(again) == 6
    assert again.verify().entry_count == 6


def test_merge_keeps_each_stores_teachers_and_each_entrys_labels(tmp_path):
    _store(tmp_path / "old", _entries()[:2], teachers=None)
    _as_format_1(tmp_path / "old")
    others = _entries()[2:]
    _store(tmp_path / "multi", others, teachers=TEACHERS, combination={"rule": "mean"})
    code = main(["store", "merge", str(tmp_path / "m"), str(tmp_path / "old"),
                 str(tmp_path / "multi")])  # fmt: skip
    assert code == 0
    merged = KnowledgeStore.open(tmp_path / "m")
    assert merged.verify().entry_count == 5
    assert [t["id"] for t in merged.manifest["teachers"]] == ["ensemble", A, B]
    labelled = {e.fields["premise"]: e.teacher_labels for e in merged.entries()}
    assert all(labelled[e.fields["premise"]] == {} for e in _entries()[:2])
    assert all(set(labelled[e.fields["premise"]]) == {A, B} for e in others)
    assert {s["path"] for s in merged.manifest["sources"]} == {
        str(tmp_path / "old"),
        str(tmp_path / "multi"),
    }


def test_a_condensed_multi_teacher_store_keeps_the_teachers_and_each_entrys_labels(tmp_path):
    combination = {"rule": "mean"}
    _store(tmp_path / "s", teachers=TEACHERS, combination=combination)
    code = main(["store", "condense", str(tmp_path / "s"), "--out", str(tmp_path / "c"),
                 "--ratio", "0.6", "--method", "random"])  # fmt: skip
    assert code == 0
    condensed = KnowledgeStore.open(tmp_path / "c")
    assert condensed.verify().entry_count == 3  # one of each label
    assert condensed.manifest["teachers"] == TEACHERS
    assert condensed.manifest["combination"] == combination
    assert all(set(e.teacher_labels) == {A, B} for e in condensed.entries())


def test_store_info_shows_the_teachers_their_agreement_and_training_scores(tmp_path, capsys):
    combination = Combination("heldout", [A, B], [0.6, 0.4], None, {"examples": 4,
                              "scores": {A: 0.75, B: 0.25}}).to_dict()  # fmt: skip
    _store(tmp_path / "s", teachers=TEACHERS, combination=combination)
    assert main(["store", "info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "teachers   2, the store's label is their heldout" in out
    # a always says entailment: right on the training entries of label 0 (1 of 3)
    line_a = next(line for line in out.splitlines() if line.startswith(f"  teacher  {A}"))
    assert "weight 0.600" in line_a and "own held-out accuracy 0.700" in line_a
    assert "common held-out (4 ex.) 0.750" in line_a
    assert "on 3 training entries accuracy 0.333" in line_a
    # b: [0, .5, .5], [.1, .5, .4], [.2, .5, .3] -> contradiction, right on entry 1 only
    line_b = next(line for line in out.splitlines() if line.startswith(f"  teacher  {B}"))
    assert "on 3 training entries accuracy 0.333" in line_b
    assert "agreement  all teachers on 0.0% of 5 entries" in out
    assert main(["store", "sample", str(tmp_path / "s"), "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert f"    {A}: entailment 0.80 | contradiction 0.10 | neutral 0.10" in out
    assert "rationale: Because 1." in out


# ----------------------------------------------------------------------- the build
ROWS = {
    A: {"The cat sat on the mat.": [0.9, 0.05, 0.05], "Nobody came to the party.": [0.6, 0.3, 0.1]},
    B: {"The cat sat on the mat.": [0.3, 0.3, 0.4], "Nobody came to the party.": [0.1, 0.8, 0.1]},
}


@pytest.mark.parametrize("rule", ["mean", "heldout", "confidence", "learned"])
def test_a_multi_teacher_build_keeps_every_teachers_labels_and_the_rule(
    rule, tmp_path, monkeypatch
):
    _stub_stages(monkeypatch, [])
    monkeypatch.setattr(
        build,
        "prepare_teacher",
        lambda config, data, rank: (Fixed(config.teacher, ROWS[config.teacher]),
                                    {"id": config.teacher, "model": config.teacher}),
    )  # fmt: skip
    config = BuildConfig(
        task="cb", out=str(tmp_path / rule), rl="none", store_examples="train",
        teacher=f"{A},{B}", teacher_combination=rule, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    store = KnowledgeStore.open(build.build_store(config))
    assert store.verify().entry_count == 2
    manifest = store.manifest
    assert [t["id"] for t in manifest["teachers"]] == [A, B]
    assert manifest["combination"]["rule"] == rule
    assert manifest["teacher"]["id"] == f"ensemble:{rule}[{A},{B}]"
    # the held-out slice: with no tuned teacher, a seeded slice of the training split
    assert manifest["combination"]["heldout"]["examples"] == 1
    combination = Combination.from_dict(manifest["combination"])
    for entry in store.entries():
        premise = entry.fields["premise"]
        assert entry.teacher_labels == {
            t: pytest.approx(ROWS[t][premise], abs=1e-6) for t in (A, B)
        }
        want = combination.apply({t: np.array([ROWS[t][premise]]) for t in (A, B)})[0]
        np.testing.assert_allclose(entry.soft_labels, want, atol=1e-6)


def test_a_single_teacher_build_records_its_labels_under_its_id(tmp_path, monkeypatch):
    _stub_stages(monkeypatch, [])
    store = KnowledgeStore.open(
        build.build_store(
            BuildConfig(task="cb", out=str(tmp_path / "s"), rl="none", store_examples="train")
        )  # fmt: skip
    )
    assert store.manifest["combination"] is None
    assert store.manifest["teacher"] == {"id": "fixed-teacher"}
    for entry in store.entries():
        assert entry.teacher_labels == {"fixed-teacher": pytest.approx(entry.soft_labels)}


def test_new_options_at_their_defaults_leave_cache_keys_as_they_were():
    build_key = BuildConfig(task="cb", out="s").key_dict()
    assert not set(BuildConfig.LATER_OPTIONS) & set(build_key)
    assert "rationales" in BuildConfig(task="cb", out="s", rationales=True).key_dict()
    train_key = TrainConfig(task="cb").key_dict()
    assert not set(TrainConfig.LATER_OPTIONS) & set(train_key)
    assert TrainConfig(task="cb", rationale_loss=1.0).key_dict()["rationale_loss"] == 1.0


def test_the_teacher_flag_takes_several_teachers():
    config = BuildConfig(task="cb", out="s", teacher="a, b ,c")
    assert config.teacher_models == ["a", "b", "c"] and config.teacher_model == "a"
    assert BuildConfig(task="cb", out="s").teacher_models == ["smollm2-135m"]


def test_pyarrow_keeps_an_empty_teacher_map_empty(tmp_path):
    entry = _entries()[0]
    entry.teacher_labels = {}
    _store(tmp_path / "s", [entry])
    assert KnowledgeStore.open(tmp_path / "s").entries()[0].teacher_labels == {}
