"""A candidate's CPU latency: p50 at batch 1 over real task inputs, cached per architecture.

The student is timed as it will be served: ``predict_examples([example])`` with its store
attached (tokenisation, encoder, retrieval and the mixing rule), on ``threads`` torch
threads. Latency depends on the shape, not on the weights, so the result is cached under
the architecture, the timed inputs, the thread count, the store size and the machine
(:class:`~retrikt.cache.ArtefactCache`, kind ``latency``): a resumed or repeated search
times each architecture once.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retrikt.cache import ArtefactCache, key
from retrikt.latency import batch1_times_ms, percentiles_ms
from retrikt.student import RetriKT
from retrikt.student.slicing import Architecture
from retrikt.tasks import Example

logger = logging.getLogger(__name__)


def machine() -> dict[str, Any]:
    """What latency depends on besides the model: CPU model, cores, torch version."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if "model name" in line), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


def latency_spec(
    arch: Architecture, student: RetriKT, examples: Sequence[Example], threads: int
) -> dict[str, Any]:
    """Everything an architecture's latency depends on (the cache key)."""
    memory = student.memory
    return {
        "architecture": arch.to_dict(),
        "task": student.task.name,
        "inputs": key(list(examples)),
        "threads": threads,
        "max_length": student.config.max_length,
        "retrieval": None
        if memory is None
        else {"rows": len(memory), "k": student.config.retrieval.k},
        "machine": machine(),
    }


def measure_latency(student: RetriKT, examples: Sequence[Example], threads: int) -> dict[str, Any]:
    """p50/p95 ms of ``student.predict_examples([example])`` on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = batch1_times_ms(student.predict_examples, examples)
    finally:
        torch.set_num_threads(before)
    return {**percentiles_ms(times), "timed": len(times)}


def cached_latency(
    cache: ArtefactCache,
    arch: Architecture,
    student: RetriKT,
    examples: Sequence[Example],
    threads: int,
    refresh: bool = False,
) -> dict[str, Any]:
    """The architecture's latency from the cache, measured on ``student`` when absent.

    ``refresh``: the student's store keys are not computed yet (an untrained candidate);
    they are embedded only on a cache miss, since embedding the store costs more than the
    timing itself.
    """

    def measure(_folder: Path) -> dict[str, Any]:
        if refresh:
            student.refresh_keys()
        return measure_latency(student, examples, threads)

    spec = latency_spec(arch, student, examples, threads)
    _, info = cache.ensure("latency", arch.name, spec, measure)
    logger.info("%s: p50 %.2f ms at batch 1", arch.name, info["latency_ms_p50"])
    return info
