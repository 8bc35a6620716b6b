"""RL on the soft prompt of a frozen causal LM: PPO (the RetriKT paper's) and GRPO.

Why hand-written: trl 1.13 and later removed ``PPOTrainer``, and the last one (trl 1.12)
needs the reward to be a model, while RetriKT's reward is a Python function (teacher
accuracy + diversity + validity, :mod:`retrikt.generator.reward`). trl's ``GRPOTrainer``
samples through ``PeftModel.generate``, whose prompt-tuning glue breaks with some
transformers releases (see :mod:`retrikt.generator.sampler`); here both methods sample with
the project's one :class:`~retrikt.generator.sampler.Sampler`, at the same temperature,
top-p and stop tokens as the store is written with. The algorithm follows trl's former PPO
and the "N implementation details of RLHF" write-up, restricted to what prompt tuning needs:

* the policy is a PEFT prompt-tuning ``PeftModel``: the base LM is frozen and only the
  virtual-token embedding trains (plus, for PPO, a small value head fed detached features,
  so the value loss never moves the prompt);
* the reference policy is the same base with a frozen copy of the starting prompt (the
  supervised one), so it costs no second model;
* log-probs are those of the sampling distribution (temperature, then top-p), recomputed by
  one full forward pass; before the first update they equal the sampler's own (ratio 1);
* ``advantage="gae"`` (PPO): the score at the last token and a per-token KL penalty
  ``-kl_coef * (log pi - log pi_ref)`` make per-token rewards; GAE (gamma, lambda) gives the
  advantages; the loss is the clipped surrogate plus a clipped value loss;
* ``advantage="group"`` (GRPO): ``num_generations`` completions per prompt; a completion's
  advantage is its score minus its group's mean, over the group's std, on every token; the
  loss is the clipped surrogate plus ``kl_coef`` times the k3 KL estimate; no value head.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from retrikt.generator.configs import RLConfig
from retrikt.generator.sampler import (
    Sampler,
    SamplingConfig,
    positions,
    prompt_inputs,
    sampling_logprobs,
    split_policy,
)

logger = logging.getLogger(__name__)

#: ``reward_fn(completions, labels) -> [{"total": r, <term>: value, ...}, ...]``
RewardFn = Callable[[list[str], list[Any]], list[dict[str, float]]]

#: A recomputed token just outside the nucleus (float rounding at its edge) is very
#: unlikely, not impossible: log-probs are floored here so ratios and KL stay finite.
MIN_LOGPROB = -30.0


class ValueHead(nn.Module):
    """Predicts the return from the last hidden state at each position."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


@dataclass
class Rollout:
    """One batch of sampled completions with everything an update needs, all (B, T)."""

    prompt_ids: torch.Tensor  # (B, P), the sampler's layout (pads after the shared head)
    prompt_mask: torch.Tensor  # (B, P)
    completions: torch.Tensor
    mask: torch.Tensor  # 1 on completion tokens up to and including the stop token
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_losses(
    ratio: torch.Tensor, advantages: torch.Tensor, clip: float, dual_clip: float
) -> torch.Tensor:
    """Per-token PPO clipped surrogate, with the dual clip on negative advantages.

    Plain PPO leaves ``-A * ratio`` unbounded when A < 0: a token the old prompt found
    unlikely (ratio e^15 after a few epochs) gave losses of 1e7 here on RTE. Dual-clip PPO
    caps it at ``-dual_clip * A``; the gradient of such tokens is then zero, as for clipped
    positive ones.
    """
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    capped = torch.min(losses, -dual_clip * advantages)
    return torch.where(advantages < 0, capped, losses)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens; returns (advantages, returns).

    Positions after the end are masked to zero, so the value after the last token is 0.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def group_advantages(scores: torch.Tensor, group: int) -> torch.Tensor:
    """GRPO: each score minus its group's mean, over the group's std; ``scores`` is (B,)."""
    grouped = scores.view(-1, group)
    centred = grouped - grouped.mean(-1, keepdim=True)
    return (centred / (grouped.std(-1, keepdim=True) + 1e-4)).view(-1)


class PPOTrainer:
    """PPO or GRPO on the soft prompt of a PEFT prompt-tuning policy (module docstring)."""

    def __init__(
        self,
        policy: Any,
        tokenizer: Any,
        reward_fn: RewardFn,
        config: RLConfig,
        sampling: SamplingConfig | None = None,
    ):
        base, prompt = split_policy(policy)
        if prompt is None:
            raise ValueError("PPOTrainer needs a prompt-tuning PeftModel")
        self.policy, self.base, self.prompt = policy, base, prompt
        self.tokenizer, self.reward_fn, self.config = tokenizer, reward_fn, config
        self.sampling = sampling or SamplingConfig()
        self.sampler = Sampler(policy, tokenizer, self.sampling)
        torch.manual_seed(config.seed)
        self.base.eval()  # no dropout: ratios must compare the same function
        self.prompt.requires_grad_(True)
        self.ref_prompt = self.prompt.detach().clone()
        self.value_head = ValueHead(self.base.config.hidden_size, config.value_hidden)
        groups = [{"params": [self.prompt], "lr": config.lr}]
        if config.advantage == "gae":
            groups.append({"params": list(self.value_head.parameters()), "lr": config.value_lr})
        self.optimizer = torch.optim.Adam(groups)
        self._rng = random.Random(config.seed)

    # ----------------------------------------------------------------- model
    def score(
        self,
        prompt: torch.Tensor,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completions: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs and entropy of the completion tokens under ``prompt``, and the values.

        One forward pass over ``[virtual tokens][prompt][completion]`` with position ids from
        the attention mask, as the sampler's cached generation saw them.
        """
        input_ids = torch.cat([prompt_ids, completions], dim=1)
        attention = torch.cat([prompt_mask, mask], dim=1)
        embeds, full_mask = prompt_inputs(self.base, prompt, input_ids, attention)
        length = completions.shape[1]
        out = self.base(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions(full_mask),
            output_hidden_states=self.config.advantage == "gae",
            logits_to_keep=length + 1,  # the vocabulary projection is costly
        )
        logp_all = sampling_logprobs(out.logits[:, :-1], self.sampling)
        logprobs = logp_all.gather(-1, completions.unsqueeze(-1)).squeeze(-1)
        logprobs = torch.where(mask.bool(), logprobs.clamp(min=MIN_LOGPROB), 0.0)
        entropy = torch.special.entr(logp_all.exp()).sum(-1)
        if self.config.advantage == "gae":
            hidden = out.hidden_states[-1][:, -length - 1 : -1].detach().float()
            values = self.value_head(hidden)
        else:
            values = torch.zeros_like(logprobs)
        return logprobs, entropy, values

    # -------------------------------------------------------------- rollouts
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], labels: Sequence[Any]):
        """Sample one completion per prompt with the shared sampler, score and reward it."""
        cfg = self.config
        seeds = [self._rng.getrandbits(63) for _ in prompts]
        samples = self.sampler.sample(prompts, seeds)
        scores = self.reward_fn(samples.texts, list(labels))
        mask = samples.completion_mask.float()
        inputs = (samples.prompt_ids, samples.prompt_mask, samples.completion_ids, mask.long())
        logprobs, _, values = self.score(self.prompt, *inputs)
        ref_logprobs, _, _ = self.score(self.ref_prompt, *inputs)
        kl = (logprobs - ref_logprobs) * mask
        total = torch.tensor([s["total"] for s in scores], dtype=torch.float)
        if cfg.advantage == "gae":
            rewards = -cfg.kl_coef * kl
            last = (mask.sum(-1).long() - 1).clamp(min=0)
            rewards[torch.arange(len(last)), last] += total
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask)
        else:
            advantages = group_advantages(total, cfg.num_generations)[:, None] * mask
            returns = torch.zeros_like(mask)
        rollout = Rollout(
            samples.prompt_ids,
            samples.prompt_mask,
            samples.completion_ids,
            mask,
            logprobs,
            ref_logprobs,
            values,
            advantages,
            returns,
        )
        stats = {
            "kl": kl.sum(-1).mean().item(),
            "completion_tokens": mask.sum(-1).mean().item(),
            "sampler_logprob_gap": (samples.logprobs - logprobs).abs().max().item(),
        }
        for key in scores[0] if scores else ():
            name = "reward" if key == "total" else f"reward/{key}"
            stats[name] = float(np.mean([s[key] for s in scores]))
        return rollout, stats

    # ------------------------------------------------------------ updates
    def _update(self, r: Rollout, idx: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        mask = r.mask[idx]
        logprobs, entropy, values = self.score(
            self.prompt, r.prompt_ids[idx], r.prompt_mask[idx], r.completions[idx], mask.long()
        )
        ratio = torch.exp(logprobs - r.logprobs[idx])
        adv = r.advantages[idx]
        policy_loss = masked_mean(policy_losses(ratio, adv, cfg.clip, cfg.dual_clip), mask)
        if cfg.advantage == "gae":
            old_values, returns = r.values[idx], r.returns[idx]
            clipped = old_values + (values - old_values).clamp(-cfg.clip_value, cfg.clip_value)
            extra = 0.5 * masked_mean(
                torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask
            )
        else:  # k3 estimate of KL(pi || pi_ref), always >= 0
            log_ratio_ref = r.ref_logprobs[idx] - logprobs
            extra = cfg.kl_coef * masked_mean(torch.exp(log_ratio_ref) - log_ratio_ref - 1, mask)
        self.optimizer.zero_grad()
        (policy_loss + extra).backward()
        torch.nn.utils.clip_grad_norm_([self.prompt], cfg.max_grad_norm)
        torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            return {
                "policy_loss": policy_loss.item(),
                "value_loss" if cfg.advantage == "gae" else "kl_loss": extra.item(),
                "clipfrac": masked_mean(((ratio - 1).abs() > cfg.clip).float(), mask).item(),
                "approx_kl": masked_mean(0.5 * (logprobs - r.logprobs[idx]) ** 2, mask).item(),
                "entropy": masked_mean(entropy, mask).item(),
            }

    def step(self, prompts: Sequence[str], labels: Sequence[Any]) -> dict[str, float]:
        """One step: sample a completion per prompt, score it, and update the prompt.

        Returns the mean reward and each reward term (``reward/<term>``), the KL to the
        reference prompt (summed over a completion, averaged over the batch), the largest
        gap between the sampler's and the recomputed log-probs, and the mean policy loss,
        value (PPO) or KL (GRPO) loss, clip fraction, approximate KL and entropy.
        """
        rollout, stats = self.rollout(prompts, labels)
        n, size = len(prompts), self.config.mini_batch_size
        updates = []
        for _ in range(self.config.ppo_epochs):
            order = torch.randperm(n)
            for i in range(0, n, size):
                updates.append(self._update(rollout, order[i : i + size]))
        for key in updates[0]:
            stats[key] = float(np.mean([u[key] for u in updates]))
        return stats

    def _next_batch(self, pool: list[int], count: int, prompts: Sequence[str]) -> list[int]:
        batch = []
        while len(batch) < count:
            if not pool:
                pool.extend(range(len(prompts)))
                self._rng.shuffle(pool)
            batch.append(pool.pop())
        return batch

    def train(self, prompts: Sequence[str], labels: Sequence[Any]) -> list[dict[str, float]]:
        """Run ``config.steps`` steps on batches drawn without replacement (reshuffled per pass).

        GRPO draws ``batch_size / num_generations`` prompts and repeats each one.
        """
        if len(prompts) != len(labels) or not prompts:
            raise ValueError("train() needs as many labels as prompts, and at least one prompt")
        cfg = self.config
        group = cfg.num_generations if cfg.advantage == "group" else 1
        history: list[dict[str, float]] = []
        pool: list[int] = []
        bar = tqdm(range(cfg.steps), desc="RL (PPO)" if group == 1 else "RL (GRPO)", unit="step")
        for step in bar:
            drawn = self._next_batch(pool, cfg.batch_size // group, prompts)
            batch = [i for i in drawn for _ in range(group)]
            stats = {
                "step": step,
                **self.step([prompts[i] for i in batch], [labels[i] for i in batch]),
            }
            history.append(stats)
            logger.info("RL %s", " ".join(f"{k}={v:.4g}" for k, v in stats.items()))
            bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.3f}")
        return history

    def save(self, out_dir: str | Path) -> Path:
        """Save the PEFT adapter (the tuned prompt) and the RL and sampling configs beside it."""
        out = Path(out_dir)
        self.policy.save_pretrained(out)
        configs = {**self.config.to_dict(), "sampling": self.sampling.to_dict()}
        (out / "ppo_config.json").write_text(json.dumps(configs, indent=2))
        return out
