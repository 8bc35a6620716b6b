"""``retrikt store condense``: per-label balance, lineage, determinism, coverage and errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_store import LABELS, fake_embed, make_entries, new_store

from retrikt.cli import main
from retrikt.condense import METHODS, CondenseConfig, Source, condense, knn_shapley_values
from retrikt.errors import ConfigError, StoreError
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.store.manifest import manifest_digest


def unbalanced_store(path: Path) -> KnowledgeStore:
    """60 entailment, 30 contradiction, 12 neutral entries with random unit vectors."""
    entries = [e for e in make_entries(0, 180) if e.requested_label == 0]
    entries += [e for e in make_entries(0, 90) if e.requested_label == 1]
    entries += [e for e in make_entries(0, 36) if e.requested_label == 2]
    store = new_store(path)
    store.add(entries, fake_embed([e.text for e in entries]))
    store.save()
    return store


def vector_store(
    path: Path, vectors: np.ndarray, labels: list[int], soft: np.ndarray | None = None
) -> KnowledgeStore:
    """A store whose entries have the given vectors, labels and (default one-hot) soft labels."""
    if soft is None:
        soft = np.eye(len(LABELS))[labels]
    entries = [
        StoreEntry({"premise": f"p{i}", "hypothesis": "h"}, f"p{i} h", label, soft[i].tolist())
        for i, label in enumerate(labels)
    ]
    store = new_store(path, dim=vectors.shape[1], normalized=False)
    store.add(entries, vectors.astype(np.float32))
    store.save()
    return store


def counts(store: KnowledgeStore) -> Counter:
    return Counter(LABELS[int(v)] for v in store.requested_labels())


def covering_radius(vectors: np.ndarray, kept: np.ndarray) -> float:
    """The k-center objective: the farthest any entry is from its nearest kept entry."""
    gaps = np.linalg.norm(vectors[:, None, :] - kept[None, :, :], axis=2)
    return float(gaps.min(axis=1).max())


@pytest.fixture
def source(tmp_path) -> KnowledgeStore:
    return unbalanced_store(tmp_path / "src")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_keeps_the_balance_and_writes_a_verified_store(source, tmp_path, method):
    out = tmp_path / method
    new = condense(source.path, out, CondenseConfig(ratio=0.25, method=method, seed=3))
    # round(0.25 * n) per label: 60 -> 15, 30 -> 7.5 -> 8 (half up), 12 -> 3
    assert counts(new) == {"entailment": 15, "contradiction": 8, "neutral": 3}
    assert main(["store", "verify", str(out)]) == 0
    reopened = KnowledgeStore.open(out)
    # Entries are the source's own, with their vectors, ids and provenance.
    rows = {id_: i for i, id_ in enumerate(source.ids())}
    kept = [rows[id_] for id_ in reopened.ids()]
    assert kept == sorted(kept) and len(set(kept)) == 26
    np.testing.assert_array_equal(reopened.embeddings(), source.embeddings()[kept])
    np.testing.assert_array_equal(reopened.soft_label_matrix(), source.soft_label_matrix()[kept])
    assert reopened.column("source").to_pylist() == [source.store_id] * 26
    lineage = reopened.manifest["condensed_from"]
    assert lineage["digest"] == source.digest and lineage["store_id"] == source.store_id
    assert (lineage["method"], lineage["ratio"], lineage["seed"]) == (method, 0.25, 3)
    assert lineage["kept"] == {"entailment": [60, 15], "contradiction": [30, 8], "neutral": [12, 3]}
    assert reopened.manifest["teacher"] == source.manifest["teacher"]


@pytest.mark.parametrize("method", list(METHODS))
def test_the_same_seed_keeps_the_same_entries(source, tmp_path, method):
    config = CondenseConfig(ratio=0.2, method=method, seed=7)
    first = condense(source, tmp_path / "a", config).ids()
    assert condense(source, tmp_path / "b", config).ids() == first
    other = condense(source, tmp_path / "c", CondenseConfig(ratio=0.2, method=method, seed=8))
    if METHODS[method].seeded and method != "kmeans":
        assert other.ids() != first
    elif not METHODS[method].seeded:
        assert other.ids() == first


def test_ratio_one_keeps_everything(source, tmp_path):
    new = condense(source, tmp_path / "all", CondenseConfig(ratio=1.0, method="kmeans"))
    assert new.ids() == source.ids()


@pytest.mark.parametrize("method", ["kcenter", "confident-diverse"])
def test_k_center_keeps_entries_whose_vectors_are_copies(tmp_path, method):
    """Copies are at distance 0 from a kept entry, as kept entries are: once the distinct
    vectors are kept, the farthest must still be one not kept yet."""
    vectors = np.random.default_rng(5).standard_normal((10, 8))
    vectors[[5, 7]] = vectors[2]
    store = vector_store(tmp_path / "src", vectors, [0] * 10)
    for ratio, kept in ((1.0, 10), (0.9, 9)):
        config = CondenseConfig(ratio=ratio, method=method)
        new = condense(store, tmp_path / f"{method}-{ratio}", config)
        assert len(set(new.ids())) == kept


def test_kcenter_covers_a_clustered_store_better_than_random(tmp_path):
    """One big cluster and nine small ones: random draws land in the big one and leave small
    clusters uncovered; k-center reaches every cluster, so no entry is far from a kept one."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 8)) * 10
    sizes = [200] + [5] * 9
    vectors = np.concatenate(
        [c + rng.standard_normal((n, 8)) * 0.3 for c, n in zip(centres, sizes, strict=True)]
    )
    store = vector_store(tmp_path / "src", vectors, [0] * len(vectors))
    for seed in range(5):
        radius = {}
        for method in ("kcenter", "random"):
            config = CondenseConfig(ratio=0.05, method=method, seed=seed)  # 12 of 245
            new = condense(store, tmp_path / f"{method}-{seed}", config)
            radius[method] = covering_radius(vectors, new.embeddings())
        assert radius["kcenter"] < 3.0 < radius["random"], radius  # clusters lie ~14 apart


def test_kmeans_keeps_one_medoid_per_cluster(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((6, 8)) * 10
    vectors = np.concatenate([c + rng.standard_normal((20, 8)) * 0.3 for c in centres])
    store = vector_store(tmp_path / "src", vectors, [0] * len(vectors))
    for seed in range(3):
        config = CondenseConfig(ratio=0.05, method="kmeans", seed=seed)  # 6 of 120
        new = condense(store, tmp_path / f"km{seed}", config)
        kept = new.embeddings()
        clusters = [int(np.argmin(np.linalg.norm(centres - v, axis=1))) for v in kept]
        assert sorted(clusters) == list(range(6))


def test_herding_matches_the_label_mean_better_than_random(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((200, 8)) * np.linspace(0.2, 3, 8)
    store = vector_store(tmp_path / "src", vectors, [0] * 200)
    gaps = {}
    for method in ("herding", "random"):
        new = condense(store, tmp_path / method, CondenseConfig(ratio=0.05, method=method))
        gaps[method] = np.linalg.norm(new.embeddings().mean(0) - vectors.mean(0))
    assert gaps["herding"] < 0.5 * gaps["random"], gaps


def test_confident_diverse_keeps_entries_the_teacher_agrees_with(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((100, 8))
    agreement = np.linspace(0.05, 0.95, 100)
    soft = np.stack([agreement, 1 - agreement, np.zeros(100)], axis=1)
    store = vector_store(tmp_path / "src", vectors, [0] * 100, soft)
    only = condense(
        store, tmp_path / "p1", CondenseConfig(ratio=0.1, method="confident-diverse", pool=1)
    )
    np.testing.assert_allclose(np.sort(only.soft_label_matrix()[:, 0]), agreement[-10:], rtol=1e-6)
    mixed = condense(store, tmp_path / "p2", CondenseConfig(ratio=0.1, method="confident-diverse"))
    assert mixed.soft_label_matrix()[:, 0].min() >= agreement[-20]  # within the top 2 x 10


def test_knn_shapley_drops_entries_that_mislead_their_neighbours(tmp_path):
    """Two clusters, one per label; a few entries sit in the other label's cluster with its
    label. They make their neighbours' kNN votes wrong, so their value is the lowest."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((60, 8)) * 0.5 + 5
    b = rng.standard_normal((60, 8)) * 0.5 - 5
    labels = [0] * 60 + [1] * 60
    labels[:6] = [1] * 6  # in cluster a, labelled as cluster b
    vectors = np.concatenate([a, b])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # inner product = cosine
    store = vector_store(tmp_path / "src", vectors, labels)
    values = knn_shapley_values(Source(store, 5), CondenseConfig(ratio=1.0, method="knn-shapley"))
    assert set(np.argsort(values)[:6]) == set(range(6))
    assert values[:6].max() < 0 < values[6:].min()
    new = condense(store, tmp_path / "v", CondenseConfig(ratio=0.5, method="knn-shapley"))
    assert not set(store.ids()[:6]) & set(new.ids())


def test_regression_keeps_every_score_bucket(tmp_path):
    store = KnowledgeStore.create(
        tmp_path / "r", task="stsb", label_names=None, encoder_id="fake-16", dim=16
    )
    scores = [0.0] * 4 + [1.5] * 10 + [2.5] * 20 + [3.5] * 6 + [5.0] * 10
    entries = [
        StoreEntry({"sentence1": f"a{i}", "sentence2": "b"}, f"a{i} b", s, [s])
        for i, s in enumerate(scores)
    ]
    store.add(entries, fake_embed([e.text for e in entries]))
    store.save()
    new = condense(store, tmp_path / "c", CondenseConfig(ratio=0.5, method="kcenter"))
    assert Counter(new.requested_labels().tolist()) == {0.0: 2, 1.5: 5, 2.5: 10, 3.5: 3, 5.0: 5}
    assert list(new.manifest["condensed_from"]["kept"].values()) == [
        [4, 2], [10, 5], [20, 10], [6, 3], [10, 5],
    ]  # fmt: skip


def test_cli_writes_the_store_and_info_shows_the_lineage(source, tmp_path, capsys):
    out = tmp_path / "small"
    args = ["store", "condense", str(source.path), "--out", str(out), "--ratio", "0.5"]
    assert main([*args, "--method", "kcenter", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "51 of 102 entries kept by kcenter (ratio 0.5, seed 2)" in printed
    assert main(["store", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert (
        f"condensed  from {source.path} ({source.store_id[:8]} version {source.version}, digest "
        in info
    )
    assert f"{source.digest[:16]}): kcenter, ratio 0.5, seed 2, 102 -> 51 entries" in info
    assert "(entailment 30/60, contradiction 15/30, neutral 6/12)" in info
    # condensing a condensed store nests the lineage
    assert main(["store", "condense", str(out), "--out", str(tmp_path / "smaller")]
                + ["--ratio", "0.5", "--method", "random"]) == 0  # fmt: skip
    assert main(["store", "info", str(tmp_path / "smaller")]) == 0
    assert capsys.readouterr().out.count("condensed  from") == 2


@pytest.mark.parametrize(
    ("ratio", "needle"),
    [
        ("0", "CondenseConfig.ratio (--ratio) must be above 0, not 0.0"),
        ("1.5", "CondenseConfig.ratio (--ratio) must be at most 1, not 1.5"),
        ("0.02", "keeps none of the 12 'neutral' entries"),
    ],
)
def test_a_bad_ratio_is_refused_naming_it(source, tmp_path, caplog, ratio, needle):
    out = tmp_path / "out"
    args = ["store", "condense", str(source.path), "--out", str(out), "--ratio", ratio]
    assert main([*args, "--method", "random"]) == 1
    assert needle in caplog.text
    assert not out.exists()


def test_a_ratio_that_empties_a_label_names_the_smallest_that_works(source, tmp_path):
    with pytest.raises(
        ConfigError, match=r"smallest ratio that keeps one entry of every label is 0.042"
    ):
        condense(source, tmp_path / "o", CondenseConfig(ratio=0.04, method="random"))
    condense(source, tmp_path / "ok", CondenseConfig(ratio=0.042, method="random"))


def test_an_unknown_method_lists_the_known_ones(source, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["store", "condense", str(source.path), "--out", str(tmp_path / "o")]
             + ["--ratio", "0.5", "--method", "coreset"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "invalid choice: 'coreset'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be one of random, kcenter, kmeans, herding"):
        CondenseConfig(ratio=0.5, method="coreset")
    with pytest.raises(SystemExit):  # ratio and method have no default
        main(["store", "condense", str(source.path), "--out", str(tmp_path / "o")])


def test_a_label_absent_from_the_source_stays_absent(tmp_path, caplog):
    entries = [e for e in make_entries(0, 40) if e.requested_label != 2]
    store = new_store(tmp_path / "src")
    store.add(entries, fake_embed([e.text for e in entries]))
    store.save()
    new = condense(store, tmp_path / "c", CondenseConfig(ratio=0.5, method="herding"))
    assert counts(new) == {"entailment": 7, "contradiction": 7}
    assert "has no 'neutral' entries: the condensed store has none either" in caplog.text


def test_empty_source_and_taken_destination_are_refused(source, tmp_path):
    new_store(tmp_path / "empty")
    with pytest.raises(StoreError, match="is empty: there is nothing to condense"):
        condense(tmp_path / "empty", tmp_path / "o", CondenseConfig(ratio=0.5, method="random"))
    with pytest.raises(StoreError, match="already holds a knowledge store"):
        condense(source, tmp_path / "empty", CondenseConfig(ratio=0.5, method="random"))


def test_the_lineage_is_part_of_the_checked_schema(source, tmp_path):
    out = tmp_path / "c"
    condense(source, out, CondenseConfig(ratio=0.5, method="random"))
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["condensed_from"]["ratio"] = 1.5
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="'condensed_from.ratio' is invalid"):
        KnowledgeStore.open(out)
