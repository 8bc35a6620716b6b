"""Locking and atomic file I/O for store folders: nothing here knows what a store holds.

Every write that makes a store version goes to a staging folder first and is renamed into
place, so a process killed at any instant leaves either the old state or the new one. A
staging folder is live while its writer holds a lock: on the store's ``.lock`` for a new data
folder inside a store, on its own ``.lock`` for a whole new store beside its destination.
Whoever can take that lock without waiting knows the folder's writer is gone, and may delete it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STAGING_PREFIX = ".tmp-"  # data folders being written inside a store
STORE_STAGING = ".staging-"  # whole stores being written beside their destination


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list is what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename; readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """One writer at a time per store folder (readers never lock)."""
    with filelock.FileLock(root / LOCK_NAME):
        yield


@contextlib.contextmanager
def try_writer_lock(root: Path) -> Iterator[bool]:
    """The writer lock if nobody holds it, without waiting: True inside when it was taken.

    False also when the lock file cannot be opened (a read-only copy of a store).
    """
    lock = filelock.FileLock(root / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except (filelock.Timeout, OSError):
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def orphans(root: Path) -> list[Path]:
    """Staging leftovers inside a store folder; only orphans when the caller holds its lock."""
    found = []
    for child in root.iterdir():
        if child.name.startswith(STAGING_PREFIX) and child.is_dir():
            found.append(child)
        elif child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
            found.append(child)  # a manifest written by write_atomic, never renamed
    return sorted(found)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A locked staging folder beside ``target``, renamed onto it when the block succeeds.

    ``target`` must not exist or be an empty folder (rename replaces an empty folder
    atomically). Staging folders of ``target`` whose writer died are removed first; on an
    exception the staging folder is removed and ``target`` is untouched.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    sweep_staged(target)
    staging = parent / f".{target.name}{STORE_STAGING}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    lock = filelock.FileLock(staging / LOCK_NAME)
    try:
        with lock:
            yield staging
            fsync_path(staging)
            try:
                os.rename(staging, target)
            except OSError as err:  # target appeared meanwhile and is not empty
                raise FileExistsError(err.errno, f"{target} is not empty", str(target)) from None
            fsync_path(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sweep_staged(target: Path) -> None:
    """Delete staging folders of ``target`` left by killed writers (their lock is free)."""
    prefix = f".{target.name}{STORE_STAGING}"
    if not target.parent.is_dir():
        return
    for child in target.parent.iterdir():
        # No lock file yet: its writer is between mkdir and taking the lock; leave it.
        if not (child.name.startswith(prefix) and (child / LOCK_NAME).is_file()):
            continue
        with try_writer_lock(child) as dead:
            if dead:
                logger.info("removing %s, left by a write that was killed", child)
                shutil.rmtree(child, ignore_errors=True)
