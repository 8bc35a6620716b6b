"""Issue 18 on the store: atomic merge/reindex under SIGKILL, interrupted-empty stores, orphan
sweeping, a manifest that cannot point outside its store, and the exit-134 teardown race."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_store import data_file, fake_embed, make_entries, new_store

from retrikt.cli import main
from retrikt.errors import StoreError
from retrikt.store import KnowledgeStore
from retrikt.store.manifest import manifest_digest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _killed(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` after a prelude whose np.save SIGKILLs the process half-way."""
    prelude = f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(TESTS)!r})
        from retrikt.store import KnowledgeStore
        from test_store import fake_embed
        real_save = np.save
        def die(path, array, **kw):
            real_save(path, array[:2], **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        np.save = die
    """
    code = textwrap.dedent(prelude) + textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("command", ["merge", "reindex"])
def test_a_killed_merge_or_reindex_leaves_no_store_and_a_rerun_works(tmp_path, command):
    """Issue 18.1: both used to save an empty version 1 into OUT before the real content."""
    new_store(tmp_path / "a", n=10)
    out = tmp_path / "out"
    if command == "merge":
        script = f"KnowledgeStore.merge([{str(tmp_path / 'a')!r}], {str(out)!r})"
    else:
        script = (
            f"KnowledgeStore.open({str(tmp_path / 'a')!r})"
            f".reindex(fake_embed, 'fake-16b', out={str(out)!r})"
        )
    result = _killed(script)
    assert result.returncode == -9, result.stderr
    assert not out.exists()  # no 0-entry store that verify would call OK
    assert any(p.name.startswith(".out.staging-") for p in tmp_path.iterdir())
    if command == "merge":
        assert main(["store", "merge", str(out), str(tmp_path / "a")]) == 0
    else:
        KnowledgeStore.open(tmp_path / "a").reindex(fake_embed, "fake-16b", out=out)
    assert KnowledgeStore.open(out).verify().entry_count == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]  # staging swept


def test_verify_refuses_a_store_left_empty_by_an_interrupted_write(tmp_path, caplog):
    empty = new_store(tmp_path / "empty")
    assert empty.verify().entry_count == 0  # created empty on purpose: fine
    new_store(tmp_path / "s")
    result = _killed(
        f"""
        store = KnowledgeStore.open({str(tmp_path / "s")!r})
        from test_store import make_entries
        entries = make_entries(0, 10)
        store.add(entries, fake_embed([e.text for e in entries]))
        store.save()
        """
    )
    assert result.returncode == -9, result.stderr
    with pytest.raises(StoreError, match="empty because a write was interrupted: .tmp-v000002"):
        KnowledgeStore.open(tmp_path / "s").verify()
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    assert "empty because a write was interrupted" in caplog.text


def test_open_sweeps_orphans_of_killed_saves(tmp_path):
    store = new_store(tmp_path / "s", n=5)
    orphan = tmp_path / "s" / ".tmp-v000003-deadbeef"
    orphan.mkdir()
    (orphan / "vectors.npy").write_bytes(b"half")
    (tmp_path / "s" / ".manifest.json.0badf00d.tmp").write_text("{")
    assert len(KnowledgeStore.open(tmp_path / "s")) == 5
    names = {p.name for p in (tmp_path / "s").iterdir()}
    assert names == {".lock", "manifest.json", store.manifest["data"]} | {
        n for n in names if n.startswith("v000001-")
    }


def test_create_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an empty folder"):
        new_store(tmp_path / "s")
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ the manifest
def _rewrite(path: Path, change) -> None:
    """Edit the manifest as an attacker would: recomputing its self-checksum."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(data="../other/v000002-0123abcd"), "'data' is invalid"),
        (lambda m: m.update(data="/etc/v000002-0123abcd"), "'data' is invalid"),
        (lambda m: m.update(data="v000009-0123abcd"), "does not belong to version 2"),
        (lambda m: m.pop("encoder"), "'encoder' is missing"),
        (lambda m: m.pop("index"), "'index' is missing"),
        (lambda m: m["encoder"].update(dim="16"), "'encoder.dim' is invalid"),
        (lambda m: m.update(entry_count=True), "'entry_count' is invalid"),
        (lambda m: m.update(label_names=[]), "'label_names' is invalid"),
        (lambda m: m.update(surprise=1), "'surprise' is not a field"),
        (lambda m: m["files"].pop("index.faiss"), r"no checksum for \['index.faiss'\]"),
        (lambda m: m["files"]["vectors.npy"].update(sha256="x"), "'files.vectors.npy.sha256'"),
    ],
)
def test_a_manifest_outside_the_schema_is_refused_with_its_key(tmp_path, change, message):
    new_store(tmp_path / "s", n=5)
    _rewrite(tmp_path / "s", change)
    with pytest.raises(StoreError, match=message):
        KnowledgeStore.open(tmp_path / "s")


def test_data_cannot_lead_out_of_the_store_through_a_link(tmp_path):
    new_store(tmp_path / "other", n=5)
    new_store(tmp_path / "s", n=3)
    other_data = data_file(tmp_path / "other", "entries.parquet").parent
    link = tmp_path / "s" / "v000002-0123abcd"
    link.symlink_to(other_data)
    other = json.loads((tmp_path / "other" / "manifest.json").read_text())
    _rewrite(tmp_path / "s", lambda m: m.update(data=link.name, files=other["files"],
                                                entry_count=5))  # fmt: skip
    with pytest.raises(StoreError, match="is a link out of the store folder"):
        KnowledgeStore.open(tmp_path / "s")


def test_labels_must_match_the_soft_label_width(tmp_path):
    """One label over 3-wide soft labels used to verify OK."""
    new_store(tmp_path / "s", n=5)
    _rewrite(tmp_path / "s", lambda m: m.update(label_names=["yes"]))
    with pytest.raises(StoreError, match="1 soft-label values per row.*fixed_size_list"):
        KnowledgeStore.open(tmp_path / "s")


def test_the_content_digest_pins_what_the_store_holds(tmp_path):
    store = new_store(tmp_path / "s", n=5)
    digest = store.digest
    assert KnowledgeStore.open(tmp_path / "s", expected_digest=digest).verify().digest == digest
    _rewrite(tmp_path / "s", lambda m: m.update(label_names=["neutral", "contradiction",
                                                              "entailment"]))  # fmt: skip
    with pytest.raises(StoreError, match="holds different content"):
        KnowledgeStore.open(tmp_path / "s", expected_digest=digest)
    more = make_entries(5, 6)
    again = KnowledgeStore.open(tmp_path / "s")
    again.add(more, fake_embed([e.text for e in more]))
    again.save()
    assert again.digest != digest


def test_entries_are_parsed_without_the_dataset_scanner(tmp_path, monkeypatch):
    """The exit-134 race: pq.read_table drops its last reference on an Arrow worker thread."""
    new_store(tmp_path / "s", n=5)

    def forbidden(*args, **kwargs):
        raise AssertionError("pq.read_table releases its buffer on an Arrow worker thread")

    monkeypatch.setattr(pq, "read_table", forbidden)
    assert KnowledgeStore.open(tmp_path / "s").verify().entry_count == 5


def test_store_verify_exits_cleanly_many_times_with_many_arrow_threads(tmp_path):
    """Before the fix 6 of 30 runs aborted with exit 134 at OMP_NUM_THREADS=16."""
    new_store(tmp_path / "s", n=30)
    script = textwrap.dedent(
        f"""
        import sys
        from retrikt.cli import main
        sys.exit(main(["store", "verify", {str(tmp_path / "s")!r}]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "16"}
    for _ in range(4):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env)
        assert result.returncode == 0, result.stderr.decode()[-500:]
