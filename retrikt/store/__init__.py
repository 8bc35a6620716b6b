"""The knowledge store: teacher-labelled examples, their embeddings and a FAISS index, kept as a
versioned, checksummed folder of standard files.

Users keep stores for months, share them and rebuild students against them, so a store is
plain JSON, Parquet, ``.npy`` and a FAISS index rather than a pickle, and its manifest pins
down what produced every byte. Layout (documented in ``knowledge_store/README.md``)::

    STORE/
      manifest.json        the commit point: metadata, current data folder, sha256 of each file
      .lock                writers hold an flock on it while saving
      v000007-1a2b3c4d/    immutable data folder of the current version
        entries.parquet    one row per example (id, fields, text, labels, rewards, provenance)
        vectors.npy        float32 (N, dim) embeddings, row i = entry i
        index.faiss        the search index over those vectors
      v000006-.../         the previous version, kept for readers that opened it before the swap

Every write stages and renames: a save writes a new data folder aside and then replaces
``manifest.json``; a new store (create, merge, reindex to a new folder) is written whole
beside its destination and renamed onto it. Readers resolve the manifest once and read only
the folder it names, so they see the old or the new version and never a mix.

The store never embeds text itself: callers pass vectors (``retrikt.encoder.Encoder`` makes
them), so the store stays independent of any model.

Modules, one layer each: ``files`` (locking, atomic I/O), ``manifest`` (schema, commit point),
``index`` (FAISS index choice and search), ``knowledge_store`` (the operations).
"""

from retrikt.store.index import IndexConfig, VectorIndex, choose_index
from retrikt.store.knowledge_store import (
    KnowledgeStore,
    SearchResult,
    StoreEntry,
    VerifyReport,
    entry_id,
)
from retrikt.store.manifest import FORMAT_VERSION, INDEX_KINDS, MANIFEST_NAME

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KINDS",
    "MANIFEST_NAME",
    "IndexConfig",
    "KnowledgeStore",
    "SearchResult",
    "StoreEntry",
    "VectorIndex",
    "VerifyReport",
    "choose_index",
    "entry_id",
]
