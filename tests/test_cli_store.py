"""``retrikt store info|verify|sample|merge|reindex`` through the real command line entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_store import data_file, fake_embed, make_entries, new_store

from retrikt.cli import main
from retrikt.encoder import Encoder
from retrikt.errors import ModelNotInstalledError
from retrikt.store import KnowledgeStore, StoreEntry


@pytest.fixture
def store_path(tmp_path):
    new_store(tmp_path / "s", n=30, generator={"id": "gen-a", "prompt_sha256": "f00d"})
    return tmp_path / "s"


def test_info_summarises_the_store(store_path, capsys):
    assert main(["store", "info", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "task       cb   labels: entailment, contradiction, neutral" in out
    assert "encoder    fake-16  (16-dim, normalized)" in out
    assert "entries    30" in out
    assert "requested  contradiction 10, entailment 10, neutral 10" in out
    assert "written by gen-a 30" in out
    assert "entries.parquet" in out and '"prompt_sha256": "f00d"' in out


def test_info_json_is_the_manifest(store_path, capsys):
    assert main(["store", "info", str(store_path), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["entry_count"] == 30 and manifest["encoder"]["id"] == "fake-16"


def test_verify_passes_then_names_the_altered_file(store_path, capsys, caplog):
    assert main(["store", "verify", str(store_path)]) == 0
    assert "OK" in capsys.readouterr().out
    target = data_file(store_path, "entries.parquet")
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["store", "verify", str(store_path)]) == 1
    assert "entries.parquet was altered or corrupted" in caplog.text
    assert main(["store", "verify", str(store_path), "--encoder", "minilm-l6"]) == 1
    assert "not 'minilm-l6'" in caplog.text


def test_sample_prints_entries_readably(store_path, capsys):
    assert main(["store", "sample", str(store_path), "-n", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("[") == 3 and "[3/3] row" in out
    assert out.count("  premise: premise number") == 3
    assert out.count("teacher  entailment 0.") == 3
    assert "generator  gen-a" in out and "rewards    accuracy" in out


def test_sample_regression_store(tmp_path, capsys):
    store = KnowledgeStore.create(
        tmp_path / "r", task="stsb", label_names=None, encoder_id="fake-16", dim=16
    )
    entry = StoreEntry({"sentence1": "a", "sentence2": "b"}, "a b", 3.5, [3.25])
    store.add([entry], fake_embed([entry.text]))
    store.save()
    assert main(["store", "sample", str(tmp_path / "r")]) == 0
    assert "requested  3.5   teacher  score 3.25" in capsys.readouterr().out


def test_merge_reports_duplicates(tmp_path, capsys, caplog):
    other = new_store(tmp_path / "b", generator={"id": "gen-b"})
    entries = make_entries(20, 40, generator="gen-b")
    other.add(entries, fake_embed([e.text for e in entries]))
    other.save()
    new_store(tmp_path / "a", n=30)
    args = ["store", "merge", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "20 entries, 10 added, 10 duplicates" in out and "40 entries" in out
    assert len(KnowledgeStore.open(tmp_path / "m")) == 40
    new_store(tmp_path / "c", n=3, encoder_id="other")
    assert (
        main(["store", "merge", str(tmp_path / "m2"), str(tmp_path / "a"), str(tmp_path / "c")])
        == 1
    )
    assert "encoder differs" in caplog.text


def test_reindex_needs_a_target(store_path):
    with pytest.raises(SystemExit):
        main(["store", "reindex", str(store_path), "--encoder", "minilm-l6"])
    with pytest.raises(SystemExit):
        main(["store"])


def test_reindex_with_the_real_encoder(tmp_path, capsys):
    try:
        encoder = Encoder("minilm-l6")
    except ModelNotInstalledError as err:
        pytest.skip(f"minilm-l6 encoder not installed: {err}")
    new_store(tmp_path / "s", n=12)
    out = tmp_path / "r"
    assert (
        main(["store", "reindex", str(tmp_path / "s"), "--encoder", "minilm-l6", "--out", str(out)])
        == 0
    )
    assert f"embedded with {encoder.model_id} (384-dim)" in capsys.readouterr().out
    store = KnowledgeStore.open(out, expected_encoder=encoder.model_id, expected_dim=384)
    texts = store.texts()
    assert len(store) == 12
    np.testing.assert_allclose(store.embeddings()[:3], encoder.encode(texts[:3]), atol=1e-5)
    assert store.search(encoder.encode(texts[5:6]), k=1).indices[0, 0] == 5


@pytest.mark.parametrize(
    ("value", "needle"),
    [("-1", "must be at least 1, got -1"), ("0", "must be at least 1"), ("two", "not a whole")],
)
def test_sample_refuses_a_count_below_one_in_one_line(store_path, capsys, value, needle):
    """Issue 18.4: `store sample -n -1` used to end in a ValueError traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["store", "sample", str(store_path), "-n", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_info_and_verify_show_the_content_digest(store_path, capsys):
    digest = KnowledgeStore.open(store_path).digest
    assert main(["store", "info", str(store_path)]) == 0
    assert f"digest     {digest}" in capsys.readouterr().out
    assert main(["store", "verify", str(store_path)]) == 0
    assert f"digest {digest}" in capsys.readouterr().out
