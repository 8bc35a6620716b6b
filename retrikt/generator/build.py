"""``build_store``: from a task's training set to a knowledge store of generated examples.

Stages (each reused from ``<cache>/build`` when its inputs are unchanged, keyed by a hash):

1. **teacher prompt** - a soft prompt that makes the LLM answer the task (``--teacher-steps``;
   0 = zero-shot). Its validation metrics are measured once and kept with it.
2. **generator prompt** - a soft prompt that writes an example given its label
   (``--prompt-steps``; 0 = the plain instruction-prompted LLM, no soft prompt).
3. **RL refinement** - ``retrikt.generator.rl.refine`` with the accuracy + diversity + validity
   reward (``--rl ppo|grpo|none``).
4. **generation** - sharded over processes, checkpointed per batch; each batch is parsed and
   labelled by the teacher before it is written, so a resumed run redoes none of it.
5. **selection** - unparsable outputs are dropped; exact and near duplicates (of training
   examples or of earlier generations) are dropped; the rest are embedded with the student
   encoder and written with ``retrikt.store.KnowledgeStore``.

Store key (what is embedded and kept as ``text``): the first encoder input of the example
(``text [SEP] pair``), i.e. what the student encodes. COPA is the exception: one entry per
example keyed by its premise and question (``"<premise> because"`` / ``"<premise> so"``),
because a new COPA question shares its situation with a stored example, not its answer
choices; the whole example (both choices and the soft labels) is in the entry's fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.errors import RetriktError
from retrikt.generator.generation import (
    SamplingConfig,
    plan_jobs,
    read_generations,
    run_generation,
    shard_info,
)
from retrikt.generator.lm import load_policy
from retrikt.generator.prompt_tuning import (
    SoftPromptConfig,
    train_generator_prompt,
    train_teacher_prompt,
)
from retrikt.generator.rl import METHODS as RL_METHODS
from retrikt.generator.teacher import LLMTeacher
from retrikt.generator.templates import (
    END,
    generation_prompt,
    instruction_prompt,
    label_options,
    parse_example,
)
from retrikt.models import cache_dir as default_cache_dir
from retrikt.tasks import Example, Task, get_task

logger = logging.getLogger(__name__)

_DONE = "retrikt-stage.json"  # written last into a finished stage folder
_POLL_SECONDS = 10.0


@dataclass
class BuildConfig:
    """Everything ``retrikt build-store`` needs; stage cache keys are hashes of parts of it."""

    task: str
    data_dir: str | None
    out: str
    generator: str = "smollm2-135m"
    teacher: str | None = None  # LLM preset of the teacher; None = the generator
    encoder: str = "minilm-l6"
    samples_per_label: int = 100
    rl: str = "ppo"
    prompt_steps: int = 100  # generator soft prompt; 0 = plain instruction prompt
    teacher_steps: int = 100  # teacher soft prompt; 0 = zero-shot teacher
    rl_steps: int = 20
    batch_size: int = 16
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 0.95
    num_virtual_tokens: int = 16
    train_limit: int | None = None  # random training examples used for tuning and reference
    teacher_eval_limit: int | None = 200  # validation examples the teacher is measured on
    near_duplicate: float = 0.95  # cosine at or above which an example is a near duplicate
    seed: int = 0
    cache_dir: str | None = None
    overwrite: bool = False
    rl_options: dict[str, Any] = field(default_factory=dict)  # extra RLConfig fields

    def __post_init__(self) -> None:
        if self.rl not in RL_METHODS:
            raise RetriktError(f"--rl must be one of {', '.join(RL_METHODS)}, not {self.rl!r}")
        if self.rl != "none" and self.prompt_steps == 0:
            raise RetriktError(
                "RL refines a soft prompt: use --prompt-steps > 0 with --rl ppo/grpo, "
                "or --rl none for the plain instruction-prompted generator"
            )
        if self.samples_per_label < 1:
            raise RetriktError("--samples-per-label must be at least 1")

    @property
    def teacher_model(self) -> str:
        return self.teacher or self.generator

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir() / "build"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TaskData:
    task: Task
    train: list[Example]
    validation: list[Example]

    @property
    def fingerprint(self) -> str:
        """Identifies the training examples, so a changed data file invalidates the caches."""
        return _key(self.task.name, [(self.task.render(ex), ex["label"]) for ex in self.train])


def load_task_data(config: BuildConfig) -> TaskData:
    """The task's (optionally subsampled) labelled training set and validation split."""
    task = get_task(config.task)
    train = [ex for ex in task.read("train", config.data_dir) if ex["label"] is not None]
    if not train:
        raise RetriktError(f"{task.name}: the training split has no labelled examples")
    rng = random.Random(config.seed)
    if config.train_limit and len(train) > config.train_limit:
        train = rng.sample(train, config.train_limit)
    try:
        validation = task.read("validation", config.data_dir)
    except RetriktError:
        logger.warning("%s: no validation split; the teacher is not measured", task.name)
        validation = []
    if config.teacher_eval_limit and len(validation) > config.teacher_eval_limit:
        validation = rng.sample(validation, config.teacher_eval_limit)
    return TaskData(task, train, validation)


# ------------------------------------------------------------------ cached stages
def _cached_stage(folder: Path, rank: int, make: Any) -> Path:
    """Run ``make(tmp_folder)`` once (on rank 0) and publish it atomically; others wait."""
    if (folder / _DONE).is_file():
        logger.info("reusing %s", folder)
        return folder
    if rank != 0:
        logger.info("waiting for process 0 to finish %s", folder)
        while not (folder / _DONE).is_file():
            time.sleep(_POLL_SECONDS)
        return folder
    _remove_abandoned_staging(folder)
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    staging.mkdir(parents=True)
    make(staging)
    (staging / _DONE).write_text(json.dumps({"finished": time.time()}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def _remove_abandoned_staging(folder: Path) -> None:
    """Delete ``<stage>.tmpPID`` folders left by killed runs (their process is gone)."""
    for staging in folder.parent.glob(folder.name + ".tmp*"):
        pid = staging.name.rpartition(".tmp")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _process_alive(int(pid))):
            logger.info("removing %s, left by an interrupted run", staging)
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def prepare_teacher(config: BuildConfig, data: TaskData, rank: int = 0) -> tuple[LLMTeacher, dict]:
    """The (tuned) LLM teacher and its manifest entry with validation metrics."""
    task = data.task
    soft = SoftPromptConfig(
        steps=config.teacher_steps, num_virtual_tokens=config.num_virtual_tokens, seed=config.seed
    )
    key = _key(
        "teacher",
        config.teacher_model,
        data.fingerprint,
        asdict(soft),
        [task.render(ex) for ex in data.validation],
    )
    folder = config.cache / "teacher" / f"{task.name}-{key}"

    def make(staging: Path) -> None:
        adapter = None
        if config.teacher_steps > 0:
            adapter = train_teacher_prompt(
                config.teacher_model, task, data.train, soft, staging / "adapter"
            )
        metrics = measure_teacher(LLMTeacher(config.teacher_model, adapter), task, data.validation)
        (staging / "validation.json").write_text(json.dumps(metrics, indent=1))

    folder = _cached_stage(folder, rank, make)
    adapter_dir = folder / "adapter" if config.teacher_steps > 0 else None
    metrics = json.loads((folder / "validation.json").read_text())
    logger.info("teacher validation on %s: %s", task.name, metrics)
    teacher = LLMTeacher(config.teacher_model, adapter_dir)
    info = {
        "id": teacher.id,
        "model": config.teacher_model,
        "prompt_steps": config.teacher_steps,
        "adapter": str(adapter_dir) if adapter_dir else None,
        "validation": metrics,
    }
    return teacher, info


def measure_teacher(teacher: LLMTeacher, task: Task, examples: list[Example]) -> dict[str, Any]:
    """The task's official metrics of the teacher's predictions on labelled examples."""
    examples = [ex for ex in examples if ex["label"] is not None]
    if not examples:
        return {}
    probs = teacher.label_probs(task, examples)
    preds = probs[:, 0].tolist() if task.is_regression else probs.argmax(axis=1).tolist()
    return {**task.evaluate(preds, examples), "examples": len(examples)}


def prepare_generator(
    config: BuildConfig, data: TaskData, teacher: LLMTeacher, teacher_info: dict, rank: int = 0
) -> Path | None:
    """The generator's soft prompt after supervised tuning and RL (None = plain prompt)."""
    if config.prompt_steps == 0:
        return None
    task = data.task
    soft = SoftPromptConfig(
        steps=config.prompt_steps, num_virtual_tokens=config.num_virtual_tokens, seed=config.seed
    )
    sft_key = _key("generator", config.generator, data.fingerprint, asdict(soft))
    sft = _cached_stage(
        config.cache / "generator" / f"{task.name}-{sft_key}",
        rank,
        lambda staging: train_generator_prompt(config.generator, task, data.train, soft, staging),
    )
    if config.rl == "none":
        return sft
    teacher_key = _key(teacher.id, teacher_info["adapter"])
    rl_key = _key(
        sft_key,
        config.rl,
        config.rl_steps,
        config.rl_options,
        teacher_key,
        config.encoder,
        config.max_new_tokens,
        config.seed,
    )
    return _cached_stage(
        config.cache / "rl" / f"{task.name}-{config.rl}-{rl_key}",
        rank,
        lambda staging: _refine(config, data, teacher, sft, staging),
    )


def _refine(config: BuildConfig, data: TaskData, teacher: LLMTeacher, sft: Path, out: Path) -> None:
    from retrikt.encoder import Encoder
    from retrikt.generator.reward import RewardFunction, RewardWeights
    from retrikt.generator.rl import RLConfig, refine

    task = data.task
    policy, tokenizer = load_policy(config.generator, sft, trainable=True)
    labels = label_options(task)
    reward_fn = RewardFunction(
        task,
        teacher,
        Encoder(config.encoder),
        [task.render(ex) for ex in data.train],
        RewardWeights(),
    )
    rl_config = RLConfig(
        steps=config.rl_steps,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        **config.rl_options,
    )
    prompts = [generation_prompt(task, label) for label in labels]
    refine(config.rl, policy, tokenizer, task, prompts, labels, reward_fn, rl_config, out)


# ------------------------------------------------------------------ generation
def generation_work_dir(config: BuildConfig, adapter: Path | None, teacher_id: str) -> Path:
    """Checkpoint folder of a generation run; samples_per_label is not in the key, so a
    rerun with more samples extends the same run (job ids are stable)."""
    sampling = [config.max_new_tokens, config.temperature, config.top_p, config.seed]
    key = _key(config.task, config.generator, str(adapter), teacher_id, sampling)
    return config.cache / "generations" / f"{config.task}-{key}"


def generate_records(
    config: BuildConfig,
    data: TaskData,
    adapter: Path | None,
    teacher: LLMTeacher,
    rank: int = 0,
    world: int = 1,
) -> list[dict[str, Any]]:
    """Generate (or resume) this rank's share; rank 0 waits for all and returns every record.

    Each record holds the raw ``text``, the parsed ``fields`` (None if unparsable) and the
    teacher's ``soft_labels`` of a parsed example.
    """
    task = data.task
    policy, tokenizer = load_policy(config.generator, adapter)
    if adapter is None:
        prompt_fn = lambda label: instruction_prompt(task, label, tokenizer)  # noqa: E731
    else:
        prompt_fn = lambda label: generation_prompt(task, label)  # noqa: E731
    jobs = plan_jobs(task.name, label_options(task), config.samples_per_label, prompt_fn)
    work = generation_work_dir(config, adapter, teacher.id)

    def annotate(records: list[dict[str, Any]]) -> None:
        parsed = [parse_example(task, r["text"], r["label"]) for r in records]
        valid = [i for i, ex in enumerate(parsed) if ex is not None]
        probs = teacher.label_probs(task, [parsed[i] for i in valid]) if valid else []
        for record, ex in zip(records, parsed, strict=True):
            record["fields"] = None if ex is None else _fields(ex)
            record["soft_labels"] = None
        for i, row in zip(valid, probs, strict=True):
            records[i]["soft_labels"] = [float(p) for p in row]

    sampling = SamplingConfig(
        config.max_new_tokens, config.batch_size, config.temperature, config.top_p, config.seed
    )
    run_generation(
        policy, tokenizer, jobs, sampling, work, rank=rank, world=world, annotate=annotate
    )
    if rank != 0:
        return []
    wanted = {job.id for job in jobs}
    while True:  # other ranks write their shards in parallel
        records = [r for r in read_generations(work) if r["id"] in wanted]
        if len(records) == len(wanted):
            return records
        logger.info("waiting for other processes: %d of %d written", len(records), len(wanted))
        time.sleep(_POLL_SECONDS)


def _fields(example: Example) -> dict[str, Any]:
    """What the store keeps of an example: its fields (and WSC's span indices)."""
    return {k: v for k, v in example.items() if k not in ("idx", "label")}


# ------------------------------------------------------------------ selection and store
class _RecordedTeacher:
    """Answers with the soft labels recorded at generation time, so that the reward of the
    stored examples is the RL reward itself without a second pass of the LLM."""

    def __init__(self, task: Task, records: list[dict[str, Any]], teacher_id: str):
        self.id = teacher_id
        self._probs = {
            task.render(r["fields"]): r["soft_labels"] for r in records if r["fields"] is not None
        }

    def label_probs(self, task: Task, examples: list[Example]) -> np.ndarray:
        return np.asarray([self._probs[task.render(ex)] for ex in examples], dtype=np.float32)


def store_text(task: Task, example: Example, encoder: Any) -> str:
    """The key an entry is embedded and found by (see the module docstring for COPA)."""
    text, pair = task.encoder_inputs(example)[0]
    return text if task.name == "copa" else encoder.join((text, pair))


def score_records(
    task: Task,
    records: list[dict[str, Any]],
    encoder: Any,
    train: list[Example],
    teacher_id: str,
    near_duplicate: float,
    chunk: int = 256,
) -> list[dict[str, float]]:
    """The RL reward terms of every record, in order (diversity counts earlier records)."""
    from retrikt.generator.reward import RewardFunction, RewardWeights

    reward = RewardFunction(
        task,
        _RecordedTeacher(task, records, teacher_id),
        encoder,
        [task.render(ex) for ex in train],
        RewardWeights(),
        near_duplicate=near_duplicate,
    )
    scores: list[dict[str, float]] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        scores += reward([r["text"] for r in part], [r["label"] for r in part])
    return scores


def select_entries(
    config: BuildConfig,
    data: TaskData,
    records: list[dict[str, Any]],
    encoder: Any,
    teacher_id: str,
    generator_id: str,
) -> tuple[list[Any], np.ndarray, dict[str, Any]]:
    """Keep valid, non-duplicate records as store entries with their embeddings."""
    from retrikt.store import StoreEntry

    task = data.task
    scores = score_records(task, records, encoder, data.train, teacher_id, config.near_duplicate)
    kept = [i for i, s in enumerate(scores) if s["validity"] > 0 and s["diversity"] > 0]
    entries = []
    for i in kept:
        record = records[i]
        example = {**record["fields"], "label": record["label"]}
        entries.append(
            StoreEntry(
                fields=record["fields"],
                text=store_text(task, example, encoder),
                requested_label=record["label"],
                soft_labels=record["soft_labels"],
                rewards=scores[i],
                generator=generator_id,
            )
        )
    embeddings = encoder.encode([e.text for e in entries], show_progress_bar=len(entries) > 1000)
    valid = sum(s["validity"] > 0 for s in scores)
    stats = {
        "generated": len(records),
        "valid": valid,
        "duplicates": valid - len(kept),
        "kept": len(kept),
        "validity_rate": round(valid / max(len(records), 1), 4),
        "mean_accuracy_reward": round(float(np.mean([s["accuracy"] for s in scores])), 4)
        if scores
        else 0.0,
    }
    return entries, embeddings, stats


def build_store(config: BuildConfig) -> Path:
    """Run every stage (reusing cached ones) and write the store at ``config.out``.

    Under several processes each one generates its shard; process 0 alone trains the
    prompts, merges the shards and writes the store. Returns the store folder.
    """
    from retrikt.encoder import Encoder
    from retrikt.store import MANIFEST_NAME, KnowledgeStore

    out = Path(config.out)
    if (out / MANIFEST_NAME).exists() and not config.overwrite:
        raise RetriktError(f"{out} already holds a knowledge store; pass --overwrite to replace it")
    rank, world = shard_info()
    data = load_task_data(config)
    task = data.task
    teacher, teacher_info = prepare_teacher(config, data, rank)
    adapter = prepare_generator(config, data, teacher, teacher_info, rank)
    records = generate_records(config, data, adapter, teacher, rank, world)
    if rank != 0:
        return out
    encoder = Encoder(config.encoder)
    generator_id = f"{config.generator}+{adapter.name}" if adapter else config.generator
    entries, embeddings, stats = select_entries(
        config, data, records, encoder, teacher.id, generator_id
    )
    logger.info("%s: %s", task.name, stats)
    if not entries:
        raise RetriktError(f"{task.name}: {empty_build_reason(records, stats, config)}")
    generator_info = {
        "id": generator_id,
        "model": config.generator,
        "adapter": str(adapter) if adapter else None,
        "prompt": "soft" if adapter else "instruction",
        "rl": config.rl,
        "config": asdict(config),
        "stats": stats,
    }
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    store = KnowledgeStore.create(
        staging,
        task=task.name,
        label_names=list(task.label_names) if task.label_names else None,
        encoder_id=encoder.model_id,
        dim=encoder.dim,
        generator=generator_info,
        teacher=teacher_info,
    )
    store.add(entries, embeddings)
    store.save()
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    logger.info("wrote %d entries to %s", len(entries), out)
    return out


def empty_build_reason(
    records: list[dict[str, Any]], stats: dict[str, Any], config: BuildConfig
) -> str:
    """Why a build kept no entries, as the one-line error that replaces a 0-entry store."""
    total = len(records)
    parsed = sum(r["fields"] is not None for r in records)
    if total == 0:
        return "the generator wrote no outputs; no store was written"
    if parsed == 0:
        cut = sum(END not in r["text"] for r in records)
        limit = f"--max-new-tokens {config.max_new_tokens}"
        why = (
            f"all were cut at {limit}" if cut == total else f"{cut} cut at {limit}, rest malformed"
        )
        return (
            f"0 of {total} outputs parsed: {why}; no store was written (raise --max-new-tokens, "
            "lower --temperature or generate more with --samples-per-label)"
        )
    return (
        f"{parsed} of {total} outputs parsed, {stats['valid']} valid, {stats['duplicates']} of "
        "those duplicates: nothing to keep; no store was written"
    )
