"""``build_store``: selection of generated examples, and a small end-to-end build."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from retrikt.cli import main
from retrikt.errors import RetriktError
from retrikt.generator.build import (
    BuildConfig,
    TaskData,
    build_store,
    select_entries,
    store_text,
)
from retrikt.generator.generation import read_generations
from retrikt.generator.templates import render_target
from retrikt.tasks import get_task

CB = get_task("cb")


class BagOfWords:
    """A deterministic stand-in for the student encoder: hashed word counts, unit length."""

    model_id, dim = "bag-of-words", 64

    def join(self, item):
        return item if isinstance(item, str) else " [SEP] ".join(p for p in item if p)

    def encode(self, inputs, **_):
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        for row, item in enumerate(inputs):
            for word in self.join(item).lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _record(i, premise, hypothesis, label, probs, valid=True):
    example = {"premise": premise, "hypothesis": hypothesis}
    text = render_target(CB, example) if valid else f" {premise}\nHypothesis: cut"
    return {
        "id": f"cb-L{label}-{i:06d}",
        "label": label,
        "sample_no": i,
        "text": text,
        "fields": example if valid else None,
        "soft_labels": probs if valid else None,
    }


def test_selection_drops_invalid_duplicate_and_copied_examples():
    train = [
        {"premise": "The cat slept on the warm mat.", "hypothesis": "A cat slept.", "label": 0}
    ]
    records = [
        _record(0, "Rain fell over the quiet harbour town.", "It rained.", 0, [0.7, 0.2, 0.1]),
        _record(1, "Nobody ever visited the old lighthouse.", "It was busy.", 1, [0.1, 0.8, 0.1]),
        _record(2, "Rain fell over the quiet harbour town.", "It rained.", 2, [0.7, 0.2, 0.1]),
        _record(3, "The cat slept on the warm mat.", "A cat slept.", 0, [0.9, 0.05, 0.05]),
        _record(4, "Half a premise and then the limit", "", 1, None, valid=False),
    ]
    config = BuildConfig(task="cb", data_dir=None, out="unused", rl="none")
    entries, vectors, stats = select_entries(
        config, TaskData(CB, train, []), records, BagOfWords(), "teacher", "gen"
    )
    assert [e.requested_label for e in entries] == [0, 1]
    assert stats == {
        "generated": 5,
        "valid": 4,
        "duplicates": 2,
        "kept": 2,
        "validity_rate": 0.8,
        "mean_accuracy_reward": round((0.7 + 0.8 + 0.1 + 0.9) / 5, 4),
    }
    first = entries[0]
    assert first.soft_labels == [0.7, 0.2, 0.1] and first.generator == "gen"
    assert first.rewards["accuracy"] == pytest.approx(0.7)
    assert first.rewards["validity"] == 1.0 and 0 < first.rewards["diversity"] <= 1
    assert first.text == "Rain fell over the quiet harbour town. [SEP] It rained."
    assert vectors.shape == (2, 64)
    assert np.allclose(vectors[0], BagOfWords().encode([first.text])[0])


def test_copa_entries_are_keyed_by_premise_and_question():
    copa = get_task("copa")
    example = {"premise": "The man fell.", "question": "cause", "choice1": "a", "choice2": "b"}
    assert store_text(copa, example, BagOfWords()) == "The man fell. because"


def test_config_rejects_rl_without_a_soft_prompt_and_unknown_methods():
    with pytest.raises(RetriktError, match="prompt-steps"):
        BuildConfig(task="cb", data_dir=None, out="x", rl="ppo", prompt_steps=0)
    with pytest.raises(RetriktError, match="--rl"):
        BuildConfig(task="cb", data_dir=None, out="x", rl="dpo")


def test_help_explains_the_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build-store", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for stage in ("teacher prompt", "generator prompt", "RL", "generation", "selection"):
        assert stage in text


@pytest.mark.slow
def test_end_to_end_build_that_keeps_nothing_fails_with_the_reason_then_resumes(
    data_dir, tmp_path, caplog
):
    """Every stage for real on a tiny budget. At 6 new tokens no output can be a whole example,
    so the build must fail saying so (issue 18: it used to write a 0-entry store, exit 0);
    a rerun with more samples reuses the prompts and the outputs already generated."""
    config = BuildConfig(
        task="cb",
        data_dir=str(data_dir),
        out=str(tmp_path / "store"),
        samples_per_label=1,
        rl="none",
        prompt_steps=1,
        teacher_steps=1,
        batch_size=3,
        max_new_tokens=6,
        train_limit=6,
        teacher_eval_limit=3,
        num_virtual_tokens=4,
        cache_dir=str(tmp_path / "cache"),
    )
    empty = r"cb: 0 of {} outputs parsed: .*--max-new-tokens 6.*no store was written"
    with pytest.raises(RetriktError, match=empty.format(3)):
        build_store(config)
    assert not (tmp_path / "store").exists()

    config.samples_per_label = 2
    with (
        caplog.at_level(logging.INFO, logger="retrikt.generator"),
        pytest.raises(RetriktError, match=empty.format(6)),
    ):
        build_store(config)
    assert sum("reusing" in r.getMessage() for r in caplog.records) == 2  # both prompts
    assert any("3 of 6 jobs already written" in r.getMessage() for r in caplog.records)
    (work,) = (tmp_path / "cache" / "generations").iterdir()
    assert len(read_generations(work)) == 6


def test_a_stage_removes_staging_folders_of_dead_runs_and_keeps_live_ones(tmp_path):
    from retrikt.generator.build import _cached_stage

    folder = tmp_path / "teacher" / "cb-0123"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = folder.with_name(f"{folder.name}.tmp{dead.pid}")
    live = folder.with_name(f"{folder.name}.tmp{os.getppid()}")  # pytest's parent is alive
    for staging in (abandoned, live):
        staging.mkdir(parents=True)
    made = _cached_stage(folder, 0, lambda staging: (staging / "prompt.txt").write_text("x"))
    assert (made / "prompt.txt").read_text() == "x"
    assert not abandoned.exists() and live.exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, live.name])
