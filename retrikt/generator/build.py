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
   encoder and written with ``retrikt.store.KnowledgeStore``. With ``--store-examples
   both`` (the default) or ``train`` the real training examples are stored too, with the
   teacher's soft labels and ``generator="train"``; ``train`` skips stages 2-4.

Store key (what is embedded and kept as ``text``): the first encoder input of the example
(``text [SEP] pair``), i.e. what the student encodes. COPA is the exception: one entry per
example keyed by its premise and question (``"<premise> because"`` / ``"<premise> so"``),
because a new COPA question shares its situation with a stored example, not its answer
choices; the whole example (both choices and the soft labels) is in the entry's fields.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrikt import cache
from retrikt.errors import RetriktError
from retrikt.generator.configs import TRAIN_SOURCE, BuildConfig
from retrikt.generator.generation import (
    plan_jobs,
    read_generations,
    run_generation,
    shard_info,
)
from retrikt.generator.lm import load_policy
from retrikt.generator.prompt_tuning import (
    train_generator_prompt,
    train_teacher_prompt,
)
from retrikt.generator.sampler import Sampler
from retrikt.generator.teacher import LLMTeacher
from retrikt.generator.templates import (
    END,
    generation_prompt,
    instruction_prompt,
    label_options,
    parse_example,
)
from retrikt.tasks import Example, Task, get_task
from retrikt.teachers.ensemble import (
    CachedTeacher,
    Combination,
    EnsembleTeacher,
    fit_combination,
)
from retrikt.user_task import saved_spec

logger = logging.getLogger(__name__)

#: Share of the training split held out to fit and score several teachers when none of
#: them is a ``retrikt train-teacher`` folder (those bring their own held-out slice).
DEFAULT_HELDOUT = 0.1
#: Part of the RL and generation cache keys: bump it when the sampler's output changes, so
#: stages cached by an older sampler are not reused.
SAMPLER_VERSION = 2


@dataclass
class TaskData:
    task: Task
    train: list[Example]
    validation: list[Example]

    @property
    def fingerprint(self) -> str:
        """Identifies the task and its training examples, so a changed data file (or a user
        task's edited spec) invalidates the caches."""
        examples = [(self.task.render(ex), ex["label"]) for ex in self.train]
        return cache.key([*task_key(self.task), examples])


def task_key(task: Task) -> list[Any]:
    """The task's part of a cache key: its name, and a user task's spec (its labels and
    templates change what is generated); built-in tasks keep the keys they always had."""
    spec = saved_spec(task)
    return [task.name] if spec is None else [task.name, spec]


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
def _cached_stage(folder: Path, rank: int, make: Callable[[Path], object]) -> Path:
    """Make a stage folder once (rank 0; other ranks wait) through the one artefact cache."""

    def run(staging: Path) -> None:
        make(staging)  # what it returns (a path) is not kept in the marker

    cache.publish(folder, run, rank=rank)
    return folder


def prepare_teacher(config: BuildConfig, data: TaskData, rank: int = 0) -> tuple[Any, dict]:
    """The teacher and its manifest entry with validation metrics.

    An LLM (a preset, or a causal-LM folder) is tuned here with a soft prompt (stage 1). A
    ``retrikt train-teacher`` folder or any sequence classifier is already tuned: it is used
    as it is, and a train-teacher folder's held-out score goes into the manifest.
    """
    from retrikt.teachers.loading import is_llm, load_teacher, teacher_card

    task = data.task
    tuned = None if is_llm(config.teacher_model) else load_teacher(config.teacher_model)
    soft = config.teacher_prompt
    steps = 0 if tuned else soft.steps
    key = cache.key(
        [
            "teacher",
            tuned.id if tuned else config.teacher_model,
            data.fingerprint,
            soft.to_dict(),
            [task.render(ex) for ex in data.validation],
        ]
    )
    folder = config.cache / "teacher" / f"{task.name}-{key}"

    def make(staging: Path) -> None:
        adapter = None
        if steps > 0:
            adapter = train_teacher_prompt(
                config.teacher_model, task, data.train, soft, staging / "adapter"
            )
        teacher = tuned or LLMTeacher(config.teacher_model, adapter)
        metrics = measure_teacher(teacher, task, data.validation)
        (staging / "validation.json").write_text(json.dumps(metrics, indent=1))

    folder = _cached_stage(folder, rank, make)
    adapter_dir = folder / "adapter" if steps > 0 else None
    metrics = json.loads((folder / "validation.json").read_text())
    logger.info("teacher validation on %s: %s", task.name, metrics)
    teacher = tuned or LLMTeacher(config.teacher_model, adapter_dir)
    info = {
        "id": teacher.id,
        "model": config.teacher_model,
        "prompt_steps": steps,
        "adapter": str(adapter_dir) if adapter_dir else None,
        "validation": metrics,
        **teacher_card(config.teacher_model),
    }
    return teacher, info


def heldout_examples(config: BuildConfig, data: TaskData) -> list[Example]:
    """Training examples no teacher was tuned on: those every ``retrikt train-teacher``
    folder held out (its own seeded slice, recomputed from its saved settings), or, with no
    tuned teacher, a seeded 10% slice of the training split (untuned teachers saw none)."""
    from retrikt.tasks import split_heldout
    from retrikt.teachers.config import TeacherConfig
    from retrikt.teachers.loading import TEACHER_CONFIG, is_tuned_folder
    from retrikt.teachers.tuning import load_teacher_data

    task = data.task
    slices = []
    for spec in config.teacher_models:
        if not is_tuned_folder(spec):
            continue
        saved = json.loads((Path(spec) / TEACHER_CONFIG).read_text())["config"]
        tuned = TeacherConfig.from_dict({**saved, "data_dir": config.data_dir}, spec)
        slices.append(load_teacher_data(tuned).heldout)
    if not slices:
        return split_heldout(task, data.train, DEFAULT_HELDOUT, config.seed, "held-out")[1]
    common = set.intersection(*({task.render(ex) for ex in held} for held in slices))
    return [ex for ex in slices[0] if task.render(ex) in common]


def prepare_teachers(
    config: BuildConfig, data: TaskData, rank: int = 0
) -> tuple[EnsembleTeacher, dict[str, Any], list[dict[str, Any]] | None, dict[str, Any] | None]:
    """Every teacher of ``--teacher a,b,c`` (each through :func:`prepare_teacher`) as one
    ``EnsembleTeacher`` whose labels are their ``--teacher-combination``.

    Returns (teacher, the manifest's ``teacher``, its ``teachers``, its ``combination``).
    One teacher is that teacher, with the manifest it always had.
    """
    specs = config.teacher_models
    if len(specs) == 1:
        prepared = [prepare_teacher(config, data, rank)]
    else:
        prepared = [prepare_teacher(replace(config, teacher=spec), data, rank) for spec in specs]
    infos = [info for _, info in prepared]
    if len(prepared) == 1:
        member = prepared[0][0]
        return EnsembleTeacher([member], Combination("mean", [member.id])), infos[0], infos, None
    # Several teachers: each one's outputs are cached, so stores of the same examples with
    # other teachers or another rule label nothing twice.
    members = [CachedTeacher(teacher, config.cache / "labels") for teacher, _ in prepared]
    ids = [m.id for m in members]
    task = data.task
    held = heldout_examples(config, data)
    logger.info(
        "%d teachers, combined by %s; %d held-out training examples score and fit them",
        len(members), config.teacher_combination, len(held),
    )  # fmt: skip
    probs = {m.id: np.asarray(m.label_probs(task, held)) for m in members}
    combination = fit_combination(config.teacher_combination, task, ids, probs, held)
    ensemble = EnsembleTeacher(members, combination)
    for info in infos:
        info["heldout_common"] = combination.heldout["scores"][info["id"]]
    info = {
        "id": ensemble.id,
        "combination": combination.rule,
        "members": ids,
        "validation": measure_teacher(ensemble, task, data.validation),
    }
    logger.info("combined teacher (%s) on validation: %s", combination.rule, info["validation"])
    return ensemble, info, infos, combination.to_dict()


def measure_teacher(teacher: LLMTeacher, task: Task, examples: list[Example]) -> dict[str, Any]:
    """The task's official metrics of the teacher's predictions on labelled examples."""
    examples = [ex for ex in examples if ex["label"] is not None]
    if not examples:
        return {}
    probs = teacher.label_probs(task, examples)
    return {**task.evaluate(task.predictions(probs), examples), "examples": len(examples)}


def prepare_generator(
    config: BuildConfig, data: TaskData, teacher: LLMTeacher, teacher_info: dict, rank: int = 0
) -> Path | None:
    """The generator's soft prompt after supervised tuning and RL (None = plain prompt)."""
    soft = config.generator_prompt
    if soft.steps == 0:
        return None
    task = data.task
    sft_key = cache.key(["generator", config.generator, data.fingerprint, soft.to_dict()])
    sft = _cached_stage(
        config.cache / "generator" / f"{task.name}-{sft_key}",
        rank,
        lambda staging: train_generator_prompt(config.generator, task, data.train, soft, staging),
    )
    if config.rl == "none":
        return sft
    teacher_key = cache.key([teacher.id, teacher_info.get("adapter")])
    rl_key = cache.key(
        [
            sft_key,
            config.rl,
            config.rl_config.to_dict(),
            teacher_key,
            config.encoder,
            config.sampling.to_dict(),
            SAMPLER_VERSION,
        ]
    )
    return _cached_stage(
        config.cache / "rl" / f"{task.name}-{config.rl}-{rl_key}",
        rank,
        lambda staging: _refine(config, data, teacher, sft, staging),
    )


def _refine(config: BuildConfig, data: TaskData, teacher: LLMTeacher, sft: Path, out: Path) -> None:
    from retrikt.encoder import Encoder
    from retrikt.generator.reward import RewardFunction, RewardWeights
    from retrikt.generator.rl import refine

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
    prompts = [generation_prompt(task, label) for label in labels]
    refine(
        config.rl,
        policy,
        tokenizer,
        task,
        prompts,
        labels,
        reward_fn,
        config.rl_config,
        config.sampling,
        out,
    )


# ------------------------------------------------------------------ generation
def generation_work_dir(
    config: BuildConfig, task: Task, adapter: Path | None, teacher_id: str
) -> Path:
    """Checkpoint folder of a generation run; samples_per_label is not in the key, so a
    rerun with more samples extends the same run (job ids are stable)."""
    sampling = {**config.sampling.to_dict(), "batch_size": None}  # batches do not change rows
    key = cache.key(
        [*task_key(task), config.generator, str(adapter), teacher_id, sampling, SAMPLER_VERSION]
    )
    return config.cache / "generations" / f"{task.name}-{key}"


def generate_records(
    config: BuildConfig,
    data: TaskData,
    adapter: Path | None,
    teacher: EnsembleTeacher,
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
    work = generation_work_dir(config, task, adapter, teacher.id)

    def annotate(records: list[dict[str, Any]]) -> None:
        parsed = [parse_example(task, r["text"], r["label"]) for r in records]
        valid = [i for i, ex in enumerate(parsed) if ex is not None]
        probs, each = teacher.label_all(task, [parsed[i] for i in valid]) if valid else ([], {})
        for record, ex in zip(records, parsed, strict=True):
            record["fields"] = None if ex is None else entry_fields(ex)
            record["soft_labels"] = None
        for n, (i, row) in enumerate(zip(valid, probs, strict=True)):
            records[i]["soft_labels"] = [float(p) for p in row]
            if len(each) > 1:  # one teacher's labels are the soft labels
                records[i]["teacher_labels"] = {
                    t: [float(p) for p in v[n]] for t, v in each.items()
                }

    sampler = Sampler(policy, tokenizer, config.sampling)
    run_generation(sampler, jobs, work, rank=rank, world=world, annotate=annotate)
    if rank != 0:
        return []
    wanted = {job.id for job in jobs}

    def all_written() -> bool:  # other ranks write their shards in parallel
        return len({r["id"] for r in read_generations(work)} & wanted) == len(wanted)

    cache.wait_until(all_written, f"the other processes' shards in {work}")
    return [r for r in read_generations(work) if r["id"] in wanted]


def entry_fields(example: Example) -> dict[str, Any]:
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
    """The key an entry is embedded and found by (``Task.store_key``), as one string."""
    return encoder.join(task.store_key(example))


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
                teacher_labels=record.get("teacher_labels") or {teacher_id: record["soft_labels"]},
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


def training_entries(
    data: TaskData, teacher: EnsembleTeacher, encoder: Any
) -> tuple[list[Any], np.ndarray]:
    """The real training examples as store entries with the teacher's soft labels (ReAugKD's
    store), marked ``generator=TRAIN_SOURCE``. A student never retrieves an example's own
    entry while training on it (see ``retrikt.training``)."""
    from retrikt.store import StoreEntry

    task = data.task
    logger.info("teacher labels the %d training examples", len(data.train))
    probs, each = teacher.label_all(task, data.train)
    entries = [
        StoreEntry(
            fields=entry_fields(example),
            text=store_text(task, example, encoder),
            requested_label=example["label"],
            soft_labels=[float(p) for p in row],
            generator=TRAIN_SOURCE,
            teacher_labels={t: [float(p) for p in v[n]] for t, v in each.items()},
        )
        for n, (example, row) in enumerate(zip(data.train, probs, strict=True))
    ]
    embeddings = encoder.encode([e.text for e in entries], show_progress_bar=len(entries) > 1000)
    return entries, np.asarray(embeddings, dtype=np.float32)


def rationale_plan(config: BuildConfig, teacher_id: str) -> str:
    """Key of the rationale jobs of a sharded build: the build settings and the teachers'
    weights decide the entries (generations are cached under the same things)."""
    return cache.key([config.key_dict(), teacher_id])


def build_store(config: BuildConfig) -> Path:
    """Run every stage (reusing cached ones) and write the store at ``config.out``.

    Under several processes each one generates its shard of the examples and of the
    rationales; process 0 alone trains the prompts, merges the shards and writes the store.
    Returns the store folder.
    """
    from retrikt.encoder import Encoder
    from retrikt.store import MANIFEST_NAME, KnowledgeStore

    out = Path(config.out)
    if (out / MANIFEST_NAME).exists() and not config.overwrite:
        raise RetriktError(f"{out} already holds a knowledge store; pass --overwrite to replace it")
    rank, world = shard_info()
    data = load_task_data(config)
    task = data.task
    jobs = config.samples_per_label * len(label_options(task))
    sampling = config.sampling
    logger.info(
        "[1/5] teacher: %s (an LLM gets a %d-step soft prompt; a tuned folder is used as is)",
        config.teacher_model,
        config.teacher_prompt.steps,
    )
    teacher, teacher_info, teachers, combination = prepare_teachers(config, data, rank)
    generate = config.store_examples != "train"
    adapter, records = None, []
    if generate:
        logger.info(
            "[2-3/5] generator prompt: %d steps, then RL %s (%d steps)",
            config.generator_prompt.steps,
            config.rl,
            config.rl_config.steps if config.rl != "none" else 0,
        )
        adapter = prepare_generator(config, data, teacher, teacher_info, rank)
        logger.info(
            "[4/5] generation: %d examples of <= %d tokens at temperature %g, top-p %g",
            jobs,
            sampling.max_new_tokens,
            sampling.temperature,
            sampling.top_p,
        )
        records = generate_records(config, data, adapter, teacher, rank, world)
    else:
        logger.info("[2-4/5] generation: skipped (--store-examples train)")
    if rank != 0:
        if config.rationales:  # rank 0 decides the entries; this rank writes a share
            from retrikt.generator.rationales import share_rationales

            plan = rationale_plan(config, teacher.id)
            share_rationales(config, task, task_key(task), data.train, plan=plan, rank=rank,
                             world=world)  # fmt: skip
        return out
    logger.info("[5/5] selection: parse, deduplicate, embed with %s, write", config.encoder)
    encoder = Encoder(config.encoder)
    generator_id = f"{config.generator}+{adapter.name}" if adapter else config.generator
    entries: list[Any] = []
    embeddings = np.zeros((0, encoder.dim), dtype=np.float32)
    stats: dict[str, Any] = {}
    if config.store_examples != "generated":  # first, so a generated copy is the duplicate
        entries, embeddings = training_entries(data, teacher, encoder)
        stats["training_examples"] = len(entries)
    if generate:
        generated, vectors, generation_stats = select_entries(
            config, data, records, encoder, teacher.id, generator_id
        )
        if not generated:  # asked-for generation that yields nothing is a failure, not a store
            raise RetriktError(
                f"{task.name}: {empty_build_reason(records, generation_stats, config)}"
            )
        entries += generated
        embeddings = np.concatenate([embeddings, vectors])
        stats.update(generation_stats)
    if config.rationales:
        from retrikt.generator.rationales import write_rationales

        logger.info("[5/5] rationales for %d entries by %s", len(entries), config.rationale_llm)
        stats["rationales"] = write_rationales(
            config, task, task_key(task), data.train, entries,
            plan=rationale_plan(config, teacher.id), world=world,
        )  # fmt: skip
    logger.info("%s: %s", task.name, stats)
    generator_info = {
        "id": generator_id,
        "model": config.generator,
        "adapter": str(adapter) if adapter else None,
        "prompt": "soft" if adapter else "instruction",
        "rl": config.rl if generate else None,
        "config": config.to_dict(),
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
        teachers=teachers,
        combination=combination,
    )
    added = store.add(entries, embeddings)
    store.save()
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    repeats = len(entries) - added  # e.g. CoLA's training split repeats 19 sentences
    logger.info(
        "wrote %d entries to %s%s", added, out,
        f" ({repeats} repeated examples kept once)" if repeats else "",
    )  # fmt: skip
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
        limit = f"--max-new-tokens {config.sampling.max_new_tokens}"
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
