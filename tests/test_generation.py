"""Sampling: per-job seeds, checkpointing, resume after a kill, shards, soft-prompted generation.

Most tests use a tiny random Llama with SmolLM2's real tokenizer, so they exercise the real
``generate`` path in seconds; the last one tunes a real soft prompt on the packaged model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_helpers import tiny_llama

from retrikt.generator.generation import (
    job_seed,
    plan_jobs,
    read_generations,
    run_generation,
    shard_info,
)
from retrikt.generator.sampler import RowSeededSampler, Sampler, SamplingConfig
from retrikt.generator.templates import generation_prompt, label_options
from retrikt.tasks import get_task

CB = get_task("cb")
CONFIG = SamplingConfig(max_new_tokens=6, batch_size=3, seed=7, temperature=1.0)


@pytest.fixture(scope="module")
def tiny_lm():
    model, tokenizer = tiny_llama(max_positions=256)
    return Sampler(model, tokenizer, CONFIG)


def _jobs(samples: int = 4):
    # One prompt for every label keeps rows unpadded, so outputs can be compared exactly.
    return plan_jobs("cb", label_options(CB), samples, lambda label: generation_prompt(CB, 0))


def test_plan_is_sample_major_with_stable_unique_ids():
    jobs = _jobs(3)
    assert [j.id for j in jobs[:3]] == ["cb-L0-000000", "cb-L1-000000", "cb-L2-000000"]
    assert len({j.id for j in jobs}) == 9
    assert [j.id for j in _jobs(5)[:9]] == [j.id for j in jobs]  # more samples extend the plan
    assert job_seed(0, "cb-L0-000000") == 9106550133886485040  # the same in every process
    assert job_seed(0, "cb-L0-000000") != job_seed(1, "cb-L0-000000")


def test_gumbel_sampler_draws_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = 4000
    sampler = RowSeededSampler(range(rows))
    picks = sampler(None, logits.repeat(rows, 1)).argmax(dim=1)
    freq = np.bincount(picks.numpy(), minlength=4) / rows
    assert np.abs(freq - torch.softmax(logits, 0).numpy()).max() < 0.03


def test_a_rows_noise_depends_only_on_its_seed():
    scores = torch.zeros(2, 50)
    together = RowSeededSampler([11, 12])(None, scores)
    alone = RowSeededSampler([12])(None, scores[:1])
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])
    masked = RowSeededSampler([11])(None, torch.tensor([[0.0, -float("inf")]]))
    assert masked[0, 1] == -float("inf")  # top-p removals stay impossible


def test_a_jobs_output_does_not_depend_on_its_batch(tiny_lm):
    prompt = generation_prompt(CB, 0)
    batch = tiny_lm.sample([prompt] * 3, [1, 2, 3])
    alone = tiny_lm.sample([prompt], [3])
    assert batch.texts[2] == alone.texts[0]
    assert torch.allclose(batch.logprobs[2], alone.logprobs[0], atol=1e-5)
    assert len(set(batch.texts)) == 3
    assert batch.lengths == [CONFIG.max_new_tokens] * 3


class Killed(Exception):
    pass


def test_resume_after_a_kill_loses_and_duplicates_nothing(tiny_lm, tmp_path):
    jobs = _jobs(4)  # 12 jobs, 4 batches of 3
    reference = tmp_path / "reference"
    run_generation(tiny_lm, jobs, reference)
    expected = {r["id"]: r["text"] for r in read_generations(reference)}
    assert len(expected) == 12

    work = tmp_path / "killed"
    calls = []

    def kill_on_third_batch(records):
        calls.append(len(records))
        if len(calls) == 3:
            raise Killed

    with pytest.raises(Killed):
        run_generation(tiny_lm, jobs, work, annotate=kill_on_third_batch)
    shard = work / "generations.rank0.jsonl"
    with shard.open("a") as fh:  # a write torn by the kill
        fh.write('{"id": "cb-L2-000003", "te')
    assert len(read_generations(work)) == 6

    seen = []
    generated = run_generation(tiny_lm, jobs, work, annotate=lambda rs: seen.extend(rs))
    assert len(seen) == 6  # only the missing jobs were generated
    assert generated == sum(r["tokens"] for r in seen)
    lines = shard.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line) for line in lines)
    assert {r["id"]: r["text"] for r in read_generations(work)} == expected


def test_resuming_counts_only_the_given_jobs_records(tiny_lm, tmp_path, caplog):
    # Rationales write their two demonstrations and then every entry into one folder.
    jobs = _jobs(2)
    run_generation(tiny_lm, jobs[:2], tmp_path)
    with caplog.at_level("INFO", logger="retrikt.generator.generation"):
        run_generation(tiny_lm, jobs[4:], tmp_path)
        assert "resuming" not in caplog.text
        run_generation(tiny_lm, jobs[:4], tmp_path)
    assert "resuming: 2 of 4 jobs already written" in caplog.text


def test_shards_split_the_jobs_and_merge_into_the_same_set(tiny_lm, tmp_path):
    jobs = _jobs(3)
    for rank in (0, 1):
        run_generation(tiny_lm, jobs, tmp_path / "sharded", rank=rank, world=2)
    shards = sorted((tmp_path / "sharded").glob("*.jsonl"))
    assert [p.name for p in shards] == ["generations.rank0.jsonl", "generations.rank1.jsonl"]
    ids = [{json.loads(line)["id"] for line in p.read_text().splitlines()} for p in shards]
    assert not ids[0] & ids[1]
    merged = read_generations(tmp_path / "sharded")
    assert [r["id"] for r in merged] == [j.id for j in jobs]
    run_generation(tiny_lm, jobs, tmp_path / "single")
    assert {r["id"]: r["text"] for r in merged} == {
        r["id"]: r["text"] for r in read_generations(tmp_path / "single")
    }


def test_shard_info_reads_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard_info() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert shard_info() == (1, 2)


def test_soft_prompt_trains_on_targets_and_generates(tmp_path):
    from retrikt.generator.lm import load_policy
    from retrikt.generator.prompt_tuning import SoftPromptConfig, train_generator_prompt

    examples = [
        {"premise": "The dog barked at night.", "hypothesis": "A dog made noise.", "label": 0},
        {"premise": "She never left the town.", "hypothesis": "She moved away.", "label": 1},
        {"premise": "He may come tomorrow.", "hypothesis": "He will come.", "label": 2},
    ]
    config = SoftPromptConfig(steps=4, batch_size=3, num_virtual_tokens=4)
    out = train_generator_prompt("smollm2-135m", CB, examples, config, tmp_path / "prompt")
    log = json.loads((out / "training.json").read_text())
    assert log["losses"][-1] < log["losses"][0]  # full batch each step: the loss must fall
    assert (out / "adapter_config.json").is_file()
    policy, tokenizer = load_policy("smollm2-135m", out)
    assert type(policy).__name__.startswith("Peft")
    samples = Sampler(policy, tokenizer, CONFIG).sample([generation_prompt(CB, 1)] * 2, [1, 2])
    assert all(0 < n <= CONFIG.max_new_tokens for n in samples.lengths)
