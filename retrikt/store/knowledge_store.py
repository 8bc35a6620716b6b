"""The knowledge store's operations: create, open, search, add, save, verify, merge, reindex.

The layers below it: ``manifest`` (schema and commit point), ``index`` (FAISS), ``files``
(locking and atomic I/O). See the package docstring for the folder layout.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from retrikt.errors import StoreError
from retrikt.store import files as fs
from retrikt.store.index import IndexConfig, VectorIndex, choose_index
from retrikt.store.manifest import (
    DATA_DIR,
    ENTRIES_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_NAME,
    MANIFEST_NAME,
    VECTORS_NAME,
    content_digest,
    data_dir,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)

_OPEN_RETRIES = 20


# --------------------------------------------------------------------------- entries
@dataclass
class StoreEntry:
    """One generated example as the store keeps it."""

    fields: dict[str, Any]  # the task's own field names, e.g. {"premise": ..., "hypothesis": ...}
    text: str  # the rendered encoder input (what was embedded)
    requested_label: int | float  # the label the generator was asked for
    soft_labels: list[float]  # teacher distribution over label_names; [score] for regression
    rewards: dict[str, float] = field(default_factory=dict)
    generator: str = ""  # generator id (+ prompt hash) that wrote it
    rationale: str | None = None  # why its label holds, in words (``build-store --rationales``)
    id: str = ""  # content hash of (task, fields); set by add() when empty; the dedup key
    source: str = ""  # store_id of the store it was first added to; set by add(), kept by merge
    #: Each teacher's own soft labels by teacher id (``soft_labels`` is their combination,
    #: see ``retrikt.teachers.ensemble``); empty in stores of format 1.
    teacher_labels: dict[str, list[float]] = field(default_factory=dict)


def entry_id(task: str, fields: dict[str, Any]) -> str:
    """Content hash of an example: the same fields for the same task are the same example."""
    canonical = json.dumps(
        {"task": task, "fields": fields}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


#: The column format 2 added: each teacher's soft labels by teacher id.
TEACHER_LABELS = "teacher_labels"


def _entries_schema(
    regression: bool, num_labels: int, format_version: int = FORMAT_VERSION
) -> pa.Schema:
    columns = [
        ("id", pa.string()),
        ("text", pa.string()),
        ("fields", pa.string()),  # JSON object: tasks differ in field names and types
        ("requested_label", pa.float64() if regression else pa.int64()),
        ("soft_labels", pa.list_(pa.float32(), num_labels)),
        ("rewards", pa.map_(pa.string(), pa.float64())),
        ("generator", pa.string()),
        ("source", pa.string()),
        ("rationale", pa.string()),
    ]
    if format_version >= 2:
        columns.append((TEACHER_LABELS, pa.map_(pa.string(), pa.list_(pa.float32()))))
    return pa.schema(columns)


def _upgrade(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A format-1 entries table in the current schema: the columns it lacks are null."""
    for name in schema.names:
        if name not in table.schema.names:
            table = table.append_column(
                schema.field(name), pa.nulls(table.num_rows, schema.field(name).type)
            )
    return table.select(schema.names)


def _row_to_entry(row: dict[str, Any]) -> StoreEntry:
    return StoreEntry(
        fields=json.loads(row["fields"]),
        text=row["text"],
        requested_label=row["requested_label"],
        soft_labels=[float(v) for v in row["soft_labels"]],
        rewards=dict(row["rewards"] or []),
        generator=row["generator"],
        rationale=row["rationale"],
        id=row["id"],
        source=row["source"],
        teacher_labels={k: [float(v) for v in probs] for k, probs in row[TEACHER_LABELS] or []},
    )


@dataclass
class SearchResult:
    """Top-k neighbours of a batch of queries; ``entries`` is materialised only when read."""

    scores: np.ndarray  # (n, k) float32 inner products, -inf where fewer than k entries exist
    indices: np.ndarray  # (n, k) int64 row positions in the store, -1 where missing
    store: KnowledgeStore = field(repr=False)

    @cached_property
    def entries(self) -> list[list[StoreEntry]]:
        return [self.store.entries(row[row >= 0]) for row in self.indices]


@dataclass
class VerifyReport:
    """What ``verify`` checked: every file's size and sha256, and that the row counts agree."""

    path: str
    version: int
    data_dir: str
    entry_count: int
    files: dict[str, int]  # file name -> size in bytes
    index: str
    digest: str  # content_digest: pin it to demand this exact content later


class _Rows:
    """Growable float32 matrix; appending by np.concatenate would copy the whole store per batch."""

    def __init__(self, initial: np.ndarray):
        self._data = initial
        self._n = len(initial)

    def __len__(self) -> int:
        return self._n

    def view(self) -> np.ndarray:
        view = self._data[: self._n]
        view.flags.writeable = False
        return view

    def append(self, rows: np.ndarray) -> None:
        needed = self._n + len(rows)
        if needed > len(self._data) or not self._data.flags.owndata:
            grown = np.empty((max(needed, 2 * self._n, 1024), self._data.shape[1]), np.float32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : needed] = rows
        self._n = needed


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_destination(root: Path) -> None:
    """A new store goes into a new or empty folder, never over another store or other files."""
    if (root / MANIFEST_NAME).exists():
        raise StoreError(
            f"{root} already holds a knowledge store: open it with KnowledgeStore.open, "
            "or choose a new folder"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StoreError(f"{root} exists and is not an empty folder: choose a new folder")


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


def _parse_entries(path: Path, raw: bytes) -> pa.Table:
    """The entries table, parsed in this thread from bytes already checked.

    Not ``pq.read_table``: it goes through Arrow's dataset scanner, whose last reference to
    the Python bytes can be dropped on an Arrow worker thread after the call returns. If
    that happens while the interpreter exits, the worker cannot take the GIL, is torn down
    mid-C++-frame and the process aborts ("terminate called without an active exception",
    exit 134, seen after `retrikt store verify` printed OK).
    """
    try:
        return pq.ParquetFile(pa.BufferReader(raw)).read(use_threads=False)
    except (pa.ArrowException, OSError) as err:
        raise StoreError(f"{path} is not readable Parquet: {err}") from None


def _check_file(path: Path, record: dict[str, Any], verify: bool, data: bytes | None) -> None:
    """Fail naming the file when its size or sha256 differs from the manifest's record."""
    size = len(data) if data is not None else path.stat().st_size
    if size != record["size"]:
        problem = "truncated" if size < record["size"] else "longer than saved"
        raise StoreError(
            f"{path} is {problem}: {size} bytes, the manifest says {record['size']} "
            "(restore the store from a good copy)"
        )
    if verify:
        digest = fs.sha256_bytes(data) if data is not None else fs.sha256_file(path)
        if digest != record["sha256"]:
            raise StoreError(
                f"{path} was altered or corrupted: its sha256 is {digest[:16]}..., the manifest "
                f"says {record['sha256'][:16]}... (restore the store from a good copy)"
            )


def _check_vectors(vectors: Any, rows: int, dim: int, normalized: bool, what: str) -> np.ndarray:
    """``vectors`` as a contiguous float32 (rows, dim) array, or a StoreError saying what is off."""
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape != (rows, dim):
        raise StoreError(
            f"{what} have shape {array.shape} but ({rows}, {dim}) was needed: one row per "
            f"entry, {dim} dims as the store's encoder produces"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise StoreError(f"{what} must be floating point, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise StoreError(f"{what} contain NaN or infinite values")
    if np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
        raise StoreError(f"{what} exceed the float16 range (|x| > 65504) that indexes use")
    if normalized and rows:
        norms = np.linalg.norm(array, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if len(bad):
            raise StoreError(
                f"{what} row {bad[0]} has norm {norms[bad[0]]:.4f}, but the store is normalized "
                "(inner product = cosine): L2-normalise the vectors (faiss.normalize_L2) or "
                "create the store with normalized=False"
            )
    return array


def _common(values: list[Any]) -> Any:
    """One value when all stores agree, else all distinct ones under ``merged``."""
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    return distinct[0] if len(distinct) == 1 else {"merged": distinct}


def _all_teachers(stores: Sequence[KnowledgeStore]) -> list[dict[str, Any]] | None:
    """Every teacher of the stores, once by id (a format-1 store's ``teacher`` counts)."""
    found: dict[str, dict[str, Any]] = {}
    for store in stores:
        manifest = store._manifest
        listed = manifest.get("teachers") or []
        single = manifest.get("teacher")
        if not listed and isinstance(single, dict) and single.get("id"):
            listed = [single]
        for teacher in listed:
            found.setdefault(str(teacher.get("id")), teacher)
    return list(found.values()) or None


def _writer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        retrikt_version = version("retrikt")
    except PackageNotFoundError:
        retrikt_version = "unknown"
    return {"retrikt": retrikt_version, "faiss": faiss.__version__, "pyarrow": pa.__version__}


# --------------------------------------------------------------------------- the store
class KnowledgeStore:
    """Teacher-labelled examples with their embeddings and a FAISS index over them.

    One process writes at a time (``save`` takes a file lock and refuses to overwrite a
    version it did not start from); any number of readers may open the folder meanwhile.
    An instance is not thread-safe for writes.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], table: pa.Table, vectors: np.ndarray):
        self.path = path
        self._manifest = manifest
        self._tables = [table]
        self._vectors = _Rows(vectors)
        self._ids = set(table.column("id").to_pylist())
        self._index: VectorIndex | None = None
        self._dirty = False

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        task: str,
        label_names: list[str] | None,
        encoder_id: str,
        dim: int,
        normalized: bool = True,
        generator: dict | None = None,
        teacher: dict | None = None,
        index: str = "auto",
        teachers: list[dict] | None = None,
        combination: dict | None = None,
    ) -> KnowledgeStore:
        """A new, empty store saved at ``path`` (a new or empty folder).

        ``label_names`` is None for regression tasks (soft labels are then ``[score]``);
        ``normalized`` means vectors are unit length so inner product is cosine similarity.
        ``teachers`` lists every teacher whose labels the entries keep (id, model, weights
        digest, held-out score) and ``combination`` how ``soft_labels`` combine them
        (``retrikt.teachers.ensemble.Combination.to_dict``).
        """
        store = cls._new(
            path,
            task=task,
            label_names=label_names,
            encoder_id=encoder_id,
            dim=dim,
            normalized=normalized,
            generator=generator,
            teacher=teacher,
            index=index,
            teachers=teachers,
            combination=combination,
        )
        store._publish()
        return store

    @classmethod
    def _new(
        cls,
        path: str | os.PathLike,
        *,
        task: str,
        label_names: list[str] | None,
        encoder_id: str,
        dim: int,
        normalized: bool,
        generator: Any,
        teacher: Any,
        index: str,
        teachers: list[dict] | None = None,
        combination: dict | None = None,
    ) -> KnowledgeStore:
        """A store in memory only, bound for ``path``; ``_publish`` writes it there whole."""
        root = Path(path)
        _check_destination(root)
        if not isinstance(dim, int) or dim < 1:
            raise StoreError(f"dim must be a positive integer, got {dim!r}")
        choose_index(index, 0, dim)  # rejects unknown kinds before touching the disk
        if label_names is not None and len(label_names) < 1:
            raise StoreError("label_names is empty; pass None for a regression task")
        for name, value in (
            ("generator", generator),
            ("teacher", teacher),
            ("teachers", teachers),
            ("combination", combination),
        ):
            try:
                json.dumps(value)
            except TypeError as err:
                raise StoreError(f"{name} metadata must be JSON-serialisable: {err}") from None
        now = _now()
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "store_id": uuid.uuid4().hex,
            "version": 0,
            "created": now,
            "updated": now,
            "task": task,
            "label_names": list(label_names) if label_names is not None else None,
            "encoder": {"id": encoder_id, "dim": dim, "normalized": bool(normalized)},
            "generator": generator,
            "teacher": teacher,
            "teachers": teachers,
            "combination": combination,
            "entry_count": 0,
            "index": {"requested": index},
            "sources": [],
            "writer": _writer_versions(),
            "data": None,
            "files": {},
        }
        num_labels = len(label_names) if label_names is not None else 1
        table = _entries_schema(label_names is None, num_labels).empty_table()
        store = cls(root, manifest, table, np.zeros((0, dim), dtype=np.float32))
        store._dirty = True
        return store

    def _publish(self) -> None:
        """Write this new store's first version aside and rename the whole folder into place.

        A process killed before the rename leaves no store at ``path`` (only a staging folder
        beside it, removed by the next write there), so a rerun starts clean.
        """
        _check_destination(self.path)
        with fs.staged_folder(self.path) as staging:
            self._commit(staging)
        self._dirty = False
        logger.info("wrote %s: version %d, %d entries", self.path, self.version, len(self))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        expected_encoder: str | None = None,
        expected_dim: int | None = None,
        expected_digest: str | None = None,
        verify: bool = True,
    ) -> KnowledgeStore:
        """Open the current version, checking schema, encoder, dimension, sizes and sha256.

        ``verify=False`` skips hashing (sizes and counts are still checked);
        ``expected_digest`` pins the content (``content_digest``) the caller recorded. If a
        writer replaces the version while it is being read, the new version is opened instead.
        Staging folders left by killed writers are removed when no writer is active.
        """
        root = Path(path)
        for _ in range(_OPEN_RETRIES):
            manifest = read_manifest(root)
            cls._check_expected(root, manifest, expected_encoder, expected_dim, expected_digest)
            try:
                table, vectors, index = cls._load_version(root, manifest, verify)
            except FileNotFoundError as err:
                if read_manifest(root).get("data") == manifest.get("data"):
                    raise StoreError(
                        f"{err.filename} is missing: the store at {root} is incomplete "
                        "(restore it from a good copy)"
                    ) from None
                logger.debug("%s was saved again while being opened; reading the new version", root)
                continue
            store = cls(root, manifest, table, vectors)
            store._index = index
            store._sweep()
            return store
        raise StoreError(
            f"{root} changed {_OPEN_RETRIES} times while being opened: a writer is saving "
            "faster than it can be read; retry when it is idle"
        )

    def _sweep(self) -> None:
        """Remove leftovers of killed saves, unless they are the evidence ``verify`` needs.

        An empty store beside an unfinished save is kept as it is: that save was filling it.
        """
        with fs.try_writer_lock(self.path) as idle:
            if not idle or (len(self) == 0 and self._interrupted_save() is not None):
                return
            for orphan in fs.orphans(self.path):
                logger.info("removing %s, left by a save that was killed", orphan)
                fs.remove(orphan)

    def _interrupted_save(self) -> Path | None:
        """The staging folder of a later version whose writer is gone (caller holds the lock)."""
        later = [
            p
            for p in fs.orphans(self.path)
            if p.is_dir() and p.name[len(fs.STAGING_PREFIX) :] > self._manifest["data"]
        ]
        return later[0] if later else None

    @staticmethod
    def _check_expected(
        root: Path,
        manifest: dict[str, Any],
        encoder: str | None,
        dim: int | None,
        digest: str | None,
    ) -> None:
        stored = manifest["encoder"]
        if encoder is not None and stored["id"] != encoder:
            raise StoreError(
                f"{root} was embedded with encoder {stored['id']!r}, not {encoder!r}: its vectors "
                f"are not comparable; re-embed it with `retrikt store reindex {root} "
                f"--encoder {encoder} --out NEW_PATH`"
            )
        if dim is not None and stored["dim"] != dim:
            raise StoreError(
                f"{root} holds {stored['dim']}-dimensional vectors but {dim} were expected: "
                "it was built with a different encoder; re-embed it with `retrikt store reindex`"
            )
        if digest is not None and content_digest(manifest) != digest:
            raise StoreError(
                f"{root} holds different content (digest {content_digest(manifest)[:16]}...) "
                f"than the one expected ({digest[:16]}...): it was changed or replaced"
            )

    @staticmethod
    def _load_version(
        root: Path, manifest: dict[str, Any], verify: bool
    ) -> tuple[pa.Table, np.ndarray, VectorIndex]:
        """Read and check one immutable data folder; FileNotFoundError if it was removed."""
        folder = data_dir(root, manifest)
        files = manifest["files"]
        # Entries and index are read once into memory, checked, then parsed from those bytes,
        # so a file cannot change between its check and its use.
        entries_path = folder / ENTRIES_NAME
        raw = entries_path.read_bytes()
        _check_file(entries_path, files[ENTRIES_NAME], verify, raw)
        table = _parse_entries(entries_path, raw)
        labels = manifest["label_names"]
        regression, width = labels is None, len(labels) if labels is not None else 1
        expected = _entries_schema(regression, width, manifest["format_version"])
        if not table.schema.equals(expected):
            raise StoreError(
                f"{entries_path} does not have the columns the manifest implies "
                f"({len(labels or [None])} soft-label values per row for labels {labels}): "
                f"it has {_describe(table.schema)}"
            )
        table = _upgrade(table, _entries_schema(regression, width))
        vectors_path = folder / VECTORS_NAME
        _check_file(vectors_path, files[VECTORS_NAME], verify, None)
        try:
            vectors = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise StoreError(f"{vectors_path} is not a readable .npy array: {err}") from None
        index_path = folder / INDEX_NAME
        raw = index_path.read_bytes()
        _check_file(index_path, files[INDEX_NAME], verify, raw)
        config = IndexConfig.from_dict(manifest["index"])
        try:
            index = VectorIndex.from_bytes(config, raw, manifest["index"]["max_norm"])
        except RuntimeError as err:
            raise StoreError(f"{index_path} is not a readable FAISS index: {err}") from None
        encoder = manifest["encoder"]
        counts = {
            "manifest entry_count": manifest["entry_count"],
            ENTRIES_NAME: table.num_rows,
            VECTORS_NAME: vectors.shape[0] if vectors.ndim else None,
            INDEX_NAME: index.ntotal,
        }
        if len(set(counts.values())) != 1:
            raise StoreError(f"{folder} is inconsistent: row counts differ {counts}")
        if vectors.ndim != 2 or vectors.shape[1] != encoder["dim"] or vectors.dtype != np.float32:
            raise StoreError(
                f"{vectors_path} holds {vectors.dtype} {vectors.shape}, but the manifest says "
                f"float32 (N, {encoder['dim']})"
            )
        if index.index.d != encoder["dim"]:
            raise StoreError(
                f"{index_path} indexes {index.index.d}-dim vectors, the manifest says "
                f"{encoder['dim']}"
            )
        return table, vectors, index

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as last saved or loaded (plus unsaved metadata changes)."""
        return copy.deepcopy(self._manifest)

    @property
    def task(self) -> str:
        return self._manifest["task"]

    @property
    def label_names(self) -> list[str] | None:
        names = self._manifest["label_names"]
        return list(names) if names is not None else None

    @property
    def num_labels(self) -> int:
        """Width of the soft-label rows: number of labels, or 1 for regression."""
        return len(self._manifest["label_names"] or [None])

    @property
    def encoder_id(self) -> str:
        return self._manifest["encoder"]["id"]

    @property
    def dim(self) -> int:
        return int(self._manifest["encoder"]["dim"])

    @property
    def normalized(self) -> bool:
        return bool(self._manifest["encoder"]["normalized"])

    @property
    def store_id(self) -> str:
        return self._manifest["store_id"]

    @property
    def version(self) -> int:
        return int(self._manifest["version"])

    @property
    def requested_index(self) -> str:
        return self._manifest["index"]["requested"]

    @property
    def index_config(self) -> IndexConfig:
        """The index the store searches with now (built on demand after adds)."""
        return self._ensure_index().config

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return (
            f"KnowledgeStore({str(self.path)!r}, task={self.task!r}, entries={len(self)}, "
            f"encoder={self.encoder_id!r}, version={self.version})"
        )

    # ------------------------------------------------------------------ reading
    @property
    def _table(self) -> pa.Table:
        if len(self._tables) > 1:
            self._tables = [pa.concat_tables(self._tables)]
        return self._tables[0]

    def entries(self, rows: Sequence[int] | np.ndarray | None = None) -> list[StoreEntry]:
        """All entries in index order, or those at ``rows`` (cheap for a few rows of a store)."""
        table = self._table if rows is None else self._table.take(np.asarray(rows, dtype=np.int64))
        return [_row_to_entry(row) for row in table.to_pylist()]

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of the entries table (see ``knowledge_store/README.md``), without copying."""
        if name not in self._table.schema.names:
            raise StoreError(f"no column {name!r}; columns are {self._table.schema.names}")
        return self._table.column(name)

    def texts(self) -> list[str]:
        return self.column("text").to_pylist()

    def ids(self) -> list[str]:
        return self.column("id").to_pylist()

    def soft_label_matrix(self) -> np.ndarray:
        """(N, C) float32 teacher soft labels, row order = index order."""
        column = self.column("soft_labels").combine_chunks()
        return column.flatten().to_numpy().reshape(len(self), self.num_labels).astype(np.float32)

    def requested_labels(self) -> np.ndarray:
        """(N,) labels the generator was asked for: int64, or float64 for regression."""
        return self.column("requested_label").to_numpy()

    def embeddings(self) -> np.ndarray:
        """(N, dim) float32 stored vectors, read-only (memory-mapped from disk after open)."""
        return self._vectors.view()

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k entries by inner product for each query row (a 1-D array is one query)."""
        if not isinstance(k, int | np.integer) or k < 1:
            raise StoreError(f"k must be a positive integer, got {k!r}")
        matrix = np.asarray(queries, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise StoreError(
                f"queries have shape {np.shape(queries)} but this store holds {self.dim}-dim "
                f"vectors from encoder {self.encoder_id!r}: embed queries with the same encoder"
            )
        matrix = np.ascontiguousarray(matrix)
        if len(self) == 0:
            scores = np.full((len(matrix), k), -np.inf, dtype=np.float32)
            return SearchResult(scores, np.full((len(matrix), k), -1, dtype=np.int64), self)
        scores, indices = self._ensure_index().search(matrix, int(k), self.embeddings())
        return SearchResult(scores, indices, self)

    # ------------------------------------------------------------------ writing
    def add(self, entries: Sequence[StoreEntry], embeddings: np.ndarray) -> int:
        """Append entries with their vectors (row i embeds entries[i]); returns how many were new.

        An entry whose id (content hash of task + fields when not given) is already in the
        store, or earlier in the same batch, is skipped: adding an example twice keeps one.
        """
        entries = list(entries)
        vectors = _check_vectors(embeddings, len(entries), self.dim, self.normalized, "embeddings")
        return self._append(self._entries_to_table(entries), vectors)

    def _entries_to_table(self, entries: list[StoreEntry]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in self._table.schema.names}
        names = self.label_names
        for i, entry in enumerate(entries):
            if not isinstance(entry, StoreEntry):
                raise StoreError(f"entry {i} is a {type(entry).__name__}, not a StoreEntry")
            if not isinstance(entry.fields, dict) or not isinstance(entry.text, str):
                raise StoreError(f"entry {i}: fields must be a dict and text a string")
            wanted = f"labels {names}" if names is not None else "one score (regression)"
            if len(entry.soft_labels) != self.num_labels:
                raise StoreError(
                    f"entry {i}: soft_labels has {len(entry.soft_labels)} values but task "
                    f"{self.task!r} has {wanted}"
                )
            for teacher, probs in entry.teacher_labels.items():
                if len(probs) != self.num_labels:
                    raise StoreError(
                        f"entry {i}: teacher {teacher!r} has {len(probs)} label values but "
                        f"task {self.task!r} has {wanted}"
                    )
            label = entry.requested_label
            if names is not None and (
                isinstance(label, bool)
                or not float(label).is_integer()
                or not 0 <= int(label) < len(names)
            ):
                raise StoreError(
                    f"entry {i}: requested_label {label!r} is not an index into {names}"
                )
            try:
                fields_json = json.dumps(entry.fields, ensure_ascii=False)
            except TypeError as err:
                raise StoreError(f"entry {i}: fields are not JSON-serialisable: {err}") from None
            columns["id"].append(entry.id or entry_id(self.task, entry.fields))
            columns["text"].append(entry.text)
            columns["fields"].append(fields_json)
            columns["requested_label"].append(int(label) if names is not None else float(label))
            columns["soft_labels"].append([float(v) for v in entry.soft_labels])
            columns["rewards"].append([(str(k), float(v)) for k, v in entry.rewards.items()])
            columns["generator"].append(entry.generator)
            columns["source"].append(entry.source or self.store_id)
            columns["rationale"].append(entry.rationale)
            columns[TEACHER_LABELS].append(
                [(str(t), [float(v) for v in probs]) for t, probs in entry.teacher_labels.items()]
            )
        return pa.table(columns, schema=self._table.schema)

    def _append(self, table: pa.Table, vectors: np.ndarray) -> int:
        """Add the rows whose id is new; the single path for add, merge and reindex."""
        keep: list[int] = []
        batch: set[str] = set()
        for row, id_ in enumerate(table.column("id").to_pylist()):
            if id_ not in self._ids and id_ not in batch:
                keep.append(row)
                batch.add(id_)
        if not keep:
            return 0
        if len(keep) < table.num_rows:
            table, vectors = table.take(keep), vectors[keep]
        self._ids.update(batch)
        self._tables.append(table.cast(self._tables[0].schema))
        self._vectors.append(vectors)
        target = choose_index(self.requested_index, len(self), self.dim)
        current = self._index.config if self._index is not None else None
        if current is not None and (current.kind, current.factory) == (target.kind, target.factory):
            self._index.add(vectors)
        else:
            self._index = None  # rebuilt from the stored vectors at the next search or save
        self._dirty = True
        return len(keep)

    def _ensure_index(self) -> VectorIndex:
        if self._index is None:
            config = choose_index(self.requested_index, len(self), self.dim)
            logger.info(
                "building %s index (%s) over %d entries", config.kind, config.factory, len(self)
            )
            self._index = VectorIndex.build(config, self.embeddings())
        return self._index

    def save(self) -> None:
        """Write a new version atomically: new data folder aside, then swap the manifest.

        Raises StoreError if another writer saved this store since it was opened here.
        """
        if self._manifest["data"] is None:  # made by _new, never written
            self._publish()
            return
        with fs.writer_lock(self.path):
            on_disk = read_manifest(self.path)
            if (on_disk["store_id"], on_disk["version"]) != (self.store_id, self.version):
                raise StoreError(
                    f"{self.path} was saved by another writer (now version "
                    f"{on_disk['version']}, this copy has version {self.version}): reopen "
                    "it and apply the changes again"
                )
            if not self._dirty:
                return
            previous = self._manifest["data"]
            self._commit(self.path)
            self._dirty = False
            for orphan in fs.orphans(self.path):
                fs.remove(orphan)
            keep = (previous, self._manifest["data"])
            for child in self.path.iterdir():  # versions older than the previous one
                if DATA_DIR.match(child.name) and child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
        logger.info("saved %s: version %d, %d entries", self.path, self.version, len(self))

    def _commit(self, root: Path) -> None:
        """Write the next version into ``root``: a staged data folder, then the manifest swap.

        The caller holds the folder's writer lock.
        """
        index = self._ensure_index()
        version = self.version + 1
        data_name = f"v{version:06d}-{uuid.uuid4().hex[:8]}"
        tmp = root / f"{fs.STAGING_PREFIX}{data_name}"
        tmp.mkdir()
        try:
            files = self._write_data(tmp, index)
            os.rename(tmp, root / data_name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fs.fsync_path(root)
        manifest = {"teachers": None, "combination": None, **self._manifest}
        manifest.update(
            format_version=FORMAT_VERSION,  # a format-1 store opened here is saved upgraded
            version=version,
            updated=_now(),
            entry_count=len(self),
            data=data_name,
            files=files,
            writer=_writer_versions(),
            index={
                "requested": self.requested_index,
                **index.config.to_dict(),
                "max_norm": index.max_norm,
            },
        )
        write_manifest(root, manifest)
        self._manifest = manifest

    def _write_data(self, folder: Path, index: VectorIndex) -> dict[str, dict[str, Any]]:
        pq.write_table(self._table, folder / ENTRIES_NAME, compression="zstd")
        np.save(folder / VECTORS_NAME, self.embeddings(), allow_pickle=False)
        faiss.write_index(index.index, str(folder / INDEX_NAME))
        files = {}
        for name in (ENTRIES_NAME, VECTORS_NAME, INDEX_NAME):
            path = folder / name
            fs.fsync_path(path)
            files[name] = {"size": path.stat().st_size, "sha256": fs.sha256_file(path)}
        fs.fsync_path(folder)
        return files

    @property
    def digest(self) -> str:
        """``content_digest`` of the saved version: pin it to demand this exact content later."""
        if self._manifest["data"] is None:
            raise StoreError(f"{self.path} has never been saved")
        return content_digest(self._manifest)

    def verify(self) -> VerifyReport:
        """Re-read this version from disk and check every size, sha256 and count.

        Raises StoreError naming the file when anything is wrong, and for an empty store whose
        folder holds the staging folder of a later save that never finished: that store is
        empty because it was being filled when its writer was killed, not by design (a store
        created empty has no such folder; every finished or failed save removes its own).
        """
        if self._manifest["data"] is None:
            raise StoreError(f"{self.path} has never been saved")
        read_manifest(self.path)  # the manifest itself must still be intact
        _, _, index = self._load_version(self.path, self._manifest, verify=True)
        if self._manifest["entry_count"] == 0:
            with fs.try_writer_lock(self.path) as idle:
                unfinished = self._interrupted_save() if idle else None
            if unfinished is not None:
                raise StoreError(
                    f"{self.path} is empty because a write was interrupted: {unfinished.name} "
                    "was never finished; rerun the command that wrote it (delete the folder "
                    "first if it was a new store)"
                )
        return VerifyReport(
            path=str(self.path),
            version=self.version,
            data_dir=self._manifest["data"],
            entry_count=self._manifest["entry_count"],
            files={name: rec["size"] for name, rec in self._manifest["files"].items()},
            index=f"{index.config.kind} ({index.config.factory})",
            digest=self.digest,
        )

    # ------------------------------------------------------------------ merge / reindex
    @classmethod
    def merge(
        cls,
        paths: Sequence[str | os.PathLike],
        out: str | os.PathLike,
        *,
        index: str = "auto",
        expected_encoder: str | None = None,
    ) -> KnowledgeStore:
        """One store holding every distinct entry of ``paths`` (first copy wins), saved at ``out``.

        All stores must share task, labels and encoder. Each entry keeps its ``generator`` and
        ``source`` (the store it was first added to); the manifest's ``sources`` lists every
        input store with its generator, teacher and how many of its entries were new.
        """
        if not paths:
            raise StoreError("merge needs at least one store")
        sources = [cls.open(p, expected_encoder=expected_encoder) for p in paths]
        first = sources[0]
        for other in sources[1:]:
            for what, ours, theirs in (
                ("task", first.task, other.task),
                ("label_names", first.label_names, other.label_names),
                ("encoder", first.encoder_id, other.encoder_id),
                ("dim", first.dim, other.dim),
                ("normalized", first.normalized, other.normalized),
            ):
                if ours != theirs:
                    hint = " (re-embed one with `retrikt store reindex`)" if what != "task" else ""
                    raise StoreError(
                        f"cannot merge {other.path} with {first.path}: {what} differs "
                        f"({theirs!r} vs {ours!r}){hint}"
                    )
        merged = cls._new(
            out,
            task=first.task,
            label_names=first.label_names,
            encoder_id=first.encoder_id,
            dim=first.dim,
            normalized=first.normalized,
            generator=_common([s._manifest["generator"] for s in sources]),
            teacher=_common([s._manifest["teacher"] for s in sources]),
            index=index,
            teachers=_all_teachers(sources),
            combination=_common([s._manifest.get("combination") for s in sources]),
        )
        for source in sources:
            added = merged._append(source._table, source.embeddings())
            merged._manifest["sources"].append(
                {
                    "path": str(source.path),
                    "store_id": source.store_id,
                    "version": source.version,
                    "generator": source._manifest["generator"],
                    "teacher": source._manifest["teacher"],
                    "entries": len(source),
                    "added": added,
                    "duplicates": len(source) - added,
                    "sources": source._manifest["sources"],
                }
            )
            logger.info("merged %s: %d of %d entries new", source.path, added, len(source))
        merged.save()
        return merged

    def _derived(self, out: str | os.PathLike, encoder_id: str, dim: int) -> KnowledgeStore:
        """An empty new store at ``out`` with this one's metadata, teachers and sources: the
        start of ``subset`` and ``reindex`` (which may change the encoder)."""
        new = KnowledgeStore._new(
            out,
            task=self.task,
            label_names=self.label_names,
            encoder_id=encoder_id,
            dim=dim,
            normalized=self.normalized,
            generator=self._manifest["generator"],
            teacher=self._manifest["teacher"],
            index=self.requested_index,
            teachers=self._manifest.get("teachers"),
            combination=self._manifest.get("combination"),
        )
        new._manifest["sources"] = copy.deepcopy(self._manifest["sources"])
        return new

    def subset(
        self,
        rows: Sequence[int] | np.ndarray,
        out: str | os.PathLike,
        *,
        condensed_from: dict[str, Any] | None = None,
    ) -> KnowledgeStore:
        """A new store at ``out`` holding the entries at ``rows``, in that order, saved.

        Task, labels, encoder, generator, teacher(s) with their combination, and each entry's
        id, provenance and per-teacher labels are kept, and the vectors are copied rather than
        re-embedded. ``condensed_from`` is the manifest's lineage record (``retrikt.condense``
        writes it). Written like ``merge``: whole, beside ``out``, then renamed into place.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and not 0 <= rows.min() <= rows.max() < len(self)):
            raise StoreError(
                f"rows to keep of {self.path} must be positions 0..{len(self) - 1}, got "
                f"{rows.tolist()[:5]}..."
            )
        new = self._derived(out, self.encoder_id, self.dim)
        new._append(self._table.take(rows), np.ascontiguousarray(self.embeddings()[rows]))
        if self._manifest.get("reindexed_from") is not None:
            new._manifest["reindexed_from"] = copy.deepcopy(self._manifest["reindexed_from"])
        if condensed_from is not None:
            new._manifest["condensed_from"] = condensed_from
        new.save()
        return new

    def reindex(
        self,
        embed: Callable[[list[str]], np.ndarray],
        encoder_id: str,
        out: str | os.PathLike | None = None,
        *,
        batch_size: int = 256,
    ) -> KnowledgeStore:
        """Re-embed every entry's ``text`` with ``embed`` and rebuild the index.

        Writes a new store at ``out`` (same entries, ids and provenance), or with ``out=None``
        a new version of this store; either way the old vectors stay intact until the save
        succeeds.
        """
        texts = self.texts()
        batches = range(0, len(texts), batch_size)
        chunks = [
            np.asarray(embed(texts[start : start + batch_size]), dtype=np.float32)
            for start in tqdm(batches, desc="re-embedding", disable=len(batches) < 2)
        ] or [np.asarray(embed([]), dtype=np.float32)]
        if any(chunk.ndim != 2 for chunk in chunks):
            raise StoreError("embed() must return a 2-D array (one row per text)")
        vectors = np.concatenate(chunks)
        dim = int(vectors.shape[1])
        reindexed_from = {
            "store_id": self.store_id,
            "version": self.version,
            "encoder": dict(self._manifest["encoder"]),
        }
        vectors = _check_vectors(vectors, len(texts), dim, self.normalized, "embed() output")
        if out is None:
            encoder = {"id": encoder_id, "dim": dim, "normalized": self.normalized}
            self._manifest = {
                **self._manifest,
                "encoder": encoder,
                "reindexed_from": reindexed_from,
            }
            self._vectors = _Rows(vectors)
            self._index = None
            self._dirty = True
            self.save()
            return self
        new = self._derived(out, encoder_id, dim)
        new._append(self._table, vectors)
        new._manifest["reindexed_from"] = {"path": str(self.path), **reindexed_from}
        new.save()
        return new
