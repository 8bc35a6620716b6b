"""The SetFit peer baseline: runs in the harness, and its COPA and STS-B adaptations."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("setfit")

from retrikt.errors import RetriktError  # noqa: E402
from retrikt.harness.running import run_harness  # noqa: E402
from retrikt.harness.scales import SCALES, HarnessConfig  # noqa: E402
from retrikt.setfit_baseline import SetFitBaseline, SetFitConfig, setfit_targets  # noqa: E402
from retrikt.tasks import get_task  # noqa: E402

ENCODER = "minilm-l6:2"


def _config(task: str, **changes) -> SetFitConfig:
    base = SetFitConfig(task=task, encoder=ENCODER, max_length=48, batch_size=8, num_iterations=1)
    return replace(base, **changes)


def _sample(task, data_dir, n):
    return random.Random(0).sample(task.read("train", data_dir), n)


def test_setfit_in_the_harness_reports_the_official_metric(tmp_path, data_dir):
    scale = replace(
        SCALES["demo"],
        name="tiny",
        train_limit=16,
        eval_limit=20,
        max_length=48,
        setfit_iterations=1,
        latency_examples=2,
    )
    config = HarnessConfig(
        tasks=["cb"],
        methods=["setfit"],
        seeds=[0],
        scale=scale,
        name="sf",
        data_dir=str(data_dir),
        encoder=ENCODER,
        cache_dir=tmp_path / "cache",
        results_dir=tmp_path / "results",
    )
    [row] = run_harness(config)
    assert row["status"] == "ok", row.get("reason")
    assert set(row["metrics"]) == {"accuracy", "macro_f1"}
    assert 0.0 <= row["metrics"]["accuracy"] <= 1.0 and row["eval_examples"] == 20
    assert row["params"] > 10_000_000 and row["train_seconds"] > 0
    assert not (tmp_path / "checkpoints").exists()
    assert not list((tmp_path / "cache").rglob("*.resume"))  # checkpoints go when it ends


def test_copa_is_scored_per_choice(data_dir):
    task = get_task("copa")
    model = SetFitBaseline.train(_config("copa"), _sample(task, data_dir, 8))
    assert model.texts(task.read("validation", data_dir)[0])[0].endswith(
        task.read("validation", data_dir)[0]["choice1"]
    )
    probs = model.predict_examples(task.read("validation", data_dir)[:6])
    assert probs.shape == (6, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert setfit_targets(task, {**task.read("validation", data_dir)[0], "label": 1}) == [0, 1]


def test_stsb_regression_head_predicts_scores_in_range(data_dir):
    task = get_task("stsb")
    model = SetFitBaseline.train(_config("stsb"), _sample(task, data_dir, 12))
    scores = model.predict_examples(task.read("validation", data_dir)[:10])
    assert scores.shape == (10, 1)
    assert scores.min() >= 0.0 and scores.max() <= 5.0 and scores.std() > 0
    metrics = task.evaluate(scores[:, 0].tolist(), task.read("validation", data_dir)[:10])
    assert set(metrics) == {"pearson", "spearman"}


def test_a_single_label_is_refused_before_training(data_dir):
    task = get_task("rte")
    same = [ex for ex in task.read("train", data_dir) if ex["label"] == 0][:4]
    with pytest.raises(RetriktError, match="at least two different labels"):
        SetFitBaseline.train(_config("rte"), same)


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_model(
    tmp_path, data_dir, monkeypatch
):
    """Hours-long SetFit units must survive a kill: the rerun continues from the last
    checkpoint, runs only the batches left, and ends where an unbroken run ends."""
    from sentence_transformers import SentenceTransformerTrainer

    task = get_task("rte")
    examples, probe = _sample(task, data_dir, 8), task.read("validation", data_dir)[:8]
    config = _config("rte", num_iterations=2)  # 8 texts x 2 x 2 = 32 pairs: 4 batches of 8
    unbroken = SetFitBaseline.train(config, examples).predict_examples(probe)

    real_step, steps = SentenceTransformerTrainer.training_step, []

    def step(self, *args, **kwargs):
        steps.append(1)
        if kill_at and len(steps) == kill_at:
            raise KeyboardInterrupt  # the kill, after the checkpoint of step 2
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "training_step", step)
    folder, kill_at = tmp_path / "resume", 3
    with pytest.raises(KeyboardInterrupt):
        SetFitBaseline.train(config, examples, folder, save_steps=2)
    assert (folder / "checkpoint-2").is_dir() and (folder / "seconds.json").is_file()

    steps.clear()
    kill_at = 0
    resumed = SetFitBaseline.train(config, examples, folder, save_steps=2)
    assert len(steps) == 2  # batches 3 and 4 only
    np.testing.assert_allclose(resumed.predict_examples(probe), unbroken, atol=1e-5)
    assert not folder.exists() and resumed.train_seconds > 0
