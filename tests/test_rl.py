"""``refine``: none / ppo / grpo on the toy policy, through the project's one sampler."""

from __future__ import annotations

import json

import pytest
import torch
from test_ppo import (
    LABELS,
    PROMPTS,
    TOY_SAMPLING,
    one_thread,  # noqa: F401  (a fixture, used by name)
    toy_base,
    toy_policy,
    toy_reward,
    toy_tokenizer,
)

from retrikt.errors import RetriktError
from retrikt.generator.ppo import RLConfig
from retrikt.generator.rl import refine
from retrikt.tasks import get_task

RTE = get_task("rte")


def prompt_of(policy) -> torch.Tensor:
    return policy.prompt_encoder["default"].embedding.weight.detach().clone()


def reload_prompt(folder) -> torch.Tensor:
    from peft import PeftModel

    return prompt_of(PeftModel.from_pretrained(toy_base(seed=1), folder))


def test_none_saves_the_prompt_unchanged(tmp_path):
    policy = toy_policy()
    before = prompt_of(policy)
    out = refine("none", policy, toy_tokenizer(), RTE, PROMPTS, LABELS, toy_reward,
                 RLConfig(), TOY_SAMPLING, tmp_path / "adapter")  # fmt: skip
    assert torch.equal(reload_prompt(out), before)
    assert json.loads((out / "rl.json").read_text())["method"] == "none"
    assert not (out / "rl_log.jsonl").exists()


@pytest.mark.usefixtures("one_thread")
def test_ppo_refines_the_prompt_and_logs_every_step(tmp_path):
    policy = toy_policy()
    before = prompt_of(policy)
    config = RLConfig(steps=4, batch_size=8, mini_batch_size=8, lr=0.03)
    out = refine("ppo", policy, toy_tokenizer(), RTE, PROMPTS, LABELS, toy_reward, config,
                 TOY_SAMPLING, tmp_path / "adapter")  # fmt: skip
    reloaded = reload_prompt(out)
    assert torch.equal(reloaded, prompt_of(policy))
    assert not torch.allclose(reloaded, before)
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert json.loads((out / "ppo_config.json").read_text())["steps"] == 4
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert all(
        {"reward", "reward/target", "kl", "policy_loss", "value_loss"} <= set(r) for r in rows
    )


def test_unknown_method_is_a_user_error(tmp_path):
    with pytest.raises(RetriktError, match="unknown RL method 'dpo'"):
        refine("dpo", toy_policy(), toy_tokenizer(), RTE, PROMPTS, LABELS, toy_reward,
               RLConfig(), TOY_SAMPLING, tmp_path)  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_grpo_refines_the_prompt_with_groups(tmp_path):
    policy = toy_policy()
    before = prompt_of(policy)
    config = RLConfig(steps=2, batch_size=8, mini_batch_size=8, num_generations=4, lr=0.03)
    out = refine("grpo", policy, toy_tokenizer(), RTE, PROMPTS, LABELS, toy_reward, config,
                 TOY_SAMPLING, tmp_path / "adapter")  # fmt: skip
    assert not torch.allclose(reload_prompt(out), before)
    saved = json.loads((out / "rl.json").read_text())
    assert saved["method"] == "grpo" and saved["config"]["advantage"] == "group"
    rows = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1] and all("kl_loss" in r for r in rows)
