"""Per-task state of a harness run and the artefacts built once per task (store, teacher).

Each artefact is a unit of :class:`retrikt.cache.ArtefactCache`, keyed by everything it
depends on: a store by the build settings of the scale, the data files' hash and the
generator; the teacher's soft prompt by its own stage's settings only, so stores with and
without RL share it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import ArtefactCache
from retrikt.errors import RetriktError
from retrikt.harness.scales import HARNESS_VERSION, HarnessConfig
from retrikt.store.manifest import MANIFEST_NAME, read_manifest
from retrikt.tasks import Task, resolve_data_source

logger = logging.getLogger(__name__)


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
    """A given store is identified by its id and version, not by where it lies.

    Read from the manifest alone: a store's data stays on the machine that built it, and its
    committed manifest is enough to find the results measured on it (``--cached-only``).
    """
    manifest = read_manifest(path)
    return {
        "store_id": manifest["store_id"],
        "version": manifest["version"],
        "entries": manifest["entry_count"],
    }


@dataclass
class Artefact:
    """A shared, cached artefact: where it is, what it was built from, what it cost."""

    path: Path
    spec: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class TaskContext:
    """Per-task state shared by the methods: the examples, and the artefacts built once."""

    def __init__(self, config: HarnessConfig, cache: ArtefactCache, task: Task):
        from retrikt.training import subsample

        self.config = config
        self.scale = config.scale
        self.cache = cache
        self.units = Path(config.units_dir or Path(config.results_dir) / "units")
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

    @property
    def tuned_teacher(self) -> Path | None:
        """The task's ``retrikt train-teacher`` folder, when the run was given one."""
        return self.config.teachers.get(self.task.name)

    @functools.cached_property
    def tuned_teacher_id(self) -> str:
        """The tuned teacher's id (its weights' digest), read from its folder or, when that
        folder is not on this machine, from the given store it labelled: a teacher's result
        is then found in the committed units without the weights."""
        from retrikt.teachers.loading import TEACHER_CONFIG, tuned_folder_id

        folder = self.tuned_teacher
        given = self.config.stores.get(self.task.name)
        labelled_by = None
        if given is not None and (Path(given) / MANIFEST_NAME).is_file():  # else: built later
            teacher = read_manifest(Path(given)).get("teacher") or {}
            if str(teacher.get("id", "")).startswith("tuned:"):
                labelled_by = teacher["id"]
        if folder is not None and (Path(folder) / TEACHER_CONFIG).is_file():
            found = tuned_folder_id(folder)
            if labelled_by is not None and labelled_by != found:
                # Both rows are then real but measure different teachers: say so once, so
                # that a table mixing them (or "not run yet" rows) is not a surprise.
                logger.warning(
                    "%s: the teacher folder %s holds %s, but the given store %s was labelled "
                    "by %s; the teacher row measures the folder's teacher and the store's rows "
                    "carry the other one's labels",
                    self.task.name, folder, found, given, labelled_by,
                )  # fmt: skip
            return found
        if labelled_by is not None:
            return labelled_by
        raise RetriktError(
            f"{self.task.name}: the teacher folder {folder} does not exist (nor does a given "
            "store name a tuned teacher)"
        )

    def build_config(
        self, rl: str, out: Path | str = "", examples: str = "both", tuned: bool = True
    ) -> Any:
        """How this task's store is built at this scale (``retrikt build-store`` settings).

        The store holds ``examples`` (generated, train or both) labelled by the tuned teacher
        when one is given (``tuned`` False: by the soft-prompted LLM, the ``llm-prompt``
        row). The build's own stage cache (teacher prompt, generator prompt, RL,
        generations) lives under the harness cache too, so stores share their prompts.
        """
        from retrikt.generator.configs import (
            BuildConfig,
            RLConfig,
            SamplingConfig,
            SoftPromptConfig,
        )

        scale = self.scale
        teacher = self.tuned_teacher if tuned else None
        return BuildConfig(
            task=self.task.name,
            data_dir=self.config.data_dir,
            out=str(out),
            generator=self.config.generator,
            teacher=str(teacher) if teacher else None,
            encoder=self.config.encoder,
            samples_per_label=scale.samples_per_label,
            store_examples=examples,
            rl=rl,
            generator_prompt=SoftPromptConfig(steps=scale.prompt_steps),
            teacher_prompt=SoftPromptConfig(steps=scale.teacher_steps),
            rl_config=RLConfig(steps=scale.rl_steps),
            sampling=SamplingConfig(temperature=scale.temperature, top_p=scale.top_p),
            train_limit=scale.train_limit,
            cache_dir=str(self.cache.root / "build"),
            overwrite=True,  # a store left by a run killed before done.json is rebuilt
        )

    def _build_spec(self, rl: str, examples: str = "both", tuned: bool = True) -> dict[str, Any]:
        build = self.build_config(rl, examples=examples, tuned=tuned).key_dict()
        for local in ("out", "data_dir", "cache_dir", "overwrite"):
            build.pop(local)
        if build["teacher"]:  # a teacher is its weights, wherever its folder lies
            build["teacher"] = self.tuned_teacher_id
        return {**self.base_spec, "build": build}

    def store_spec(self, rl: str, examples: str = "both") -> dict[str, Any]:
        """What the store depends on, without building it."""
        given = self.config.stores.get(self.task.name)
        if given is not None:
            return {"given": _store_identity(Path(given)), "examples": examples}
        return self._build_spec(rl, examples)

    def ensure_given_store(self) -> None:
        """Build the ``--store`` folder first when it holds no store yet.

        It becomes the scale's RL-refined store of training and generated examples, labelled
        by ``--teacher``, written where it was asked for: a folder to keep, and every result
        that uses it is keyed by its identity, wherever it is later found.
        """
        given = self.config.stores.get(self.task.name)
        if given is None:
            return
        if (Path(given) / MANIFEST_NAME).is_file():
            data = Path(given) / read_manifest(Path(given))["data"]
            if not data.is_dir():
                raise RetriktError(
                    f"{self.task.name}: {given} holds only the manifest of store "
                    f"{_store_identity(Path(given))['store_id']} (a record of the store that "
                    "committed results were measured on; its data stayed on the machine that "
                    "built it). Pass --cached-only to write the table from those results, or "
                    "give another --store folder to build a new store there"
                )
            return
        from retrikt.generator.build import build_store

        logger.info("%s: building the store %s (it does not exist yet)", self.task.name, given)
        build_store(self.build_config("ppo", given, "both"))

    def store(self, rl: str, examples: str = "both") -> Artefact:
        """The task's knowledge store: given with ``--store``, or built once and cached.

        A given store stands for the RL-refined store of training and generated examples;
        the ``train`` and ``generated`` ablations are its entries of that kind (cached).
        """
        given = self.config.stores.get(self.task.name)
        if given is not None:
            if examples == "both":
                return Artefact(Path(given), self.store_spec(rl, examples), 0.0)
            return self._given_part(Path(given), examples)
        from retrikt.generator.build import build_store

        def make(folder: Path) -> dict[str, Any]:
            started = time.perf_counter()
            build_store(self.build_config(rl, folder / "store", examples))
            return {"seconds": round(time.perf_counter() - started, 1)}

        spec = self.store_spec(rl, examples)
        label = f"{self.task.name}-{rl}-{examples}"
        folder, info = self.cache.ensure("stores", label, spec, make)
        return Artefact(folder / "store", spec, info["seconds"])

    def _given_part(self, given: Path, examples: str) -> Artefact:
        """The entries of a given store that are real training examples (``train``) or not."""
        from retrikt.store import KnowledgeStore

        def make(folder: Path) -> dict[str, Any]:
            store = KnowledgeStore.open(given)
            is_train = np.asarray(store.column("generator").to_pylist()) == "train"
            rows = np.flatnonzero(is_train if examples == "train" else ~is_train)
            if not len(rows):
                raise RetriktError(f"the store {given} holds no {examples} entries")
            store.subset(rows, folder / "store")
            return {"entries": len(rows)}

        spec = self.store_spec("ppo", examples)
        folder, _ = self.cache.ensure("stores", f"{self.task.name}-given-{examples}", spec, make)
        return Artefact(folder / "store", spec, 0.0)

    def teacher_spec(self) -> dict[str, Any]:
        """What the tuned teacher depends on: the build settings of its stage only."""
        given = self.config.stores.get(self.task.name)
        if given is not None:
            return {"given": _store_identity(Path(given))}
        build = self._build_spec("none", tuned=False)["build"]
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
            config = self.build_config("none", tuned=False)
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
