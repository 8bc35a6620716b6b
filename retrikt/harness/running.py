"""Running the harness: every (task, method, seed), each result cached and resumable.

Why a cache: one table is hours of CPU (an LLM writes each task's store, then several students
train per seed). Every artefact - store, trained student, one (task, method, seed) result - is
stored under ``--cache-dir`` named by the hash of the full configuration that produced it
(method, task, the data files' sha256, scale, encoder, generator, seed, and the keys of the
artefacts it was built from), through :mod:`retrikt.cache`. A rerun reuses whatever it can
find, an edit to one setting redoes only what depends on it, and a run killed half-way
resumes where it stopped. The report is rewritten after every task, so an interrupted run
still leaves a partial table.

The results themselves (one small JSON per unit) live apart from the cache, in ``units_dir``
(``experiments/results/units``), which is committed: a table then fills in over several
sessions and machines, while models and stores stay in the local cache.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import ArtefactCache, key, write_json_atomic
from retrikt.errors import RetriktError
from retrikt.harness.artefacts import TaskContext
from retrikt.harness.methods import METHODS, Fitted, Method
from retrikt.harness.report import write_report
from retrikt.harness.scales import HarnessConfig
from retrikt.latency import batch1_times_ms, percentiles_ms
from retrikt.tasks import Example, Task, get_task

logger = logging.getLogger(__name__)


def result_path(units: Path, spec: dict[str, Any]) -> Path:
    """Where one (task, method, seed) result is kept under ``units``: named by its spec's key."""
    seed = "once" if spec["seed"] is None else f"seed{spec['seed']}"
    return units / spec["task"] / spec["method"] / f"{seed}-{key(spec)}.json"


def measure(task: Task, fitted: Fitted, examples: list[Example], latency_n: int) -> dict:
    """Official metrics on ``examples``, how often each class was predicted (a score near the
    majority class's is then told apart from a collapse onto it), and per-example latency at
    batch 1 (p50/p95, ms)."""
    started = time.perf_counter()
    probs = fitted.predict(examples)
    eval_seconds = time.perf_counter() - started
    preds = task.predictions(probs)
    metrics = task.evaluate(preds, examples)
    times = batch1_times_ms(fitted.predict, examples[: max(latency_n, 0)])
    predicted = {} if task.is_regression else {"predicted_labels": task.label_counts(preds)}
    return {
        "metrics": metrics,
        "score": float(np.mean(list(metrics.values()))),
        "eval_examples": len(examples),
        "eval_seconds": round(eval_seconds, 2),
        **predicted,
        **percentiles_ms(times),
    }


def run_method(ctx: TaskContext, method: Method, seed: int | None) -> dict[str, Any]:
    """One (task, method, seed) result, from the cache when it is there."""
    spec = method.spec(ctx, seed)
    path = result_path(ctx.units, spec)
    if path.is_file():
        logger.info("cached result: %s %s seed %s", ctx.task.name, method.name, seed)
        return json.loads(path.read_text())
    if ctx.config.cached_only:
        return _row(ctx.task, method, seed, "pending", "not run yet")
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
        "key": key(spec),
    }
    write_json_atomic(path, result)
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
    cache = ArtefactCache(config.cache_dir)
    rows: list[dict[str, Any]] = []
    for task_name in config.tasks:
        task = get_task(task_name)
        ctx = TaskContext(config, cache, task)
        if not config.cached_only:
            ctx.ensure_given_store()
        for method in (methods[name] for name in config.methods):
            reason = method.not_applicable(ctx)
            if reason:
                rows.append(_row(task, method, None, "n/a", reason))
                continue
            for seed in config.seeds if method.seeded else [None]:
                try:
                    rows.append(run_method(ctx, method, seed))
                except Exception as err:  # one failing method must not lose the others' hours
                    if config.cached_only:  # e.g. its store is not built yet
                        rows.append(_row(task, method, seed, "pending", str(err)))
                        continue
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
