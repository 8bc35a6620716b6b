"""Smaller BERT encoders cut out of a pretrained one: layer selection and width slicing.

An :class:`Architecture` is ``layers`` transformer layers of ``heads`` attention heads of
``head_dim`` dimensions (so ``hidden = heads * head_dim``, as a ``BertConfig`` requires) and
``ffn`` intermediate neurons. :func:`slice_encoder` cuts it out of the parent
(all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads of 32, FFN 1536), keeping in every case
the most important units, in the parent's order:

* **layers**: the ``layers`` highest in ``Importance.layer_rank``;
* **hidden (residual) dimensions**: the ``hidden`` most important, cut out of every
  embedding table, linear layer and LayerNorm (a LayerNorm then normalises over the kept
  dimensions only, the one change slicing makes beyond dropping units);
* **heads**: per kept layer the ``heads`` most important; of each, the ``head_dim`` most
  important query/key dimensions (the attention logit is a sum over them) and value
  dimensions. The query is scaled by ``sqrt(head_dim / parent_head_dim)`` so that the
  logits keep their scale under BERT's ``1 / sqrt(head_dim)``;
* **FFN neurons**: per kept layer the ``ffn`` most important.

**Importance** (:func:`importance`) is gradient x activation (the first-order Taylor
estimate of the loss change when a unit is removed; Molchanov et al. 2017, and Michel et
al. 2019 for heads): multiplicative masks, all ones, sit on every head's output (per value
dimension), every query dimension, every FFN neuron and the residual stream (one mask
shared by every LayerNorm output); a unit's importance is the sum over proxy batches of
``|dL/d mask|`` = ``|sum over tokens of activation x gradient|`` (for a head, of its
dimensions' sum). ``L`` is the distillation loss of the parent on store entries against the
teacher's soft labels, through a task head first fitted on the frozen parent's embeddings
(a fresh head would make every gradient noise). **Layers** are ranked by greedy backward
elimination on the same loss: the layer whose removal costs least goes first.

Written here rather than taken from a library: transformers 5 removed ``prune_heads``, and
it never sliced hidden or FFN widths. A sliced encoder is an ordinary ``BertModel`` with a
``BertConfig``, saved as a sentence-transformers folder (:func:`save_encoder`), so
``retrikt train-student --encoder DIR`` and everything after it use it unchanged.

Example::

    parent = RetriKT.from_encoder(task, "minilm-l6")
    ranks = importance(parent, store.entries()[:64])
    small = slice_encoder(parent.encoder.auto_model, Architecture(3, 8, 32, 768), ranks)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from retrikt.errors import RetriktError

if TYPE_CHECKING:
    from transformers import BertModel

    from retrikt.store import StoreEntry
    from retrikt.student import RetriKT

logger = logging.getLogger(__name__)

HEAD_FIT_STEPS = 200
HEAD_FIT_LR = 1e-2


@dataclass(frozen=True)
class Architecture:
    """A BERT-style encoder's shape: depth, heads x head size (= hidden), FFN width."""

    layers: int
    heads: int
    head_dim: int
    ffn: int

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def name(self) -> str:
        return f"L{self.layers}-H{self.heads}x{self.head_dim}-F{self.ffn}"

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "hidden": self.hidden}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Architecture:
        """From :meth:`to_dict` (the derived ``hidden`` is ignored)."""
        return cls(data["layers"], data["heads"], data["head_dim"], data["ffn"])

    @classmethod
    def of(cls, config: Any) -> Architecture:
        """The architecture of a ``BertConfig``."""
        heads = config.num_attention_heads
        return cls(
            config.num_hidden_layers, heads, config.hidden_size // heads, config.intermediate_size
        )

    def check_within(self, parent: Architecture) -> None:
        """Raise unless every dimension fits inside the parent's."""
        for name in ("layers", "heads", "head_dim", "ffn"):
            if not 1 <= getattr(self, name) <= getattr(parent, name):
                raise RetriktError(
                    f"{self.name}: {name} must be between 1 and the parent's "
                    f"{getattr(parent, name)} ({parent.name})"
                )


@dataclass
class Importance:
    """Unit importances of a parent encoder (larger = keep), from :func:`importance`."""

    layer_rank: list[int]  # parent layers, most important first
    hidden: torch.Tensor  # (hidden,)
    heads: torch.Tensor  # (layers, heads)
    query: torch.Tensor  # (layers, hidden) per query/key dimension, head-major
    value: torch.Tensor  # (layers, hidden) per value dimension, head-major
    ffn: torch.Tensor  # (layers, ffn)

    def save(self, path: Path) -> None:
        tensors = {k: v.contiguous() for k, v in asdict(self).items() if k != "layer_rank"}
        save_file({**tensors, "layer_rank": torch.tensor(self.layer_rank)}, str(path))

    @classmethod
    def load(cls, path: Path) -> Importance:
        data = load_file(str(path))
        return cls(layer_rank=data.pop("layer_rank").tolist(), **data)


# --------------------------------------------------------------------------- masks
@contextlib.contextmanager
def unit_masks(bert: BertModel, masks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Multiply units of ``bert`` by masks while the context is open (hooks, removed after).

    ``masks``: ``value`` / ``query`` (layers, hidden): each head's output and query per
    dimension; ``ffn`` (layers, ffn): intermediate neurons; ``hidden`` (hidden,): the
    residual stream after every LayerNorm. Masks of zeros remove units exactly as slicing
    them out does (for heads and FFN neurons), which the tests check.
    """
    handles = []

    def scale_output(mask: torch.Tensor) -> Any:
        return lambda _module, _inputs, output: output * mask

    def scale_input(mask: torch.Tensor) -> Any:
        return lambda _module, inputs: (inputs[0] * mask, *inputs[1:])

    try:
        if "hidden" in masks:
            handles.append(
                bert.embeddings.LayerNorm.register_forward_hook(scale_output(masks["hidden"]))
            )
        for i, layer in enumerate(bert.encoder.layer):
            if "value" in masks:
                dense = layer.attention.output.dense
                handles.append(dense.register_forward_pre_hook(scale_input(masks["value"][i])))
            if "query" in masks:
                query = layer.attention.self.query
                handles.append(query.register_forward_hook(scale_output(masks["query"][i])))
            if "ffn" in masks:
                handles.append(
                    layer.intermediate.register_forward_hook(scale_output(masks["ffn"][i]))
                )
            if "hidden" in masks:
                for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
                    handles.append(norm.register_forward_hook(scale_output(masks["hidden"])))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------- importance
def _bert(student: RetriKT) -> BertModel:
    from transformers import BertModel

    bert = student.encoder.auto_model
    if not isinstance(bert, BertModel):
        raise RetriktError(
            f"slicing needs a BERT-style parent encoder, got {type(bert).__name__} "
            f"({student.config.encoder})"
        )
    return bert


def _examples(entries: Sequence[StoreEntry]) -> list[dict[str, Any]]:
    return [{**e.fields, "label": None} for e in entries]


def fit_head(student: RetriKT, entries: Sequence[StoreEntry], seed: int = 0) -> None:
    """Fit the task head (only) to the entries' teacher soft labels on frozen embeddings."""
    from retrikt.training import soft_label_loss

    student.eval()
    with torch.no_grad():
        pooled = student.embed(student.tokenize(_examples(entries)))
    torch.manual_seed(seed)
    student.head.reset_parameters()
    optimizer = torch.optim.Adam(student.head.parameters(), lr=HEAD_FIT_LR)
    for _ in range(HEAD_FIT_STEPS):
        loss = soft_label_loss(student, student.head(pooled).view(len(entries), -1), entries)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logger.info("head fitted on %d store entries: distillation loss %.4f", len(entries), loss)


def _proxy_loss(student: RetriKT, entries: Sequence[StoreEntry], batch_size: int) -> float:
    from retrikt.training import soft_label_loss

    total = 0.0
    with torch.no_grad():
        for start in range(0, len(entries), batch_size):
            batch = entries[start : start + batch_size]
            out = student(student.tokenize(_examples(batch)), len(batch)).outputs
            total += soft_label_loss(student, out, batch).item() * len(batch)
    return total / len(entries)


@contextlib.contextmanager
def _only_layers(bert: BertModel, keep: Sequence[int]) -> Iterator[None]:
    """Run ``bert`` with a subset of its layers (in order) while the context is open."""
    layers = bert.encoder.layer
    bert.encoder.layer = nn.ModuleList(layers[i] for i in keep)
    try:
        yield
    finally:
        bert.encoder.layer = layers


def importance(
    parent: RetriKT, entries: Sequence[StoreEntry], batch_size: int = 16, seed: int = 0
) -> Importance:
    """Gradient x activation importance of every unit of ``parent`` on ``entries`` (see the
    module docstring); ``parent``'s head is refitted to them first. Deterministic."""
    from retrikt.training import soft_label_loss

    if not entries:
        raise RetriktError("importance needs store entries with teacher soft labels")
    bert = _bert(parent)
    arch = Architecture.of(bert.config)
    fit_head(parent, entries, seed)
    parent.eval()
    masks = {
        "hidden": torch.ones(arch.hidden),
        "value": torch.ones(arch.layers, arch.hidden),
        "query": torch.ones(arch.layers, arch.hidden),
        "ffn": torch.ones(arch.layers, arch.ffn),
    }
    for mask in masks.values():
        mask.requires_grad_(True)
    totals = {name: torch.zeros_like(mask) for name, mask in masks.items()}
    heads = torch.zeros(arch.layers, arch.heads)
    with unit_masks(bert, masks):
        for start in range(0, len(entries), batch_size):
            batch = entries[start : start + batch_size]
            out = parent(parent.tokenize(_examples(batch)), len(batch)).outputs
            grads = torch.autograd.grad(soft_label_loss(parent, out, batch), list(masks.values()))
            for name, grad in zip(masks, grads, strict=True):
                totals[name] += grad.abs()
            value_grad = grads[list(masks).index("value")]
            heads += value_grad.view(arch.layers, arch.heads, arch.head_dim).sum(-1).abs()
    kept, dropped = list(range(arch.layers)), []
    while len(kept) > 1:  # greedy backward elimination: drop the layer that costs least
        costs = []
        for layer in kept:
            with _only_layers(bert, [i for i in kept if i != layer]):
                costs.append((_proxy_loss(parent, entries, batch_size), layer))
        cost, layer = min(costs)
        logger.info("layer %d dropped next: proxy loss %.4f without it", layer, cost)
        kept.remove(layer)
        dropped.append(layer)
    return Importance(
        layer_rank=kept + dropped[::-1],
        hidden=totals["hidden"].detach(),
        heads=heads,
        query=totals["query"].detach(),
        value=totals["value"].detach(),
        ffn=totals["ffn"].detach(),
    )


# --------------------------------------------------------------------------- slicing
def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest scores, in ascending index order (ties: lower index)."""
    order = np.argsort(-scores.double().numpy(), kind="stable")[:n]
    return torch.from_numpy(np.sort(order))


def _head_rows(
    scores: torch.Tensor, heads: torch.Tensor, head_dim: int, parent_dim: int
) -> torch.Tensor:
    """Rows of a Q/K/V weight to keep: per kept head, its ``head_dim`` best dimensions."""
    rows = [h * parent_dim + _top(scores[h * parent_dim : (h + 1) * parent_dim], head_dim)
            for h in heads.tolist()]  # fmt: skip
    return torch.cat(rows)


def slice_encoder(parent: BertModel, arch: Architecture, ranks: Importance) -> BertModel:
    """A new ``BertModel`` of shape ``arch`` holding the parent's most important units."""
    from transformers import BertModel

    shape = Architecture.of(parent.config)
    arch.check_within(shape)
    config = copy.deepcopy(parent.config)
    config.num_hidden_layers, config.hidden_size = arch.layers, arch.hidden
    config.num_attention_heads, config.intermediate_size = arch.heads, arch.ffn
    hid = _top(ranks.hidden, arch.hidden)
    layers = sorted(ranks.layer_rank[: arch.layers])
    scale = math.sqrt(arch.head_dim / shape.head_dim)
    old = parent.state_dict()
    new: dict[str, torch.Tensor] = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        new[f"embeddings.{name}.weight"] = old[f"embeddings.{name}.weight"][:, hid]

    def norm(prefix: str, to: str) -> None:
        for part in ("weight", "bias"):
            new[f"{to}.{part}"] = old[f"{prefix}.{part}"][hid]

    def linear(prefix: str, to: str, rows: torch.Tensor, cols: torch.Tensor, k: float = 1) -> None:
        new[f"{to}.weight"] = old[f"{prefix}.weight"][rows][:, cols] * k
        new[f"{to}.bias"] = old[f"{prefix}.bias"][rows] * k

    norm("embeddings.LayerNorm", "embeddings.LayerNorm")
    for i, layer in enumerate(layers):
        src, dst = f"encoder.layer.{layer}", f"encoder.layer.{i}"
        heads = _top(ranks.heads[layer], arch.heads)
        qk = _head_rows(ranks.query[layer], heads, arch.head_dim, shape.head_dim)
        v = _head_rows(ranks.value[layer], heads, arch.head_dim, shape.head_dim)
        ffn = _top(ranks.ffn[layer], arch.ffn)
        attention = f"{src}.attention.self"
        linear(f"{attention}.query", f"{dst}.attention.self.query", qk, hid, scale)
        linear(f"{attention}.key", f"{dst}.attention.self.key", qk, hid)
        linear(f"{attention}.value", f"{dst}.attention.self.value", v, hid)
        linear(f"{src}.attention.output.dense", f"{dst}.attention.output.dense", hid, v)
        norm(f"{src}.attention.output.LayerNorm", f"{dst}.attention.output.LayerNorm")
        linear(f"{src}.intermediate.dense", f"{dst}.intermediate.dense", ffn, hid)
        linear(f"{src}.output.dense", f"{dst}.output.dense", hid, ffn)
        norm(f"{src}.output.LayerNorm", f"{dst}.output.LayerNorm")
    if parent.pooler is not None:  # unused by mean pooling; kept so the folder loads cleanly
        linear("pooler.dense", "pooler.dense", hid, hid)
    model = BertModel(config, add_pooling_layer=parent.pooler is not None)
    model.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=True)
    return model.eval()


def random_encoder(parent_config: Any, arch: Architecture, seed: int = 0) -> BertModel:
    """A randomly initialised ``BertModel`` of shape ``arch`` (the baseline of slicing)."""
    from transformers import BertModel

    config = copy.deepcopy(parent_config)
    config.num_hidden_layers, config.hidden_size = arch.layers, arch.hidden
    config.num_attention_heads, config.intermediate_size = arch.heads, arch.ffn
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertModel(config).eval()


def student_on(parent: RetriKT, bert: BertModel) -> RetriKT:
    """A fresh student for ``parent``'s task on ``bert`` (parent's tokenizer, mean pooling)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from retrikt.student import RetriKT, StudentConfig

    # A copy of the parent's Transformer module (tokenizer, settings) in which the memo
    # puts ``bert`` where the parent's model was, so the parent's weights are not copied.
    transformer = copy.deepcopy(parent.encoder, memo={id(parent.encoder.auto_model): bert})
    pooling = Pooling(bert.config.hidden_size, "mean")
    config = StudentConfig(
        task=parent.config.task,
        task_spec=parent.config.task_spec,
        encoder=f"{parent.config.encoder} sliced to {Architecture.of(bert.config).name}",
        head=parent.config.head,
        max_length=parent.config.max_length,
    )
    return RetriKT(config, transformer, pooling)


def save_encoder(student: RetriKT, folder: str | Path) -> Path:
    """Save a student's encoder as a sentence-transformers folder (``--encoder DIR``)."""
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    modules = SentenceTransformer(modules=[student.encoder, student.pooling], device="cpu")
    modules.save(str(folder), create_model_card=False)
    return folder
