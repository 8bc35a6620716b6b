"""Multi-layer hidden-state distillation: the student's layers learn to match a teacher's.

**Which states.** The student (a BERT-style encoder) and the teacher (a tuned LLM such as
Qwen2.5 with LoRA, or a fine-tuned larger encoder such as mpnet-base) have different
tokenizers, so their tokens cannot be paired. Each layer's output is mean-pooled over its
tokens (the student's sentence embedding is the same pooling of its last layer) and the
pooled states are matched, one per encoder input: one per example, one per choice for
COPA, as the teacher reads them too (:func:`retrikt.teachers.classifier.encode`).

**Which layers.** Student layer ``i`` (0-based, of ``L_s``) is paired with teacher layer
``round((i + 1) * L_t / L_s)`` (1-based, 0 being the embeddings): the uniform mapping of
TinyBERT, so the student's last layer always meets the teacher's last and a shallow student
spreads its layers over the teacher's depth.

**Projections.** One learned linear map per pair takes the student's state (width ``H``)
to the teacher's width; the loss is the mean squared error to the teacher's state
normalised per input (a layer norm without weights: LLM hidden states carry a few outlier
dimensions thousands of times larger than the rest, which would otherwise be all the loss
sees). The map goes from the student to the teacher (TinyBERT's ``W_h``) rather than the
other way: a learned map applied to the *target* could shrink it to zero together with the
student's states, a trivial minimum of the loss.

The teacher runs once per set of inputs; its pooled states (every layer, float16) are kept
in :class:`TeacherStates` and, given an :class:`~retrikt.cache.ArtefactCache`, cached on
disk under the teacher's weights digest.

Example::

    states = teacher_states("teachers/cb", task, train_examples)
    hidden = HiddenStateLoss(states, student_layers=4, student_width=256)
    out = student(student.tokenize(batch), len(batch), layers=True)
    loss = hidden(out.layers, batch)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retrikt.cache import ArtefactCache, key
from retrikt.errors import RetriktError
from retrikt.tasks import EncoderInput, Example, Task

logger = logging.getLogger(__name__)

STATES_FILE, INDEX_FILE = "states.npy", "inputs.json"


def layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student layer, teacher hidden-state index) pairs of the uniform mapping.

    The student index is 0-based over its layers; the teacher index counts the embeddings
    as 0, so it is ``round((i + 1) * L_t / L_s)`` in ``1..L_t`` (halves round up).
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("both models need at least one layer")
    return [
        (i, max(1, math.floor((i + 1) * teacher_layers / student_layers + 0.5)))
        for i in range(student_layers)
    ]


def _input_key(item: EncoderInput) -> str:
    return json.dumps(list(item), ensure_ascii=False)


@dataclass
class TeacherStates:
    """A teacher's mean-pooled hidden states (every layer) of a set of encoder inputs."""

    teacher: str  # the teacher's id (names its weights)
    states: np.ndarray  # (inputs, L_t + 1, D_t) float16; index 0 is the embeddings
    index: dict[str, int]  # encoder input (as JSON) -> row of ``states``

    @property
    def layers(self) -> int:
        return self.states.shape[1] - 1

    @property
    def width(self) -> int:
        return self.states.shape[2]

    def lookup(self, task: Task, examples: Sequence[Example]) -> torch.Tensor:
        """(n_inputs, L_t + 1, D_t) float32 states of the examples' encoder inputs, in order."""
        inputs = [item for ex in examples for item in task.encoder_inputs(ex)]
        try:
            rows = [self.index[_input_key(item)] for item in inputs]
        except KeyError:
            raise RetriktError(
                "an input has no teacher hidden states: compute them for every training example"
            ) from None
        return torch.from_numpy(self.states[rows].astype(np.float32))


def teacher_identity(spec: str) -> str:
    """The id of a teacher spec without loading its weights (its weights digest)."""
    from retrikt.models import resolve_model
    from retrikt.teachers.loading import is_tuned_folder, tuned_folder_id, weights_digest

    if is_tuned_folder(spec):
        return tuned_folder_id(spec)
    path = resolve_model(spec).path
    return f"hf:{spec}:{weights_digest(path)}" if Path(path).is_dir() else f"hf:{spec}"


def teacher_states(
    spec: str,
    task: Task,
    examples: Sequence[Example],
    max_length: int = 256,
    cache: ArtefactCache | None = None,
    batch_size: int = 8,
) -> TeacherStates:
    """The pooled hidden states of ``spec`` (a ``retrikt train-teacher`` folder or an HF
    sequence classifier) for every encoder input of ``examples``; cached in ``cache``."""
    inputs = list({_input_key(i): i for ex in examples for i in task.encoder_inputs(ex)}.values())
    identity = teacher_identity(spec)

    def make(folder: Path) -> dict[str, object]:
        states = _run_teacher(spec, task, inputs, max_length, batch_size)
        np.save(folder / STATES_FILE, states)
        (folder / INDEX_FILE).write_text(json.dumps([_input_key(i) for i in inputs]))
        return {"teacher": identity, "shape": list(states.shape)}

    if cache is None:
        states = _run_teacher(spec, task, inputs, max_length, batch_size)
        return TeacherStates(identity, states, {_input_key(i): n for n, i in enumerate(inputs)})
    spec_key = {"teacher": identity, "task": task.name, "inputs": key(inputs), "max": max_length}
    folder, _ = cache.ensure("teacher-states", task.name, spec_key, make)
    keys = json.loads((folder / INDEX_FILE).read_text())
    states = np.load(folder / STATES_FILE, mmap_mode="r")
    return TeacherStates(identity, states, {k: n for n, k in enumerate(keys)})


@torch.no_grad()
def _run_teacher(
    spec: str, task: Task, inputs: list[EncoderInput], max_length: int, batch_size: int
) -> np.ndarray:
    from retrikt.teachers.classifier import ClassifierTeacher, pad
    from retrikt.teachers.loading import load_teacher

    teacher = load_teacher(spec)
    if not isinstance(teacher, ClassifierTeacher):
        raise RetriktError(
            f"{spec} is read zero-shot or through a soft prompt: hidden-state distillation "
            "needs a classifier teacher (a `retrikt train-teacher --tuning lora|full` folder "
            "or an HF sequence classifier)"
        )
    model, tokenizer = teacher.model, teacher.tokenizer
    glue = "" if tokenizer.sep_token else "\n"  # as ``classifier.encode`` joins a pair
    texts = [text for text, _ in inputs]
    pairs = None if inputs[0][1] is None else [glue + (pair or "") for _, pair in inputs]
    ids = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: np.ndarray | None = None
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=f"teacher states {task.name}", unit="batch"):
        chunk = order[start : start + batch_size]
        batch = pad([ids[i] for i in chunk], tokenizer.pad_token_id)
        hidden = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = torch.stack([(h.float() * mask).sum(1) / mask.sum(1) for h in hidden], dim=1)
        if out is None:
            out = np.zeros((len(ids), *pooled.shape[1:]), dtype=np.float16)
        out[chunk] = pooled.numpy().astype(np.float16)
    assert out is not None
    logger.info(
        "teacher %s: pooled hidden states of %d inputs, %d layers x %d",
        teacher.id, len(ids), out.shape[1] - 1, out.shape[2],
    )  # fmt: skip
    return out


class HiddenStateLoss(nn.Module):
    """MSE between projected student layer states and normalised teacher layer states.

    Its projections are trained with the student (``retrikt.training.train`` adds them to
    the optimizer) and thrown away afterwards: the saved student is unchanged.
    """

    def __init__(self, states: TeacherStates, task: Task, student_layers: int, width: int):
        super().__init__()
        self.states, self.task = states, task
        self.pairs = layer_pairs(student_layers, states.layers)
        self.projections = nn.ModuleList(nn.Linear(width, states.width) for _ in self.pairs)
        logger.info(
            "hidden-state distillation: student layer -> teacher layer %s (teacher width %d)",
            ", ".join(f"{i + 1}->{j}" for i, j in self.pairs), states.width,
        )  # fmt: skip

    def forward(self, layers: Sequence[torch.Tensor], examples: Sequence[Example]) -> torch.Tensor:
        """``layers``: the student's pooled layer outputs (``ForwardOutput.layers``)."""
        if len(layers) != len(self.pairs):
            raise ValueError(f"expected {len(self.pairs)} student layers, got {len(layers)}")
        target = self.states.lookup(self.task, examples)  # (n_inputs, L_t + 1, D_t)
        losses = []
        for (i, j), projection in zip(self.pairs, self.projections, strict=True):
            wanted = nn.functional.layer_norm(target[:, j], (self.states.width,))
            losses.append(nn.functional.mse_loss(projection(layers[i]), wanted))
        return torch.stack(losses).mean()
