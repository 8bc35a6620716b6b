"""The architecture search: an Optuna study over sliced encoders, rewarded under a budget.

**Search space** (a ``minilm-l6`` parent: 6 layers, 12 heads of 32, FFN 1536): ``layers``
1-6, ``heads`` 4-12, ``head_dim`` 16/24/32 (hidden = heads x head_dim, 128-384: a head
size too small for 128 is raised to the next one), ``ffn`` 256-1536 in steps of 256.
Candidates are sliced from the parent (``--init slice``, :mod:`retrikt.student.slicing`)
or randomly initialised (``--init random``, the baseline).

**Reward** of a trial: ``-(proxy distillation loss) - penalty * max(0, latency - budget)``.
The candidate trains ``proxy_epochs`` epochs on ``proxy_size`` training examples with the
RetriKT objectives, the store's soft labels and (with ``--teacher``) the hidden-state loss;
its proxy loss is the KL divergence from the teacher's soft labels to its *combined*
prediction (model and retrieved neighbours, its own entry left out) on ``proxy_size`` store
entries it never trained on (MSE for regression). Latency is measured, cached
(:mod:`retrikt.search.latency`).

**Controller**: Optuna's TPE sampler (multivariate, seeded; a third of the trials, 2 to 10,
random first), a scalar objective because the reward already folds latency in. The Pareto front
of proxy loss against latency is read off all trials afterwards
(:mod:`retrikt.search.report`). The study lives in ``OUT/study.sqlite3`` (Optuna's RDB
storage): rerunning the command continues it (``load_if_exists``), retrying a trial a
killed run left unfinished, until ``--trials`` are complete.

**Finalists and winner**: the ``finalists`` best trials within budget, and (``incumbent``)
the deepest full-width cut of the parent that meets the budget, are distilled on the
training split minus a held-out slice (``heldout_fraction``), hidden states included,
and scored on that slice against gold labels (never the validation split; the slice's own
store entries are neither distilled on nor retrieved); the winner is
distilled on the whole training split by :func:`retrikt.training.train_student` from its
sliced initialisation and copied to ``OUT/student``: an ordinary student folder that
``predict``, ``serve``, ``evaluate`` and ``export`` take as it is.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrikt.cache import ArtefactCache, key, write_json_atomic
from retrikt.errors import RetriktError
from retrikt.search.config import SearchConfig
from retrikt.search.latency import cached_latency
from retrikt.search.report import pareto_front, recommendations, write_report
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.student import RetriKT, TrainConfig
from retrikt.student.hidden import HiddenStateLoss, TeacherStates, teacher_states
from retrikt.student.memory import origin_key
from retrikt.student.slicing import (
    Architecture,
    Importance,
    importance,
    random_encoder,
    save_encoder,
    slice_encoder,
    student_on,
)
from retrikt.tasks import Example, Task, get_task
from retrikt.training import split_for_tuning, subsample, train, train_student

logger = logging.getLogger(__name__)

STUDY_NAME = "search-student"
STUDY_FILE = "study.sqlite3"
HEAD_DIMS = (16, 24, 32)
MIN_HEADS, MIN_HIDDEN, FFN_STEP = 4, 128, 256


def sample_architecture(trial: Any, parent: Architecture) -> Architecture:
    """One architecture from the search space (see the module docstring)."""
    layers = trial.suggest_int("layers", 1, parent.layers)
    heads = trial.suggest_int("heads", MIN_HEADS, parent.heads)
    dims = [d for d in HEAD_DIMS if d <= parent.head_dim]
    head_dim = trial.suggest_categorical("head_dim", dims)
    ffn = trial.suggest_int("ffn", FFN_STEP, parent.ffn, step=FFN_STEP)
    for wider in dims:  # the smallest head size that reaches MIN_HIDDEN
        if head_dim * heads >= MIN_HIDDEN:
            break
        head_dim = max(head_dim, wider)
    return Architecture(layers, heads, head_dim, ffn)


def reward(loss: float, latency_ms: float, budget_ms: float, penalty: float) -> float:
    """``-loss - penalty * max(0, latency - budget)``: higher is better."""
    return -loss - penalty * max(0.0, latency_ms - budget_ms)


def proxy_loss(student: RetriKT, entries: list[StoreEntry]) -> dict[str, float]:
    """Teacher-to-student divergence of the combined prediction on store entries (each
    leaves its own store rows out), and how far the two agree (fidelity): the share of equal
    argmaxes, or for regression the MSE and the Pearson correlation with the teacher's scores
    (NaN when either side is constant)."""
    examples = [{**e.fields, "label": None} for e in entries]
    final, _ = student.combined(student.raw_outputs(examples, exclude_own=True))
    soft = np.array([e.soft_labels for e in entries], dtype=np.float64)
    if student.task.is_regression:
        pred, target = final[:, 0].astype(np.float64), soft[:, 0]
        constant = pred.std() == 0 or target.std() == 0
        pearson = float("nan") if constant else float(np.corrcoef(pred, target)[0, 1])
        return {"loss": float(np.mean((pred - target) ** 2)), "fidelity": pearson}
    soft /= soft.sum(-1, keepdims=True).clip(1e-12)
    p = np.clip(final.astype(np.float64), 1e-8, None)
    kl = np.where(soft > 0, soft * (np.log(np.clip(soft, 1e-12, None)) - np.log(p)), 0.0)
    fidelity = float(np.mean(final.argmax(-1) == soft.argmax(-1)))
    return {"loss": float(kl.sum(-1).mean()), "fidelity": fidelity}


@dataclass
class SearchData:
    """What every trial shares: the examples, the proxy split and the store's entries."""

    task: Task
    train: list[Example]  # the (optionally subsampled) training split
    proxy_train: list[Example]  # the trials' training examples
    proxy_eval: list[StoreEntry]  # the trials' scored entries (not in their distillation)
    distill: list[StoreEntry]  # the trials' distillation entries (the rest of the store)
    timed: list[Example]  # inputs timed for latency
    store: KnowledgeStore
    states: TeacherStates | None = None


def search_data(config: SearchConfig) -> SearchData:
    """The seeded proxy split: proxy examples from the training split; scored store entries
    that do not come from them; the remaining entries for distillation."""
    task = get_task(config.task)
    train_examples = subsample(task.read("train", config.data_dir), config.train_limit)
    labelled = [ex for ex in train_examples if ex["label"] is not None]
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(labelled))
    proxy_train = [labelled[i] for i in order[: config.proxy_size]]
    store = KnowledgeStore.open(config.store)
    entries = store.entries()
    seen = {origin_key(task, ex) for ex in proxy_train}
    candidates = [i for i in rng.permutation(len(entries)) if
                  origin_key(task, entries[i].fields) not in seen]  # fmt: skip
    chosen = set(candidates[: config.proxy_size])
    if len(chosen) < 4 or len(chosen) == len(entries):
        raise RetriktError(
            f"{config.store} has {len(entries)} entries: too few to hold out {config.proxy_size} "
            "for scoring and still distil on the rest (lower --proxy-size)"
        )
    timed_order = order[config.proxy_size :] if len(order) > config.proxy_size else order
    return SearchData(
        task=task,
        train=train_examples,
        proxy_train=proxy_train,
        proxy_eval=[entries[i] for i in sorted(chosen)],
        distill=[e for i, e in enumerate(entries) if i not in chosen],
        timed=[labelled[i] for i in timed_order[: config.latency_examples]],
        store=store,
    )


@dataclass
class Searcher:
    """One search: its config, shared data, the parent encoder and the unit importances."""

    config: SearchConfig
    data: SearchData
    parent: RetriKT
    ranks: Importance
    cache: ArtefactCache
    trial_seconds: list[float] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def train_config(self, epochs: int) -> TrainConfig:
        c = self.config
        return TrainConfig(
            task=c.task, encoder=self.parent.config.encoder, epochs=epochs,
            batch_size=c.batch_size, max_length=c.max_length, seed=c.seed, store=c.store,
            train_limit=c.train_limit, hidden_teacher=c.teacher, hidden_weight=c.hidden_weight,
            log_every=1000,
        )  # fmt: skip

    def candidate(self, arch: Architecture) -> RetriKT:
        """A fresh student on the architecture, its store attached (keys come in training)."""
        torch.manual_seed(self.config.seed)  # the head's initialisation
        if self.config.init == "slice":
            bert = slice_encoder(self.parent.encoder.auto_model, arch, self.ranks)
        else:
            bert = random_encoder(self.parent.encoder.auto_model.config, arch, self.config.seed)
        student = student_on(self.parent, bert)
        student.attach_store(self.data.store)
        return student

    def hidden(self, arch: Architecture) -> HiddenStateLoss | None:
        if self.data.states is None:
            return None
        return HiddenStateLoss(self.data.states, self.data.task, arch.layers, arch.hidden)

    def objective(self, trial: Any) -> float:
        arch = sample_architecture(trial, Architecture.of(self.parent.encoder.auto_model.config))
        trial.set_user_attr("architecture", arch.to_dict())
        for done in trial.study.get_trials(deepcopy=False, states=_complete()):
            if done.user_attrs.get("architecture") == arch.to_dict():  # TPE proposed it again
                logger.info("trial %d: %s was trial %d", trial.number, arch.name, done.number)
                for name, value in done.user_attrs.items():
                    trial.set_user_attr(name, value)
                return float(done.value)
        started = time.perf_counter()
        logger.info("trial %d: %s (%s)", trial.number, arch.name, self.config.init)
        student = self.candidate(arch)
        history = train(
            student, self.data.proxy_train, self.train_config(self.config.proxy_epochs),
            self.data.distill, self.hidden(arch),
        )  # fmt: skip
        scored = proxy_loss(student, self.data.proxy_eval)
        timing = cached_latency(
            self.cache, arch, student, self.data.timed, self.config.latency_threads
        )
        latency = timing["latency_ms_p50"]
        value = reward(scored["loss"], latency, self.config.latency_budget_ms, self.config.penalty)
        params = sum(p.numel() for p in student.parameters())
        attrs = {
            **scored,
            "latency_ms_p50": latency,
            "latency_ms_p95": timing["latency_ms_p95"],
            "params": params,
            "hidden_loss": _last_hidden_loss(history),
            "seconds": round(time.perf_counter() - started, 1),
        }
        for name, attr in attrs.items():
            trial.set_user_attr(name, attr)
        logger.info(
            "trial %d: %s proxy loss %.4f, fidelity %.3f, p50 %.2f ms, %.1fM params: reward "
            "%.4f (%.0f s)", trial.number, arch.name, scored["loss"], scored["fidelity"],
            latency, params / 1e6, value, attrs["seconds"],
        )  # fmt: skip
        return value

    # ------------------------------------------------------------------ finalists
    def incumbent(self) -> dict[str, Any] | None:
        """The deepest cut of the parent at its full width that meets the budget, as a row.

        It is the student a user picks by hand (``minilm-l6:N``), so it goes to the held-out
        stage beside the search's best: a proxy of a few dozen examples separates students
        less than seed noise does (CB's trials span 0.68-0.75 in proxy loss), so the
        full-data stage must be able to keep the cut.
        Depths are timed shallowest first (cached, untrained: latency does not depend on the
        weights) until one is over budget. None when even one layer is over it.
        """
        full = Architecture.of(self.parent.encoder.auto_model.config)
        best = None
        for layers in range(1, full.layers + 1):
            arch = replace(full, layers=layers)
            timing = cached_latency(
                self.cache, arch, self.candidate(arch), self.data.timed,
                self.config.latency_threads, refresh=True,
            )  # fmt: skip
            if timing["latency_ms_p50"] > self.config.latency_budget_ms:
                break
            best = {"name": arch.name, "architecture": arch.to_dict(), "incumbent": True,
                    "latency_ms_p50": timing["latency_ms_p50"]}  # fmt: skip
        return best

    def finalist_path(self, arch: Architecture) -> Path:
        """Where ``arch``'s finalist result is kept: keyed by the study's settings and by
        what only the finalists depend on (a rerun with other ``--epochs`` redoes them)."""
        c = self.config
        spec = {**self.settings_key(), "epochs": c.epochs, "heldout_fraction": c.heldout_fraction}
        return self.out / "finalists" / f"{arch.name}-{key(spec)}.json"

    def finalist(self, arch: Architecture) -> dict[str, Any]:
        """Distil ``arch`` on the training split minus a held-out slice; score that slice.

        A store of the training split holds the slice's examples too, with the teacher's
        labels: as for the proxy set, they are left out of the distillation and out of
        their own neighbours, or the score would be the teacher's label read back.
        """
        path = self.finalist_path(arch)
        if path.is_file():
            return json.loads(path.read_text())
        task = self.data.task
        fit, heldout = split_for_tuning(
            [ex for ex in self.data.train if ex["label"] is not None],
            self.config.heldout_fraction, self.config.seed,
        )  # fmt: skip
        held = {origin_key(task, ex) for ex in heldout}
        entries = [e for e in self.data.store.entries() if origin_key(task, e.fields) not in held]
        started = time.perf_counter()
        student = self.candidate(arch)
        train(student, fit, self.train_config(self.config.epochs), entries, self.hidden(arch))
        final, _ = student.combined(student.raw_outputs(heldout, exclude_own=True))
        metrics = task.evaluate(task.predictions(final), heldout)
        result = {
            "architecture": arch.to_dict(),
            "heldout_metrics": metrics,
            "heldout_score": float(np.mean(list(metrics.values()))),
            "heldout_examples": len(heldout),
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(path, result)
        logger.info("finalist %s: held-out %s", arch.name, metrics)
        return result

    def settings_key(self) -> dict[str, Any]:
        """What the study's trials depend on: a rerun must match it to continue the study."""
        c = self.config
        keep = ("task", "parent", "init", "proxy_size", "proxy_epochs", "penalty",
                "latency_budget_ms", "train_limit", "batch_size", "max_length", "hidden_weight",
                "latency_examples", "latency_threads", "seed", "data_dir")  # fmt: skip
        store = self.data.store
        return {
            **{name: getattr(c, name) for name in keep},
            "store": {"id": store.store_id, "version": store.version, "entries": len(store)},
            "teacher": self.data.states.teacher if self.data.states is not None else None,
        }


def _complete() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE,)


def open_study(out: Path, settings: dict[str, Any], seed: int, trials: int) -> Any:
    """The study in ``out/study.sqlite3``, created or continued; refuses another search's."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, n_startup_trials=max(2, min(10, trials // 3))
    )
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{(out / STUDY_FILE).resolve()}",
        sampler=sampler,
        direction="maximize",
        load_if_exists=True,
    )
    saved = study.user_attrs.get("settings")
    settings = json.loads(json.dumps(settings, default=str))  # as the study stores it
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        changed = sorted(k for k in {*settings, *saved} if saved.get(k) != settings.get(k))
        raise RetriktError(
            f"{out} holds a search with other settings ({', '.join(changed)}); use another "
            "--out, or delete the folder to start over"
        )
    # This process holds the folder's lock: a trial still RUNNING was left by a killed run.
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.info("trial %d was interrupted: retrying its architecture", stale.number)
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params, skip_if_exists=False)
    return study


def run_search(config: SearchConfig) -> dict[str, Any]:
    """Run (or continue) the search in ``config.out``; returns what ``OUT/search.json`` holds."""
    from filelock import FileLock, Timeout

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".search.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RetriktError(f"another search is running in {out}") from None
    try:
        return _run_locked(config, out)
    finally:
        lock.release()


def _run_locked(config: SearchConfig, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    cache = ArtefactCache(config.cache_dir or out / "cache")
    data = search_data(config)
    if config.teacher is not None:
        data.states = teacher_states(
            config.teacher, data.task, data.train, cache=cache, batch_size=8
        )
    parent = RetriKT.from_encoder(data.task, config.parent, max_length=config.max_length)
    ranks = cached_importance(cache, parent, data, config)
    searcher = Searcher(config, data, parent, ranks, cache)
    settings = searcher.settings_key()
    study = open_study(out, settings, config.seed, config.trials)
    done = len(study.get_trials(deepcopy=False, states=_complete()))
    if done < config.trials:
        logger.info("search: %d trials done, %d to go", done, config.trials - done)
        study.optimize(searcher.objective, n_trials=config.trials - done, show_progress_bar=True)
    trials = trial_rows(study)
    budget = config.latency_budget_ms
    within = sorted((t for t in trials if t["latency_ms_p50"] <= budget),
                    key=lambda t: -t["reward"])  # fmt: skip
    if not within:
        logger.warning("no architecture met %.2f ms: the finalists are the fastest ones", budget)
        within = sorted(trials, key=lambda t: t["latency_ms_p50"])
    rows = _unique(within)[: config.finalists]
    if config.incumbent and (cut := searcher.incumbent()) is not None:
        rows = _unique([*rows, cut])
    finalists = []
    for row in rows:
        arch = Architecture.from_dict(row["architecture"])
        finalists.append({**row, **searcher.finalist(arch)} if len(rows) > 1 else row)
    winner = max(finalists, key=lambda f: (f.get("heldout_score", 0.0), -f["latency_ms_p50"]))
    final = final_student(searcher, winner, cache)
    result = {
        "config": config.to_dict(),
        "settings": settings,
        "trials": trials,
        "front": pareto_front(trials),
        "recommended": recommendations(trials, budget),
        "finalists": finalists,
        "winner": winner,
        "student": final,
        "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "search.json", result)
    write_report(result, out)
    return result


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, kept = set(), []
    for row in rows:
        name = row["name"]
        if name not in seen:
            seen.add(name)
            kept.append(row)
    return kept


def cached_importance(
    cache: ArtefactCache, parent: RetriKT, data: SearchData, config: SearchConfig
) -> Importance:
    """The parent's unit importances on ``proxy_size`` distillation entries, cached."""
    rng = np.random.default_rng(config.seed + 1)
    order = rng.permutation(len(data.distill))[: config.proxy_size]
    entries = [data.distill[i] for i in sorted(order)]
    spec = {
        "parent": parent.config.encoder,
        "task": data.task.name,
        "entries": key([e.fields for e in entries]),
        "soft": key([e.soft_labels for e in entries]),
        "max_length": config.max_length,
        "seed": config.seed,
    }

    def make(folder: Path) -> dict[str, Any]:
        ranks = importance(parent, entries, seed=config.seed)
        ranks.save(folder / "importance.safetensors")
        return {"layer_rank": ranks.layer_rank}

    folder, info = cache.ensure("importance", parent.config.encoder, spec, make)
    logger.info("parent layers by importance: %s", info["layer_rank"])
    return Importance.load(folder / "importance.safetensors")


def _last_hidden_loss(history: list[dict[str, float]]) -> float | None:
    """Mean hidden-state loss of a trial's last 5 logged steps; None without teacher states."""
    values = [h["hidden"] for h in history[-5:] if "hidden" in h]
    return float(np.mean(values)) if values else None


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per complete trial: architecture, proxy loss, latency, reward."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=_complete()):
        attrs = trial.user_attrs
        arch = attrs["architecture"]
        rows.append(
            {
                "trial": trial.number,
                "name": Architecture.from_dict(arch).name,
                "architecture": arch,
                "reward": float(trial.value),
                **{k: attrs.get(k) for k in ("loss", "fidelity", "latency_ms_p50",
                                              "latency_ms_p95", "params", "seconds",
                                              "hidden_loss")},
            }
        )  # fmt: skip
    return rows


def final_student(searcher: Searcher, winner: dict[str, Any], cache: ArtefactCache) -> dict:
    """The winner distilled on the whole training split, copied to ``OUT/student``.

    Made once per (settings, architecture) in the cache from its sliced initialisation (a
    cache unit of its own, ``searched-inits``: the student's config names it as its encoder),
    so a search that grows and changes its winner keeps both students.
    """
    arch = Architecture.from_dict(winner["architecture"])
    config = searcher.train_config(searcher.config.epochs)
    spec = {"settings": searcher.settings_key(), "architecture": arch.to_dict(),
            "train": config.to_dict() | {"encoder": None, "store": None}}  # fmt: skip

    def make_init(folder: Path) -> dict[str, Any]:
        save_encoder(searcher.candidate(arch), folder)
        return {}

    init, _ = cache.ensure("searched-inits", arch.name, spec, make_init)
    config.encoder, config.log_every = str(init), 20

    student_spec = {**spec, "init": str(init)}
    resume = cache.resume_folder("searched-students", arch.name, student_spec)

    def make(folder: Path) -> dict[str, Any]:
        result = train_student(config, searcher.config.data_dir, folder / "student",
                               cache=cache, checkpoint_dir=resume)  # fmt: skip
        return {"metrics": result.metrics, "train_seconds": round(result.seconds, 1)}

    folder, info = cache.ensure("searched-students", arch.name, student_spec, make)
    target = searcher.out / "student"
    marker = target / "searched.json"
    if not marker.is_file() or json.loads(marker.read_text()).get("from") != str(folder):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder / "student", target)
        write_json_atomic(marker, {"from": str(folder), "architecture": arch.to_dict()})
    return {"path": str(target), "encoder_init": str(init), "architecture": arch.to_dict(),
            "metrics": info["metrics"], "train_seconds": info["train_seconds"]}  # fmt: skip
