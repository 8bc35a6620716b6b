"""The RetriKT student model: a small encoder with a task head that also retrieves.

**Encoder and heads.** The encoder is a sentence-transformers checkpoint (``minilm-l6`` by
default) run through the same sentence-transformers modules as :class:`retrikt.encoder.Encoder`
(its ``Transformer`` for tokenizing, pairs included, and its mean ``Pooling``), so fine-tuning
starts from the pretrained embedding space and the store is embedded as queries are. Heads by
task type (``Task.head``):

* classification (single, pair and multi-answer tasks): a linear layer over the label names;
* choice (COPA): each ``(context, choice)`` input is scored to one number and the scores of an
  example's choices go through a softmax;
* regression (STS-B): one number, trained on the score rescaled to [-1, 1] and clipped to the
  task's range when predicting.

**Retrieval.** With a knowledge store attached the student embeds its input (the same pooled
vector, L2-normalised), retrieves the ``k`` most similar rows of its memory
(:mod:`retrikt.student.memory`) and mixes their teacher labels into its own prediction by the
rule of :mod:`retrikt.retrieval`. The retrieval temperature is a learned parameter
(``head.safetensors``); ``k`` and ``mix`` are the user's, or tuned on held-out training data
with ``--tune-retrieval`` (see ``retrikt.training``), never on validation.

The store's keys must come from the student's own encoder (queries and keys in one space), so
the student keeps its own copy of the store in ``DIR/store``: the same entries (ids, teacher
labels, provenance) with vectors re-embedded by the trained encoder. ``config.json`` records
that copy's encoder id and manifest checksum, which ``from_pretrained`` verifies, and the
store it was derived from (path, id, version, manifest checksum).

A student folder holds ``config.json`` (:class:`~retrikt.student.config.StudentConfig`),
``encoder/`` (a sentence-transformers folder: the transformer, its tokenizer and pooling),
``head.safetensors`` and, with retrieval, ``store/``. An exported folder (``retrikt export``,
:mod:`retrikt.student.onnx`) holds ``model.onnx`` and ``tokenizer/`` instead of ``encoder/``
and loads the same way; only the encoder forward then runs in onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from retrikt.encoder import as_model_input, sentence_transformer
from retrikt.errors import ModelFileError, StoreError
from retrikt.models import ENCODER, default_model, resolve_model
from retrikt.retrieval import mix_rows
from retrikt.store import KnowledgeStore
from retrikt.student.config import (
    CONFIG_NAME,
    ENCODER_DIR,
    FORMAT_VERSION,
    HEAD_NAME,
    STORE_DIR,
    RetrievalConfig,
    StudentConfig,
    library_versions,
)
from retrikt.student.memory import Memory, memory_rows
from retrikt.student.onnx import OnnxEncoder, is_exported, load_encoder
from retrikt.tasks import CHOICE, CLASSIFICATION, SCORE, EncoderInput, Example, Task, get_task
from retrikt.user_task import restore_task, saved_spec

#: Head parameters renamed since format 1 (old name -> new name).
_RENAMED = {"log_temperature": "log_retrieval_temperature"}


@dataclass
class Neighbour:
    """A store entry that informed a prediction: its text, teacher label and similarity."""

    text: str
    label: str
    similarity: float
    weight: float  # its share of the neighbour vote
    choice: str | None = None  # COPA: the choice whose input retrieved it
    rationale: str | None = None  # why its label holds (a store built with --rationales)


@dataclass
class Prediction:
    """One answer: label name, probabilities (or score for regression) and its neighbours."""

    label: str
    probs: dict[str, float] | None = None
    score: float | None = None
    neighbours: list[Neighbour] = field(default_factory=list)
    #: The rationales of the neighbours that vote for the answer, heaviest first (a store
    #: built with ``--rationales``; empty otherwise).
    explanation: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    #: With ``layers=True``: every transformer layer's output, mean-pooled like ``pooled``
    #: (a tuple of num_layers tensors (n_inputs, hidden); the embeddings are left out).
    layers: tuple[torch.Tensor, ...] | None = None


def explanation(task: Task, prediction: Prediction) -> list[str]:
    """The rationales of the neighbours whose label is the answer (for COPA: plausible
    neighbours of the chosen choice), heaviest first, each once."""
    if task.head == CHOICE:
        supports = lambda n: n.choice == prediction.label and n.label == "plausible"  # noqa: E731
    else:
        supports = lambda n: n.label == prediction.label  # noqa: E731
    found: list[str] = []
    for neighbour in sorted(prediction.neighbours, key=lambda n: -n.weight):
        if neighbour.rationale and supports(neighbour) and neighbour.rationale not in found:
            found.append(neighbour.rationale)
    return found


# ---------------------------------------------------------------------------- model
class RetriKT(nn.Module):
    """A sentence encoder with a task head that mixes retrieved teacher labels into its answer.

    Example::

        model = RetriKT.from_encoder("cb")                      # a fresh student
        model.attach_store(KnowledgeStore.open("stores/cb"))    # retrieve from a store
        model.refresh_keys()                                    # key the rows with this encoder
        model.predict([["It rained.", "The ground is wet."]])[0].label

    Relations: trained by :func:`retrikt.training.train_student`, served by
    :mod:`retrikt.server`; its memory is :class:`~retrikt.student.memory.Memory`, its mixing
    rule :mod:`retrikt.retrieval`, its embedding path the one of :class:`retrikt.encoder.Encoder`.
    """

    def __init__(self, config: StudentConfig, encoder: nn.Module, pooling: nn.Module):
        super().__init__()
        self.config = config
        self.task = restore_task(config.task, config.task_spec, "student config")
        self.encoder = encoder  # sentence-transformers' Transformer module (or an OnnxEncoder)
        self.pooling = pooling  # and its Pooling module (mean over tokens; inside an OnnxEncoder)
        self.encoder.max_seq_length = config.max_length
        self.hidden_size = hidden = encoder.get_embedding_dimension()
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
            self.log_retrieval_temperature = nn.Parameter(torch.tensor(0.0))

    @classmethod
    def _load(cls, config: StudentConfig, path: str, local: bool, **overrides: Any) -> RetriKT:
        """The student on the sentence-transformers modules of ``path`` (Transformer, Pooling)."""
        modules = sentence_transformer(path, config.max_length, overrides, local)
        encoder, pooling = modules[0], modules[1] if len(modules) > 1 else None
        if type(pooling).__name__ != "Pooling":
            raise ModelFileError(f"{path} has no pooling module after its transformer")
        return cls(config, encoder, pooling)

    # ------------------------------------------------------------- building
    @classmethod
    def from_encoder(
        cls, task: str | Task, encoder: str | None = None, max_length: int = 128
    ) -> RetriKT:
        """A fresh student for ``task`` on a pretrained encoder preset (or HF folder)."""
        task = task if isinstance(task, Task) else get_task(task)
        resolved = resolve_model(encoder or default_model(ENCODER), ENCODER)
        local = resolved.preset is not None or Path(resolved.path).is_dir()
        config = StudentConfig(
            task=task.name,
            task_spec=saved_spec(task),
            encoder=resolved.name,
            head=task.head,
            max_length=max_length,
        )
        return cls._load(config, resolved.path, local, **resolved.config_overrides)

    @property
    def num_layers(self) -> int:
        """Transformer layers of the encoder (a PyTorch one)."""
        return int(self.encoder.auto_model.config.num_hidden_layers)

    @property
    def store(self) -> KnowledgeStore | None:
        """The student's own store (keys from its encoder), once saved or loaded."""
        return self.memory.store if self.memory is not None else None

    @property
    def retrieval_temperature(self) -> torch.Tensor:
        """The temperature of the neighbour-weighting softmax (learned, kept as its log)."""
        return self.log_retrieval_temperature.exp()

    def attach_store(
        self,
        source: KnowledgeStore,
        k: int = 8,
        mix: float = 0.5,
        retrieval_temperature: float = 0.05,
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
        self.log_retrieval_temperature = nn.Parameter(
            torch.tensor(float(np.log(retrieval_temperature)))
        )
        rows = memory_rows(self.task, source.entries())
        self.memory = Memory.from_rows(self.task, rows, self.hidden_size)

    @torch.inference_mode()
    def embed_inputs(self, inputs: Sequence[EncoderInput], batch_size: int = 64) -> np.ndarray:
        """Normalised query/key vectors of encoder inputs (eval mode, batched by length)."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(inputs)), key=lambda i: sum(len(t or "") for t in inputs[i]))
        out = np.zeros((len(inputs), self.hidden_size), dtype=np.float32)
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
        rationales = self.config.retrieval is not None and self.config.retrieval.rationale_keys
        memory.keys = self.embed_inputs(memory.inputs(rationales), batch_size)
        memory.store = None  # the saved copy (if any) holds stale keys now

    # -------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path) -> Path:
        if isinstance(self.encoder, OnnxEncoder):
            raise ModelFileError(
                "an exported student cannot be saved again: copy its folder, or export the "
                "PyTorch student it came from ('retrikt export')"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from sentence_transformers import SentenceTransformer

        modules = SentenceTransformer(modules=[self.encoder, self.pooling], device="cpu")
        modules.save(str(directory / ENCODER_DIR), create_model_card=False)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file({k: v for k, v in state.items() if not k.startswith("encoder.")},
                  directory / HEAD_NAME)  # fmt: skip
        if self.memory is not None:
            self._save_store(directory / STORE_DIR)
        self.config.versions = library_versions()
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
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
        """Load a student folder, PyTorch or exported (``retrikt export``: its encoder runs in
        onnxruntime); with retrieval its store copy is opened and verified."""
        directory = Path(directory)
        exported = is_exported(directory)
        parts = (CONFIG_NAME, HEAD_NAME) if exported else (CONFIG_NAME, HEAD_NAME, ENCODER_DIR)
        for needed in parts:
            if not (directory / needed).exists():
                raise ModelFileError(
                    f"{directory} is not a RetriKT student folder: {needed} is missing "
                    "(train one with 'retrikt train-student --out DIR')"
                )
        path = directory / CONFIG_NAME
        try:
            config = StudentConfig.from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as err:
            raise ModelFileError(f"{path} is not a student config: {err}") from None
        if config.format_version > FORMAT_VERSION:
            raise ModelFileError(
                f"{directory} was saved in student format {config.format_version}, newer than "
                f"this RetriKT reads ({FORMAT_VERSION}): upgrade retrikt"
            )
        if exported:
            model = cls(config, *load_encoder(directory))
        else:
            model = cls._load(config, str(directory / ENCODER_DIR), local=True)
        state = {_RENAMED.get(k, k): v for k, v in load_file(directory / HEAD_NAME).items()}
        config.format_version = FORMAT_VERSION  # what it is once loaded (and saved again)
        missing, unexpected = model.load_state_dict(state, strict=False)
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
            expected_dim=self.hidden_size,
        )
        if store.manifest.get("manifest_sha256") != retrieval.store_manifest_sha256:
            raise StoreError(
                f"{path} is not the store this student was saved with (manifest checksum "
                "differs): it was modified after training; retrain or restore the folder"
            )
        return store

    # -------------------------------------------------------------- forward
    def tokenize_inputs(self, inputs: Sequence[EncoderInput]) -> dict[str, Any]:
        """Tokenize encoder inputs as texts or real text pairs, padded to the longest."""
        return self.encoder.preprocess([as_model_input(item) for item in inputs])

    def tokenize(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Encoder inputs of ``examples`` (choices flattened in order)."""
        return self.tokenize_inputs([p for ex in examples for p in self.task.encoder_inputs(ex)])

    def embed(self, features: dict[str, Any]) -> torch.Tensor:
        """Mean-pooled token states, one row per encoder input (sentence-transformers' pooling)."""
        return self.pooling(self.encoder(dict(features)))["sentence_embedding"]

    def embed_layers(
        self, features: dict[str, Any]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The pooled embedding and every layer's mean-pooled output (hidden-state distillation).

        Hidden states are switched on for this call only, as sentence-transformers'
        ``AdaptiveLayerLoss`` does, so the saved config keeps ``output_hidden_states`` off.
        """
        config = self.encoder.auto_model.config
        before, config.output_hidden_states = config.output_hidden_states, True
        try:
            encoded = self.encoder(dict(features))
        finally:
            config.output_hidden_states = before
        layers = tuple(  # each layer pooled by the student's own pooling module
            self.pooling({**encoded, "token_embeddings": states})["sentence_embedding"]
            for states in encoded["all_layer_embeddings"][1:]
        )
        return self.pooling(encoded)["sentence_embedding"], layers

    def forward(
        self, features: dict[str, torch.Tensor], n_examples: int, layers: bool = False
    ) -> ForwardOutput:
        """Head outputs and pooled embeddings; ``layers`` adds every layer's pooled output."""
        if layers:
            pooled, states = self.embed_layers(features)
        else:
            pooled, states = self.embed(features), None
        return ForwardOutput(self.head(self.dropout(pooled)).view(n_examples, -1), pooled, states)

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
        queries = np.zeros((len(examples) * per, self.hidden_size), np.float32)
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
        sims, rows = self.search(queries, k, examples if exclude_own else None)
        return RawOutputs(model, sims, rows)

    def search(
        self, queries: np.ndarray, k: int, examples: Sequence[Example] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` memory rows of normalised queries; with ``examples`` (the queries' own)
        the rows of each query's own example are left out."""
        assert self.memory is not None
        return self.memory.search(queries, k, examples)

    def combined(
        self,
        raw: RawOutputs,
        k: int | None = None,
        retrieval_temperature: float | None = None,
        mix: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The final distribution (n, C) of ``raw`` and each input's neighbour weights.

        ``k``, ``retrieval_temperature`` and ``mix`` default to the student's own (tuning
        tries others).
        """
        retrieval = self.config.retrieval
        if raw.sims is None or raw.rows is None or retrieval is None or self.memory is None:
            return raw.model, None
        k = k or retrieval.k
        if retrieval_temperature is None:
            retrieval_temperature = self.retrieval_temperature.item()
        return mix_rows(
            raw.model,
            raw.sims[:, :k],
            raw.rows[:, :k],
            self.memory.values,
            retrieval_temperature,
            retrieval.mix if mix is None else mix,
            self.config.head,
        )

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
            prediction.explanation = explanation(self.task, prediction)
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
                rationale=self.memory.rationales[r],
            )
            for r, s, w in zip(rows, sims, weights, strict=True)
            if r >= 0
        ]

    def decode(self, row: np.ndarray) -> Prediction:
        """A prediction from one final row (probabilities, or a score)."""
        if self.config.head == SCORE:
            score = float(row[0])
            return Prediction(label=self.task.label_name(score), score=score)
        names = self.task.label_names or ()
        probs = {name: float(p) for name, p in zip(names, row, strict=True)}
        return Prediction(label=names[int(row.argmax())], probs=probs)
