"""The teacher: a model that gives an example's distribution over the task's labels.

The generator writes an example *for* a requested label; the teacher says which label the
example actually has. Its soft labels are what the store keeps and what the accuracy reward
pays for. The question asked about an example is the task's (``Task.teacher_question``).

``LLMTeacher`` asks the LLM a question about the example in a chat turn and reads the
next-token log-probabilities of the task's label words (the verbalizer), optionally after
its own tuned soft prompt (``prompt_tuning.train_teacher_prompt``): zero-shot, SmolLM2-135M
is near chance on these tasks, so the tuned prompt is what makes it a usable teacher.
Multiple-choice tasks (COPA) are scored differently: each choice's length-normalised
log-likelihood as the continuation of the premise ("... because <choice>"). Asked "1 or
2?", a 135M model only learns the label prior (it answered "1" for every COPA example);
ranking continuations is the classic way small LMs do COPA.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retrikt.errors import RetriktError
from retrikt.generator.lm import load_policy
from retrikt.generator.templates import field_title, label_options
from retrikt.tasks import MULTIPLE_CHOICE, Example, Task

logger = logging.getLogger(__name__)

_FIELD_CHARS = 1200  # long passages are clipped so a batch stays within a few hundred tokens


def verbalizer(task: Task) -> list[str]:
    """One answer word per label (per score bucket for regression)."""
    if task.is_regression:
        return [str(bucket) for bucket in label_options(task)]
    return list(task.label_words)


def verbalizer_ids(task: Task, tokenizer: Any) -> list[int]:
    """The first token of each answer word; they must differ to tell labels apart."""
    ids = [tokenizer.encode(word, add_special_tokens=False)[0] for word in verbalizer(task)]
    if len(set(ids)) != len(ids):
        raise RetriktError(
            f"the label words of {task.name} ({', '.join(verbalizer(task))}) start with the same "
            "token for this tokenizer, so the teacher cannot tell them apart"
        )
    return ids


def teacher_prompt(task: Task, example: Example, tokenizer: Any) -> str:
    """The chat turn that asks for the label; the answer word is the next token."""
    words = verbalizer(task)
    lines = [f"{field_title(name)}: {str(example[name])[:_FIELD_CHARS]}" for name in task.fields]
    request = "\n".join(
        [
            task.description,
            "",
            *lines,
            "",
            f"{task.teacher_question} Answer with {', '.join(words[:-1])} or {words[-1]}.",
        ]
    )
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": request}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{request}\nAnswer:"


def verbalizer_logits(
    model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], ids: Sequence[int]
) -> torch.Tensor:
    """(n, C) next-token logits of the answer words; differentiable (prompt tuning uses it).

    Right padding keeps every real token at the position it has unpadded (also behind a
    soft prompt), and the logits are read at each row's last real token.
    """
    prompts = [teacher_prompt(task, ex, tokenizer) for ex in examples]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right")
    logits = model(**batch).logits
    offset = logits.shape[1] - batch["input_ids"].shape[1]  # virtual tokens of a soft prompt
    last = batch["attention_mask"].sum(dim=1) - 1 + offset
    rows = torch.arange(len(prompts))
    return logits[rows, last][:, list(ids)].float()


def adapter_digest(adapter_dir: str | Path) -> str:
    """A short hash of a saved soft prompt's weights: ids and cache keys change with it."""
    digest = hashlib.sha256()
    for path in sorted(Path(adapter_dir).glob("adapter_model.*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _copa_continuations(task: Task, example: Example) -> tuple[str, list[str]]:
    """The premise as an open sentence ("The man fell because") and the choices that end it."""
    context = task.choice_context(example)
    choices = [example[name].strip() for name in task.choice_fields]
    return context, [f" {c[:1].lower()}{c[1:]}" for c in choices]


def choice_logits(
    model: Any, tokenizer: Any, task: Task, examples: Sequence[Example]
) -> torch.Tensor:
    """(n, C) mean log-probability of each choice's tokens after the context; differentiable."""
    ids, spans = [], []
    for ex in examples:
        context, continuations = _copa_continuations(task, ex)
        head = tokenizer.encode(context)
        for text in continuations:
            tail = tokenizer.encode(text, add_special_tokens=False)
            ids.append(head + tail)
            spans.append((len(head), len(head) + len(tail)))
    width = max(len(row) for row in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    logits = logits[:, logits.shape[1] - width :].float()  # drop soft-prompt positions
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
    token_lp = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    scores = [token_lp[i, start - 1 : end - 1].mean() for i, (start, end) in enumerate(spans)]
    return torch.stack(scores).view(len(examples), -1)


def label_logits(
    model: Any, tokenizer: Any, task: Task, examples: Sequence[Example]
) -> torch.Tensor:
    """(n, C) scores whose softmax is the teacher's label distribution (bucket scores for
    regression): choice likelihoods for multiple choice, verbalizer logits otherwise."""
    if task.task_type == MULTIPLE_CHOICE:
        return choice_logits(model, tokenizer, task, examples)
    return verbalizer_logits(model, tokenizer, task, examples, verbalizer_ids(task, tokenizer))


class LLMTeacher:
    """The generator LLM as a teacher (verbalizer or choice likelihood), optionally with a
    tuned soft prompt."""

    def __init__(
        self,
        generator: str = "smollm2-135m",
        adapter_dir: str | Path | None = None,
        batch_size: int = 16,
    ):
        self.model, self.tokenizer = load_policy(generator, adapter_dir)
        self.batch_size = batch_size
        self.id = f"llm:{generator}" + (
            f"+prompt:{adapter_digest(adapter_dir)}" if adapter_dir else ""
        )

    @torch.no_grad()
    def label_probs(self, task: Task, examples: Sequence[Example]) -> np.ndarray:
        if not examples:
            return np.zeros((0, task.num_outputs), dtype=np.float32)
        # Similar lengths in a batch waste less compute on padding.
        order = sorted(range(len(examples)), key=lambda i: len(task.render(examples[i])))
        rows: dict[int, np.ndarray] = {}
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"teacher {task.name}", disable=len(starts) < 4):
            chunk = order[start : start + self.batch_size]
            logits = label_logits(self.model, self.tokenizer, task, [examples[i] for i in chunk])
            rows.update(zip(chunk, torch.softmax(logits, dim=-1).numpy(), strict=True))
        probs = np.stack([rows[i] for i in range(len(examples))]).astype(np.float32)
        if task.is_regression:
            buckets = np.asarray(label_options(task), dtype=np.float32)
            return (probs @ buckets)[:, None]
        return probs
