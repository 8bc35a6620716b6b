"""The artefact cache: keys, atomic publishing, reuse, sweeping, and rank waits with a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from retrikt.cache import DONE, ArtefactCache, WaitTimeout, key, publish, unit_lock


def _dead_pid() -> int:
    """The id of a process that has just exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_key_ignores_dict_order_and_sees_values():
    assert key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
    assert key({"a": 1}) != key({"a": 2}) and len(key("x")) == 16


def test_a_unit_is_made_once_published_whole_and_then_reused(tmp_path):
    calls = []

    def make(staging):
        calls.append(staging)
        assert staging.name.startswith("unit.tmp")  # made aside, not in place
        (staging / "weights.bin").write_bytes(b"w")
        return {"seconds": 1.5}

    info = publish(tmp_path / "unit", make)
    assert info["seconds"] == 1.5
    assert json.loads((tmp_path / "unit" / DONE).read_text())["seconds"] == 1.5
    assert (tmp_path / "unit" / "weights.bin").read_bytes() == b"w"
    # No staging folder left; the units' lock files are kept apart in .locks.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "unit"]
    assert publish(tmp_path / "unit", make)["seconds"] == 1.5 and len(calls) == 1


def test_a_failed_make_publishes_nothing_and_the_next_run_sweeps_it(tmp_path):
    def broken(staging):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        publish(tmp_path / "unit", broken)
    assert not (tmp_path / "unit").exists()
    dead = tmp_path / f"unit.tmp{_dead_pid()}"  # left by a run that died
    dead.mkdir()
    publish(tmp_path / "unit", lambda staging: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "unit"]


def test_an_incomplete_folder_from_an_older_run_is_replaced(tmp_path):
    (tmp_path / "unit").mkdir()
    (tmp_path / "unit" / "half.bin").write_bytes(b"")
    publish(tmp_path / "unit", lambda staging: {"ok": True})
    assert sorted(p.name for p in (tmp_path / "unit").iterdir()) == [DONE]


def test_other_ranks_wait_for_rank_0_and_give_up_after_the_timeout(tmp_path):
    with pytest.raises(WaitTimeout, match="gave up after"):
        publish(tmp_path / "unit", lambda s: pytest.fail("rank 1 made it"), rank=1,
                timeout=0.3, poll=0.05)  # fmt: skip
    maker = threading.Timer(0.2, publish, (tmp_path / "unit", lambda s: {"by": "rank 0"}))
    maker.start()
    started = time.monotonic()
    info = publish(tmp_path / "unit", lambda s: {"by": "rank 1"}, rank=1, timeout=10, poll=0.05)
    maker.join()
    assert info["by"] == "rank 0" and time.monotonic() - started < 5


def test_the_cache_names_units_by_kind_label_and_spec(tmp_path):
    cache = ArtefactCache(tmp_path)
    folder, info = cache.ensure("models", "cb", {"lr": 1}, lambda staging: {"seconds": 2})
    assert folder == tmp_path.resolve() / "models" / f"cb-{key({'lr': 1})}"
    assert info["spec"] == {"lr": 1} and info["seconds"] == 2
    assert cache.ensure("models", "cb", {"lr": 2}, lambda s: None)[0] != folder


def test_a_units_resume_folder_is_beside_it_and_survives_the_sweep_of_dead_staging(tmp_path):
    """Checkpoints of a killed unit stay for its rerun (staging folders of dead pids go)."""
    cache = ArtefactCache(tmp_path)
    spec = {"lr": 1e-3}
    folder, resume = cache.folder("models", "s0", spec), cache.resume_folder("models", "s0", spec)
    assert resume.parent == folder.parent and resume.name == f"{folder.name}.resume"
    resume.mkdir(parents=True)
    (resume / "checkpoint.pt").write_text("epoch 1")
    dead = folder.with_name(f"{folder.name}.tmp999999999")
    dead.mkdir()
    seen = []
    cache.ensure(
        "models", "s0", spec, lambda staging: seen.append((resume / "checkpoint.pt").read_text())
    )
    assert seen == ["epoch 1"] and not dead.exists()


def test_two_runs_sharing_a_cache_make_a_unit_once(tmp_path):
    """A second, independent run (rank 0 of its own) waits for the first and reuses its unit
    instead of making it again and replacing the folder the first one is using."""
    started, finish = threading.Event(), threading.Event()
    calls = []

    def slow(staging):
        calls.append("first")
        started.set()
        finish.wait(10)
        return {"by": "first"}

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(publish, tmp_path / "unit", slow)
        assert started.wait(10)
        second = pool.submit(publish, tmp_path / "unit", lambda s: calls.append("second"))
        time.sleep(0.3)  # the second run is now waiting for the lock
        assert calls == ["first"]
        finish.set()
        assert first.result()["by"] == second.result()["by"] == "first" and calls == ["first"]

        # A run that cannot get the lock in time says so instead of making the unit.
        with unit_lock(tmp_path / "other", timeout=1):
            waiter = pool.submit(publish, tmp_path / "other", lambda s: None, timeout=0.2)
            assert isinstance(waiter.exception(10), WaitTimeout)
        assert not (tmp_path / "other").exists()
