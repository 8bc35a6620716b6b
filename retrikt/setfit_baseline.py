"""SetFit, the peer baseline: what a practitioner with a few hundred labels would reach for.

SetFit (Tunstall et al., 2022) fine-tunes a sentence-transformers body contrastively on pairs
drawn from the labelled examples (same label = similar), then fits a light head on the
embeddings. The ``setfit`` package does both; this module only adapts RetriKT's tasks to it,
so the comparison uses the same encoder preset (loaded through ``retrikt.encoder.Encoder``,
so ``minilm-l6:N`` and ``minilm-l3`` work), the same training examples and the official metric.

How each task type is fed to SetFit (it natively classifies single texts):

* single / pair / multi-answer: a pair is one text, ``text [SEP] pair``, exactly as
  ``Encoder.join`` embeds it for the store; the head is SetFit's default logistic regression.
* multiple choice (COPA): every ``(premise + connective, choice)`` becomes one text labelled
  correct / wrong; at prediction the choice with the higher "correct" probability wins. This is
  the usual reduction of multiple choice to classification, and keeps SetFit's own recipe.
* regression (STS-B): SetFit's contrastive phase needs classes, so it runs on the score rounded
  to the nearest integer (six buckets for 0-5), then a ridge regression head (scikit-learn) is
  fitted on the embeddings to the exact scores. SetFit has no regression mode; this is the
  closest setup that still uses its contrastive body training.

Seeds: setfit 1.2 draws its contrastive pairs with a fixed ``RandomState(42)``, so the seed
only changes the order of the batches; SetFit's spread over seeds is therefore small.

Resuming: at scale ``full`` the body training is 1-2 hours a seed on one CPU core, so with a
``checkpoint_dir`` it checkpoints every ``save_steps`` batches (the Hugging Face Trainer's own
checkpoints: weights, optimiser, scheduler and RNG states) and a rerun continues from the last
one; the pairs and their order are seeded, so the resumed run sees the batches it had left.

Install with ``pip install -e ".[setfit]"``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import TrainerCallback

from retrikt.cache import write_json_atomic
from retrikt.errors import RetriktError
from retrikt.tasks import MULTIPLE_CHOICE, Example, Task, get_task

if TYPE_CHECKING:
    from setfit import SetFitModel

    from retrikt.encoder import Encoder

logger = logging.getLogger(__name__)


@dataclass
class SetFitConfig:
    """SetFit's hyper-parameters; the defaults are the SetFit paper's (20 pair iterations)."""

    task: str
    encoder: str = "minilm-l6"
    max_length: int = 128
    batch_size: int = 16
    #: Pairs generated per training text and per side (positive / negative): SetFit's R.
    num_iterations: int = 20
    epochs: int = 1
    body_lr: float = 2e-5
    seed: int = 0


def setfit_targets(task: Task, example: Example) -> list[int | float]:
    """Per SetFit text: the class, correct (1) / wrong (0) for a choice, or the score."""
    if task.task_type == MULTIPLE_CHOICE:
        choices = len(task.encoder_inputs(example))
        return [int(i == example["label"]) for i in range(choices)]
    return [example["label"]]


def _require_setfit() -> None:
    try:
        import setfit  # noqa: F401
    except ImportError:
        raise RetriktError(
            "the setfit baseline needs the 'setfit' package: pip install -e '.[setfit]'"
        ) from None


class _Seconds(TrainerCallback):
    """Training seconds over every piece of a resumed run, saved with each checkpoint."""

    def __init__(self, path: Path, started: float):
        self.path, self.started = path, started
        self.before = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        write_json_atomic(self.path, {"seconds": round(self.total(), 1)})


class SetFitBaseline:
    """A SetFit model for one task, taking and returning RetriKT examples and distributions."""

    def __init__(self, config: SetFitConfig, model: SetFitModel, encoder: Encoder):
        self.config = config
        self.task: Task = get_task(config.task)
        self.model = model
        self.encoder = encoder
        self.train_seconds = 0.0  # set by ``train``

    # ---------------------------------------------------------------- data
    def texts(self, example: Example) -> list[str]:
        """SetFit's inputs for one example: one text, or one per choice for COPA."""
        return [self.encoder.join(item) for item in self.task.encoder_inputs(example)]

    # ------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        config: SetFitConfig,
        examples: list[Example],
        checkpoint_dir: str | os.PathLike | None = None,
        save_steps: int = 200,
    ) -> SetFitBaseline:
        """Contrastive body fine-tuning, then the head, on ``examples`` (labelled).

        With ``checkpoint_dir`` the body training checkpoints every ``save_steps`` batches
        there and resumes from the last checkpoint found; the folder is removed when training
        ends. ``train_seconds`` of the result counts every piece of a resumed run.
        """
        _require_setfit()
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from sklearn.linear_model import LogisticRegression, Ridge
        from transformers.trainer_utils import get_last_checkpoint

        from retrikt.encoder import Encoder

        started = time.perf_counter()
        task = get_task(config.task)
        targets = [target for ex in examples for target in setfit_targets(task, ex)]
        classes = [round(t) for t in targets] if task.is_regression else targets
        if len(set(classes)) < 2:
            raise RetriktError(
                f"SetFit needs at least two different labels among the {len(examples)} "
                f"{task.name} training examples; use more examples"
            )
        encoder = Encoder(config.encoder, max_length=config.max_length)
        head = Ridge() if task.is_regression else LogisticRegression()
        baseline = cls(config, SetFitModel(model_body=encoder.model, model_head=head), encoder)
        texts = [text for ex in examples for text in baseline.texts(ex)]
        logger.info(
            "SetFit on %s: %d texts, %d pair iterations, batch %d, %s",
            task.name,
            len(texts),
            config.num_iterations,
            config.batch_size,
            config.encoder,
        )
        # Without a checkpoint folder nothing is kept (checkpoints would land in ./checkpoints).
        with tempfile.TemporaryDirectory(prefix="retrikt-setfit-") as tmp:
            out = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tmp)
            clock = _Seconds(out / "seconds.json", started)
            args = TrainingArguments(
                output_dir=str(out),
                batch_size=config.batch_size,
                num_epochs=config.epochs,
                num_iterations=config.num_iterations,
                body_learning_rate=config.body_lr,
                max_length=config.max_length,
                seed=config.seed,
                save_strategy="steps" if checkpoint_dir is not None else "no",
                save_steps=save_steps,
                save_total_limit=1,
                report_to="none",
                show_progress_bar=False,
            )
            dataset = Dataset.from_dict({"text": texts, "label": classes})
            trainer = Trainer(
                model=baseline.model, args=args, train_dataset=dataset, callbacks=[clock]
            )
            last = get_last_checkpoint(str(out)) if out.is_dir() else None
            if last is not None:
                logger.info("SetFit resumes from %s (%.0f s done before)", last, clock.before)
                # setfit's Trainer does not pass resume_from_checkpoint on to the
                # sentence-transformers Trainer it runs the body training with.
                st_train = trainer.st_trainer.train
                trainer.st_trainer.train = functools.partial(st_train, resume_from_checkpoint=last)
            trainer.train_embeddings(texts, classes, args=args)
            if task.is_regression:
                baseline.model.fit(texts, targets, num_epochs=1, show_progress_bar=False)
            else:
                trainer.train_classifier(texts, classes, args=args)
            baseline.train_seconds = clock.total()
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return baseline

    # ----------------------------------------------------------- predicting
    def predict_examples(self, examples: list[Example], batch_size: int = 32) -> np.ndarray:
        """Probabilities (n, classes or choices), or scores (n, 1), like the student's."""
        texts = [text for ex in examples for text in self.texts(ex)]
        if self.task.is_regression:
            scores = np.asarray(self.model.predict(texts, batch_size=batch_size), dtype=np.float32)
            low, high = self.task.label_range or (-np.inf, np.inf)
            return np.clip(scores, low, high).reshape(-1, 1)
        probs = np.asarray(self.model.predict_proba(texts, batch_size=batch_size, as_numpy=True))
        # The head only knows the classes it saw in training: put its columns where they belong.
        width = 2 if self.task.task_type == MULTIPLE_CHOICE else self.task.num_outputs
        full = np.zeros((len(texts), width), dtype=np.float32)
        full[:, np.asarray(self.model.model_head.classes_, dtype=int)] = probs
        if self.task.task_type != MULTIPLE_CHOICE:
            return full
        correct = full[:, 1].reshape(len(examples), -1)
        return correct / np.clip(correct.sum(1, keepdims=True), 1e-12, None)

    def num_parameters(self) -> int:
        """Body parameters plus the head's fitted coefficients."""
        body = sum(p.numel() for p in self.model.model_body.parameters())
        head = self.model.model_head
        return int(body + np.size(head.coef_) + np.size(head.intercept_))
