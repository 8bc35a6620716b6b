"""Batched, sharded, resumable sampling of label-conditioned examples.

* **Deterministic ids and seeds**: job ``(label, sample_no)`` always has the id
  ``<task>-L<label>-<sample_no>`` and its own seed, and samples with its own random stream
  (Gumbel-max with one generator per row), so what a job writes does not depend on which
  batch or process it landed in.
* **Fast**: one cached ``generate`` call per batch through
  :class:`~retrikt.generator.sampler.Sampler` (the same sampler RL uses), bf16 weights
  where the CPU supports them; generation stops at the template's ``###`` or at EOS.
* **Checkpointed**: each batch is appended to a JSONL shard and fsynced before the next
  starts; a rerun skips every id already written (a torn last line from a kill is cut
  off first), so a kill loses at most the batch in flight and never duplicates one.
* **Sharded**: process ``rank`` of ``world`` takes every ``world``-th job and writes its own
  shard (``RANK``/``WORLD_SIZE``, as ``accelerate launch --num_processes 2`` sets them); the
  shards are read back together as one list.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retrikt.errors import RetriktError
from retrikt.generator.sampler import Sampler

logger = logging.getLogger(__name__)

SHARD_GLOB = "generations.rank*.jsonl"


@dataclass(frozen=True)
class Job:
    """One example to generate: its stable id, requested label and the prompt to continue."""

    id: str
    label: Any
    sample_no: int
    prompt: str


def plan_jobs(
    task_name: str, labels: Sequence[Any], samples_per_label: int, prompt_fn: Callable[[Any], str]
) -> list[Job]:
    """Every (label, sample_no) job, sample-major so any prefix covers all labels evenly."""
    prompts = {label: prompt_fn(label) for label in labels}
    return [
        Job(f"{task_name}-L{label}-{n:06d}", label, n, prompts[label])
        for n in range(samples_per_label)
        for label in labels
    ]


def job_seed(seed: int, job_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def shard_info() -> tuple[int, int]:
    """(rank, world size) from ``RANK``/``WORLD_SIZE``; else (0, 1).

    ``accelerate launch --num_processes N`` (and ``torchrun``) set both for every process.
    Reading them needs no process group: the shards meet on disk, not through collectives.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise RetriktError(f"RANK={rank} is not below WORLD_SIZE={world}")
    return rank, world


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a kill during a write) so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - keep)
        with path.open("r+b") as fh:
            fh.truncate(keep)


def read_generations(work_dir: str | Path) -> list[dict[str, Any]]:
    """All complete records of all shards, one per id, in plan order (sample-major)."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(work_dir).glob(SHARD_GLOB)):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    continue  # torn by a kill; the job is regenerated on resume
                record = json.loads(line)
                records.setdefault(record["id"], record)
    return sorted(records.values(), key=lambda r: (r["sample_no"], r["id"]))


def run_generation(
    sampler: Sampler,
    jobs: Sequence[Job],
    work_dir: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    annotate: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """Generate this rank's share of ``jobs`` not yet on disk; returns the tokens it generated.

    ``annotate`` may add fields to a batch's records (parse, teacher labels) before they
    are written, so that work is checkpointed with the text it belongs to. Batch size and
    seed come from ``sampler.config``.
    """
    config = sampler.config
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shard = work / f"generations.rank{rank}.jsonl"
    _repair_tail(shard)
    done = {record["id"] for record in read_generations(work)}
    mine = [job for job in jobs[rank::world] if job.id not in done]
    total_mine = len(jobs[rank::world])
    written = sum(job.id in done for job in jobs)  # the folder may hold other jobs' records
    if written:
        logger.info("resuming: %d of %d jobs already written", written, len(jobs))
    bar = tqdm(total=total_mine, initial=total_mine - len(mine), desc="generating", unit="ex")
    tokens, started = 0, time.perf_counter()
    with shard.open("a", encoding="utf-8") as fh:
        for batch in _chunks(mine, config.batch_size):
            seeds = [job_seed(config.seed, job.id) for job in batch]
            samples = sampler.sample([job.prompt for job in batch], seeds)
            outputs = list(zip(samples.texts, samples.lengths, strict=True))
            records = [
                {
                    "id": job.id,
                    "label": job.label,
                    "sample_no": job.sample_no,
                    "text": text,
                    "tokens": n,
                    "rank": rank,
                }
                for job, (text, n) in zip(batch, outputs, strict=True)
            ]
            if annotate is not None:
                annotate(records)
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
            tokens += sum(n for _, n in outputs)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
    bar.close()
    return tokens


def _chunks(items: Sequence[Job], size: int) -> Iterable[Sequence[Job]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
