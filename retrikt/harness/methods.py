"""The methods the harness compares: RetriKT, its baselines and ablations (:data:`METHODS`).

Each method says whether it depends on the seed (the zero-shot LLM does not, and runs once),
whether a task is outside its reach, what its result depends on (``spec``, hashed into the
cache key) and how to fit it. Fitting returns a :class:`Fitted`: a batch predictor giving the
same (n, C) probabilities (or (n, 1) scores) as the student, so evaluation and latency are
measured the same way for all methods.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.harness.artefacts import TaskContext
from retrikt.tasks import Example, Task


@dataclass
class Fitted:
    """A trained method: a batch predictor and what it cost."""

    predict: Callable[[list[Example]], np.ndarray]  # (n, C) probabilities or (n, 1) scores
    params: int
    train_seconds: float  # fitting this method's own parameters
    artefact_seconds: float = 0.0  # building what it was fitted from (store, prompts), once
    info: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A way to answer the task: its cache key (``spec``) and how to fit it."""

    name = ""
    description = ""
    seeded = True  # False: the result does not depend on the seed and is computed once

    def not_applicable(self, ctx: TaskContext) -> str | None:
        """Why this method cannot run on the task (with this run's inputs), or None."""
        return None

    @abstractmethod
    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        """Everything the result depends on (hashed into the cache key), without fitting."""

    @abstractmethod
    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        """Train (or load from the cache) and return the predictor."""

    def model_unit(self, ctx: TaskContext, seed: int | None) -> tuple[str, dict[str, Any], Path]:
        """The label and spec of this method's trained model in the cache (``models/``), and
        the folder its training checkpoints in, so that a killed unit resumes."""
        label, spec = f"{ctx.task.name}-{self.name}-s{seed}", self.spec(ctx, seed)
        return label, spec, ctx.cache.resume_folder("models", label, spec)


def _count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def teacher_predictor(teacher: Any, task: Task) -> Callable[[list[Example]], np.ndarray]:
    """Any teacher (``label_probs``) as a batch predictor."""
    return lambda examples: teacher.label_probs(task, examples)


class StudentMethod(Method):
    """A student trained by ``retrikt.training.train_student`` (what ``train-student`` runs).

    ``rl`` names the store it learns from (None: no store) and ``examples`` what that store
    holds (generated, train or both); ``overrides`` switch training objectives; ``retrieve``
    False drops the store at inference (the distilled student).
    """

    def __init__(
        self,
        name: str,
        description: str,
        rl: str | None = None,
        overrides: dict[str, Any] | None = None,
        retrieve: bool = True,
        examples: str = "both",
    ):
        self.name = name
        self.description = description
        self.rl = rl
        self.overrides = overrides or {}
        self.retrieve = retrieve
        self.examples = examples

    def train_config(self, ctx: TaskContext, seed: int | None, store: Path | None = None) -> Any:
        from retrikt.student.config import TrainConfig

        scale = ctx.scale
        return TrainConfig(
            task=ctx.task.name,
            encoder=ctx.config.encoder,
            epochs=scale.epochs,
            batch_size=scale.batch_size,
            max_length=scale.max_length,
            seed=seed or 0,
            train_limit=scale.train_limit,
            store=str(store) if store is not None else None,
            **self.overrides,
        )

    def not_applicable(self, ctx: TaskContext) -> str | None:
        if self.rl not in (None, "ppo") and ctx.task.name in ctx.config.stores:
            return f"a given store (--store) has one generator; this needs the {self.rl} one"
        return None

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        train = self.train_config(ctx, seed).key_dict()
        store = ctx.store_spec(self.rl, self.examples) if self.rl is not None else None
        return ctx.spec(self.name, seed, train=train, store=store, retrieve=self.retrieve)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.student import RetriKT
        from retrikt.training import train_student

        store = ctx.store(self.rl, self.examples) if self.rl is not None else None
        config = self.train_config(ctx, seed, store.path if store else None)

        label, spec, resume = self.model_unit(ctx, seed)  # epochs survive a kill

        def make(folder: Path) -> dict[str, Any]:
            result = train_student(config, ctx.config.data_dir, folder / "model",
                                   checkpoint_dir=resume)  # fmt: skip
            return {"seconds": round(result.seconds, 2)}

        folder, info = ctx.cache.ensure("models", label, spec, make)
        model = RetriKT.from_pretrained(folder / "model")
        details: dict[str, Any] = {}
        if model.config.retrieval is not None:
            details = {"store_entries": model.config.retrieval.source.get("entries")}
            if self.retrieve:
                details["tuning"] = model.config.retrieval.tuning
            else:
                model.memory = None  # the distilled student answers from its own head alone
        return Fitted(
            model.predict_examples,
            _count_params(model),
            info["seconds"],
            store.seconds if store else 0.0,
            details,
        )


class LLMMethod(Method):
    """The generator LLM as a classifier: label-word probabilities after a task question.

    Zero-shot, or with the teacher's tuned soft prompt (``tuned``): the same teacher that
    labels the store. Neither depends on the seed (the prompt is tuned once per task).
    """

    seeded = False

    def __init__(self, name: str, description: str, tuned: bool):
        self.name = name
        self.description = description
        self.tuned = tuned

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        if self.tuned:
            return ctx.spec(self.name, seed, teacher=ctx.teacher_spec())
        return ctx.spec(self.name, seed, generator=ctx.config.generator)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.generator.teacher import LLMTeacher

        if not self.tuned:
            teacher = LLMTeacher(ctx.config.generator)
            return Fitted(teacher_predictor(teacher, ctx.task), _count_params(teacher.model), 0.0)
        prompt = ctx.teacher()
        teacher = LLMTeacher(prompt.info.get("model", ctx.config.generator), prompt.path)
        # Its training is the prompt tuning (measured with the build's teacher stage).
        return Fitted(
            teacher_predictor(teacher, ctx.task),
            _count_params(teacher.model),
            prompt.seconds,
            info={"teacher": prompt.info.get("id")},
        )


class TeacherMethod(Method):
    """The tuned teacher itself (``retrikt train-teacher``, given with ``--teacher``): the
    model whose knowledge the store carries, and the one the student replaces."""

    name = "teacher"
    description = "the tuned LLM teacher that labels the store (retrikt train-teacher)"
    seeded = False

    def not_applicable(self, ctx: TaskContext) -> str | None:
        if ctx.tuned_teacher is None:
            return "no tuned teacher given (--teacher TASK=DIR)"
        return None

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        return ctx.spec(self.name, seed, teacher=ctx.tuned_teacher_id)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.teachers.loading import load_teacher, teacher_card

        folder = str(ctx.tuned_teacher)
        teacher = load_teacher(folder)
        card = teacher_card(folder)
        return Fitted(
            teacher_predictor(teacher, ctx.task),
            _count_params(teacher.model),
            card["train_seconds"] or 0.0,
            info={"teacher": teacher.id, **card},
        )


class KnnOnly(Method):
    """The store's similarity-weighted vote of teacher soft labels, with no trained head.

    The pretrained encoder embeds the store's entries (one key per choice for COPA, as the
    student's memory does) and the queries; the vote is the student's combination rule with
    the model's own share at zero. k and the softmax temperature are chosen on the training
    subset (each training example queries the store, leaving out the entries that are that
    example itself), never on validation.
    """

    name = "knn-only"
    description = "the store's similarity-weighted vote of teacher soft labels (pretrained encoder)"
    seeded = False
    ks = (1, 4, 8, 16, 32)
    retrieval_temperatures = (0.01, 0.03, 0.1, 0.3)

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        return ctx.spec(
            self.name,
            seed,
            store=ctx.store_spec("ppo"),
            encoder=ctx.config.encoder,
            train_limit=ctx.scale.train_limit,
            max_length=ctx.scale.max_length,
            ks=list(self.ks),
            temperatures=list(self.retrieval_temperatures),
            pairs="tokenizer",  # pairs embedded as tokenizer pairs (before: one joined string)
        )

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.encoder import Encoder
        from retrikt.harness.knn import KnnVote
        from retrikt.store import KnowledgeStore

        artefact = ctx.store("ppo")
        store = KnowledgeStore.open(artefact.path)
        started = time.perf_counter()
        encoder = Encoder(ctx.config.encoder, max_length=ctx.scale.max_length)
        vote = KnnVote.from_store(ctx.task, store, encoder)
        k, temperature = vote.tune(ctx.train, self.ks, self.retrieval_temperatures)
        seconds = time.perf_counter() - started
        return Fitted(
            lambda examples: vote.predict(examples, k, temperature),
            _count_params(encoder.model),
            seconds,
            artefact.seconds,
            {"k": k, "retrieval_temperature": temperature, "store_entries": len(store)},
        )


class SetFitMethod(Method):
    name = "setfit"
    description = "SetFit: contrastive body fine-tuning + logistic-regression head"

    def setfit_config(self, ctx: TaskContext, seed: int | None) -> Any:
        from retrikt.setfit_baseline import SetFitConfig

        return SetFitConfig(
            task=ctx.task.name,
            encoder=ctx.config.encoder,
            max_length=ctx.scale.max_length,
            batch_size=ctx.scale.batch_size,
            num_iterations=ctx.scale.setfit_iterations,
            seed=seed or 0,
        )

    def not_applicable(self, ctx: TaskContext) -> str | None:
        if ctx.task.is_multi_answer:
            return "MultiRC's exact match needs grouped answers; not adapted to SetFit"
        return None

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        config = asdict(self.setfit_config(ctx, seed))
        return ctx.spec(self.name, seed, setfit=config, train_limit=ctx.scale.train_limit)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.setfit_baseline import SetFitBaseline

        *_, resume = self.model_unit(ctx, seed)  # batches survive a kill
        model = SetFitBaseline.train(self.setfit_config(ctx, seed), ctx.train, resume)
        return Fitted(model.predict_examples, model.num_parameters(), model.train_seconds)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        LLMMethod("llm-zeroshot", "the generator LLM scoring label words after a question", False),
        LLMMethod(
            "llm-prompt",
            "the LLM with its tuned soft prompt (the teacher that labels the store); its "
            "train time is the prompt tuning",
            True,
        ),
        StudentMethod("student-ft", "the student fine-tuned on the training split alone"),
        StudentMethod(
            "student-kd",
            "classic distillation: the student trained on the training split plus the store's "
            "examples against their teacher soft labels; no retrieval at inference",
            rl="ppo",
            overrides={"combined_ce": False, "retrieval_loss": False},
            retrieve=False,
        ),
        StudentMethod(
            "retrikt",
            "the RetriKT student: retrieval-trained, retrieving from the RL-refined store",
            rl="ppo",
            overrides={"tune_retrieval": True},
        ),
        StudentMethod(
            "retrikt-train-store",
            "ablation: the RetriKT student with a store of the training split alone (teacher "
            "soft labels; nothing generated)",
            rl="ppo",
            overrides={"tune_retrieval": True},
            examples="train",
        ),
        StudentMethod(
            "retrikt-gen-store",
            "ablation: the RetriKT student with a store of generated examples alone",
            rl="ppo",
            overrides={"tune_retrieval": True},
            examples="generated",
        ),
        StudentMethod(
            "retrikt-no-rl",
            "ablation: the RetriKT student with a store from the supervised prompt only",
            rl="none",
            overrides={"tune_retrieval": True},
        ),
        TeacherMethod(),
        KnnOnly(),
        SetFitMethod(),
    )
}
