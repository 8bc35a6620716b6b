"""Batched, sharded, resumable sampling of label-conditioned examples.

* **Deterministic ids and seeds**: job ``(label, sample_no)`` always has the id
  ``<task>-L<label>-<sample_no>`` and its own seed, and samples with its own random stream
  (Gumbel-max with one generator per row), so what a job writes does not depend on which
  batch or process it landed in.
* **Fast**: one ``generate`` call per batch with a KV cache, left padding and bf16 weights
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
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from retrikt.errors import RetriktError
from retrikt.generator.templates import END

logger = logging.getLogger(__name__)

SHARD_GLOB = "generations.rank*.jsonl"


@dataclass
class SamplingConfig:
    """How examples are sampled (``seed`` makes every job's output reproducible)."""

    max_new_tokens: int = 96
    batch_size: int = 16
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    min_new_tokens: int = 0  # benchmarks set it to max_new_tokens to compare equal work


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


class RowSeededSampler:
    """Gumbel-max sampling where each batch row draws from its own seeded generator.

    Added to the (temperature- and top-p-processed) scores before greedy selection,
    Gumbel noise makes the argmax a sample of the softmax; ``model.generate``'s own
    ``do_sample`` draws from one global stream, which would tie a job's output to its batch.
    """

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        return scores + gumbel.to(scores.dtype)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS and the template's closing ``###`` token (when it is one token)."""
    ids = [tokenizer.eos_token_id]
    end = tokenizer.encode(END, add_special_tokens=False)
    if len(end) == 1:
        ids.append(end[0])
    return ids


@torch.no_grad()
def generate_batch(
    model: Any, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], config: SamplingConfig
) -> list[tuple[str, int]]:
    """Sample one continuation per prompt; returns (text, tokens generated) per row.

    A row that ended by itself (EOS or ``###``) ends with ``###``; a row cut by
    ``max_new_tokens`` does not, so ``parse_example`` rejects it as truncated.
    """
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    processors = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_p < 1.0:
        processors.append(TopPLogitsWarper(config.top_p))
    processors.append(RowSeededSampler(seeds))
    stops = stop_token_ids(tokenizer)
    with warnings.catch_warnings():
        # PEFT prompt tuning drops generate's position ids, so a left-padded row starts its
        # text a few positions later. With rotary embeddings only relative positions matter
        # and a task's prompts differ by a token or two, so the shift is harmless.
        warnings.filterwarnings("ignore", message="Position ids are not supported")
        output = model.generate(
            **batch,
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=config.min_new_tokens,
            do_sample=False,  # the sampling is RowSeededSampler's Gumbel-max
            logits_processor=processors,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    new = output[:, batch["input_ids"].shape[1] :]
    results = []
    for row in new.tolist():
        length = next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))
        text = tokenizer.decode(row[:length], skip_special_tokens=True)
        if row[length - 1] in stops and END not in text:
            text += f"\n{END}"  # stopped by EOS: finished, unlike a cut at max_new_tokens
        results.append((text, length))
    return results


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
    model: Any,
    tokenizer: Any,
    jobs: Sequence[Job],
    config: SamplingConfig,
    work_dir: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    annotate: Callable[[list[dict[str, Any]]], None] | None = None,
) -> Path:
    """Generate this rank's share of ``jobs`` not yet on disk; returns its shard path.

    ``annotate`` may add fields to a batch's records (parse, teacher labels) before they
    are written, so that work is checkpointed with the text it belongs to.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shard = work / f"generations.rank{rank}.jsonl"
    _repair_tail(shard)
    done = {record["id"] for record in read_generations(work)}
    mine = [job for job in jobs[rank::world] if job.id not in done]
    total_mine = len(jobs[rank::world])
    if done:
        logger.info("resuming: %d of %d jobs already written", len(done), len(jobs))
    bar = tqdm(total=total_mine, initial=total_mine - len(mine), desc="generating", unit="ex")
    tokens, started = 0, time.perf_counter()
    with shard.open("a", encoding="utf-8") as fh:
        for batch in _chunks(mine, config.batch_size):
            seeds = [job_seed(config.seed, job.id) for job in batch]
            outputs = generate_batch(model, tokenizer, [job.prompt for job in batch], seeds, config)
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
    return shard


def _chunks(items: Sequence[Job], size: int) -> Iterable[Sequence[Job]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
