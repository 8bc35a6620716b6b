"""PPO on a toy reward whose optimum is known, with a tiny randomly initialised causal LM.

The toy policy is a 2-layer Llama (vocabulary of 24 words, no download) under PEFT prompt
tuning; the reward is the fraction of generated words equal to ``TARGET`` (optimum 1.0,
about 0.08 for the untrained prompt). Runs are seeded and single-threaded, so they are
deterministic; together they take well under a minute on one CPU core.
"""

from __future__ import annotations

import pytest
import torch

from retrikt.generator.ppo import PPOTrainer, RLConfig, gae, group_advantages, policy_losses
from retrikt.generator.sampler import SamplingConfig
from retrikt.generator.templates import END

TARGET = "w5"
WORDS = [f"w{i}" for i in range(21)]
PROMPTS = ["w1 w2", "w3", "w4 w6 w7", "w8 w9"]
LABELS = [0, 1, 0, 1]


@pytest.fixture
def one_thread():
    """Tiny models run much faster on one thread (and do not fight parallel test jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def toy_base(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.2,  # logits of order 1, so a prompt can steer the output
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def toy_policy(seed: int = 0):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=8,
        prompt_tuning_init=PromptTuningInit.RANDOM,
    )
    return get_peft_model(toy_base(seed), config)


def toy_reward(completions: list[str], labels: list) -> list[dict[str, float]]:
    scores = []
    for text in completions:
        words = [w for w in text.split() if w != END]  # the sampler marks a finished text
        share = sum(w == TARGET for w in words) / len(words) if words else 0.0
        scores.append({"total": share, "target": share})
    return scores


#: The full distribution (temperature 1, no nucleus), 8 words per completion.
TOY_SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=1.0)


def toy_config(**overrides) -> RLConfig:
    settings = dict(steps=40, batch_size=16, mini_batch_size=8, lr=0.03)
    return RLConfig(**{**settings, **overrides})


def toy_trainer(config: RLConfig, seed: int = 0) -> PPOTrainer:
    return PPOTrainer(toy_policy(seed), toy_tokenizer(), toy_reward, config, TOY_SAMPLING)


def test_policy_loss_is_clipped_and_dual_clipped():
    ratio = torch.tensor([1.0, 1.5, 0.5, 1e7, 1e7])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    losses = policy_losses(ratio, adv, clip=0.2, dual_clip=3.0)
    # as is; clipped at 1 + clip; clipped at 1 - clip; dual clip caps -A * ratio at 3|A|;
    # a positive advantage keeps the clipped ratio
    assert losses.tolist() == pytest.approx([-1.0, -1.2, 0.8, 3.0, -2.4])
    ratio = torch.tensor([1e7], requires_grad=True)
    policy_losses(ratio, torch.tensor([-1.0]), 0.2, 3.0).sum().backward()
    assert ratio.grad.item() == 0.0


def test_gae_matches_hand_computation():
    # gamma = lam = 1: advantages are Monte Carlo returns minus values.
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.full((1, 3), 0.5), torch.ones(1, 3), 1, 1)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.5]]))
    assert torch.allclose(ret, torch.ones(1, 3))
    # The last position is past the end: its reward and value are ignored.
    adv, ret = gae(
        torch.tensor([[0.0, 1.0, 5.0]]),
        torch.tensor([[0.2, 0.4, 9.0]]),
        torch.tensor([[1.0, 1.0, 0.0]]),
        gamma=0.9,
        lam=0.8,
    )
    # t=1: 1 - 0.4 = 0.6; t=0: (0.9 * 0.4 - 0.2) + 0.9 * 0.8 * 0.6 = 0.592.
    assert torch.allclose(adv, torch.tensor([[0.592, 0.6, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.792, 1.0, 0.0]]))


@pytest.mark.usefixtures("one_thread")
def test_ppo_raises_toy_reward_and_keeps_kl_bounded():
    # The toy's budget of steps was set for plain PPO; the dual clip is tested on its own.
    trainer = toy_trainer(toy_config(kl_coef=0.05, dual_clip=1e9))
    history = trainer.train(PROMPTS, LABELS)
    for key in ("reward", "reward/target", "kl", "policy_loss", "value_loss", "clipfrac"):
        assert all(key in row for row in history)
    start = sum(row["reward"] for row in history[:5]) / 5
    end = sum(row["reward"] for row in history[-5:]) / 5
    assert start < 0.2 and end > 0.7, (start, end)
    # A policy that wrote only TARGET for all 8 tokens would be ~20 nats from the reference
    # (p_ref(TARGET) ~ 0.08); the penalised policy reaches the optimum far closer to it.
    assert max(row["kl"] for row in history) < 12.0
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # reference = starting prompt


@pytest.mark.usefixtures("one_thread")
def test_kl_penalty_holds_the_policy_near_the_reference():
    def final_kl(kl_coef: float) -> float:
        trainer = toy_trainer(toy_config(steps=25, kl_coef=kl_coef))
        history = trainer.train(PROMPTS, LABELS)
        return sum(row["kl"] for row in history[-5:]) / 5

    assert final_kl(1.0) < 0.5 * final_kl(0.0)


def test_only_prompt_tuning_policies_are_accepted():
    from peft import LoraConfig, TaskType, get_peft_model

    lora = get_peft_model(
        toy_base(), LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=["q_proj"])
    )
    with pytest.raises(ValueError, match="prompt-tuning"):
        PPOTrainer(lora, toy_tokenizer(), toy_reward, toy_config(), TOY_SAMPLING)


def test_group_advantages_are_centred_and_scaled_per_group():
    adv = group_advantages(torch.tensor([1.0, 3.0, 10.0, 10.0]), group=2)
    assert torch.allclose(adv[:2], torch.tensor([-1.0, 1.0]) / (2**0.5 + 1e-4))
    assert torch.equal(adv[2:], torch.zeros(2))  # a group that agrees teaches nothing


@pytest.mark.usefixtures("one_thread")
def test_grpo_raises_toy_reward_without_a_value_head():
    config = toy_config(advantage="group", num_generations=4, steps=30, kl_coef=0.02)
    history = toy_trainer(config).train(PROMPTS, LABELS)
    assert all("kl_loss" in row and "value_loss" not in row for row in history)
    start = sum(row["reward"] for row in history[:5]) / 5
    end = sum(row["reward"] for row in history[-5:]) / 5
    assert start < 0.2 and end > 0.5, (start, end)


def test_grpo_batch_must_hold_whole_groups():
    from retrikt.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of num_generations"):
        toy_config(advantage="group", batch_size=6, num_generations=4)
