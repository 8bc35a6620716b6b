"""A hash-keyed cache of finished work: one folder per unit, published atomically.

Long jobs (a store build, a results table) are chains of expensive units: a tuned prompt, a
generated store, a trained student, one scored result. Each unit is named by the hash of
everything it depends on (:func:`key`), so a rerun reuses what it finds, a changed setting
redoes only what depends on it, and a killed run resumes where it stopped.

A unit is made in a staging folder ``<folder>.tmp<pid>`` and renamed into place once a
marker (``done.json``, holding what the maker returned) is written in it, so a folder that
exists is always complete. Staging folders left by dead processes are swept before a unit
is made. Under several processes (``torchrun``, ``accelerate launch``) only rank 0 makes a
unit; the others wait for its marker, for at most ``timeout`` seconds. Independent runs that
share a cache (two experiment processes, each its own rank 0) take a file lock per unit, so
one makes it while the other waits and then reuses it: without the lock both would make it
and the second would replace the folder the first is already using.

Example::

    cache = ArtefactCache("experiments/cache")
    folder, info = cache.ensure("models", "cb-student", {"lr": 5e-5}, lambda tmp: train(tmp))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from retrikt.errors import RetriktError

logger = logging.getLogger(__name__)

DONE = "done.json"
#: The hidden folder, beside the units of one kind, that holds their lock files.
LOCKS = ".locks"
#: How long other ranks wait for rank 0 by default (a unit can be hours of CPU).
DEFAULT_TIMEOUT = 24 * 3600.0
DEFAULT_POLL = 10.0


class WaitTimeout(RetriktError):
    """Another process did not finish a unit in time (it may have died)."""


def key(spec: Any) -> str:
    """A short, stable hash of a JSON-able value (dict key order does not matter)."""
    canonical = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` beside ``path``, then rename, so a killed run never leaves a
    half-written file behind (the previous one stays until the new one is whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, never half-written (see :func:`replace_atomic`)."""
    replace_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    poll: float = DEFAULT_POLL,
) -> None:
    """Poll ``ready()`` until it is true; raise :class:`WaitTimeout` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"gave up after {timeout:.0f} s waiting for {what}; if the process making it "
                "died, rerun (finished units are reused)"
            )
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))


def publish(
    folder: Path,
    make: Callable[[Path], dict[str, Any] | None],
    *,
    rank: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    poll: float = DEFAULT_POLL,
) -> dict[str, Any]:
    """Make ``folder`` once and return its marker's content (what ``make`` returned).

    Reused when its marker exists. Otherwise rank 0 runs ``make(staging)`` in a fresh staging
    folder and renames it to ``folder``; other ranks wait for the marker (``timeout`` s).
    """
    done = folder / DONE
    if done.is_file():
        logger.info("reusing %s", folder)
        return json.loads(done.read_text())
    if rank != 0:
        logger.info("waiting for process 0 to finish %s", folder)
        wait_until(done.is_file, str(folder), timeout, poll)
        return json.loads(done.read_text())
    with unit_lock(folder, timeout):
        if done.is_file():  # made by another run while this one waited for the lock
            logger.info("reusing %s, made by another process", folder)
            return json.loads(done.read_text())
        remove_abandoned_staging(folder)
        staging = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        staging.mkdir(parents=True)
        info = {**(make(staging) or {}), "finished": time.time()}
        write_json_atomic(staging / DONE, info)
        if folder.exists():  # left incomplete by an older run (no marker)
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return info


@contextmanager
def unit_lock(folder: Path, timeout: float) -> Iterator[None]:
    """Hold ``.locks/<name>.lock`` beside ``folder`` while its unit is made. An OS file lock
    (``filelock``), so a killed holder releases it; a waiter gives up after ``timeout`` s."""
    path = folder.parent / LOCKS / f"{folder.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another process that is making %s", folder)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout as err:
            raise WaitTimeout(
                f"gave up after {timeout:.0f} s waiting for another process to make {folder}"
            ) from err
    try:
        yield
    finally:
        lock.release()


def remove_abandoned_staging(folder: Path) -> None:
    """Delete ``<folder>.tmpPID`` folders whose process is gone (or is this one)."""
    for staging in folder.parent.glob(f"{folder.name}.tmp*"):
        pid = staging.name.rpartition(".tmp")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            logger.info("removing %s, left by an interrupted run", staging)
            shutil.rmtree(staging, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class ArtefactCache:
    """Units under ``root/<kind>/<label>-<key(spec)>``, and JSON results keyed the same way."""

    def __init__(self, root: str | os.PathLike, rank: int = 0, timeout: float = DEFAULT_TIMEOUT):
        # Absolute: artefact paths recorded inside the cache must not depend on the cwd.
        self.root = Path(root).resolve()
        self.rank = rank
        self.timeout = timeout

    def folder(self, kind: str, label: str, spec: Any) -> Path:
        return self.root / kind / f"{label}-{key(spec)}"

    def resume_folder(self, kind: str, label: str, spec: Any) -> Path:
        """Where a unit's maker keeps its checkpoints while it works (``<folder>.resume``).

        Beside the staging folder rather than in it, because a rerun sweeps the staging
        folders of dead processes: a killed unit resumes from here. The maker deletes it
        when it finishes (as ``train_student`` does).
        """
        folder = self.folder(kind, label, spec)
        return folder.with_name(f"{folder.name}.resume")

    def ensure(
        self,
        kind: str,
        label: str,
        spec: Any,
        make: Callable[[Path], dict[str, Any] | None],
    ) -> tuple[Path, dict[str, Any]]:
        """The unit's folder and marker (``spec`` plus what ``make`` returned), made if absent."""
        folder = self.folder(kind, label, spec)
        info = publish(
            folder,
            lambda staging: {"spec": spec, **(make(staging) or {})},
            rank=self.rank,
            timeout=self.timeout,
        )
        return folder, info
