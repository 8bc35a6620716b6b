"""Sentence embeddings with a student encoder preset, for keys and queries of the store.

A thin wrapper around ``sentence_transformers.SentenceTransformer``: it resolves RetriKT's
offline presets (including ``minilm-l6:N`` cut-downs), accepts text pairs, and always
returns L2-normalised float32 vectors so that inner product is cosine similarity. Pairs
are joined with the tokenizer's separator token, so a pair is embedded as BERT would read
``text [SEP] pair`` (sentence-transformers has no pair input for bi-encoders).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from retrikt.models import ENCODER, default_model, resolve_model
from retrikt.tasks import EncoderInput

logger = logging.getLogger(__name__)


class Encoder:
    """Embed texts or text pairs into normalised vectors with a student encoder preset."""

    def __init__(self, name: str | None = None, max_length: int = 128, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        name = name or default_model(ENCODER)
        resolved = resolve_model(name, ENCODER)
        self.model_id = resolved.model_id
        self.model = SentenceTransformer(
            resolved.path,
            device=device,
            config_kwargs=resolved.config_overrides or None,
            local_files_only=resolved.preset is not None,
        )
        self.model.max_seq_length = max_length
        self.separator = f" {self.model.tokenizer.sep_token or '|'} "

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def join(self, item: str | EncoderInput) -> str:
        """One string per input: a pair becomes ``text [SEP] pair``."""
        if isinstance(item, str):
            return item
        text, pair = item
        return text if pair is None else f"{text}{self.separator}{pair}"

    def encode(
        self,
        inputs: Sequence[str | EncoderInput],
        batch_size: int = 64,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Embed ``inputs`` as an (n, dim) float32 array of unit vectors."""
        if len(inputs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            [self.join(item) for item in inputs],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
