"""``build_store``: selection of generated examples, and a small end-to-end build."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace

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
from retrikt.generator.ppo import RLConfig
from retrikt.generator.prompt_tuning import SoftPromptConfig
from retrikt.generator.sampler import SamplingConfig
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
        BuildConfig(task="cb", out="x", rl="ppo", generator_prompt=SoftPromptConfig(steps=0))
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
def test_end_to_end_small_build_fails_empty_then_resumes(data_dir, tmp_path, caplog):
    config = BuildConfig(
        task="cb",
        data_dir=str(data_dir),
        out=str(tmp_path / "store"),
        samples_per_label=1,
        rl="none",
        generator_prompt=SoftPromptConfig(steps=1, num_virtual_tokens=4),
        teacher_prompt=SoftPromptConfig(steps=1, num_virtual_tokens=4),
        # seeded draws at a set temperature and top-p, so the outputs below do not change
        # with build-store's default sampling
        sampling=SamplingConfig(batch_size=3, max_new_tokens=24, temperature=0.8, top_p=0.95),
        train_limit=6,
        teacher_eval_limit=3,
        cache_dir=str(tmp_path / "cache"),
    )
    # At 24 new tokens no CB output is a whole example: the build fails saying so instead
    # of writing a 0-entry store (issue 18), after caching the prompts and the generations.
    empty = r"cb: 0 of {} outputs parsed: .*cut at --max-new-tokens 24"
    with pytest.raises(RetriktError, match=empty.format(3)):
        build_store(config)
    assert not (tmp_path / "store").exists()

    config.samples_per_label = 2
    with (
        caplog.at_level(logging.INFO, logger="retrikt"),
        pytest.raises(RetriktError, match=empty.format(6)),
    ):
        build_store(config)
    assert sum("reusing" in r.getMessage() for r in caplog.records) == 2  # both prompts
    assert any("3 of 6 jobs already written" in r.getMessage() for r in caplog.records)
    (work,) = {path.parent for path in (tmp_path / "cache").rglob("*.jsonl")
               if path.parent.name.startswith("cb-") and read_generations(path.parent)}  # fmt: skip
    assert len(read_generations(work)) == 6

    # The RL branch: the cached prompts are reused and PPO refines the generator prompt with
    # rollouts sampled at the build's own settings (the store is again refused as empty).
    rl = replace(config, rl="ppo", rl_config=RLConfig(steps=1, batch_size=2, ppo_epochs=1))
    with pytest.raises(RetriktError, match=empty.format(6)):
        build_store(rl)
    (saved_path,) = (tmp_path / "cache").rglob("rl.json")
    assert saved_path.parent.parent.name == "rl"
    assert json.loads(saved_path.read_text())["sampling"] == config.sampling.to_dict()
    assert len((saved_path.parent / "rl_log.jsonl").read_text().splitlines()) == 1


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
    left = sorted(p.name for p in folder.parent.iterdir())
    assert left == sorted([".locks", folder.name, live.name])


def test_flags_reach_the_nested_configs():
    import argparse

    from retrikt.cli.build_store import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = ["build-store", "--task", "cb", "--out", "s", "--seed", "3", "--temperature", "0.7",
            "--top-p", "0.9", "--prompt-steps", "5", "--teacher-steps", "0", "--rl", "grpo",
            "--rl-steps", "2", "--rl-num-generations", "2"]  # fmt: skip
    config = config_from_args(parser.parse_args(argv))
    assert (config.sampling.temperature, config.sampling.top_p) == (0.7, 0.9)
    assert (config.generator_prompt.steps, config.teacher_prompt.steps) == (5, 0)
    assert (config.rl_config.steps, config.rl_config.num_generations) == (2, 2)
    assert {config.sampling.seed, config.rl_config.seed, config.teacher_prompt.seed} == {3}
    assert config.sampling.max_new_tokens == SamplingConfig().max_new_tokens == 144
    assert config.rl_config == RLConfig(steps=2, num_generations=2, seed=3)


@pytest.mark.slow
def test_a_real_tiny_build_writes_mostly_parsable_examples(data_dir, tmp_path):
    """CB, 4 samples per label, 144 new tokens at temperature 0.8, top-p 0.95: the sampler's
    output is real task text. Measured on this stack: 7 of 12 parsed with a 16-step prompt on
    a bf16 CPU (6 of 12 with 8 steps), 4 of 12 in fp32 on a CPU without bf16 (other numerics,
    other samples); a broken cached generation parses none, so a quarter separates the two."""
    from retrikt.store import KnowledgeStore

    config = BuildConfig(
        task="cb",
        data_dir=str(data_dir),
        out=str(tmp_path / "store"),
        samples_per_label=4,
        rl="none",
        generator_prompt=SoftPromptConfig(steps=16, num_virtual_tokens=8),
        teacher_prompt=SoftPromptConfig(steps=0),
        sampling=SamplingConfig(batch_size=12, max_new_tokens=144, temperature=0.8, top_p=0.95),
        train_limit=32,
        teacher_eval_limit=3,
        cache_dir=str(tmp_path / "cache"),
    )
    stats = KnowledgeStore.open(build_store(config)).manifest["generator"]["stats"]
    assert stats["generated"] == 12
    assert stats["validity_rate"] >= 0.25, stats
