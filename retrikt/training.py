"""Training the student: one plain, readable loop (no ``Trainer``), AdamW with linear warmup.

The loop is written out rather than delegated to ``transformers.Trainer`` because the
retrieval objectives need, at every step, the pooled embeddings, the store's keys and values
and the retrieval temperature, which would otherwise hide inside a ``compute_loss`` override.

**Objectives with a knowledge store** (``retrikt train-student --store S``), summed with
equal weights; each can be switched off for ablations:

1. *Combined cross-entropy* (``combined_ce``): cross-entropy of the gold label under the
   combined prediction ``mix * model + (1 - mix) * neighbour vote`` (MSE for regression;
   the rule of :mod:`retrikt.retrieval`, with the student's own ``mix``). It trains the head,
   the query embeddings and the retrieval temperature together for the rule used at
   inference. Switched off, the gold labels still supervise the model's own prediction.
2. *Retrieval loss* (``retrieval_loss``): the encoder learns to retrieve. For each training
   input, its ``train_k`` nearest store rows get a target distribution proportional to how
   well their teacher label agrees with the gold label (the teacher's probability of the gold
   class; ``1 - |score - gold| / range`` for regression; for a COPA choice input, ``1 -
   |plausibility - [choice is the answer]|``); the loss is the KL divergence from that target
   to ``softmax(similarity / retrieval temperature)``. Agreement is graded rather than 0/1 so
   a teacher that was unsure counts for less.
3. *Distillation* (``distill``): the model's own prediction on a batch of store entries is
   pulled to their teacher soft labels (KL; MSE to the teacher score for regression) - the
   classic transfer of the LLM's knowledge through its generated examples.
4. *Rationale alignment* (``rationale_loss`` > 0, a store built with ``--rationales``): the
   encoder does not write text, but it can learn what the LLM said about an example. Each
   training input whose example has a rationale in the store (the store's real training
   examples) is pulled towards the embedding of that rationale, ``1 - cosine``, weighted by
   ``rationale_loss``; the rationale embeddings are targets, re-embedded with the keys.
   ``rationale_keys`` instead appends each entry's rationale to the input its key embeds.

**Checkpoints.** ``train`` saves everything the loop carries (weights, optimizer and
schedule, the batch and distillation random streams, dropout's random state, the store keys,
the loss history) after every epoch to ``checkpoint_dir``; a rerun after a kill loads it and
goes on from the next epoch, reaching the same weights as a run that was never stopped. A
checkpoint records the settings and data it was made with and refuses any other run, and the
training seconds so far, so a student resumed across sessions reports what all of it cost.

Keys are detached: the store rows are re-embedded with the current encoder at the start of
every ``refresh_every`` epochs and at the end (re-encoding every neighbour at every step would
multiply the cost by ``train_k``). A training example that is also in the store (the same
task fields) never retrieves itself, which would teach the student to trust a perfect match
that never occurs on new inputs.

**Choosing k, the retrieval temperature and mix.** The retrieval temperature is a learned
parameter; ``k`` and ``mix`` are the user's. With ``tune_retrieval`` (``--tune-retrieval``) a
slice of the training split (``tune_fraction``) is held out from the gradient steps; after
training, ``k``, ``mix`` and a rescaling of the retrieval temperature are chosen by grid
search to minimise the combined prediction's log-loss (MSE for regression) on that slice,
replacing the given ones (the choice is logged and saved in the student's config). The model
fits its own training examples almost perfectly, so tuning ``mix`` on them would always
trust the model; validation data is never used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retrikt.cache import ArtefactCache, key, replace_atomic
from retrikt.errors import ConfigError, RetriktError
from retrikt.retrieval import mix_neighbours, neighbour_logits
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.student import RetriKT, evaluate_model
from retrikt.student.config import TrainConfig
from retrikt.student.hidden import HiddenStateLoss, teacher_states
from retrikt.tasks import CHOICE, SCORE, Example, Task, get_task

logger = logging.getLogger(__name__)

EVAL_RESULTS = "eval_results.json"
CHECKPOINT = "checkpoint.pt"
#: Adam moves a parameter by about its learning rate per step; the log of the retrieval
#: temperature needs to move by ~1 within a few hundred steps to matter.
RETRIEVAL_TEMPERATURE_LR = 1e-2
TUNE_KS = (1, 2, 4, 8, 16, 32)
TUNE_MIXES = tuple(round(0.1 * i, 1) for i in range(11))
TUNE_RETRIEVAL_TEMPERATURE_FACTORS = (0.5, 1.0, 2.0)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (default: every CPU; more only adds contention)."""
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


def subsample(examples: list[Example], limit: int | None) -> list[Example]:
    """A fixed random subset of at most ``limit`` examples.

    The subset does not depend on the training seed, so runs with different seeds (and
    different methods) see the same examples and their spread measures training noise only.
    """
    if limit is None or limit >= len(examples):
        return list(examples)
    return random.Random(0).sample(examples, limit)


def split_for_tuning(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, tune): a seeded random ``fraction`` of the examples held out for tuning."""
    if fraction <= 0:
        return list(examples), []
    n_tune = max(1, round(fraction * len(examples)))
    if n_tune >= len(examples):
        raise RetriktError(f"tune_fraction {fraction} leaves no examples to train on")
    order = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in order[n_tune:]], [examples[i] for i in order[:n_tune]]


def length_grouped_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """One epoch of shuffled batches whose members have similar lengths.

    ``transformers``' length grouping (what ``group_by_length`` does in its ``Trainer``): with
    dynamic padding this saves 30-40% of the CPU time on tasks whose lengths vary a lot (CB,
    RTE, MRPC) and keeps batches random enough.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = get_length_grouped_indices(lengths, batch_size, generator=generator)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _optimizer(
    model: RetriKT, config: TrainConfig, extra: nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases, LayerNorms and the retrieval temperature.

    ``extra`` (the hidden-state projections) starts from random weights, as the head does,
    and trains at the head's learning rate.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    named = list(model.named_parameters())
    if extra is not None:
        named += [(f"extra.{name}", param) for name, param in extra.named_parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        lr = config.lr if name.startswith("encoder.") else config.head_lr
        if name == "log_retrieval_temperature":
            lr = RETRIEVAL_TEMPERATURE_LR
        decay = 0.0 if param.ndim < 2 else config.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
    )


# --------------------------------------------------------------------------- objectives
def agreement(task: Task, values: torch.Tensor, batch: Sequence[Example]) -> torch.Tensor:
    """How well each neighbour's teacher label agrees with its input's gold label, in [0, 1].

    ``values`` is (n_inputs, k, V) as the memory stores them; the result is (n_inputs, k).
    """
    head = task.head
    if head == SCORE:
        low, high = task.label_range or (0.0, 1.0)
        gold = torch.tensor([float(ex["label"]) for ex in batch])[:, None]
        return (1 - (values[..., 0] - gold).abs() / (high - low)).clamp(min=0)
    labels = torch.tensor([int(ex["label"]) for ex in batch])
    if head == CHOICE:  # one input per choice; its target plausibility is 1 for the answer
        choices = values.shape[0] // len(batch)
        target = nn.functional.one_hot(labels, choices).float().view(-1, 1)
        return 1 - (values[..., 0] - target).abs()
    target = nn.functional.one_hot(labels, values.shape[-1]).float()
    return 1 - 0.5 * (values - target[:, None, :]).abs().sum(-1)


def retrieval_objectives(
    model: RetriKT,
    pooled: torch.Tensor,
    model_dist: torch.Tensor,
    batch: Sequence[Example],
    config: TrainConfig,
) -> dict[str, torch.Tensor]:
    """The combined cross-entropy and the retrieval KL of one batch (see module docstring).

    The neighbours are searched without gradient (keys are detached), leaving out each
    input's own example; their similarities are recomputed with gradient for the losses.
    """
    memory, retrieval = model.memory, model.config.retrieval
    assert memory is not None and retrieval is not None
    queries = nn.functional.normalize(pooled, dim=-1)
    _, rows = memory.search(queries.detach().numpy(), config.train_k, batch)
    missing = torch.from_numpy(rows < 0)
    rows = torch.from_numpy(np.maximum(rows, 0))
    keys, values = torch.from_numpy(memory.keys), torch.from_numpy(memory.values)
    sims = torch.einsum("nd,nkd->nk", queries, keys[rows]).masked_fill(missing, -torch.inf)
    values = values[rows]
    losses: dict[str, torch.Tensor] = {}
    if config.combined_ce:
        final, _ = mix_neighbours(
            model_dist, sims, values, model.retrieval_temperature, retrieval.mix, model.config.head
        )
        if model.config.head == SCORE:
            units = (final.squeeze(-1) - model.score_center) / model.score_scale
            losses["combined"] = nn.functional.mse_loss(units, model.score_units(batch))
        else:
            picked = final.gather(1, model.gold(batch)[:, None]).squeeze(1)
            losses["combined"] = -picked.clamp_min(1e-8).log().mean()
    if config.retrieval_loss:
        agree = agreement(model.task, values, batch).masked_fill(missing, 0.0)
        total = agree.sum(-1, keepdim=True)
        usable = total.squeeze(-1) > 0
        if usable.any():
            target = agree[usable] / total[usable]
            logits = neighbour_logits(sims[usable], model.retrieval_temperature)
            log_p = torch.log_softmax(logits, dim=-1)
            kl = torch.where(target > 0, target * (target.clamp_min(1e-12).log() - log_p), 0.0)
            losses["retrieval"] = kl.sum(-1).mean()
    return losses


def distill_loss(model: RetriKT, entries: Sequence[StoreEntry]) -> torch.Tensor:
    """The model's own prediction on store entries against their teacher soft labels."""
    examples = [{**e.fields, "label": None} for e in entries]
    return soft_label_loss(model, model(model.tokenize(examples), len(examples)).outputs, entries)


def soft_label_loss(
    model: RetriKT, outputs: torch.Tensor, entries: Sequence[StoreEntry]
) -> torch.Tensor:
    """KL from the entries' teacher soft labels to the head's ``outputs`` (MSE for scores)."""
    soft = torch.tensor([e.soft_labels for e in entries], dtype=torch.float32)
    if model.config.head == SCORE:
        units = (soft[:, 0] - model.score_center) / model.score_scale
        return nn.functional.mse_loss(outputs.squeeze(-1), units)
    soft = soft / soft.sum(-1, keepdim=True).clamp_min(1e-12)
    return nn.functional.kl_div(outputs.log_softmax(-1), soft, reduction="batchmean")


class RationaleTargets:
    """The store's rationales as embedding targets for the inputs of their own examples."""

    def __init__(self, model: RetriKT):
        memory = model.memory
        assert memory is not None
        self.model = model
        self.rows: dict[str, list[int]] = {}  # origin -> its rows that have a rationale
        for row, (origin, text) in enumerate(zip(memory.origins, memory.rationales, strict=True)):
            if text:
                self.rows.setdefault(origin, []).append(row)
        self.texts = {row: memory.rationales[row] for rows in self.rows.values() for row in rows}
        self.vectors: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def refresh(self) -> None:
        """Embed every rationale with the current encoder (detached targets)."""
        rows = list(self.texts)
        vectors = self.model.embed_inputs([(self.texts[r], None) for r in rows])
        self.vectors = dict(zip(rows, torch.from_numpy(vectors), strict=True))

    def loss(self, pooled: torch.Tensor, batch: Sequence[Example]) -> torch.Tensor | None:
        """Mean ``1 - cosine`` of each input and its example's rationale (None: none has one).

        Input ``j`` of a multi-input example (a COPA choice) is matched to the ``j``-th row
        of its example, as the memory orders them.
        """
        from retrikt.student.memory import origin_key

        per = len(pooled) // max(len(batch), 1)
        inputs, targets = [], []
        for i, example in enumerate(batch):
            rows = self.rows.get(origin_key(self.model.task, example), [])
            for j in range(per if rows else 0):
                inputs.append(i * per + j)
                targets.append(self.vectors[rows[min(j, len(rows) - 1)]])
        if not inputs:
            return None
        queries = nn.functional.normalize(pooled[inputs], dim=-1)
        return (1 - (queries * torch.stack(targets)).sum(-1)).mean()


# --------------------------------------------------------------------------- the loop
def train(
    model: RetriKT,
    examples: list[Example],
    config: TrainConfig,
    store_entries: Sequence[StoreEntry] = (),
    hidden: HiddenStateLoss | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place; returns each step's losses.

    With a store attached (``model.attach_store``) the retrieval objectives are added and
    ``store_entries`` (the source store's entries) feed the distillation batches. With
    ``hidden`` the student's layers are also pulled to the teacher's hidden states
    (weighted by ``config.hidden_weight``; its projections train with the model). With
    ``checkpoint_dir`` each finished epoch is saved there, and a checkpoint found there is
    resumed.
    """
    from transformers import get_linear_schedule_with_warmup

    retrieval = model.memory is not None
    # Only the retrieval objectives read the neighbours: classic KD (both off) neither searches
    # nor re-embeds the store each epoch (17% of a student-kd step on MRPC's 5,506 entries).
    objectives = retrieval and (config.combined_ce or config.retrieval_loss)
    distill = retrieval and config.distill and len(store_entries) > 0
    rationales = RationaleTargets(model) if retrieval and config.rationale_loss > 0 else None
    if rationales is not None and not len(rationales):
        raise ConfigError(
            "--rationale-loss needs rationales in the store: build it with --rationales"
        )
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = _optimizer(model, config, hidden)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total), max(total, 1)
    )
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rendered = [model.task.render(ex) for ex in examples]
    lengths = [len(text) for text in rendered]
    distill_order: list[int] = []
    history: list[dict[str, float]] = []
    checkpoint = Checkpoint(checkpoint_dir, config, rendered, len(store_entries))
    state = {"model": model, "hidden": hidden, "optimizer": optimizer, "scheduler": scheduler}
    first_epoch, earlier_seconds, started = 0, 0.0, time.perf_counter()
    if (saved := checkpoint.load(state)) is not None:
        first_epoch, history, distill_order = saved["epoch"], saved["history"], saved["order"]
        earlier_seconds = saved.get("seconds", 0.0)
        generator.set_state(saved["batches"])
        rng.bit_generator.state = saved["distill"]
        if retrieval:
            model.memory.keys = saved["keys"]
        if rationales is not None:
            rationales.vectors = saved["rationales"]
    bar = tqdm(total=total, initial=len(history), desc=f"train {model.task.name}", unit="step")
    for epoch in range(first_epoch, config.epochs):
        if retrieval and epoch % config.refresh_every == 0:
            if objectives:
                model.refresh_keys()
            if rationales is not None:
                rationales.refresh()
        model.train()
        for indices in length_grouped_batches(lengths, config.batch_size, generator):
            batch = [examples[i] for i in indices]
            out = model(model.tokenize(batch), len(batch), layers=hidden is not None)
            losses = {}
            if objectives:
                dist = model.distribution(out.outputs)
                losses = retrieval_objectives(model, out.pooled, dist, batch, config)
            if hidden is not None:
                assert out.layers is not None
                losses["hidden"] = config.hidden_weight * hidden(out.layers, batch)
            if "combined" not in losses:
                losses["task"] = model.task_loss(out.outputs, batch)
            if rationales is not None:
                aligned = rationales.loss(out.pooled, batch)
                if aligned is not None:
                    losses["rationale"] = config.rationale_loss * aligned
            if distill:
                if len(distill_order) < config.batch_size:
                    distill_order += rng.permutation(len(store_entries)).tolist()
                chosen, distill_order = (distill_order[: config.batch_size],
                                         distill_order[config.batch_size :])  # fmt: skip
                losses["distill"] = distill_loss(model, [store_entries[i] for i in chosen])
            loss = sum(losses.values())
            loss.backward()
            nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]],
                config.max_grad_norm,
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
            bar.update()
            recent = float(np.mean([h["loss"] for h in history[-config.log_every :]]))
            bar.set_postfix(epoch=epoch + 1, loss=f"{recent:.4f}")
            if len(history) % config.log_every == 0 or len(history) == total:
                parts = " ".join(
                    f"{k} {np.mean([h.get(k, 0.0) for h in history[-config.log_every :]]):.4f}"
                    for k in history[-1]
                )
                logger.info("step %d/%d epoch %d %s", len(history), total, epoch + 1, parts)
        checkpoint.save(
            state, epoch=epoch + 1, history=history, order=distill_order,
            batches=generator.get_state(), distill=rng.bit_generator.state,
            keys=model.memory.keys if retrieval else None,
            rationales=None if rationales is None else rationales.vectors,
            seconds=earlier_seconds + time.perf_counter() - started,
        )  # fmt: skip
    bar.close()
    if retrieval:
        model.refresh_keys()
    model.eval()
    return history


class Checkpoint:
    """The training loop's state after an epoch, in ``folder/checkpoint.pt`` (no folder: off).

    ``state`` maps names to the modules, optimizer and scheduler whose ``state_dict`` is
    saved; the loop's other values (random streams, keys, history) are passed as keywords.
    The settings, the rendered training examples and the store size are fingerprinted, so a
    checkpoint is only resumed by the run that wrote it.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None,
        config: TrainConfig,
        rendered: list[str],
        store_entries: int,
    ):
        self.path = Path(folder) / CHECKPOINT if folder is not None else None
        self.fingerprint = key(
            {"config": config.key_dict(), "examples": rendered, "store": store_entries}
        )

    def save(self, state: dict[str, Any], **values: Any) -> None:
        """Written aside then renamed: a kill during the write keeps the previous epoch's."""
        if self.path is None:
            return
        checkpoint = {
            "fingerprint": self.fingerprint,
            "state": {k: v.state_dict() for k, v in state.items() if v is not None},
            "torch_rng": torch.get_rng_state(),  # dropout
            **values,
        }
        replace_atomic(self.path, lambda tmp: torch.save(checkpoint, tmp))
        logger.info("epoch %d saved to %s", values["epoch"], self.path)

    def load(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Restore ``state`` in place and return the saved values (None: nothing to resume)."""
        if self.path is None or not self.path.is_file():
            return None
        saved = torch.load(self.path, weights_only=False)
        if saved["fingerprint"] != self.fingerprint:
            raise RetriktError(
                f"{self.path} was written by a training run with other settings or data; "
                "delete it to start again, or train into another folder"
            )
        for name, module in state.items():
            if module is not None:
                module.load_state_dict(saved["state"][name])
        torch.set_rng_state(saved["torch_rng"])
        logger.info("resuming %s after epoch %d", self.path, saved["epoch"])
        return saved

    @staticmethod
    def seconds(folder: str | os.PathLike) -> float:
        """The training seconds of the epochs already in ``folder``'s checkpoint (0: none),
        so a run resumed over several sessions reports what it cost in all of them."""
        path = Path(folder) / CHECKPOINT
        if not path.is_file():
            return 0.0
        return torch.load(path, weights_only=False, mmap=True).get("seconds", 0.0)


def tune_retrieval(model: RetriKT, examples: Sequence[Example]) -> dict[str, Any]:
    """Choose k, mix and the retrieval temperature's scale on held-out training examples
    (in place; they replace the student's own).

    Minimises the combined prediction's log-loss (MSE for regression); ties go to the
    first setting in the grid (fewer neighbours, less weight on them).
    """
    retrieval, memory = model.config.retrieval, model.memory
    assert retrieval is not None and memory is not None
    ks = [k for k in TUNE_KS if k <= len(memory)] or [len(memory)]
    raw = model.raw_outputs(examples, k=max(ks), exclude_own=True)
    base = model.retrieval_temperature.item()
    gold = np.array([ex["label"] for ex in examples], dtype=np.float64)

    def loss(final: np.ndarray) -> float:
        if model.task.is_regression:
            return float(np.mean((final[:, 0] - gold) ** 2))
        return float(-np.mean(np.log(np.clip(final[np.arange(len(gold)), gold.astype(int)],
                                             1e-8, None))))  # fmt: skip

    grid = []
    for k in ks:
        for factor in TUNE_RETRIEVAL_TEMPERATURE_FACTORS:
            for mix in reversed(TUNE_MIXES):  # ties prefer trusting the model
                final, _ = model.combined(raw, k=k, retrieval_temperature=base * factor, mix=mix)
                grid.append((loss(final), k, factor, mix))
    best = min(grid, key=lambda g: g[0])
    _, k, factor, mix = best
    given = {"k": retrieval.k, "mix": retrieval.mix}
    retrieval.k, retrieval.mix = k, mix
    with torch.no_grad():
        model.log_retrieval_temperature += math.log(factor)
    model_only = loss(raw.model)
    neighbours_only = min(g[0] for g in grid if g[3] == 0.0)
    retrieval.tuning = {
        "examples": len(examples),
        "objective": "mse" if model.task.is_regression else "log_loss",
        "k": k,
        "mix": mix,
        "retrieval_temperature": round(base * factor, 6),
        "learned_retrieval_temperature": round(base, 6),
        "given": given,
        "loss": round(best[0], 6),
        "model_only_loss": round(model_only, 6),
        "neighbours_only_loss": round(neighbours_only, 6),
    }
    logger.info(
        "--tune-retrieval chose on %d held-out training examples: k %d (given %d), mix %.1f "
        "(given %.2f), retrieval temperature %.4f (learned %.4f); loss %.4f, model alone "
        "%.4f, neighbours alone %.4f",
        len(examples), k, given["k"], mix, given["mix"], base * factor, base, best[0],
        model_only, neighbours_only,
    )  # fmt: skip
    return retrieval.tuning


@dataclass
class TrainResult:
    model: RetriKT
    metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds: float


def train_student(
    config: TrainConfig,
    data_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    eval_split: str = "validation",
    cache: ArtefactCache | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a student for ``config.task`` (with ``config.store``: the RetriKT student), save
    it to ``out`` and score it on ``eval_split``, writing ``out/eval_results.json``.

    ``cache`` keeps the hidden-state teacher's states (``config.hidden_teacher``) on disk.
    Each epoch is checkpointed in ``checkpoint_dir`` (default ``out/checkpoint``), so a
    rerun after a kill resumes; the folder is deleted once the student is saved and scored.
    """
    from transformers import set_seed

    task: Task = get_task(config.task)
    if config.tune_retrieval and config.store is None:
        raise ConfigError("--tune-retrieval tunes retrieval: give a --store to retrieve from")
    if (config.rationale_loss > 0 or config.rationale_keys) and config.store is None:
        raise ConfigError("rationales come from a store: give a --store built with --rationales")
    set_seed(config.seed)
    train_examples = subsample(task.read("train", data_dir), config.train_limit)
    eval_examples = task.read(eval_split, data_dir)
    started = time.perf_counter()
    model = RetriKT.from_encoder(task, config.encoder, max_length=config.max_length)
    store_entries: list[StoreEntry] = []
    tune_examples: list[Example] = []
    if config.store is not None:
        source = KnowledgeStore.open(config.store)
        model.attach_store(source, config.k, config.mix, config.retrieval_temperature)
        assert model.config.retrieval is not None
        model.config.retrieval.rationale_keys = config.rationale_keys
        store_entries = source.entries()
        if config.tune_retrieval:
            train_examples, tune_examples = split_for_tuning(
                train_examples, config.tune_fraction, config.seed
            )
    logger.info(
        "training %s on %d %s examples%s (%d epochs, batch %d, max_length %d, seed %d)",
        config.encoder, len(train_examples), task.name,
        f" with a store of {len(store_entries)} entries" if config.store else "",
        config.epochs, config.batch_size, config.max_length, config.seed,
    )  # fmt: skip
    model.config.training = config.to_dict()
    hidden = None
    if config.hidden_teacher is not None:
        states = teacher_states(config.hidden_teacher, task, train_examples, cache=cache)
        hidden = HiddenStateLoss(states, task, model.num_layers, model.hidden_size)
    checkpoints = Path(checkpoint_dir) if checkpoint_dir is not None else Path(out) / "checkpoint"
    started -= Checkpoint.seconds(checkpoints)  # epochs trained by earlier, killed runs
    history = train(model, train_examples, config, store_entries, hidden, checkpoints)
    if tune_examples:
        tune_retrieval(model, tune_examples)
    seconds = time.perf_counter() - started
    model.save_pretrained(out)
    metrics = evaluate_model(model, task, eval_examples, config.eval_batch_size)
    logger.info("%s %s: %s", task.name, eval_split, _fmt(metrics))
    write_results(
        Path(out) / EVAL_RESULTS,
        task=task.name,
        split=eval_split,
        examples=len(eval_examples),
        metrics=metrics,
        train_examples=len(train_examples),
        tune_examples=len(tune_examples),
        train_seconds=round(seconds, 1),
        config=config.to_dict(),
    )
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(model, metrics, history, seconds)


def write_results(path: Path, **results: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
