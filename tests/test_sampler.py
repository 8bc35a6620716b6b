"""The seams of the one soft-prompt sampler, on the packaged SmolLM2 with a real adapter.

These would have caught the transformers 5.24 / peft 0.21 break, where a cached soft-prompted
``generate`` wrote garbage: greedy sampling with the KV cache must give the same tokens as a
full recompute at every step, and PPO's recomputed log-probs must equal the sampler's own.
"""

from __future__ import annotations

import json

import pytest
import torch

from retrikt.generator.lm import load_base
from retrikt.generator.ppo import PPOTrainer, RLConfig
from retrikt.generator.sampler import (
    Sampler,
    SamplingConfig,
    greedy_config,
    greedy_without_cache,
    sampling_logprobs,
    shared_head_layout,
    split_policy,
)
from retrikt.generator.templates import END, generation_prompt
from retrikt.tasks import get_task

CB = get_task("cb")
NEW_TOKENS = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the same numbers, and no slowdown when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy():
    """SmolLM2-135M in fp32 with an 8-token soft prompt drawn from its vocabulary."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    base, tokenizer = load_base("smollm2-135m", dtype=torch.float32)
    torch.manual_seed(0)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=8,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    return get_peft_model(base, config).eval(), tokenizer


def test_cached_soft_prompted_generation_equals_a_full_recompute(policy):
    model, tokenizer = policy
    # Two prompts of different lengths, so one row is left-padded behind the virtual tokens.
    prompts = [generation_prompt(CB, 0), "Write one short sentence about the sea:"]
    config = greedy_config(NEW_TOKENS)  # no early stop: compare every step
    cached = Sampler(model, tokenizer, config).sample(prompts, seeds=[1, 2])
    reference = greedy_without_cache(model, tokenizer, prompts, NEW_TOKENS)
    assert torch.equal(cached.completion_ids, reference), tokenizer.batch_decode(
        cached.completion_ids
    )
    assert cached.lengths == [NEW_TOKENS, NEW_TOKENS]


#: Prompts that share a long head (an instruction and a demo) and differ after it, in length too.
HEADED = [
    "Say why the answer holds.\n\nSentence: The cat sat.\nAnswer: acceptable\nWhy: it has a "
    f"subject and a verb.\n{END}\n\nSentence: {tail}\nAnswer: acceptable\nWhy:"
    for tail in ("Dogs bark.", "The old man who lived by the sea walked home slowly.", "Go.")
]


def test_a_shared_head_is_laid_out_once_and_pads_follow_it(policy):
    _, tokenizer = policy
    ids, mask, head = shared_head_layout(tokenizer, HEADED, pad_id=0)
    rows = tokenizer(HEADED).input_ids
    common = next(i for i, t in enumerate(zip(*rows, strict=False)) if len(set(t)) > 1)
    assert head == common > 20
    for i, row in enumerate(rows):
        assert ids[i][mask[i].bool()].tolist() == row  # every token kept, in order
        assert mask[i, :head].all() and mask[i, -(len(row) - head) :].all()
        assert mask[i].sum() == len(row)
    # Prompts with nothing in common are plain left padding.
    other = ["Dogs bark.", "A much longer prompt about the sea."]
    ids, mask, head = shared_head_layout(tokenizer, other, pad_id=tokenizer.pad_token_id)
    enc = tokenizer(other, return_tensors="pt", padding=True, padding_side="left")
    assert head == 0
    assert torch.equal(ids, enc.input_ids) and torch.equal(mask, enc.attention_mask)


@pytest.mark.parametrize("soft_prompt", [True, False], ids=["soft-prompted", "bare"])
def test_a_cached_shared_head_equals_a_full_recompute(policy, soft_prompt):
    """The head's KV cache, computed on one row and repeated, with each row padded after it,
    gives the tokens of a left-padded recompute of the whole sequence at every step."""
    model = policy[0] if soft_prompt else split_policy(policy[0])[0]
    tokenizer = policy[1]
    cached = Sampler(model, tokenizer, greedy_config(NEW_TOKENS)).sample(HEADED, [1, 2, 3])
    reference = greedy_without_cache(model, tokenizer, HEADED, NEW_TOKENS)
    assert torch.equal(cached.completion_ids, reference), tokenizer.batch_decode(
        cached.completion_ids
    )


def test_the_vocabulary_projection_gets_a_contiguous_input(policy):
    """``logits_to_keep`` slices the hidden states; handed on as a strided view, torch's
    ``F.linear`` copies the whole weight for every row (140x slower, see lm.py)."""
    base, _ = split_policy(policy[0])
    seen = []
    hook = base.get_output_embeddings().register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous())
    )
    try:
        with torch.no_grad():
            base(input_ids=torch.ones((2, 5), dtype=torch.long), logits_to_keep=1)
    finally:
        hook.remove()
    assert seen == [True]


def test_a_bare_model_samples_through_the_same_path(policy):
    model, tokenizer = policy
    base, _ = split_policy(model)
    prompts = ["The capital of France is"]
    config = SamplingConfig(max_new_tokens=4, temperature=1e-3, top_p=1.0)
    out = Sampler(base, tokenizer, config).sample(prompts, [0])
    enc = tokenizer(prompts, return_tensors="pt")
    with torch.no_grad():
        expected = base.generate(**enc, do_sample=False, max_new_tokens=4)
    expected = expected[:, enc.input_ids.shape[1] :]
    assert torch.equal(out.completion_ids[:, : expected.shape[1]], expected)


def test_ppo_recomputes_the_samplers_log_probs_ratio_one(policy):
    model, tokenizer = policy
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.9)
    config = RLConfig(steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1)

    def reward(texts, labels):
        return [{"total": 0.0} for _ in texts]

    trainer = PPOTrainer(model, tokenizer, reward, config, sampling)
    prompts = [generation_prompt(CB, label) for label in (0, 1, 2, 0)]
    rollout, stats = trainer.rollout(prompts, [0, 1, 2, 0])
    assert rollout.mask.sum() > 4  # some tokens were sampled
    assert stats["sampler_logprob_gap"] < 1e-3
    with torch.no_grad():
        again, _, _ = trainer.score(
            trainer.prompt,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completions,
            rollout.mask.long(),
        )
    ratio = torch.exp(again - rollout.logprobs)[rollout.mask.bool()]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-5)  # reference = starting prompt


def test_sampling_logprobs_are_temperature_then_nucleus():
    logits = torch.tensor([[2.0, 1.0, 0.0, -3.0]])
    config = SamplingConfig(temperature=0.5, top_p=0.9)
    logp = sampling_logprobs(logits, config)
    probs = torch.softmax(logits / 0.5, -1)[0]
    kept = probs[:2] / probs[:2].sum()  # the two most likely hold >= 0.9 of the mass
    assert torch.allclose(logp[0, :2].exp(), kept, atol=1e-6)
    assert torch.isinf(logp[0, 2:]).all()


def test_rl_samples_with_the_settings_the_store_is_written_with(policy, tmp_path):
    """build-store hands its one SamplingConfig to RL: rollouts stop at ``###`` and obey it."""
    from retrikt.generator.build import BuildConfig
    from retrikt.generator.rl import refine

    model, tokenizer = policy
    config = BuildConfig(task="cb", out="unused", rl="ppo")
    config.sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.8, seed=0)
    seen: list[str] = []

    def reward(texts, labels):
        seen.extend(texts)
        return [{"total": float(text.endswith(END))} for text in texts]

    rl = RLConfig(steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1)
    out = refine("ppo", model, tokenizer, CB, [generation_prompt(CB, 0)] * 2, [0, 0], reward,
                 rl, config.sampling, tmp_path / "rl")  # fmt: skip
    saved = json.loads((out / "rl.json").read_text())["sampling"]
    assert saved == config.sampling.to_dict()
    assert len(seen) == 2
    stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END)}
    trainer = PPOTrainer(model, tokenizer, reward, rl, config.sampling)
    assert trainer.sampler.config is config.sampling
    assert set(trainer.sampler.stops) == stops
