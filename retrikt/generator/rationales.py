"""Rationales: why a stored example's label holds, written by an LLM (``--rationales``).

TinyLLM (Tian et al., WSDM 2025) has its teachers explain answers with *teacher forcing*: the
LLM is given the example *and its correct answer* and asked why it holds, after in-context
examples of the same task. Here every store entry gets such a rationale:

* **the label given** is the one the entry stands for: the gold label of a real training
  example, the store's (teacher) label of a generated one;
* **two in-context examples** are real training examples of two different labels (seeded,
  among the shortest quarter, since every prompt carries them), each with its gold answer
  and a rationale the same LLM wrote for it first, zero-shot (a task ships no human
  rationales);
* the prompt is plain text in the generation template's style, so base and instruct LLMs
  both continue it; the rationale ends at the template's ``###`` (or EOS), at most
  ``rationale_tokens`` tokens (a cut one is trimmed to its last full sentence).

Generation is the store's own: :class:`~retrikt.generator.sampler.Sampler` through
:func:`~retrikt.generator.generation.run_generation`, batched (prompts sorted by length),
every batch checkpointed in ``<cache>/rationales/<task>-<key>`` and skipped on a rerun. A
job's id is its entry id and label, so stores sharing examples (the same training split
under other teachers) reuse each other's rationales.

Sharded like example generation: under ``accelerate launch``/``torchrun`` only rank 0 knows
the store's entries, so it writes the job list (``plan-<key>.json`` in the same folder),
every rank generates its share of it, and rank 0 waits for all shards.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrikt import cache
from retrikt.generator.configs import TRAIN_SOURCE, BuildConfig, SamplingConfig
from retrikt.generator.generation import Job, read_generations, run_generation
from retrikt.generator.sampler import Sampler
from retrikt.generator.templates import END, field_title, label_value
from retrikt.tasks import MULTIPLE_CHOICE, Example, Task

logger = logging.getLogger(__name__)

#: Part of the cache key: bump it when the prompt changes.
RATIONALE_VERSION = 1
#: Rationales should say what the LLM finds most likely, not explore: a low temperature.
TEMPERATURE = 0.3
TOP_P = 0.9
DEMOS = 2
_FIELD_CHARS = 600  # long passages are clipped so that three examples fit a short prompt
_INSTRUCTION = (
    "For each example the correct answer is given. Explain briefly, in one or two "
    "sentences, why that answer is correct."
)


@dataclass(frozen=True)
class Demo:
    """An in-context example: its fields, gold label and rationale."""

    example: Example
    label: Any
    rationale: str


def answer_line(task: Task, example: Example, label: Any) -> str:
    """``Answer: <label>`` in the words of the task (a choice's number and its text)."""
    value = label_value(task, label)
    if task.task_type == MULTIPLE_CHOICE:
        choice = example[task.choice_fields[task.parse_label(label)]]
        return f"Answer: choice {value} ({choice})"
    return f"Answer: {value}"


def example_block(task: Task, example: Example, label: Any) -> str:
    """An example's fields, one per line, and its given answer."""
    lines = [
        f"{field_title(name)}: {' '.join(str(example[name]).split())[:_FIELD_CHARS]}"
        for name in task.fields
    ]
    return "\n".join([*lines, answer_line(task, example, label)])


def rationale_prompt(task: Task, example: Example, label: Any, demos: Sequence[Demo]) -> str:
    """The text the LLM continues with the rationale of ``example`` having ``label``."""
    parts = [f"Task: {task.description}\n{_INSTRUCTION}"]
    parts += [
        f"{example_block(task, d.example, d.label)}\nExplanation: {d.rationale}\n{END}"
        for d in demos
    ]
    parts.append(f"{example_block(task, example, label)}\nExplanation:")
    return "\n\n".join(parts)


def clean_rationale(text: str) -> str | None:
    """The rationale in a continuation: up to ``###``; a cut one ends at its last sentence."""
    finished = END in text
    body = " ".join(text.split(END)[0].split())
    if not finished:
        sentences = re.findall(r".*?[.!?](?=\s|$)", body)
        body = "".join(sentences).strip() or body
    return body or None


def pick_demos(task: Task, train: Sequence[Example], seed: int) -> list[Example]:
    """``DEMOS`` short training examples of different labels where the task has them."""
    rng = random.Random(seed)
    pool = sorted((ex for ex in train if ex["label"] is not None), key=task.render)
    pool = sorted(pool, key=lambda ex: len(task.render(ex)))[: max(len(pool) // 4, DEMOS * 4)]
    rng.shuffle(pool)  # among the shortest quarter: every prompt carries both demos
    chosen: list[Example] = []
    seen: set[Any] = set()
    for ex in pool:
        key = None if task.is_regression else task.parse_label(ex["label"])
        if key not in seen or task.is_regression:
            chosen.append(ex)
            seen.add(key)
        if len(chosen) == DEMOS:
            break
    return chosen


def entry_label(task: Task, entry: Any) -> Any:
    """The label an entry's rationale explains: gold for a training example, else the
    store's label (the teachers' argmax; their score for regression)."""
    if entry.generator == TRAIN_SOURCE:
        return entry.requested_label
    if task.is_regression:
        return float(entry.soft_labels[0])
    return max(range(len(entry.soft_labels)), key=lambda i: entry.soft_labels[i])


def sampling(config: BuildConfig) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=config.rationale_tokens,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        batch_size=config.sampling.batch_size,
        seed=config.seed,
    )


def work_dir(config: BuildConfig, task_key: list[Any], demos: Sequence[Example]) -> Path:
    """Checkpoint folder of a rationale run: the model, prompt version, sampling and demos."""
    settings = {**sampling(config).to_dict(), "batch_size": None}  # batches change no row
    key = cache.key(
        [*task_key, config.rationale_llm, RATIONALE_VERSION, settings, [_id(d) for d in demos]]
    )
    return config.cache / "rationales" / f"{task_key[0]}-{key}"


def _id(example: Example) -> str:
    from retrikt.generator.build import entry_fields
    from retrikt.store import entry_id

    return entry_id("rationale-demo", entry_fields(example))


def _job_id(entry_id: str, task: Task, label: Any) -> str:
    return f"{entry_id}-L{label_value(task, label)}"


def _prepare(
    config: BuildConfig, task: Task, task_key: list[Any], train: Sequence[Example]
) -> tuple[Path, Sampler, list[Example]]:
    """The run's checkpoint folder, its sampler and its in-context examples (any rank)."""
    from retrikt.generator.lm import load_policy

    demos = pick_demos(task, train, config.seed)
    policy, tokenizer = load_policy(config.rationale_llm, None)
    return work_dir(config, task_key, demos), Sampler(policy, tokenizer, sampling(config)), demos


def _plan_path(work: Path, plan: str) -> Path:
    return work / f"plan-{plan}.json"


def write_rationales(
    config: BuildConfig,
    task: Task,
    task_key: list[Any],
    train: Sequence[Example],
    entries: list,
    *,
    plan: str = "",
    world: int = 1,
) -> dict[str, Any]:
    """Set ``rationale`` on every entry (in place), generating what the cache lacks.

    This is rank 0's part. With ``world`` > 1 it publishes the jobs under ``plan`` (a key of
    what decides the entries, so a stale list is never read) for :func:`share_rationales` on
    the other ranks, writes its own share and waits for theirs.

    Returns what it holds and cost: entries, how many got a rationale and how many of those
    differ (a writer that only restates the label in a template gives few distinct ones),
    their tokens, and the tokens this run generated in its seconds (cached rows cost neither,
    so the ratio of those two is the run's speed).
    """
    from retrikt.store import entry_id

    started = time.perf_counter()
    work, sampler, demo_examples = _prepare(config, task, task_key, train)
    logger.info(
        "rationales: %s writes %d (<= %d tokens each, batch %d, %d process(es)), cached in %s",
        config.rationale_llm, len(entries), config.rationale_tokens,
        config.sampling.batch_size, world, work,
    )  # fmt: skip
    demo_jobs = [
        Job(_job_id(_id(ex), task, ex["label"]), ex["label"], i,
            rationale_prompt(task, ex, ex["label"], []))
        for i, ex in enumerate(demo_examples)
    ]  # fmt: skip
    run_generation(sampler, demo_jobs, work)  # every prompt shows them: written first, here
    written = {r["id"]: r for r in read_generations(work)}
    demos = [
        Demo(ex, ex["label"], clean_rationale(written[job.id]["text"]) or "")
        for ex, job in zip(demo_examples, demo_jobs, strict=True)
    ]
    jobs: dict[str, Job] = {}
    entry_jobs: list[str] = []  # each entry's job id (equal entries share one job)
    for n, entry in enumerate(entries):
        label = entry_label(task, entry)
        example = {**entry.fields, "label": label}
        job_id = _job_id(entry.id or entry_id(task.name, entry.fields), task, label)
        entry_jobs.append(job_id)
        jobs.setdefault(
            job_id, Job(job_id, label, n, rationale_prompt(task, example, label, demos))
        )
    # Similar lengths in a batch waste less compute on padding; ids fix each row's output.
    ordered = sorted(jobs.values(), key=lambda job: len(job.prompt))
    if world > 1:
        cache.write_json_atomic(_plan_path(work, plan), [asdict(job) for job in ordered])
    generated = run_generation(sampler, ordered, work, world=world)
    if world > 1:  # the other ranks write their shards in parallel
        cache.wait_until(
            lambda: jobs.keys() <= {r["id"] for r in read_generations(work)},
            f"the other processes' rationale shards in {work}",
        )
    written = {r["id"]: r for r in read_generations(work)}
    tokens = sum(int(written[job_id]["tokens"]) for job_id in jobs)
    for entry, job_id in zip(entries, entry_jobs, strict=True):
        entry.rationale = clean_rationale(written[job_id]["text"])
    rationales = [e.rationale for e in entries if e.rationale is not None]
    stats = {
        "model": config.rationale_llm,
        "entries": len(entries),
        "written": len(rationales),
        "distinct": len(set(rationales)),
        "tokens": tokens,
        "generated_tokens": generated,
        "seconds": round(time.perf_counter() - started, 1),
        "demos": [{"fields": _demo_fields(d), "rationale": d.rationale} for d in demos],
    }
    logger.info(
        "rationales: %d of %d written (%d distinct), %d tokens; this run generated %d in %.0f s",
        stats["written"], len(entries), stats["distinct"], tokens, generated, stats["seconds"],
    )  # fmt: skip
    return stats


def share_rationales(
    config: BuildConfig,
    task: Task,
    task_key: list[Any],
    train: Sequence[Example],
    *,
    plan: str,
    rank: int,
    world: int,
) -> None:
    """Rank ``rank`` > 0: wait for rank 0's job list under ``plan`` and write this share."""
    work, sampler, _ = _prepare(config, task, task_key, train)
    path = _plan_path(work, plan)
    cache.wait_until(path.is_file, f"rank 0's rationale jobs in {path}")
    jobs = [Job(**job) for job in json.loads(path.read_text())]
    logger.info("rationales: rank %d of %d writes its share of %d", rank, world, len(jobs))
    run_generation(sampler, jobs, work, rank=rank, world=world)


def _demo_fields(demo: Demo) -> dict[str, Any]:
    from retrikt.generator.build import entry_fields

    return {**entry_fields(demo.example), "label": demo.label}
