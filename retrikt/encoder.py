"""Sentence embeddings with a student encoder preset, for keys and queries of the store.

One embedding path for the whole project: :func:`sentence_transformer` loads a preset (or
folder) as sentence-transformers modules, which tokenize (pairs included) and pool; both
:class:`Encoder` and the student (:mod:`retrikt.student.model`) run through them.

A text pair goes to the tokenizer as a real pair (``[CLS] text [SEP] pair [SEP]`` with segment
ids), as BERT-style encoders were pretrained and as the student is fine-tuned. Joining the
pair into one string instead would lose the segment ids and, worse, truncate from the end: a
long first text (a BoolQ passage, a MultiRC paragraph) would cut the question or the answer
off entirely, while pair truncation shortens the longer part. :meth:`Encoder.join` remains
for the places that need one readable string (store texts, SetFit's inputs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from retrikt.models import ENCODER, default_model, loading_cut_model, resolve_model
from retrikt.tasks import EncoderInput

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def sentence_transformer(
    path: str,
    max_length: int,
    config_overrides: dict[str, Any] | None = None,
    local: bool = True,
) -> SentenceTransformer:
    """The sentence-transformers model at ``path`` (a plain HF folder gets mean pooling)."""
    from sentence_transformers import SentenceTransformer

    with loading_cut_model(path, config_overrides):
        model = SentenceTransformer(
            path, device="cpu", config_kwargs=config_overrides or None, local_files_only=local
        )
    model.max_seq_length = max_length
    return model


def as_model_input(item: str | EncoderInput) -> str | tuple[str, str]:
    """What sentence-transformers takes for one input: a text, or a (text, pair) tuple."""
    if isinstance(item, str):
        return item
    text, pair = item
    return text if pair is None else (text, pair)


class Encoder:
    """Embed texts or text pairs into normalised vectors with a student encoder preset.

    Example::

        Encoder("minilm-l6").encode(["A cat.", ("A premise.", "A hypothesis.")])  # (2, 384)
    """

    def __init__(self, name: str | None = None, max_length: int = 128):
        resolved = resolve_model(name or default_model(ENCODER), ENCODER)
        #: Recorded in store manifests: the store's vectors came from this encoder.
        self.model_id = resolved.name
        self.model = sentence_transformer(
            resolved.path, max_length, resolved.config_overrides, resolved.preset is not None
        )
        self.separator = f" {self.model.tokenizer.sep_token or '|'} "

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def join(self, item: str | EncoderInput) -> str:
        """One readable string per input: a pair becomes ``text [SEP] pair``."""
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
        """Embed texts, or pairs as tokenizer pairs, as (n, dim) float32 unit vectors."""
        if len(inputs) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            [as_model_input(item) for item in inputs],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress_bar,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
