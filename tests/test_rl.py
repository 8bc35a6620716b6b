"""``refine``: none / ppo on the toy policy, grpo (trl) on the real packaged SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch
from test_ppo import (
    LABELS,
    PROMPTS,
    one_thread,  # noqa: F401  (a fixture, used by name)
    toy_base,
    toy_policy,
    toy_reward,
    toy_tokenizer,
)

from retrikt.errors import RetriktError
from retrikt.generator.reward import RewardWeights
from retrikt.generator.rl import RLConfig, refine, trl_reward_functions
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
                 RLConfig(), tmp_path / "adapter")  # fmt: skip
    assert torch.equal(reload_prompt(out), before)
    assert json.loads((out / "rl.json").read_text())["method"] == "none"
    assert not (out / "rl_log.jsonl").exists()


@pytest.mark.usefixtures("one_thread")
def test_ppo_refines_the_prompt_and_logs_every_step(tmp_path):
    policy = toy_policy()
    before = prompt_of(policy)
    config = RLConfig(steps=4, batch_size=8, mini_batch_size=8, max_new_tokens=6, lr=0.03)
    out = refine("ppo", policy, toy_tokenizer(), RTE, PROMPTS, LABELS, toy_reward, config,
                 tmp_path / "adapter")  # fmt: skip
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
               RLConfig(), tmp_path)  # fmt: skip


class CountingReward:
    """Fixed term values per completion; counts how often the whole reward is computed."""

    weights = RewardWeights(accuracy=1.0, diversity=0.5, validity=0.25)

    def __init__(self):
        self.calls = 0

    def __call__(self, completions, labels):
        self.calls += 1
        scores = []
        for text, label in zip(completions, labels, strict=True):
            terms = {"accuracy": len(text) / 10, "diversity": float(label), "validity": 1.0}
            total = sum(w * terms[k] for k, w in self.weights.terms.items())
            scores.append({**terms, "total": total})
        return scores


def test_trl_reward_functions_split_the_terms_and_score_each_batch_once():
    reward = CountingReward()
    functions, weights = trl_reward_functions(reward)
    assert [f.__name__ for f in functions] == ["accuracy", "diversity", "validity"]
    assert weights == [1.0, 0.5, 0.25]
    batch = {"prompts": ["p", "q"], "completions": ["abcd", "ab"], "label": [1, 0]}
    values = [f(**batch, completion_ids=None, trainer_state=None) for f in functions]
    assert reward.calls == 1
    assert values == [[0.4, 0.2], [1.0, 0.0], [1.0, 1.0]]
    totals = [sum(w * v[i] for w, v in zip(weights, values, strict=True)) for i in range(2)]
    assert totals == pytest.approx([s["total"] for s in reward(batch["completions"], [1, 0])])


@pytest.mark.usefixtures("one_thread")
def test_grpo_trains_the_real_generator_prompt(tmp_path):
    from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrikt.generator.templates import generation_prompt
    from retrikt.models import GENERATOR, resolve_model

    path = resolve_model("smollm2-135m", GENERATOR).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=4,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(path), config)
    before = prompt_of(policy)
    reward = CountingReward()
    rl_config = RLConfig(
        steps=1, batch_size=4, num_generations=4, max_new_tokens=8, lr=0.01, kl_coef=0.05
    )
    out = refine("grpo", policy, tokenizer, RTE, [generation_prompt(RTE, 0)], [0], reward,
                 rl_config, tmp_path / "adapter")  # fmt: skip
    assert reward.calls == 1  # one step, one group of 4 completions, scored once
    assert not (out / "ref").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), out)
    assert torch.equal(prompt_of(reloaded), prompt_of(policy))
    assert not torch.allclose(prompt_of(policy), before)
    [row] = [json.loads(line) for line in (out / "rl_log.jsonl").read_text().splitlines()]
    for term in ("accuracy", "diversity", "validity"):
        assert f"rewards/{term}/mean" in row
