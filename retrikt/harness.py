"""The evaluation harness: RetriKT against its baselines, on many tasks and seeds, resumable.

``retrikt evaluate --tasks cb,rte --methods student-ft,retrikt --seeds 0,1,2 --scale demo
--name NAME`` runs every method on every task's validation split with the official metrics
and writes ``experiments/results/NAME.md``, ``.json`` and ``.png`` (mean ± sample std over
seeds, parameter count, training time, CPU latency at batch 1).

Why a cache: one table is hours of CPU (an LLM writes each task's store, then several students
train per seed). Every artefact - store, trained student, one (task, method, seed) result - is
stored under ``--cache-dir`` in a folder named by the hash of the full configuration that
produced it (method, task, the data files' sha256, scale, encoder, generator, seed, and the
keys of the artefacts it was built from). A rerun reuses whatever it can find, an edit to one
setting redoes only what depends on it, and a run killed half-way resumes where it stopped.
The report is rewritten after every task, so an interrupted run still leaves a partial table.

Methods live in :data:`METHODS`; each says whether it depends on the seed (the zero-shot LLM
does not, and runs once), whether a task is outside its reach, and how to fit it. Fitting
returns a :class:`Fitted`: a batch predictor giving the same (n, C) probabilities (or (n, 1)
scores) as the student, so evaluation and latency are measured the same way for all methods.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.errors import RetriktError
from retrikt.tasks import MULTIPLE_CHOICE, Example, Task, get_task, resolve_data_source

logger = logging.getLogger(__name__)

#: Bump when a change to the harness alters results, so cached results are not reused.
HARNESS_VERSION = 1
DEFAULT_CACHE = Path("experiments/cache")
DEFAULT_RESULTS = Path("experiments/results")


# ---------------------------------------------------------------------------- scales
@dataclass(frozen=True)
class Scale:
    """How much data and compute one run gets; the results file states it."""

    name: str
    #: Training examples per task: a fixed random subset shared by every method and seed.
    train_limit: int | None
    #: Validation examples scored (None: the whole official validation split).
    eval_limit: int | None
    epochs: int
    batch_size: int
    max_length: int
    #: Store size: generated examples requested per label (per score bucket for STS-B).
    samples_per_label: int
    #: Store building: steps of the teacher and generator soft prompts and of RL.
    teacher_steps: int
    prompt_steps: int
    rl_steps: int
    #: SetFit's R: contrastive pairs per training text and side.
    setfit_iterations: int
    #: Validation examples timed one at a time for the latency column.
    latency_examples: int

    def describe(self) -> str:
        train = "all" if self.train_limit is None else f"at most {self.train_limit}"
        evals = (
            "the whole validation split"
            if self.eval_limit is None
            else (f"at most {self.eval_limit} validation examples")
        )
        return (
            f"scale `{self.name}`: {train} training examples per task (a fixed random subset, "
            f"the same for every method and seed), scored on {evals}; students train "
            f"{self.epochs} epochs at batch {self.batch_size}, max length {self.max_length}; "
            f"stores ask for {self.samples_per_label} generated examples per label (teacher "
            f"prompt {self.teacher_steps} steps, generator prompt {self.prompt_steps} steps, "
            f"RL {self.rl_steps} steps, all tuned on the same training subset); SetFit "
            f"uses {self.setfit_iterations} pair iterations; latency is the p50 over "
            f"{self.latency_examples} examples at batch 1"
        )


SCALES: dict[str, Scale] = {
    # Minutes per task on 2 shared cores: small subsets, small stores, few steps; at most 300
    # validation examples (all of CB, COPA, RTE) because the LLM rows take ~1 s an example.
    "demo": Scale(
        "demo",
        train_limit=128,
        eval_limit=300,
        epochs=5,
        batch_size=16,
        max_length=128,
        samples_per_label=32,
        teacher_steps=20,
        prompt_steps=20,
        rl_steps=4,
        setfit_iterations=5,
        latency_examples=30,
    ),
    # What fits this machine in a night per task: up to 1000 training examples, bigger stores.
    "full": Scale(
        "full",
        train_limit=1000,
        eval_limit=None,
        epochs=5,
        batch_size=16,
        max_length=128,
        samples_per_label=256,
        teacher_steps=100,
        prompt_steps=100,
        rl_steps=20,
        setfit_iterations=20,
        latency_examples=100,
    ),
}


@dataclass
class HarnessConfig:
    """One harness run: which tasks, methods and seeds, at which scale, written where."""

    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    scale: Scale
    name: str
    data_dir: str | None = None
    encoder: str = "minilm-l6"
    generator: str = "smollm2-135m"
    cache_dir: Path = DEFAULT_CACHE
    results_dir: Path = DEFAULT_RESULTS
    #: Ready-made stores by task, used instead of building one (for every store-based method).
    stores: dict[str, Path] = field(default_factory=dict)
    threads: int | None = None
    command: str = ""


# ---------------------------------------------------------------------------- cache
def config_hash(spec: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration (key order does not matter)."""
    canonical = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write aside then rename, so a killed run never leaves a half-written JSON behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class ArtifactCache:
    """Folders and JSON results keyed by the hash of the configuration that produced them."""

    DONE = "done.json"

    def __init__(self, root: str | os.PathLike):
        # Absolute: artefact paths recorded inside the cache must not depend on the cwd.
        self.root = Path(root).resolve()

    def folder(self, kind: str, label: str, spec: dict[str, Any]) -> Path:
        return self.root / kind / f"{label}-{config_hash(spec)}"

    def ensure(
        self, kind: str, label: str, spec: dict[str, Any], make: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict[str, Any]]:
        """The artefact folder for ``spec``, made by ``make(folder)`` unless already complete.

        ``make`` may find a partial folder from an interrupted run and continue it (the
        store builder resumes its generation); the folder counts as complete only once
        ``done.json`` (the spec plus what ``make`` returned, e.g. its build time) is written.
        """
        folder = self.folder(kind, label, spec)
        done = folder / self.DONE
        if done.is_file():
            logger.info("cached %s %s", kind, folder.name)
            return folder, json.loads(done.read_text())
        folder.mkdir(parents=True, exist_ok=True)
        info = {"spec": spec, **make(folder)}
        _write_json_atomic(done, info)
        return folder, info

    def result_path(self, spec: dict[str, Any]) -> Path:
        seed = "once" if spec["seed"] is None else f"seed{spec['seed']}"
        return (
            self.root
            / "results"
            / spec["task"]
            / spec["method"]
            / f"{seed}-{config_hash(spec)}.json"
        )

    def load_result(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        path = self.result_path(spec)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_result(self, spec: dict[str, Any], result: dict[str, Any]) -> None:
        _write_json_atomic(self.result_path(spec), result)


def data_fingerprint(task: Task, data_dir: str | None) -> str:
    """sha256 of the task's train and validation files: results follow the data, not its path."""
    source = resolve_data_source(data_dir)
    if source.startswith("hub:"):
        return source
    digest = hashlib.sha256()
    for split in ("train", "validation"):
        digest.update(task.split_path(split, source).read_bytes())
    return digest.hexdigest()[:16]


def _store_identity(path: Path) -> dict[str, Any]:
    """A given store is identified by its id and version, not by where it lies."""
    from retrikt.store import KnowledgeStore

    store = KnowledgeStore.open(path, verify=False)
    return {"store_id": store.store_id, "version": store.version, "entries": len(store)}


# ---------------------------------------------------------------------------- methods
@dataclass
class Fitted:
    """A trained method: a batch predictor and what it cost."""

    predict: Callable[[list[Example]], np.ndarray]  # (n, C) probabilities or (n, 1) scores
    params: int
    train_seconds: float  # fitting this method's own parameters
    artefact_seconds: float = 0.0  # building what it was fitted from (store, prompts), once
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artefact:
    """A shared, cached artefact: where it is, what it was built from, what it cost."""

    path: Path
    spec: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class TaskContext:
    """Per-task state shared by the methods: the examples, and the artefacts built once."""

    def __init__(self, config: HarnessConfig, cache: ArtifactCache, task: Task):
        from retrikt.training import subsample

        self.config = config
        self.scale = config.scale
        self.cache = cache
        self.task = task
        self.train = subsample(task.read("train", config.data_dir), self.scale.train_limit)
        self.eval = subsample(task.read("validation", config.data_dir), self.scale.eval_limit)
        # What every result depends on; methods add what they use (an LLM's zero-shot
        # result must not be recomputed because the student encoder changed).
        self.base_spec = {
            "harness": HARNESS_VERSION,
            "task": task.name,
            "data": data_fingerprint(task, config.data_dir),
            "eval_limit": self.scale.eval_limit,
        }

    def build_config(self, rl: str, out: Path | str = "") -> Any:
        """How this task's store is built at this scale (``retrikt build-store`` settings).

        The build's own stage cache (teacher prompt, generator prompt, RL, generations) lives
        under the harness cache too, so the stores with and without RL share their prompts.
        """
        from retrikt.generator.build import BuildConfig
        from retrikt.generator.ppo import RLConfig
        from retrikt.generator.prompt_tuning import SoftPromptConfig

        scale = self.scale
        return BuildConfig(
            task=self.task.name,
            data_dir=self.config.data_dir,
            out=str(out),
            generator=self.config.generator,
            encoder=self.config.encoder,
            samples_per_label=scale.samples_per_label,
            rl=rl,
            generator_prompt=SoftPromptConfig(steps=scale.prompt_steps),
            teacher_prompt=SoftPromptConfig(steps=scale.teacher_steps),
            rl_config=RLConfig(steps=scale.rl_steps),
            train_limit=scale.train_limit,
            cache_dir=str(self.cache.root / "build"),
            overwrite=True,  # a store left by a run killed before done.json is rebuilt
        )

    def _build_spec(self, rl: str) -> dict[str, Any]:
        build = asdict(self.build_config(rl))
        for local in ("out", "data_dir", "cache_dir", "overwrite"):
            build.pop(local)
        return {**self.base_spec, "build": build}

    def store_spec(self, rl: str) -> dict[str, Any]:
        """What the store depends on, without building it."""
        given = self.config.stores.get(self.task.name)
        if given is not None:
            return {"given": _store_identity(Path(given))}
        return self._build_spec(rl)

    def store(self, rl: str) -> Artefact:
        """The task's knowledge store: given with ``--store``, or built once and cached."""
        given = self.config.stores.get(self.task.name)
        if given is not None:
            return Artefact(Path(given), self.store_spec(rl), 0.0)
        from retrikt.generator.build import build_store

        def make(folder: Path) -> dict[str, Any]:
            started = time.perf_counter()
            build_store(self.build_config(rl, folder / "store"))
            return {"seconds": round(time.perf_counter() - started, 1)}

        spec = self.store_spec(rl)
        folder, info = self.cache.ensure("stores", f"{self.task.name}-{rl}", spec, make)
        return Artefact(folder / "store", spec, info["seconds"])

    def teacher_spec(self) -> dict[str, Any]:
        """What the tuned teacher depends on: the build settings of its stage only."""
        given = self.config.stores.get(self.task.name)
        if given is not None:
            return {"given": _store_identity(Path(given))}
        build = self._build_spec("none")["build"]
        keep = (
            "generator",
            "teacher",
            "teacher_steps",
            "num_virtual_tokens",
            "train_limit",
            "teacher_eval_limit",
            "seed",
        )
        return {**self.base_spec, "teacher": {k: build[k] for k in keep}}

    def teacher(self) -> Artefact:
        """The tuned soft prompt of the LLM teacher: the one that labels the store.

        With a given store, the adapter its manifest names; otherwise the build's teacher
        stage (the same cache entry ``build_store`` uses, so it is trained once).
        """
        given = self.config.stores.get(self.task.name)
        if given is not None:
            from retrikt.store import KnowledgeStore

            teacher = KnowledgeStore.open(given).manifest.get("teacher") or {}
            if not teacher.get("adapter"):
                raise RetriktError(f"the store {given} names no teacher soft prompt")
            return Artefact(Path(teacher["adapter"]), self.teacher_spec(), 0.0, teacher)
        from retrikt.generator.build import load_task_data, prepare_teacher

        def make(folder: Path) -> dict[str, Any]:
            started = time.perf_counter()
            config = self.build_config("none")
            _, info = prepare_teacher(config, load_task_data(config))
            return {"seconds": round(time.perf_counter() - started, 1), "teacher": info}

        spec = self.teacher_spec()
        _, info = self.cache.ensure("teachers", self.task.name, spec, make)
        teacher = info["teacher"]
        if not teacher.get("adapter"):
            raise RetriktError(f"{self.task.name}: the scale tunes no teacher prompt")
        return Artefact(Path(teacher["adapter"]), spec, info["seconds"], teacher)

    def spec(self, method: str, seed: int | None, **extra: Any) -> dict[str, Any]:
        return {**self.base_spec, "method": method, "seed": seed, **extra}


class Method(ABC):
    """A way to answer the task: its cache key (``spec``) and how to fit it."""

    name = ""
    description = ""
    seeded = True  # False: the result does not depend on the seed and is computed once

    def not_applicable(self, task: Task) -> str | None:
        """Why this method cannot run on ``task``, or None when it can."""
        return None

    @abstractmethod
    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        """Everything the result depends on (hashed into the cache key), without fitting."""

    @abstractmethod
    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        """Train (or load from the cache) and return the predictor."""


def _count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


class StudentMethod(Method):
    """A student trained by ``retrikt.training.train_student`` (what ``train-student`` runs).

    ``rl`` names the store it learns from (None: no store); ``overrides`` switch training
    objectives; ``retrieve`` False drops the store at inference (the distilled student).
    """

    def __init__(
        self,
        name: str,
        description: str,
        rl: str | None = None,
        overrides: dict[str, Any] | None = None,
        retrieve: bool = True,
    ):
        self.name = name
        self.description = description
        self.rl = rl
        self.overrides = overrides or {}
        self.retrieve = retrieve

    def train_config(self, ctx: TaskContext, seed: int | None, store: Path | None = None) -> Any:
        from retrikt.training import TrainConfig

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

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        train = asdict(self.train_config(ctx, seed))
        store = ctx.store_spec(self.rl) if self.rl is not None else None
        return ctx.spec(self.name, seed, train=train, store=store, retrieve=self.retrieve)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.student import RetriKT
        from retrikt.training import train_student

        store = ctx.store(self.rl) if self.rl is not None else None
        config = self.train_config(ctx, seed, store.path if store else None)

        def make(folder: Path) -> dict[str, Any]:
            result = train_student(config, ctx.config.data_dir, folder / "model")
            return {"seconds": round(result.seconds, 2)}

        label = f"{ctx.task.name}-{self.name}-s{seed}"
        folder, info = ctx.cache.ensure("models", label, self.spec(ctx, seed), make)
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
            return Fitted(self._predict(teacher, ctx.task), _count_params(teacher.model), 0.0)
        prompt = ctx.teacher()
        teacher = LLMTeacher(prompt.info.get("model", ctx.config.generator), prompt.path)
        # Its training is the prompt tuning (measured with the build's teacher stage).
        return Fitted(
            self._predict(teacher, ctx.task),
            _count_params(teacher.model),
            prompt.seconds,
            info={"teacher": prompt.info.get("id")},
        )

    @staticmethod
    def _predict(teacher: Any, task: Task) -> Callable[[list[Example]], np.ndarray]:
        return lambda examples: teacher.label_probs(task, examples)


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
    temperatures = (0.01, 0.03, 0.1, 0.3)

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        return ctx.spec(
            self.name,
            seed,
            store=ctx.store_spec("ppo"),
            encoder=ctx.config.encoder,
            train_limit=ctx.scale.train_limit,
            max_length=ctx.scale.max_length,
            ks=list(self.ks),
            temperatures=list(self.temperatures),
        )

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.encoder import Encoder
        from retrikt.store import KnowledgeStore

        artefact = ctx.store("ppo")
        store = KnowledgeStore.open(artefact.path)
        started = time.perf_counter()
        encoder = Encoder(ctx.config.encoder, max_length=ctx.scale.max_length)
        vote = KnnVote.from_store(ctx.task, store, encoder)
        k, temperature = vote.tune(ctx.train, self.ks, self.temperatures)
        seconds = time.perf_counter() - started
        return Fitted(
            lambda examples: vote.predict(examples, k, temperature),
            _count_params(encoder.model),
            seconds,
            artefact.seconds,
            {"k": k, "temperature": temperature, "store_entries": len(store)},
        )


class KnnVote:
    """kNN over a student-style memory of store rows, keyed by a fixed encoder."""

    def __init__(self, task: Task, encoder: Any, memory: Any):
        self.task = task
        self.encoder = encoder
        self.memory = memory

    @classmethod
    def from_store(cls, task: Task, store: Any, encoder: Any) -> KnnVote:
        from retrikt.student import Memory, memory_rows

        memory = Memory.from_rows(task, memory_rows(task, store.entries()), encoder.dim)
        memory.keys = encoder.encode(memory.inputs())
        return cls(task, encoder, memory)

    def search(
        self, examples: Sequence[Example], k: int, exclude_own: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (similarities, memory rows) of every encoder input of ``examples``.

        Exact search by one matrix product: the memory is a few thousand rows at most here,
        and COPA's per-choice keys are not what the store's FAISS index holds.
        """
        from retrikt.student import origin_key

        inputs = [item for ex in examples for item in self.task.encoder_inputs(ex)]
        scores = self.encoder.encode(inputs) @ self.memory.keys.T
        wanted = min(k + (self.memory.max_rows_per_origin if exclude_own else 0), scores.shape[1])
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :wanted]
        sims = np.take_along_axis(scores, rows, axis=1)
        if not exclude_own:
            return sims, rows
        per = len(inputs) // max(len(examples), 1)
        origins = [origin_key(self.task, ex) for ex in examples for _ in range(per)]
        return self.memory.exclude_own(sims, rows, origins, k)

    def vote(self, sims: np.ndarray, rows: np.ndarray, k: int, temperature: float) -> np.ndarray:
        """The combination rule of the student with no model share (``mix`` = 0)."""
        import torch

        from retrikt.student import combine, head_type, neighbour_vote, neighbour_weights

        sims, rows = sims[:, :k], rows[:, :k]
        weights = neighbour_weights(torch.from_numpy(np.ascontiguousarray(sims)), temperature)
        values = torch.from_numpy(self.memory.values[np.maximum(rows, 0)])
        found = torch.from_numpy((rows >= 0).any(-1))
        n = len(rows) // (self.task.num_outputs if self.task.task_type == MULTIPLE_CHOICE else 1)
        # Where no neighbour exists the rule falls back on the model: here the store's mean.
        prior = np.broadcast_to(self._prior(), (n, self.task.num_outputs))
        out = combine(
            torch.from_numpy(prior.copy()),
            neighbour_vote(weights, values),
            found,
            0.0,
            head_type(self.task),
        )
        return out.numpy()

    def _prior(self) -> np.ndarray:
        if self.task.task_type == MULTIPLE_CHOICE:
            return np.full(self.task.num_outputs, 1.0 / self.task.num_outputs, dtype=np.float32)
        return self.memory.values.mean(0)

    def predict(self, examples: Sequence[Example], k: int, temperature: float) -> np.ndarray:
        return self.vote(*self.search(examples, k), k, temperature)

    def tune(
        self, examples: Sequence[Example], ks: Sequence[int], temperatures: Sequence[float]
    ) -> tuple[int, float]:
        """The (k, temperature) with the best official score on ``examples`` (training data)."""
        from retrikt.student import label_predictions

        sims, rows = self.search(examples, max(ks), exclude_own=True)
        best: tuple[float, int, float] | None = None
        for k in ks:
            for temperature in temperatures:
                probs = self.vote(sims, rows, k, temperature)
                metrics = self.task.evaluate(label_predictions(self.task, probs), list(examples))
                score = float(np.mean(list(metrics.values())))
                if best is None or score > best[0]:
                    best = (score, k, temperature)
        assert best is not None
        logger.info(
            "knn-only %s: k=%d T=%.2f (train score %.4f)", self.task.name, *best[1:], best[0]
        )
        return best[1], best[2]


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

    def not_applicable(self, task: Task) -> str | None:
        if task.task_type == "multi_answer":
            return "MultiRC's exact match needs grouped answers; not adapted to SetFit"
        return None

    def spec(self, ctx: TaskContext, seed: int | None) -> dict[str, Any]:
        config = asdict(self.setfit_config(ctx, seed))
        return ctx.spec(self.name, seed, setfit=config, train_limit=ctx.scale.train_limit)

    def fit(self, ctx: TaskContext, seed: int | None) -> Fitted:
        from retrikt.setfit_baseline import SetFitBaseline

        started = time.perf_counter()
        model = SetFitBaseline.train(self.setfit_config(ctx, seed), ctx.train)
        seconds = time.perf_counter() - started
        return Fitted(model.predict_examples, model.num_parameters(), seconds)


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
            overrides={"combined_ce": False, "retrieval_loss": False, "tune_fraction": 0.0},
            retrieve=False,
        ),
        StudentMethod(
            "retrikt",
            "the RetriKT student: retrieval-trained, retrieving from the RL-refined store",
            rl="ppo",
        ),
        StudentMethod(
            "retrikt-no-rl",
            "ablation: the RetriKT student with a store from the supervised prompt only",
            rl="none",
        ),
        KnnOnly(),
        SetFitMethod(),
    )
}


# ---------------------------------------------------------------------------- running
def measure(task: Task, fitted: Fitted, examples: list[Example], latency_n: int) -> dict:
    """Official metrics on ``examples`` and per-example latency at batch 1 (p50/p95, ms)."""
    from retrikt.student import label_predictions

    started = time.perf_counter()
    probs = fitted.predict(examples)
    eval_seconds = time.perf_counter() - started
    metrics = task.evaluate(label_predictions(task, probs), examples)
    timed = examples[: max(latency_n, 0)]
    for example in timed[:3]:  # warm-up: first calls allocate buffers and fill caches
        fitted.predict([example])
    times = []
    for example in timed:
        started = time.perf_counter()
        fitted.predict([example])
        times.append((time.perf_counter() - started) * 1000)
    return {
        "metrics": metrics,
        "score": float(np.mean(list(metrics.values()))),
        "eval_examples": len(examples),
        "eval_seconds": round(eval_seconds, 2),
        "latency_ms_p50": round(float(np.percentile(times, 50)), 2) if times else None,
        "latency_ms_p95": round(float(np.percentile(times, 95)), 2) if times else None,
    }


def run_method(ctx: TaskContext, method: Method, seed: int | None) -> dict[str, Any]:
    """One (task, method, seed) result, from the cache when it is there."""
    spec = method.spec(ctx, seed)
    cached = ctx.cache.load_result(spec)
    if cached is not None:
        logger.info("cached result: %s %s seed %s", ctx.task.name, method.name, seed)
        return cached
    import torch

    logger.info("running %s on %s (seed %s)", method.name, ctx.task.name, seed)
    fitted = method.fit(ctx, seed)
    result = {
        "task": ctx.task.name,
        "method": method.name,
        "seed": seed,
        "status": "ok",
        "params": fitted.params,
        "train_seconds": round(fitted.train_seconds, 2),
        "train_examples": len(ctx.train),
        "artefact_seconds": round(fitted.artefact_seconds, 1),
        **measure(ctx.task, fitted, ctx.eval, ctx.scale.latency_examples),
        # Timings are measured by the run that computed the result (not part of its key).
        "threads": torch.get_num_threads(),
        "info": fitted.info,
        "key": config_hash(spec),
    }
    ctx.cache.save_result(spec, result)
    logger.info("%s %s seed %s: %s", ctx.task.name, method.name, seed, result["metrics"])
    return result


def run_harness(config: HarnessConfig, methods: dict[str, Method] | None = None) -> list[dict]:
    """Run everything in ``config``; returns one row per (task, method, seed).

    A method that fails on a task is recorded as failed (with the error) and the run goes on;
    the report is rewritten after every task.
    """
    from retrikt.training import set_threads

    methods = methods if methods is not None else METHODS
    unknown = [m for m in config.methods if m not in methods]
    if unknown:
        raise RetriktError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    set_threads(config.threads)
    cache = ArtifactCache(config.cache_dir)
    rows: list[dict[str, Any]] = []
    for task_name in config.tasks:
        task = get_task(task_name)
        ctx = TaskContext(config, cache, task)
        for method in (methods[name] for name in config.methods):
            reason = method.not_applicable(task)
            if reason:
                rows.append(_row(task, method, None, "n/a", reason))
                continue
            for seed in config.seeds if method.seeded else [None]:
                try:
                    rows.append(run_method(ctx, method, seed))
                except Exception as err:  # one failing method must not lose the others' hours
                    logger.exception("%s failed on %s (seed %s)", method.name, task.name, seed)
                    rows.append(_row(task, method, seed, "failed", f"{type(err).__name__}: {err}"))
        write_report(config, rows)
    return rows


def _row(task: Task, method: Method, seed: int | None, status: str, reason: str) -> dict:
    return {
        "task": task.name,
        "method": method.name,
        "seed": seed,
        "status": status,
        "reason": reason,
    }


# ---------------------------------------------------------------------------- report
def _std(values: list[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for a single run."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, method): mean ± std of every metric and of the task score over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    out = []
    for (task, method), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        entry: dict[str, Any] = {"task": task, "method": method, "runs": len(ok)}
        if not ok:
            entry["status"] = group[0]["status"]
            entry["reason"] = group[0].get("reason", "")
            out.append(entry)
            continue
        failed = [r for r in group if r["status"] != "ok"]
        entry["status"] = "ok" if not failed else "partial"
        if failed:
            entry["reason"] = failed[0].get("reason", "")
        metric_names = list(ok[0]["metrics"])
        entry["metrics"] = {
            name: {
                "mean": float(np.mean([r["metrics"][name] for r in ok])),
                "std": _std([r["metrics"][name] for r in ok]),
            }
            for name in metric_names
        }
        scores = [r["score"] for r in ok]
        entry["score"] = {"mean": float(np.mean(scores)), "std": _std(scores)}
        entry["seeds"] = [r["seed"] for r in ok]
        entry["params"] = ok[0]["params"]
        entry["train_seconds"] = float(np.mean([r["train_seconds"] for r in ok]))
        entry["artefact_seconds"] = ok[0].get("artefact_seconds", 0.0)
        latencies = [r["latency_ms_p50"] for r in ok if r.get("latency_ms_p50") is not None]
        entry["latency_ms_p50"] = float(np.median(latencies)) if latencies else None
        entry["eval_examples"] = ok[0]["eval_examples"]
        entry["train_examples"] = ok[0]["train_examples"]
        out.append(entry)
    return out


def averages(summary: list[dict], tasks: list[str], methods: list[str]) -> dict[str, float]:
    """Per method, the mean task score over ``tasks``, only when it ran on all of them."""
    scores: dict[str, dict[str, float]] = {}
    for entry in summary:
        if "score" in entry:
            scores.setdefault(entry["method"], {})[entry["task"]] = entry["score"]["mean"]
    return {
        m: float(np.mean([scores[m][t] for t in tasks]))
        for m in methods
        if m in scores and all(t in scores[m] for t in tasks)
    }


def _cell(stat: dict[str, float] | None, seeded: bool) -> str:
    if stat is None:
        return "—"
    mean = f"{100 * stat['mean']:.1f}"
    return f"{mean} ± {100 * stat['std']:.1f}" if seeded else mean


def render_markdown(config: HarnessConfig, rows: list[dict], summary: list[dict]) -> str:
    tasks = [get_task(t).name for t in config.tasks]
    by_key = {(e["task"], e["method"]): e for e in summary}
    seeded = {m: (METHODS[m].seeded if m in METHODS else True) for m in config.methods}
    lines = [
        f"# RetriKT evaluation: {config.name}",
        "",
        "```",
        config.command or "(run from Python)",
        "```",
        "",
        f"- {config.scale.describe()}.",
        f"- Student encoder `{config.encoder}`, generator `{config.generator}`, seeds "
        f"{', '.join(map(str, config.seeds))}; every number is on the official validation "
        "split with the task's official metrics, ×100, as mean ± sample std over seeds "
        "(methods that do not depend on the seed ran once and show no ±).",
        "- Task score = mean of the task's official metrics (the GLUE convention). Latency: "
        f"CPU, batch 1, p50 in ms, {config.threads or os.cpu_count()} torch thread(s), on a "
        f"{os.cpu_count()}-core machine shared with other jobs (indicative only). Train s: "
        "seconds to fit the method itself (mean over seeds; in the summary, over tasks).",
        "",
        "## Summary (task score)",
        "",
        "| method | " + " | ".join(tasks) + " | average | params | train s | latency ms |",
        "|---|" + "---:|" * (len(tasks) + 4),
    ]
    avg = averages(summary, tasks, config.methods)
    for method in config.methods:
        cells, params, train, latency = [], set(), [], []
        for task in tasks:
            entry = by_key.get((task, method))
            if entry is None or "score" not in entry:
                cells.append("n/a" if entry and entry["status"] == "n/a" else "—")
                continue
            cells.append(_cell(entry["score"], seeded[method]))
            params.add(entry["params"])
            train.append(entry["train_seconds"])
            if entry["latency_ms_p50"] is not None:
                latency.append(entry["latency_ms_p50"])
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {f'{100 * avg[method]:.1f}' if method in avg else '—'}"
            + f" | {_params(params)} | {f'{np.mean(train):.0f}' if train else '—'}"
            + f" | {f'{np.median(latency):.1f}' if latency else '—'} |"
        )
    for task in tasks:
        task_obj = get_task(task)
        entries = [by_key[(task, m)] for m in config.methods if (task, m) in by_key]
        if not entries:
            continue
        n_eval = next((e["eval_examples"] for e in entries if "eval_examples" in e), "?")
        n_train = next((e["train_examples"] for e in entries if "train_examples" in e), "?")
        metric_names = list(task_obj.metric_names)
        lines += [
            "",
            f"## {task} ({n_train} training / {n_eval} validation examples)",
            "",
            "| method | "
            + " | ".join(metric_names)
            + " | runs | params | train s | store/prompt build s | latency ms |",
            "|---|" + "---:|" * (len(metric_names) + 5),
        ]
        for entry in entries:
            method = entry["method"]
            if "metrics" not in entry:
                note = entry.get("reason", "")
                lines.append(
                    f"| {method} | {entry['status']}: {note} |" + " |" * (len(metric_names) + 4)
                )
                continue
            cells = [_cell(entry["metrics"][name], seeded[method]) for name in metric_names]
            latency = entry["latency_ms_p50"]
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {entry['runs']}"
                + f" | {_params({entry['params']})} | {entry['train_seconds']:.0f}"
                + f" | {entry['artefact_seconds'] or '—'}"
                + f" | {'—' if latency is None else f'{latency:.1f}'} |"
            )
            if entry["status"] == "partial":
                lines.append(
                    f"|  | some seeds failed: {entry['reason']} |" + " |" * (len(metric_names) + 4)
                )
    failures = [r for r in rows if r["status"] == "failed"]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {r['task']} / {r['method']} / seed {r['seed']}: {r['reason']}" for r in failures
        ]
    descriptions = [f"- `{m}`: {METHODS[m].description}" for m in config.methods if m in METHODS]
    lines += ["", "## Methods", "", *descriptions, ""]
    return "\n".join(lines)


def _params(values: set[int]) -> str:
    """Parameter counts in millions; heads of different tasks differ by a few parameters, so
    counts that print alike are shown once."""
    if not values:
        return "—"
    return "/".join(dict.fromkeys(f"{v / 1e6:.1f}M" for v in sorted(values)))


def render_chart(config: HarnessConfig, summary: list[dict], path: Path) -> None:
    """Grouped bars: task score per method and task, with the seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [get_task(t).name for t in config.tasks]
    by_key = {(e["task"], e["method"]): e for e in summary if "score" in e}
    avg = averages(summary, tasks, config.methods)
    columns = tasks + (["average"] if avg else [])
    width = 0.8 / max(len(config.methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(columns) + 2), 4.5))
    x = np.arange(len(columns))
    for i, method in enumerate(config.methods):
        means, stds = [], []
        for task in tasks:
            entry = by_key.get((task, method))
            means.append(100 * entry["score"]["mean"] if entry else np.nan)
            stds.append(100 * entry["score"]["std"] if entry else 0.0)
        if avg:
            means.append(100 * avg.get(method, np.nan))
            stds.append(0.0)
        ax.bar(
            x + (i - (len(config.methods) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=2,
            label=method,
        )
    ax.set_xticks(x, columns)
    ax.set_ylabel("task score (×100, validation)")
    ax.set_title(f"{config.name}: {config.encoder}, scale {config.scale.name}")
    ax.legend(
        fontsize=8,
        ncols=min(len(config.methods), 4),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(config: HarnessConfig, rows: list[dict]) -> dict[str, Path]:
    """Write ``<results_dir>/<name>.md``, ``.json`` and ``.png``; returns their paths."""
    summary = summarise(rows)
    base = Path(config.results_dir) / config.name
    paths = {ext: base.with_suffix(f".{ext}") for ext in ("md", "json", "png")}
    payload = {
        "name": config.name,
        "command": config.command,
        "scale": asdict(config.scale),
        "scale_description": config.scale.describe(),
        "config": {
            k: v for k, v in asdict(config).items() if k not in ("scale", "command", "stores")
        }
        | {"stores": {k: str(v) for k, v in config.stores.items()}},
        "average_task_score": averages(summary, config.tasks, config.methods),
        "summary": summary,
        "runs": rows,
    }
    _write_json_atomic(paths["json"], payload)
    paths["md"].write_text(render_markdown(config, rows, summary))
    render_chart(config, summary, paths["png"])
    logger.info("wrote %s (.json, .png)", paths["md"])
    return paths


# ---------------------------------------------------------------------------- CLI
def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse._ActionsContainer) -> None:
    """The multi-task options of ``retrikt evaluate`` (the harness form)."""
    parser.add_argument("--tasks", help="comma-separated tasks, e.g. cb,copa,rte,mrpc,cola,stsb")
    parser.add_argument(
        "--methods",
        default="student-ft,knn-only,setfit",
        help=f"comma-separated methods among: {', '.join(METHODS)}",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="demo",
        help="data and compute per run (stated in the results file)",
    )
    parser.add_argument("--encoder", default="minilm-l6", help="student encoder preset")
    parser.add_argument("--generator", default="smollm2-135m", help="LLM preset for stores")
    parser.add_argument("--name", help="results name: writes <results-dir>/NAME.md/.json/.png")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="where artefacts and per-seed results are cached",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="use this ready-made store for TASK instead of building one",
    )
    parser.add_argument("--train-limit", type=int, help="override the scale's train subset")
    parser.add_argument("--eval-limit", type=int, help="override: score this many val examples")
    parser.add_argument("--epochs", type=int, help="override the scale's student epochs")
    parser.add_argument("--max-length", type=int, help="override the scale's max tokens")
    parser.add_argument("--samples-per-label", type=int, help="override the store size")
    parser.add_argument("--latency-examples", type=int, help="override the timed examples")


def config_from_args(args: argparse.Namespace) -> HarnessConfig:
    if not args.tasks or not args.name:
        raise RetriktError("the multi-task form of 'retrikt evaluate' needs --tasks and --name")
    overrides = {
        key: getattr(args, key)
        for key in (
            "train_limit",
            "eval_limit",
            "epochs",
            "max_length",
            "samples_per_label",
            "latency_examples",
        )
        if getattr(args, key, None) is not None
    }
    stores = {}
    for item in args.store:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise RetriktError(f"--store expects TASK=DIR, got {item!r}")
        stores[get_task(task).name] = Path(path)
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise RetriktError(
            f"--seeds must be comma-separated integers, got {args.seeds!r}"
        ) from None
    scale = SCALES[args.scale]
    return HarnessConfig(
        tasks=[get_task(t).name for t in _csv(args.tasks)],
        methods=_csv(args.methods),
        seeds=seeds,
        scale=replace(scale, name=f"{scale.name}*" if overrides else scale.name, **overrides),
        name=args.name,
        data_dir=args.data_dir,
        encoder=args.encoder,
        generator=args.generator,
        cache_dir=args.cache_dir,
        results_dir=args.results_dir,
        stores=stores,
        threads=getattr(args, "threads", None),
        command=_command_line(),
    )


def _command_line() -> str:
    """The command as typed, for the head of the results file."""
    program = Path(sys.argv[0])
    if program.name == "retrikt":
        head = ["retrikt"]
    elif program.name == "__main__.py":
        head = ["python", "-m", program.parent.name]
    else:
        head = ["python", str(program)]
    return shlex.join(head + sys.argv[1:])


def run(args: argparse.Namespace) -> int:
    """Entry point of the multi-task ``retrikt evaluate``: 0 if every run succeeded, else 1."""
    config = config_from_args(args)
    rows = run_harness(config)
    paths = write_report(config, rows)
    print(paths["md"].read_text())
    return 1 if any(r["status"] == "failed" for r in rows) else 0
