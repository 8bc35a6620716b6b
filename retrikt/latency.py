"""Latency at batch 1: how long one request takes, tokenisation included.

One timing loop for the harness's latency column and the architecture search's latency
measurements, so both numbers mean the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

WARMUP = 3  # first calls allocate buffers and fill caches


def batch1_times_ms(
    predict: Callable[[list[Any]], Any], examples: Sequence[Any], warmup: int = WARMUP
) -> list[float]:
    """Milliseconds of ``predict([example])`` for each example, after ``warmup`` calls."""
    for example in list(examples)[:warmup]:
        predict([example])
    times = []
    for example in examples:
        started = time.perf_counter()
        predict([example])
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentiles_ms(times: Sequence[float]) -> dict[str, float | None]:
    """``latency_ms_p50`` and ``latency_ms_p95`` of ``times`` (None when nothing was timed)."""
    if not times:
        return {"latency_ms_p50": None, "latency_ms_p95": None}
    return {
        "latency_ms_p50": round(float(np.percentile(times, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(times, 95)), 2),
    }
