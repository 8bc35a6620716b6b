"""``manifest.json``: its strict schema, and reading and writing it.

The manifest is the commit point of a store and the only place a reader learns which folder
to read, so it is validated in full before anything else is touched: every key and type, the
data folder's name (a plain ``vNNNNNN-xxxxxxxx`` child of the store, never a path), and the
files it lists. ``manifest_sha256`` only catches accidental edits (anyone can recompute it);
what a store *is* is pinned by ``content_digest``: the sha256 of the data files' checksums and
of the metadata that gives them meaning, which callers can record and demand (``open``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrikt.errors import StoreError
from retrikt.store.files import sha256_bytes, write_atomic

FORMAT_NAME = "retrikt-knowledge-store"
#: 2 added the entries' ``teacher_labels`` column (each teacher's soft labels) and the
#: manifest's ``teachers`` and ``combination``. Format 1 stores still open (read as having
#: no per-teacher labels) and are written as format 2 when saved again; a RetriKT that
#: reads only format 1 refuses a format 2 store by its version, not by a schema error.
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
ENTRIES_NAME = "entries.parquet"
VECTORS_NAME = "vectors.npy"
INDEX_NAME = "index.faiss"
DATA_FILES = (ENTRIES_NAME, VECTORS_NAME, INDEX_NAME)
INDEX_KINDS = ("auto", "flat", "hnsw", "ivfpq", "ivfsq")
DATA_DIR = re.compile(r"^v(\d{6})-[0-9a-f]{8}$")

_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_Name = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EncoderRecord(_Strict):
    id: _Name
    dim: int = Field(ge=1)
    normalized: bool


class IndexRecord(_Strict):
    requested: Literal["auto", "flat", "hnsw", "ivfpq", "ivfsq"]
    kind: Literal["flat", "hnsw", "ivfpq", "ivfsq"]
    factory: _Name
    search_params: dict[str, int]
    build_params: dict[str, int]
    max_norm: float = Field(ge=0, allow_inf_nan=False)


class FileRecord(_Strict):
    size: int = Field(ge=0)
    sha256: _Hex64


class CondensedRecord(_Strict):
    """Lineage of a store made by ``retrikt store condense``: its source and how it was cut."""

    path: str
    store_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    version: int = Field(ge=1)
    digest: _Hex64  # the source's content_digest: open(path, expected_digest=...) pins it
    entries: int = Field(ge=0)  # in the source
    method: _Name
    ratio: float = Field(gt=0, le=1, allow_inf_nan=False)
    seed: int
    settings: dict[str, Any]  # the rest of the CondenseConfig
    kept: dict[str, list[int]]  # label (or score bucket) -> [entries in the source, kept]
    condensed_from: dict[str, Any] | None = None  # the source's own lineage, when condensed


class Manifest(_Strict):
    """Every key of a format-1 or format-2 manifest (see knowledge_store/README.md)."""

    format: Literal["retrikt-knowledge-store"]
    format_version: Literal[1, 2]
    store_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    version: int = Field(ge=1)
    created: _Name
    updated: _Name
    task: _Name
    label_names: Annotated[list[_Name], Field(min_length=1)] | None
    encoder: EncoderRecord
    generator: Any
    teacher: Any
    teachers: list[dict[str, Any]] | None = None  # format 2: every teacher the entries keep
    combination: dict[str, Any] | None = None  # format 2: how soft_labels combine them
    entry_count: int = Field(ge=0)
    index: IndexRecord
    sources: list[dict[str, Any]]
    reindexed_from: dict[str, Any] | None = None
    condensed_from: CondensedRecord | None = None
    writer: dict[str, str]
    data: Annotated[str, Field(pattern=DATA_DIR.pattern)]
    files: dict[Literal["entries.parquet", "vectors.npy", "index.faiss"], FileRecord]
    manifest_sha256: _Hex64


def manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def content_digest(manifest: dict[str, Any]) -> str:
    """What the store holds, independent of when and by whom it was saved.

    Covers the data files' sha256 (checked against the bytes on every verifying open) and the
    metadata that decides what they mean: task, labels, encoder, row count and index. The
    same entries re-saved give the same digest; any other change gives another.
    """
    body = {
        "files": {name: manifest["files"][name]["sha256"] for name in DATA_FILES},
        "task": manifest["task"],
        "label_names": manifest["label_names"],
        "encoder": manifest["encoder"],
        "entry_count": manifest["entry_count"],
        "index": {k: manifest["index"][k] for k in ("kind", "factory", "search_params")},
    }
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Stamp ``manifest_sha256`` and replace ``manifest.json`` atomically (the commit)."""
    manifest["manifest_sha256"] = manifest_digest(manifest)
    write_atomic(root / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, checked for format, schema and self-consistency before anything is read."""
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise StoreError(f"no knowledge store at {root}: the folder does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(
            f"{root} is not a knowledge store: it has no {MANIFEST_NAME} "
            "(create one with KnowledgeStore.create or `retrikt build-store`)"
        ) from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise StoreError(f"{path} is not a text file ({err}): it is corrupted") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is truncated "
            "or corrupted"
        ) from None
    except RecursionError:
        raise StoreError(f"{path} is nested too deeply to be a manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not a RetriKT knowledge-store manifest (no format field)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{path}: format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path} was written in store format_version {version}, newer than this RetriKT "
            f"reads (up to {FORMAT_VERSION}): upgrade retrikt to open it"
        )
    _check_schema(path, manifest)
    if manifest["manifest_sha256"] != manifest_digest(manifest):
        raise StoreError(
            f"{path} was altered after it was written: its content no longer matches its "
            "manifest_sha256 (restore the file from the store's source)"
        )
    return manifest


def _check_schema(path: Path, manifest: dict[str, Any]) -> None:
    """Every key and type, and the cross-field rules a schema cannot say."""
    try:
        Manifest.model_validate(manifest)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "manifest"
        kind = problem["type"]
        if kind == "missing":
            reason = "is missing"
        elif kind == "extra_forbidden":
            reason = "is not a field of this format"
        else:
            reason = f"is invalid: {problem['msg']} (got {_short(problem.get('input'))})"
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise StoreError(f"{path}: {where!r} {reason}{more}") from None
    missing = set(DATA_FILES) - set(manifest["files"])
    if missing:
        raise StoreError(f"{path} lists no checksum for {sorted(missing)}")
    number = int(DATA_DIR.match(manifest["data"]).group(1))  # type: ignore[union-attr]
    if number != manifest["version"]:
        raise StoreError(
            f"{path}: data folder {manifest['data']!r} does not belong to version "
            f"{manifest['version']}"
        )


def data_dir(root: Path, manifest: dict[str, Any]) -> Path:
    """The current data folder: a direct child of the store, not a link leading out of it."""
    folder = root / manifest["data"]
    if folder.is_symlink() or folder.resolve().parent != root.resolve():
        raise StoreError(
            f"{root / MANIFEST_NAME}: data folder {manifest['data']!r} is a link out of the store "
            "folder; a store reads only its own folders"
        )
    return folder


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
