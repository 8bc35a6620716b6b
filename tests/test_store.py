"""The knowledge store: round trip, exact and approximate search, integrity checks, atomic
saves under crashes and concurrent readers, merge provenance and re-embedding."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

import retrikt.store.index as index_mod
import retrikt.store.knowledge_store as store_mod
from retrikt.errors import StoreError
from retrikt.store import KnowledgeStore, StoreEntry, entry_id
from retrikt.store.manifest import FORMAT_VERSION

LABELS = ["entailment", "contradiction", "neutral"]
DIM = 16


def fake_embed(texts: list[str], dim: int = DIM) -> np.ndarray:
    """Deterministic unit vectors seeded by each text's hash (a stand-in encoder)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        rows.append(np.random.default_rng(seed).standard_normal(dim))
    vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), dim)
    faiss.normalize_L2(vectors)
    return vectors


def make_entries(start: int, stop: int, generator: str = "gen-a") -> list[StoreEntry]:
    entries = []
    for i in range(start, stop):
        fields = {"premise": f"premise number {i}", "hypothesis": f"hypothesis {i % 7}"}
        soft = np.random.default_rng(i).dirichlet(np.ones(3)).tolist()
        entries.append(
            StoreEntry(
                fields=fields,
                text=f"{fields['premise']} [SEP] {fields['hypothesis']}",
                requested_label=i % 3,
                soft_labels=soft,
                rewards={"accuracy": float(soft[i % 3]), "total": 0.5},
                generator=generator,
                rationale=f"because {i}" if i % 2 else None,
            )
        )
    return entries


def new_store(path: Path, n: int = 0, **kwargs) -> KnowledgeStore:
    options = {"task": "cb", "label_names": LABELS, "encoder_id": "fake-16", "dim": DIM}
    options.update(kwargs)
    store = KnowledgeStore.create(path, **options)
    if n:
        entries = make_entries(0, n)
        store.add(entries, fake_embed([e.text for e in entries], options["dim"]))
        store.save()
    return store


def data_file(path: Path, name: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    return path / manifest["data"] / name


# ------------------------------------------------------------------ round trip and search
def test_round_trip_keeps_every_field(tmp_path):
    store = new_store(tmp_path / "s", generator={"id": "smollm2", "prompt_sha256": "ab12"})
    entries = make_entries(0, 40)
    vectors = fake_embed([e.text for e in entries])
    assert store.add(entries, vectors) == 40
    before = store.search(vectors[:5], k=4)
    store.save()

    opened = KnowledgeStore.open(tmp_path / "s", expected_encoder="fake-16", expected_dim=DIM)
    assert len(opened) == 40
    assert opened.task == "cb" and opened.label_names == LABELS and opened.dim == DIM
    assert opened.manifest["generator"] == {"id": "smollm2", "prompt_sha256": "ab12"}
    got = opened.entries()
    for original, loaded in zip(entries, got, strict=True):
        assert loaded.fields == original.fields and loaded.text == original.text
        assert loaded.requested_label == original.requested_label
        assert isinstance(loaded.requested_label, int)
        assert loaded.soft_labels == pytest.approx(original.soft_labels, abs=1e-6)
        assert loaded.rewards == pytest.approx(original.rewards)
        assert loaded.rationale == original.rationale and loaded.generator == "gen-a"
        assert loaded.id == entry_id("cb", original.fields)
        assert loaded.source == store.store_id
    np.testing.assert_array_equal(opened.embeddings(), vectors)
    expected_soft = np.asarray([e.soft_labels for e in entries], dtype=np.float32)
    np.testing.assert_allclose(opened.soft_label_matrix(), expected_soft, atol=1e-7)
    assert opened.texts() == [e.text for e in entries]
    after = opened.search(vectors[:5], k=4)
    np.testing.assert_array_equal(after.indices, before.indices)
    assert after.indices[:, 0].tolist() == [0, 1, 2, 3, 4]  # each vector finds itself first
    assert after.entries[2][0].fields == entries[2].fields
    assert opened.verify().entry_count == 40


def test_regression_store_round_trip(tmp_path):
    store = KnowledgeStore.create(
        tmp_path / "r", task="stsb", label_names=None, encoder_id="fake-16", dim=DIM
    )
    entries = [
        StoreEntry(fields={"sentence1": f"a{i}", "sentence2": "b"}, text=f"a{i} b",
                   requested_label=i / 2, soft_labels=[i / 2 + 0.1])
        for i in range(6)
    ]  # fmt: skip
    store.add(entries, fake_embed([e.text for e in entries]))
    store.save()
    opened = KnowledgeStore.open(tmp_path / "r")
    assert opened.label_names is None
    assert [e.requested_label for e in opened.entries()] == [i / 2 for i in range(6)]
    assert opened.soft_label_matrix().shape == (6, 1)


@pytest.mark.parametrize("batch", [1, 3, 40])
def test_flat_search_is_exact(tmp_path, batch):
    store = new_store(tmp_path / "s", n=500)
    queries = fake_embed([f"query {i}" for i in range(batch)])
    result = store.search(queries, k=10)
    exact = queries @ store.embeddings().T
    expected = np.sort(exact, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    assert result.scores.dtype == np.float32 and result.indices.dtype == np.int64


def test_flat_search_falls_back_when_fp16_cannot_certify(tmp_path, monkeypatch):
    """Vectors closer together than fp16 can tell apart must still come back in exact order."""
    base = fake_embed(["base"])[0]
    rng = np.random.default_rng(0)
    vectors = base + 1e-5 * rng.standard_normal((300, DIM)).astype(np.float32)
    faiss.normalize_L2(vectors)
    store = new_store(tmp_path / "s")
    entries = make_entries(0, 300)
    store.add(entries, vectors)
    calls = []
    real_knn = faiss.knn
    monkeypatch.setattr(faiss, "knn", lambda *a, **kw: calls.append(1) or real_knn(*a, **kw))
    result = store.search(base, k=5)
    assert calls, "the exactness certificate should have failed and used the float32 search"
    expected = np.sort(vectors @ base)[::-1][:5]
    np.testing.assert_allclose(result.scores[0], expected, rtol=0, atol=1e-7)


def test_search_on_small_and_empty_stores(tmp_path):
    store = new_store(tmp_path / "s")
    empty = store.search(fake_embed(["q"]), k=3)
    assert empty.indices.tolist() == [[-1, -1, -1]] and empty.entries == [[]]
    entries = make_entries(0, 2)
    store.add(entries, fake_embed([e.text for e in entries]))
    result = store.search(fake_embed(["q"]), k=5)
    assert sorted(result.indices[0, :2].tolist()) == [0, 1]
    assert result.indices[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(result.scores[0, 2:]).all() and len(result.entries[0]) == 2
    with pytest.raises(StoreError, match="16-dim"):
        store.search(np.ones((1, 8), dtype=np.float32), k=1)
    with pytest.raises(StoreError, match="positive integer"):
        store.search(fake_embed(["q"]), k=0)


def test_approximate_indexes_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "IVF_MIN_ENTRIES", 1000)
    queries = fake_embed([f"q{i}" for i in range(20)])
    for kind in ("hnsw", "ivfpq", "ivfsq"):
        store = new_store(tmp_path / kind, n=3000, index=kind)
        assert store.index_config.kind == kind
        truth = np.argsort(-(queries @ store.embeddings().T), axis=1)[:, :10]
        found = store.search(queries, k=10).indices
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert recall > 0.5, f"{kind} recall@10 {recall}"
        reopened = KnowledgeStore.open(tmp_path / kind)
        assert reopened.manifest["index"]["kind"] == kind
        np.testing.assert_array_equal(reopened.search(queries, k=10).indices, found)


def test_auto_index_switches_to_ivf_as_the_store_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "AUTO_EXACT_MAX", 1500)
    monkeypatch.setattr(index_mod, "IVF_MIN_ENTRIES", 1000)
    store = new_store(tmp_path / "s", n=1200)
    assert store.index_config.kind == "flat"
    entries = make_entries(1200, 2400)
    store.add(entries, fake_embed([e.text for e in entries]))
    assert store.index_config.kind == index_mod.AUTO_LARGE
    store.save()
    assert KnowledgeStore.open(tmp_path / "s").manifest["index"]["factory"].startswith("IVF")


def test_ivfpq_on_too_few_entries_searches_exactly(tmp_path):
    store = new_store(tmp_path / "s", n=100, index="ivfpq")
    assert store.index_config.kind == "flat"
    assert store.manifest["index"]["requested"] == "ivfpq"


# ------------------------------------------------------------------ add: dedup and validation
def test_adding_the_same_example_twice_keeps_one(tmp_path):
    store = new_store(tmp_path / "s")
    entries = make_entries(0, 10)
    vectors = fake_embed([e.text for e in entries])
    assert store.add(entries, vectors) == 10
    assert store.add(entries[5:], vectors[5:]) == 0
    batch = make_entries(10, 13)
    batch_vectors = fake_embed([e.text for e in batch])
    twice = batch + batch[:1]
    assert store.add(twice, np.vstack([batch_vectors, batch_vectors[:1]])) == 3
    assert len(store) == 13 and len(set(store.ids())) == 13
    explicit = make_entries(20, 21)
    explicit[0].id = entry_id("cb", entries[0].fields)  # a caller-given id is the dedup key
    assert store.add(explicit, fake_embed([explicit[0].text])) == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e, v: (e, v[:, :8]), r"\(2, 16\) was needed"),
        (lambda e, v: (e, v[:1]), r"\(2, 16\) was needed"),
        (lambda e, v: (e, v * 2), "normalized"),
        (lambda e, v: (e, np.where(v > 0, np.nan, v)), "NaN"),
        (lambda e, v: ([e[0], StoreEntry({}, "x", 0, [1.0])], v), "soft_labels has 1 values"),
        (lambda e, v: ([e[0], StoreEntry({}, "x", 3, [0.3] * 3)], v), "requested_label 3"),
        (lambda e, v: ([e[0], StoreEntry({"f": {1}}, "x", 0, [0.3] * 3)], v), "JSON"),
    ],
)
def test_add_rejects_bad_input_clearly(tmp_path, mutate, message):
    store = new_store(tmp_path / "s")
    entries = make_entries(0, 2)
    bad_entries, bad_vectors = mutate(entries, fake_embed([e.text for e in entries]))
    with pytest.raises(StoreError, match=message):
        store.add(bad_entries, bad_vectors)
    assert len(store) == 0


def test_unnormalized_store_accepts_any_length(tmp_path):
    store = new_store(tmp_path / "s", normalized=False)
    entries = make_entries(0, 50)
    vectors = 3 * fake_embed([e.text for e in entries])
    store.add(entries, vectors)
    result = store.search(vectors[7] / 3, k=1)
    assert result.indices[0, 0] == 7 and result.scores[0, 0] == pytest.approx(3.0, rel=1e-5)


# ------------------------------------------------------------------ integrity
@pytest.mark.parametrize("name", ["entries.parquet", "vectors.npy", "index.faiss"])
def test_open_detects_an_altered_file(tmp_path, name):
    new_store(tmp_path / "s", n=30)
    target = data_file(tmp_path / "s", name)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{name} was altered or corrupted"):
        KnowledgeStore.open(tmp_path / "s")


@pytest.mark.parametrize("name", ["entries.parquet", "vectors.npy", "index.faiss"])
def test_open_detects_a_truncated_file_even_without_hashing(tmp_path, name):
    new_store(tmp_path / "s", n=30)
    target = data_file(tmp_path / "s", name)
    target.write_bytes(target.read_bytes()[:-7])
    for verify in (True, False):
        with pytest.raises(StoreError, match=f"{name} is truncated"):
            KnowledgeStore.open(tmp_path / "s", verify=verify)


def test_verify_on_an_open_store_sees_later_damage(tmp_path):
    store = new_store(tmp_path / "s", n=30)
    report = store.verify()
    assert report.entry_count == 30 and set(report.files) == {
        "entries.parquet",
        "vectors.npy",
        "index.faiss",
    }
    target = data_file(tmp_path / "s", "vectors.npy")
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="vectors.npy was altered"):
        store.verify()


def test_open_detects_manifest_damage(tmp_path):
    new_store(tmp_path / "s", n=5)
    manifest_path = tmp_path / "s" / "manifest.json"
    text = manifest_path.read_text()
    manifest = json.loads(text)
    manifest["entry_count"] = 4
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="manifest.json was altered"):
        KnowledgeStore.open(tmp_path / "s")
    manifest_path.write_text(text[: len(text) // 2])
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        KnowledgeStore.open(tmp_path / "s")
    manifest_path.unlink()
    with pytest.raises(StoreError, match="no manifest.json"):
        KnowledgeStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="does not exist"):
        KnowledgeStore.open(tmp_path / "missing")


def test_open_detects_a_missing_data_file(tmp_path):
    new_store(tmp_path / "s", n=5)
    data_file(tmp_path / "s", "index.faiss").unlink()
    with pytest.raises(StoreError, match="index.faiss is missing"):
        KnowledgeStore.open(tmp_path / "s")


def test_open_refuses_a_newer_format(tmp_path):
    new_store(tmp_path / "s", n=5)
    manifest_path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="newer than this RetriKT reads.*upgrade retrikt"):
        KnowledgeStore.open(tmp_path / "s")


def test_open_refuses_a_mismatched_encoder_or_dimension(tmp_path):
    new_store(tmp_path / "s", n=5)
    with pytest.raises(StoreError, match="embedded with encoder 'fake-16', not 'minilm-l6'.*"):
        KnowledgeStore.open(tmp_path / "s", expected_encoder="minilm-l6")
    with pytest.raises(StoreError, match="holds 16-dimensional vectors but 384 were expected"):
        KnowledgeStore.open(tmp_path / "s", expected_dim=384)


def test_create_refuses_an_existing_store_and_unknown_index(tmp_path):
    new_store(tmp_path / "s")
    with pytest.raises(StoreError, match="already holds a knowledge store"):
        new_store(tmp_path / "s")
    with pytest.raises(StoreError, match="unknown index kind 'annoy'"):
        new_store(tmp_path / "t", index="annoy")
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------ atomic saves
def test_interrupted_save_leaves_the_old_store(tmp_path, monkeypatch):
    store = new_store(tmp_path / "s", n=20)
    old_ids = store.ids()
    more = make_entries(20, 30)
    store.add(more, fake_embed([e.text for e in more]))

    real_save = np.save

    def crash_mid_write(path, array, **kwargs):
        real_save(path, array[: len(array) // 2], **kwargs)  # half a file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.np, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        store.save()
    monkeypatch.undo()
    reopened = KnowledgeStore.open(tmp_path / "s")
    assert reopened.ids() == old_ids and reopened.verify().entry_count == 20

    # Crash after the new data folder is complete but before the manifest swap.
    def crash_before_swap(*args):
        raise OSError("killed")

    monkeypatch.setattr(store_mod, "write_manifest", crash_before_swap)
    with pytest.raises(OSError, match="killed"):
        store.save()
    monkeypatch.undo()
    assert KnowledgeStore.open(tmp_path / "s").ids() == old_ids
    store.save()  # the same in-memory store saves fine afterwards and clears the debris
    assert len(KnowledgeStore.open(tmp_path / "s")) == 30
    folders = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(name.startswith("v") for name in folders)


def test_killed_save_leaves_the_old_store(tmp_path):
    """A process SIGKILLed half-way through writing vectors: no cleanup code runs at all."""
    new_store(tmp_path / "s", n=20)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import retrikt.store.knowledge_store as store_mod
        from test_store import fake_embed, make_entries
        store = store_mod.KnowledgeStore.open({str(tmp_path / "s")!r})
        more = make_entries(20, 40)
        store.add(more, fake_embed([e.text for e in more]))
        real_save = np.save
        def die(path, array, **kw):
            real_save(path, array[:5], **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        store_mod.np.save = die
        store.save()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "s").iterdir())
    reopened = KnowledgeStore.open(tmp_path / "s")
    assert len(reopened) == 20 and reopened.verify().entry_count == 20
    more = make_entries(20, 25)
    reopened.add(more, fake_embed([e.text for e in more]))
    reopened.save()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "s").iterdir())


def test_second_writer_cannot_overwrite_a_newer_version(tmp_path):
    new_store(tmp_path / "s", n=5)
    first = KnowledgeStore.open(tmp_path / "s")
    second = KnowledgeStore.open(tmp_path / "s")
    for store, (start, stop) in ((first, (5, 8)), (second, (8, 9))):
        entries = make_entries(start, stop)
        store.add(entries, fake_embed([e.text for e in entries]))
    first.save()
    with pytest.raises(StoreError, match="saved by another writer"):
        second.save()
    assert len(KnowledgeStore.open(tmp_path / "s")) == 8


def test_concurrent_readers_see_whole_versions(tmp_path):
    """One thread saves repeatedly while another opens: every open is one consistent version."""
    writer = new_store(tmp_path / "s", n=5)
    errors: list[BaseException] = []
    opened_sizes: list[int] = []
    done = threading.Event()

    def write() -> None:
        try:
            for step in range(1, 16):
                entries = make_entries(5 * step, 5 * step + 5)
                writer.add(entries, fake_embed([e.text for e in entries]))
                writer.save()
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
        finally:
            done.set()

    def read() -> None:
        try:
            while not done.is_set() or len(opened_sizes) < 3:
                store = KnowledgeStore.open(tmp_path / "s")
                texts = store.texts()
                assert len(store) == store.manifest["entry_count"] == len(texts)
                assert len(store) % 5 == 0
                np.testing.assert_array_equal(store.embeddings(), fake_embed(texts))
                assert store.search(fake_embed(texts[-1:]), k=1).indices[0, 0] == len(store) - 1
                opened_sizes.append(len(store))
        except BaseException as err:
            errors.append(err)
            done.set()

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(set(opened_sizes)) > 1, "the reader should have seen several versions"
    assert len(KnowledgeStore.open(tmp_path / "s")) == 80


# ------------------------------------------------------------------ merge and reindex
def test_merge_drops_duplicates_and_keeps_provenance(tmp_path):
    a = new_store(tmp_path / "a", generator={"id": "gen-a"}, teacher={"id": "qwen"})
    b = new_store(tmp_path / "b", generator={"id": "gen-b"}, teacher={"id": "qwen"})
    for store, (start, stop), gen in ((a, (0, 10), "gen-a"), (b, (5, 15), "gen-b")):
        entries = make_entries(start, stop, generator=gen)
        store.add(entries, fake_embed([e.text for e in entries]))
        store.save()

    merged = KnowledgeStore.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert len(merged) == 15
    by_id = {e.id: e for e in merged.entries()}
    for i, entry in enumerate(make_entries(0, 15)):
        kept = by_id[entry_id("cb", entry.fields)]
        assert (kept.generator, kept.source) == (
            ("gen-a", a.store_id) if i < 10 else ("gen-b", b.store_id)
        )
    manifest = KnowledgeStore.open(tmp_path / "m").manifest
    assert manifest["generator"] == {"merged": [{"id": "gen-a"}, {"id": "gen-b"}]}
    assert manifest["teacher"] == {"id": "qwen"}
    sources = [(s["store_id"], s["added"], s["duplicates"]) for s in manifest["sources"]]
    assert sources == [(a.store_id, 10, 0), (b.store_id, 5, 5)]
    np.testing.assert_array_equal(
        merged.embeddings(), fake_embed([e.text for e in merged.entries()])
    )

    # Merging the merge with one of its inputs keeps each entry's original source.
    again = KnowledgeStore.merge([tmp_path / "m", tmp_path / "b"], tmp_path / "m2")
    assert len(again) == 15
    assert {e.source for e in again.entries()} == {a.store_id, b.store_id}
    assert again.manifest["sources"][0]["sources"] == manifest["sources"]


def test_merge_refuses_different_encoders(tmp_path):
    new_store(tmp_path / "a", n=3)
    new_store(tmp_path / "b", n=3, encoder_id="other", dim=8)
    with pytest.raises(StoreError, match="encoder differs.*reindex"):
        KnowledgeStore.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_reindex_to_a_new_store_and_in_place(tmp_path):
    store = new_store(tmp_path / "s", n=30)
    old_vectors = np.array(store.embeddings())

    def embed8(texts: list[str]) -> np.ndarray:
        return fake_embed([t.upper() for t in texts], dim=8)

    new = store.reindex(embed8, "fake-8", out=tmp_path / "r", batch_size=7)
    reopened = KnowledgeStore.open(tmp_path / "r", expected_encoder="fake-8", expected_dim=8)
    assert reopened.ids() == store.ids() and reopened.texts() == store.texts()
    assert [e.source for e in reopened.entries()] == [e.source for e in store.entries()]
    np.testing.assert_array_equal(reopened.embeddings(), embed8(store.texts()))
    assert reopened.manifest["reindexed_from"]["encoder"]["id"] == "fake-16"
    assert new.search(embed8(store.texts()[3:4]), k=1).indices[0, 0] == 3
    np.testing.assert_array_equal(KnowledgeStore.open(tmp_path / "s").embeddings(), old_vectors)

    with pytest.raises(StoreError, match="norm"):
        store.reindex(lambda texts: 2 * embed8(texts), "fake-8-unnormalised")
    assert store.encoder_id == "fake-16"
    store.reindex(embed8, "fake-8")
    in_place = KnowledgeStore.open(tmp_path / "s", expected_encoder="fake-8")
    assert in_place.version == 3 and in_place.dim == 8 and in_place.ids() == reopened.ids()
