"""The RetriKT student: a small encoder with a task head that also retrieves teacher knowledge.

**Encoder and heads.** The encoder is a sentence-transformers checkpoint (``minilm-l6`` by
default) loaded with ``transformers.AutoModel``; each input is mean-pooled over its tokens
exactly as sentence-transformers pools it, so fine-tuning starts from the pretrained embedding
space. Pairs go to the tokenizer as a real pair (``tokenizer(text, pair)``: segment ids and one
``[SEP]``). Heads by task type:

* classification (single, pair and multi-answer tasks): a linear layer over the label names;
* choice (COPA): each ``(context, choice)`` input is scored to one number and the scores of an
  example's choices go through a softmax;
* regression (STS-B): one number, trained on the score rescaled to [-1, 1] and clipped to the
  task's range when predicting.

**Retrieval.** With a knowledge store attached the student embeds its input (the same pooled
vector, L2-normalised), retrieves the ``k`` most similar store entries and combines::

    w_i   = softmax_i(similarity_i / temperature)       over the k neighbours
    vote  = sum_i w_i * soft_labels_i                    the teacher's view of the neighbourhood
    final = mix * model_distribution + (1 - mix) * vote  (mix is the paper's lambda)

Regression averages the neighbours' teacher scores the same way and mixes the numbers. COPA
works per choice: the store keeps one key per (premise, choice) of each entry, valued by the
teacher's probability that this choice is the answer (its plausibility); the input's choice
``c`` is scored by the weighted plausibility of the neighbours of its own ``(premise, c)``
input, and the per-choice scores are normalised into a distribution over the choices before
mixing. A neighbour's choice is thus compared with the input's choice directly, which is what
a neighbour's "choice1"/"choice2" label alone could not say (choice order is arbitrary).

The store's keys must come from the student's own encoder (queries and keys in one space), so
the student keeps its own copy of the store in ``DIR/store``: the same entries (ids, teacher
labels, provenance) with vectors re-embedded by the trained encoder. ``config.json`` records
that copy's encoder id and manifest checksum, which ``from_pretrained`` verifies, and the
store it was derived from (path, id, version, manifest checksum). The temperature is a learned
parameter (``head.safetensors``); ``k`` and ``mix`` are tuned on training data (see
``retrikt.training``), never on validation.

A student folder holds ``config.json`` (:class:`StudentConfig`), ``encoder/``
(``save_pretrained`` of the transformer and its tokenizer), ``head.safetensors`` and, with
retrieval, ``store/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from retrikt.errors import ModelFileError, RetriktError, StoreError
from retrikt.models import ENCODER, default_model, resolve_model
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.tasks import MULTIPLE_CHOICE, REGRESSION, EncoderInput, Example, Task, get_task

logger = logging.getLogger(__name__)

CLASSIFICATION, CHOICE, SCORE = "classification", "choice", "regression"
CONFIG_NAME, HEAD_NAME, ENCODER_DIR, STORE_DIR = (
    "config.json",
    "head.safetensors",
    "encoder",
    "store",
)
#: Field added to the rows of a COPA student's store: which choice (0-based) the key embeds.
CHOICE_FIELD = "choice"
FORMAT_VERSION = 1


def head_type(task: Task) -> str:
    if task.task_type == MULTIPLE_CHOICE:
        return CHOICE
    if task.task_type == REGRESSION:
        return SCORE
    return CLASSIFICATION


@dataclass
class RetrievalConfig:
    """How the student retrieves: ``k`` neighbours, mixed with weight ``mix`` (lambda)."""

    k: int = 8
    mix: float = 0.5  # weight of the model's own distribution; 1 - mix goes to the neighbours
    store_encoder_id: str = ""  # encoder id of DIR/store (unique to these weights)
    store_manifest_sha256: str = ""  # DIR/store's manifest checksum when it was saved
    source: dict[str, Any] = field(default_factory=dict)  # the store it was trained from
    tuning: dict[str, Any] = field(default_factory=dict)  # how k / mix / temperature were chosen


@dataclass
class StudentConfig:
    """Everything needed to rebuild a student from its folder (saved as ``config.json``)."""

    task: str
    encoder: str  # the preset / folder the encoder started from, for provenance
    head: str
    max_length: int = 128
    dropout: float = 0.1
    retrieval: RetrievalConfig | None = None
    format_version: int = FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)  # how it was trained, for provenance

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("retrieval") is not None:
            known["retrieval"] = RetrievalConfig(**known["retrieval"])
        return cls(**known)


@dataclass
class Neighbour:
    """A store entry that informed a prediction: its text, teacher label and similarity."""

    text: str
    label: str
    similarity: float
    weight: float  # its share of the neighbour vote
    choice: str | None = None  # COPA: the choice whose input retrieved it


@dataclass
class Prediction:
    """One answer: label name, probabilities (or score for regression) and its neighbours."""

    label: str
    probs: dict[str, float] | None = None
    score: float | None = None
    neighbours: list[Neighbour] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------- the combination rule
def neighbour_weights(sims: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """softmax(similarity / temperature) over the last axis; missing neighbours (-inf) get 0."""
    weights = torch.softmax(sims / temperature, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # a row with no neighbour at all


def neighbour_vote(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the neighbours' values: weights (m, k), values (m, k, V) -> (m, V)."""
    return (weights.unsqueeze(-1) * values).sum(1)


def combine(
    model: torch.Tensor, vote: torch.Tensor, found: torch.Tensor, mix: float, head: str
) -> torch.Tensor:
    """``mix * model + (1 - mix) * vote`` per example.

    ``model`` is (n, C) probabilities or (n, 1) scores. ``vote`` is (n, C) / (n, 1) likewise,
    or for COPA the (n * choices, 1) plausibilities of each choice input, normalised here over
    the example's choices. ``found`` (one bool per vote row) marks rows that had neighbours;
    an example with a row without any keeps the model's own prediction.
    """
    n = model.shape[0]
    found = found.view(n, -1).all(-1, keepdim=True)
    if head == CHOICE:
        plausibility = vote.view(n, -1)
        total = plausibility.sum(-1, keepdim=True)
        uniform = torch.full_like(plausibility, 1.0 / plausibility.shape[-1])
        vote = torch.where(total > 0, plausibility / total.clamp_min(1e-12), uniform)
    vote = torch.where(found, vote, model)
    return mix * model + (1 - mix) * vote


# ----------------------------------------------------------------------- the memory
def origin_key(task: Task, fields: dict[str, Any]) -> str:
    """The example a store row comes from (its task fields), to leave an example's own rows out."""
    return json.dumps([fields.get(name) for name in task.fields], ensure_ascii=False)


def memory_rows(task: Task, entries: Sequence[StoreEntry]) -> list[StoreEntry]:
    """The rows of a student's store: the entries, or for COPA one row per (entry, choice)."""
    for i, entry in enumerate(entries):
        missing = [name for name in task.fields if name not in entry.fields]
        if missing:
            raise StoreError(f"store entry {i} ({entry.id}) has no field(s) {', '.join(missing)}")
    if head_type(task) != CHOICE:
        return list(entries)
    rows = []
    for entry in entries:
        example = {**entry.fields, "label": None}
        for choice, (context, text) in enumerate(task.encoder_inputs(example)):
            rows.append(
                StoreEntry(
                    fields={**entry.fields, CHOICE_FIELD: choice},
                    text=f"{context} {text}",
                    requested_label=entry.requested_label,
                    soft_labels=list(entry.soft_labels),
                    rewards=dict(entry.rewards),
                    generator=entry.generator,
                    rationale=entry.rationale,
                    source=entry.source,
                )
            )
    return rows


class Memory:
    """What retrieval reads from the student's store rows: texts, values, labels, keys.

    ``values`` are what a neighbour votes with: the teacher's soft labels (classification),
    its score (regression) or the plausibility of the row's choice (COPA), one row each.
    """

    def __init__(
        self,
        task: Task,
        fields: list[dict[str, Any]],
        texts: list[str],
        soft_labels: np.ndarray,
        keys: np.ndarray,
    ):
        self.task = task
        self.fields = fields
        self.texts = texts
        self.rows: list[StoreEntry] | None = None  # entries to write, until the store is saved
        self.origins = [origin_key(task, f) for f in fields]
        if head_type(task) == CHOICE:
            choice = np.array([int(f[CHOICE_FIELD]) for f in fields], dtype=np.int64)
            self.values = soft_labels[np.arange(len(fields)), choice][:, None]
        else:
            self.values = soft_labels
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        self.keys = keys
        self.store: KnowledgeStore | None = None  # the saved student store, once there is one
        #: the most rows one example owns (2 for COPA), so searches can drop an example's own.
        self.max_rows_per_origin = max(Counter(self.origins).values(), default=1)

    @classmethod
    def from_rows(cls, task: Task, rows: Sequence[StoreEntry], dim: int) -> Memory:
        soft = np.array([r.soft_labels for r in rows], dtype=np.float32).reshape(len(rows), -1)
        keys = np.zeros((len(rows), dim), dtype=np.float32)
        memory = cls(task, [r.fields for r in rows], [r.text for r in rows], soft, keys)
        memory.rows = list(rows)
        return memory

    @classmethod
    def from_store(cls, task: Task, store: KnowledgeStore) -> Memory:
        fields = [json.loads(f) for f in store.column("fields").to_pylist()]
        memory = cls(task, fields, store.texts(), store.soft_label_matrix(), store.embeddings())
        memory.store = store
        return memory

    def __len__(self) -> int:
        return len(self.texts)

    def inputs(self) -> list[EncoderInput]:
        """What each row's key embeds: the entry's input, or for COPA its choice's input."""
        inputs = []
        for fields in self.fields:
            choice = int(fields.get(CHOICE_FIELD, 0))
            inputs.append(self.task.encoder_inputs({**fields, "label": None})[choice])
        return inputs

    def label(self, row: int) -> str:
        """How a neighbour is shown: its teacher label (plausible/implausible for COPA)."""
        value = self.values[row]
        if head_type(self.task) == CHOICE:
            return "plausible" if value[0] >= 0.5 else "implausible"
        if self.task.is_regression:
            return self.task.label_name(float(value[0]))
        return (self.task.label_names or ())[int(value.argmax())]

    def exclude_own(
        self, sims: np.ndarray, rows: np.ndarray, origins: list[str], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep the best ``k`` of each row's neighbours that do not come from its own example."""
        pairs = zip(rows, origins, strict=True)
        own = np.array([[r >= 0 and self.origins[r] == o for r in row] for row, o in pairs])
        sims = np.where(own, -np.inf, sims)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        sims = np.take_along_axis(sims, order, axis=1)
        rows = np.where(np.isfinite(sims), np.take_along_axis(rows, order, axis=1), -1)
        return sims, rows


@dataclass
class RawOutputs:
    """A batch's model distribution and its neighbours, before the combination rule."""

    model: np.ndarray  # (n, C) probabilities or (n, 1) scores
    sims: np.ndarray | None = None  # (n_inputs, k) similarities, -inf where missing
    rows: np.ndarray | None = None  # (n_inputs, k) memory rows, -1 where missing


@dataclass
class ForwardOutput:
    outputs: torch.Tensor  # logits (n, C) / choice logits (n, choices) / score units (n, 1)
    pooled: torch.Tensor  # (n_inputs, hidden) mean-pooled states, one per encoder input


# ---------------------------------------------------------------------------- model
class RetriKT(nn.Module):
    """A transformer encoder with mean pooling, a task head and an optional knowledge store."""

    def __init__(self, config: StudentConfig, encoder: nn.Module, tokenizer: Any):
        super().__init__()
        self.config = config
        self.task = get_task(config.task)
        self.encoder = encoder
        self.tokenizer = tokenizer
        hidden = encoder.config.hidden_size
        outputs = len(self.task.label_names or ()) if config.head == CLASSIFICATION else 1
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, outputs)
        if config.head == SCORE:
            low, high = self.task.label_range or (0.0, 1.0)
            # The head predicts in [-1, 1]-ish units; these map it onto the task's score range.
            self.register_buffer("score_center", torch.tensor((low + high) / 2))
            self.register_buffer("score_scale", torch.tensor((high - low) / 2))
        self.memory: Memory | None = None
        if config.retrieval is not None:
            self.log_temperature = nn.Parameter(torch.tensor(0.0))

    # ------------------------------------------------------------- building
    @classmethod
    def from_encoder(
        cls, task: str | Task, encoder: str | None = None, max_length: int = 128
    ) -> RetriKT:
        """A fresh student for ``task`` on a pretrained encoder preset (or HF folder)."""
        from transformers import AutoModel, AutoTokenizer

        task = task if isinstance(task, Task) else get_task(task)
        name = encoder or default_model(ENCODER)
        resolved = resolve_model(name, ENCODER)
        local = resolved.preset is not None or Path(resolved.path).is_dir()
        model = AutoModel.from_pretrained(
            resolved.path, local_files_only=local, **resolved.config_overrides
        )
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=local)
        config = StudentConfig(
            task=task.name, encoder=resolved.model_id, head=head_type(task), max_length=max_length
        )
        return cls(config, model, tokenizer)

    @property
    def store(self) -> KnowledgeStore | None:
        """The student's own store (keys from its encoder), once saved or loaded."""
        return self.memory.store if self.memory is not None else None

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def attach_store(
        self, source: KnowledgeStore, k: int = 8, mix: float = 0.5, temperature: float = 0.05
    ) -> None:
        """Retrieve from ``source``'s entries; keys are computed by :meth:`refresh_keys`."""
        names = list(self.task.label_names) if self.task.label_names else None
        if source.task != self.task.name or source.label_names != names:
            raise StoreError(
                f"{source.path} is a store for task {source.task!r} with labels "
                f"{source.label_names}, but this student is for {self.task.name!r} ({names})"
            )
        if len(source) == 0:
            raise StoreError(f"{source.path} is empty: build it first with 'retrikt build-store'")
        manifest = source.manifest
        self.config.retrieval = RetrievalConfig(
            k=k,
            mix=mix,
            source={
                "path": str(source.path),
                "store_id": source.store_id,
                "version": source.version,
                "manifest_sha256": manifest.get("manifest_sha256"),
                "entries": len(source),
                "encoder": source.encoder_id,
                "generator": manifest.get("generator"),
                "teacher": manifest.get("teacher"),
            },
        )
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(temperature))))
        rows = memory_rows(self.task, source.entries())
        self.memory = Memory.from_rows(self.task, rows, self.encoder.config.hidden_size)

    @torch.inference_mode()
    def embed_inputs(self, inputs: Sequence[EncoderInput], batch_size: int = 64) -> np.ndarray:
        """Normalised query/key vectors of encoder inputs (eval mode, batched by length)."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(inputs)), key=lambda i: sum(len(t or "") for t in inputs[i]))
        out = np.zeros((len(inputs), self.encoder.config.hidden_size), dtype=np.float32)
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="embedding store", disable=len(batches) < 4):
            chunk = order[start : start + batch_size]
            pooled = self.embed(self.tokenize_inputs([inputs[i] for i in chunk]))
            out[chunk] = nn.functional.normalize(pooled, dim=-1).float().numpy()
        self.train(was_training)
        return out

    def refresh_keys(self, batch_size: int = 64) -> None:
        """Re-embed every store row with the current encoder (during and after training)."""
        memory = self.memory
        assert memory is not None, "attach_store first"
        if memory.rows is None and memory.store is not None:  # a loaded student trains on
            memory.rows = memory.store.entries()
        memory.keys = self.embed_inputs(memory.inputs(), batch_size)
        memory.store = None  # the saved copy (if any) holds stale keys now

    # -------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / ENCODER_DIR)
        self.tokenizer.save_pretrained(directory / ENCODER_DIR)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file({k: v for k, v in state.items() if not k.startswith("encoder.")},
                  directory / HEAD_NAME)  # fmt: skip
        if self.memory is not None:
            self._save_store(directory / STORE_DIR)
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return directory

    def _save_store(self, path: Path) -> None:
        """Write the student's store copy (entries + keys from this encoder) at ``path``."""
        memory, retrieval = self.memory, self.config.retrieval
        assert memory is not None and retrieval is not None
        if memory.store is not None and memory.store.path.resolve() == path.resolve():
            return  # already there, unchanged since it was saved or loaded
        if path.exists():
            shutil.rmtree(path)  # our own subfolder, about to be rewritten
        if memory.rows is None:  # a loaded student saved elsewhere: copy its store as it is
            assert memory.store is not None
            shutil.copytree(memory.store.path, path, ignore=shutil.ignore_patterns(".lock"))
            store = KnowledgeStore.open(path, expected_encoder=retrieval.store_encoder_id)
        else:
            source = retrieval.source
            encoder_id = f"retrikt-student/{self.task.name}/{uuid.uuid4().hex[:12]}"
            store = KnowledgeStore.create(
                path,
                task=self.task.name,
                label_names=list(self.task.label_names) if self.task.label_names else None,
                encoder_id=encoder_id,
                dim=memory.keys.shape[1],
                generator=source.get("generator"),
                teacher=source.get("teacher"),
            )
            if store.add(memory.rows, memory.keys) != len(memory.rows):
                raise StoreError(f"{source.get('path')} holds duplicate entries; deduplicate it")
            store.save()
            retrieval.store_encoder_id = encoder_id
            retrieval.store_manifest_sha256 = store.manifest["manifest_sha256"]
        memory.store = store

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> RetriKT:
        """Load a student folder; with retrieval its store copy is opened and verified."""
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        for needed in (CONFIG_NAME, HEAD_NAME, ENCODER_DIR):
            if not (directory / needed).exists():
                raise ModelFileError(
                    f"{directory} is not a RetriKT student folder: {needed} is missing "
                    "(train one with 'retrikt train-student --out DIR')"
                )
        try:
            config = StudentConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ModelFileError(
                f"{directory / CONFIG_NAME} is not a student config: {err}"
            ) from None
        if config.format_version > FORMAT_VERSION:
            raise ModelFileError(
                f"{directory} was saved in student format {config.format_version}, newer than "
                f"this RetriKT reads ({FORMAT_VERSION}): upgrade retrikt"
            )
        encoder = AutoModel.from_pretrained(directory / ENCODER_DIR, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory / ENCODER_DIR, local_files_only=True)
        model = cls(config, encoder, tokenizer)
        missing, unexpected = model.load_state_dict(load_file(directory / HEAD_NAME), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ModelFileError(
                f"{directory / HEAD_NAME} does not match the config: missing {missing}, "
                f"unexpected {unexpected}"
            )
        if config.retrieval is not None:
            model.memory = Memory.from_store(model.task, model._open_store(directory / STORE_DIR))
        model.eval()
        return model

    def _open_store(self, path: Path) -> KnowledgeStore:
        retrieval = self.config.retrieval
        assert retrieval is not None
        store = KnowledgeStore.open(
            path,
            expected_encoder=retrieval.store_encoder_id,
            expected_dim=self.encoder.config.hidden_size,
        )
        if store.manifest.get("manifest_sha256") != retrieval.store_manifest_sha256:
            raise StoreError(
                f"{path} is not the store this student was saved with (manifest checksum "
                "differs): it was modified after training; retrain or restore the folder"
            )
        return store

    # -------------------------------------------------------------- forward
    def tokenize_inputs(self, inputs: Sequence[EncoderInput]) -> dict[str, torch.Tensor]:
        """Tokenize encoder inputs as texts or real text pairs, padded to the longest."""
        texts = [text for text, _ in inputs]
        pairs = [pair for _, pair in inputs]
        return self.tokenizer(
            texts,
            pairs if pairs[0] is not None else None,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )

    def tokenize(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Encoder inputs of ``examples`` (choices flattened in order)."""
        return self.tokenize_inputs([p for ex in examples for p in self.task.encoder_inputs(ex)])

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled token states, one row per encoder input (as sentence-transformers pools)."""
        states = self.encoder(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, features: dict[str, torch.Tensor], n_examples: int) -> ForwardOutput:
        pooled = self.embed(features)
        return ForwardOutput(self.head(self.dropout(pooled)).view(n_examples, -1), pooled)

    def task_loss(self, outputs: torch.Tensor, examples: Sequence[Example]) -> torch.Tensor:
        """Cross-entropy on gold labels, or MSE on the rescaled score for regression."""
        if self.config.head == SCORE:
            return nn.functional.mse_loss(outputs.squeeze(-1), self.score_units(examples))
        return nn.functional.cross_entropy(outputs, self.gold(examples))

    def gold(self, examples: Sequence[Example]) -> torch.Tensor:
        return torch.tensor([int(ex["label"]) for ex in examples])

    def score_units(self, examples: Sequence[Example]) -> torch.Tensor:
        """Gold regression scores in the head's [-1, 1] units."""
        gold = torch.tensor([float(ex["label"]) for ex in examples])
        return (gold - self.score_center) / self.score_scale

    def distribution(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class/choice probabilities (n, C), or the score in the task's units (n, 1)."""
        if self.config.head == SCORE:
            low, high = self.task.label_range or (-np.inf, np.inf)
            return (outputs * self.score_scale + self.score_center).clamp(low, high)
        return outputs.softmax(-1)

    # ----------------------------------------------------------- predicting
    @torch.inference_mode()
    def raw_outputs(
        self,
        examples: Sequence[Example],
        batch_size: int = 32,
        k: int | None = None,
        exclude_own: bool = False,
    ) -> RawOutputs:
        """Model distribution and the ``k`` nearest store rows of every encoder input.

        ``exclude_own`` leaves out the store rows of the example itself (for tuning on
        training data that may also be in the store). Examples are batched by length so
        that padding stays short.
        """
        was_training = self.training
        self.eval()
        per = len(self.task.encoder_inputs(examples[0])) if examples else 1
        order = sorted(range(len(examples)), key=lambda i: len(self.task.render(examples[i])))
        model = np.zeros((len(examples), self.task.num_outputs), dtype=np.float32)
        queries = np.zeros((len(examples) * per, self.encoder.config.hidden_size), np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = [examples[i] for i in chunk]
            out = self(self.tokenize(batch), len(batch))
            model[chunk] = self.distribution(out.outputs).float().numpy()
            rows = np.array([i * per + j for i in chunk for j in range(per)])
            queries[rows] = nn.functional.normalize(out.pooled, dim=-1).float().numpy()
        self.train(was_training)
        if self.memory is None or self.config.retrieval is None:
            return RawOutputs(model)
        k = k or self.config.retrieval.k
        sims, rows = self.search(queries, k, exclude_own, examples if exclude_own else None)
        return RawOutputs(model, sims, rows)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_own: bool = False,
        examples: Sequence[Example] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` store rows of normalised queries (the saved store, else exact in memory)."""
        memory = self.memory
        assert memory is not None
        wanted = min(k + (memory.max_rows_per_origin if exclude_own else 0), len(memory))
        if memory.store is not None:
            result = memory.store.search(queries, wanted)
            sims, rows = result.scores, result.indices
        else:
            scores = queries @ memory.keys.T
            rows = np.argsort(-scores, axis=1, kind="stable")[:, :wanted]
            sims = np.take_along_axis(scores, rows, axis=1)
        if exclude_own and examples is not None:
            per = len(sims) // max(len(examples), 1)
            origins = [origin_key(self.task, ex) for ex in examples for _ in range(per)]
            return memory.exclude_own(sims, rows, origins, k)
        pad = k - sims.shape[1]
        if pad > 0:  # a store smaller than k
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return sims[:, :k], rows[:, :k]

    def combined(
        self,
        raw: RawOutputs,
        k: int | None = None,
        temperature: float | None = None,
        mix: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The final distribution (n, C) of ``raw`` and each input's neighbour weights.

        ``k``, ``temperature`` and ``mix`` default to the student's own (overridden while tuning).
        """
        retrieval = self.config.retrieval
        if raw.sims is None or raw.rows is None or retrieval is None or self.memory is None:
            return raw.model, None
        k = k or retrieval.k
        sims = torch.from_numpy(np.ascontiguousarray(raw.sims[:, :k]))
        rows = raw.rows[:, :k]
        values = torch.from_numpy(self.memory.values[np.maximum(rows, 0)])
        temp = self.temperature.item() if temperature is None else temperature
        weights = neighbour_weights(sims, temp)
        vote = neighbour_vote(weights, values)
        found = torch.from_numpy((rows >= 0).any(-1))
        mix = retrieval.mix if mix is None else mix
        final = combine(torch.from_numpy(raw.model), vote, found, mix, self.config.head)
        return final.numpy(), weights.numpy()

    def predict_examples(self, examples: Sequence[Example], batch_size: int = 32) -> np.ndarray:
        """Final probabilities (n, C) or scores (n, 1) for parsed examples, in input order."""
        return self.combined(self.raw_outputs(examples, batch_size))[0]

    def predict(self, items: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
        """Predict for user items: dicts in the task's field names, a text, or a list of texts.

        Each item is checked with ``Task.parse_input`` first, so a bad one raises a
        ``DataError`` naming its position before any work is done. Each prediction lists the
        neighbours that were mixed in (text, teacher label, similarity, weight).
        """
        examples = [self.task.parse_input(item, where=f"item {i}") for i, item in enumerate(items)]
        if not examples:
            return []
        raw = self.raw_outputs(examples, batch_size)
        final, weights = self.combined(raw)
        per = len(self.task.encoder_inputs(examples[0]))
        predictions = []
        for i, row in enumerate(final):
            prediction = self.decode(row)
            if weights is not None and raw.rows is not None and raw.sims is not None:
                for j in range(per):
                    prediction.neighbours += self._neighbours(
                        raw.rows[i * per + j], raw.sims[i * per + j], weights[i * per + j],
                        self.task.label_names[j] if per > 1 and self.task.label_names else None,
                    )  # fmt: skip
            predictions.append(prediction)
        return predictions

    def _neighbours(
        self, rows: np.ndarray, sims: np.ndarray, weights: np.ndarray, choice: str | None
    ) -> list[Neighbour]:
        assert self.memory is not None
        return [
            Neighbour(
                text=self.memory.texts[r],
                label=self.memory.label(r),
                similarity=round(float(s), 6),
                weight=round(float(w), 6),
                choice=choice,
            )
            for r, s, w in zip(rows, sims, weights, strict=True)
            if r >= 0
        ]

    def decode(self, row: np.ndarray) -> Prediction:
        if self.config.head == SCORE:
            score = float(row[0])
            return Prediction(label=self.task.label_name(score), score=score)
        names = self.task.label_names or ()
        probs = {name: float(p) for name, p in zip(names, row, strict=True)}
        return Prediction(label=names[int(row.argmax())], probs=probs)


def label_predictions(task: Task, probs: np.ndarray) -> list:
    """What ``Task.evaluate`` scores: class/choice indices, or scores for regression."""
    if task.is_regression:
        return [float(p) for p in probs[:, 0]]
    return [int(i) for i in probs.argmax(-1)]


def evaluate_model(
    model: RetriKT, task: Task, examples: Sequence[Example], batch_size: int = 32
) -> dict[str, float]:
    """The task's official metrics of ``model`` on labelled ``examples``."""
    if model.task.name != task.name:
        raise RetriktError(f"this student was trained for {model.task.name}, not {task.name}")
    return task.evaluate(label_predictions(task, model.predict_examples(examples, batch_size)),
                         list(examples))  # fmt: skip


def labelled_store(
    task: Task,
    examples: Sequence[Example],
    path: str | Path,
    encoder: str | None = None,
) -> KnowledgeStore:
    """A store of labelled examples with one-hot soft labels (gold labels as the teacher).

    Retrieval over it is a kNN memory of the labelled data: the RetriKT student without an
    LLM. It serves as an ablation ("what the teacher adds over the gold labels") and as a
    small, deterministic store for tests. Keys come from ``retrikt.encoder.Encoder``.
    """
    from retrikt.encoder import Encoder

    embedder = Encoder(encoder)
    names = list(task.label_names) if task.label_names else None
    entries = []
    for ex in examples:
        if ex["label"] is None:
            raise RetriktError(f"{task.name} example {ex.get('idx')} has no label")
        soft = [float(ex["label"])] if names is None else [0.0] * len(names)
        if names is not None:
            soft[int(ex["label"])] = 1.0
        entries.append(
            StoreEntry(
                fields={name: ex[name] for name in task.fields},
                text=task.render(ex),
                requested_label=ex["label"],
                soft_labels=soft,
                generator="gold",
            )
        )
    store = KnowledgeStore.create(
        path,
        task=task.name,
        label_names=names,
        encoder_id=embedder.model_id,
        dim=embedder.dim,
        teacher={"name": "gold labels"},
    )
    store.add(entries, embedder.encode([e.text for e in entries]))
    store.save()
    return store
