"""A compact PPO for a soft-prompted causal LM, as in the RetriKT paper.

Why hand-written: trl 1.13 and later removed ``PPOTrainer``, and the last one (trl 1.12,
``trl.experimental.ppo``) needs the reward to be a model, while RetriKT's reward is a Python
function (teacher accuracy + diversity + validity, :mod:`retrikt.generator.reward`). The
algorithm follows trl's former implementation and the "N implementation details of RLHF"
write-up, restricted to what prompt tuning needs:

* the policy is a PEFT prompt-tuning ``PeftModel``: the base LM is frozen and only the
  virtual-token embedding trains, together with a small value head (an MLP on the last
  hidden state, fed detached features so the value loss never moves the prompt);
* the reference policy is the same base with a frozen copy of the prompt as it was when
  training started (the supervised prompt), so it costs no second model;
* each step samples one completion per prompt, scores it with ``reward_fn``, turns the
  score and a per-token KL penalty ``-kl_coef * (log pi - log pi_ref)`` into per-token
  rewards, computes advantages with GAE (gamma, lambda), and runs ``ppo_epochs`` passes of
  the clipped surrogate objective plus a clipped value loss.

Both the rollout and the scoring forward build the input the way PEFT does
(``[virtual tokens][left-padded prompt][completion]``) with position ids from the
attention mask, so sampling and scoring see the same distribution.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: ``reward_fn(completions, labels) -> [{"total": r, <term>: value, ...}, ...]``
RewardFn = Callable[[list[str], list[Any]], list[dict[str, float]]]


@dataclass
class PPOConfig:
    """PPO hyper-parameters; defaults suit a 135M generator on CPU."""

    steps: int = 20  # optimisation steps (one rollout batch each)
    batch_size: int = 8  # rollouts (prompt, completion) per step
    mini_batch_size: int = 8  # rollouts per gradient update inside a step
    ppo_epochs: int = 4  # passes over each rollout batch
    lr: float = 3e-3  # prompt embedding (prompt tuning wants a large rate)
    value_lr: float = 1e-3  # value head
    clip: float = 0.2  # clip range of the probability ratio
    clip_value: float = 0.2  # clip range of the value update
    kl_coef: float = 0.05  # per-token KL penalty against the reference prompt
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0  # 0 = full distribution (the ratio assumes the sampled distribution)
    max_grad_norm: float = 1.0
    value_hidden: int = 128  # width of the value head's hidden layer
    seed: int = 0


class ValueHead(nn.Module):
    """Predicts the return from the last hidden state at each position."""

    def __init__(self, hidden_size: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(-1)


@dataclass
class Rollout:
    """One batch of sampled completions with everything PPO needs, all shaped (B, T)."""

    input_ids: torch.Tensor  # (B, P + T): left-padded prompt then completion
    attention_mask: torch.Tensor  # (B, P + T)
    mask: torch.Tensor  # (B, T): 1 on completion tokens up to and including EOS
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


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


class PPOTrainer:
    """PPO on the soft prompt of a PEFT prompt-tuning policy; see the module docstring."""

    def __init__(self, policy, tokenizer, reward_fn: RewardFn, config: PPOConfig):
        from peft import PeftType

        adapter = policy.active_adapter
        peft_config = policy.peft_config[adapter]
        if peft_config.peft_type != PeftType.PROMPT_TUNING:
            raise ValueError(
                f"PPOTrainer needs a prompt-tuning PeftModel, got {peft_config.peft_type}"
            )
        self.policy, self.tokenizer, self.config = policy, tokenizer, config
        self.reward_fn = reward_fn
        torch.manual_seed(config.seed)
        self.base = policy.get_base_model()
        self.base.eval()  # no dropout: PPO ratios must compare the same function
        self.prompt = policy.prompt_encoder[adapter].embedding.weight  # (virtual tokens, hidden)
        self.prompt.requires_grad_(True)
        self.ref_prompt = self.prompt.detach().clone()
        self.value_head = ValueHead(self.base.config.hidden_size, config.value_hidden)
        self.optimizer = torch.optim.Adam(
            [
                {"params": [self.prompt], "lr": config.lr},
                {"params": self.value_head.parameters(), "lr": config.value_lr},
            ]
        )
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self._rng = random.Random(config.seed)

    # ----------------------------------------------------------------- model
    def _embed(self, prompt: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """PEFT's prompt-tuning input: virtual tokens first, then the (left-padded) text."""
        tokens = self.base.get_input_embeddings()(input_ids)
        virtual = prompt.to(tokens.dtype).unsqueeze(0).expand(len(input_ids), -1, -1)
        full_mask = torch.cat([attention_mask.new_ones(virtual.shape[:2]), attention_mask], dim=1)
        return torch.cat([virtual, tokens], dim=1), full_mask

    def _score(
        self,
        prompt: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs and entropy of tokens ``start:`` under ``prompt``, and the values there."""
        embeds, full_mask = self._embed(prompt, input_ids, attention_mask)
        # The same position ids generate() derives from the mask, so left padding is neutral.
        positions = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
        completion_length = input_ids.shape[1] - start
        out = self.base(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions,
            output_hidden_states=True,
            logits_to_keep=completion_length + 1,  # the vocabulary projection is costly
        )
        offset = prompt.shape[0] + start - 1  # the position that predicts token ``start``
        logits = out.logits[:, :-1].float() / self.config.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        targets = input_ids[:, start:].unsqueeze(-1)
        logprobs = logp_all.gather(-1, targets).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = self.value_head(out.hidden_states[-1][:, offset:-1].detach().float())
        return logprobs, entropy, values

    @torch.no_grad()
    def _generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        embeds, full_mask = self._embed(self.prompt, input_ids, attention_mask)
        # Explicit sampling settings: the model's own generation_config (top_p, top_k,
        # repetition penalty...) would make the sampled distribution differ from the scored one.
        return self.base.generate(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            do_sample=True,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=1.0,
            repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )  # only the new tokens: generate() was given embeddings, not ids

    def _completion_mask(self, completions: torch.Tensor) -> torch.Tensor:
        """1 up to and including the first EOS, 0 after it."""
        if self.eos_id is None:
            return torch.ones_like(completions, dtype=torch.float)
        is_eos = (completions == self.eos_id).long()
        before_eos = (is_eos.cumsum(-1) - is_eos) == 0
        return before_eos.float()

    # -------------------------------------------------------------- rollouts
    @torch.no_grad()
    def _rollout(self, prompts: Sequence[str], labels: Sequence[Any]):
        cfg = self.config
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        completions = self._generate(enc.input_ids, enc.attention_mask)
        mask = self._completion_mask(completions)
        texts = self.tokenizer.batch_decode(
            completions.masked_fill(mask == 0, self.pad_id), skip_special_tokens=True
        )
        scores = self.reward_fn(texts, list(labels))
        input_ids = torch.cat([enc.input_ids, completions], dim=1)
        attention_mask = torch.cat([enc.attention_mask, mask.long()], dim=1)
        start = enc.input_ids.shape[1]
        logprobs, _, values = self._score(self.prompt, input_ids, attention_mask, start)
        ref_logprobs, _, _ = self._score(self.ref_prompt, input_ids, attention_mask, start)
        kl = (logprobs - ref_logprobs) * mask
        rewards = -cfg.kl_coef * kl
        last = (mask.sum(-1).long() - 1).clamp(min=0)
        total = torch.tensor([s["total"] for s in scores], dtype=rewards.dtype)
        rewards[torch.arange(len(last)), last] += total
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        rollout = Rollout(
            input_ids, attention_mask, mask, logprobs, values, whiten(advantages, mask), returns
        )
        stats = {"kl": kl.sum(-1).mean().item(), "completion_tokens": mask.sum(-1).mean().item()}
        for key in scores[0] if scores else ():
            name = "reward" if key == "total" else f"reward/{key}"
            stats[name] = float(np.mean([s[key] for s in scores]))
        return rollout, start, stats

    # ------------------------------------------------------------------ PPO
    def _update(self, r: Rollout, start: int, idx: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        mask = r.mask[idx]
        logprobs, entropy, values = self._score(
            self.prompt, r.input_ids[idx], r.attention_mask[idx], start
        )
        ratio = torch.exp(logprobs - r.logprobs[idx])
        adv = r.advantages[idx]
        pg_losses = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip))
        policy_loss = masked_mean(pg_losses, mask)
        old_values, returns = r.values[idx], r.returns[idx]
        clipped = old_values + (values - old_values).clamp(-cfg.clip_value, cfg.clip_value)
        value_loss = 0.5 * masked_mean(
            torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask
        )
        self.optimizer.zero_grad()
        (policy_loss + value_loss).backward()
        torch.nn.utils.clip_grad_norm_([self.prompt], cfg.max_grad_norm)
        torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            return {
                "policy_loss": policy_loss.item(),
                "value_loss": value_loss.item(),
                "clipfrac": masked_mean(((ratio - 1).abs() > cfg.clip).float(), mask).item(),
                "approx_kl": masked_mean(0.5 * (logprobs - r.logprobs[idx]) ** 2, mask).item(),
                "entropy": masked_mean(entropy, mask).item(),
            }

    def step(self, prompts: Sequence[str], labels: Sequence[Any]) -> dict[str, float]:
        """One PPO step: sample a completion per prompt, score it, and update the prompt.

        Returns the mean reward and each reward term (``reward/<term>``), the KL to the
        reference prompt (summed over a completion, averaged over the batch), and the mean
        policy loss, value loss, clip fraction, approximate KL and entropy of the updates.
        """
        rollout, start, stats = self._rollout(prompts, labels)
        n, size = len(prompts), self.config.mini_batch_size
        updates = []
        for _ in range(self.config.ppo_epochs):
            order = torch.randperm(n)
            for i in range(0, n, size):
                updates.append(self._update(rollout, start, order[i : i + size]))
        for key in updates[0]:
            stats[key] = float(np.mean([u[key] for u in updates]))
        return stats

    def train(self, prompts: Sequence[str], labels: Sequence[Any]) -> list[dict[str, float]]:
        """Run ``config.steps`` steps on batches drawn without replacement (reshuffled per pass)."""
        if len(prompts) != len(labels) or not prompts:
            raise ValueError("train() needs as many labels as prompts, and at least one prompt")
        history, pool = [], []
        bar = tqdm(range(self.config.steps), desc="PPO", unit="step")
        for step in bar:
            batch = []
            while len(batch) < self.config.batch_size:
                if not pool:
                    pool = list(range(len(prompts)))
                    self._rng.shuffle(pool)
                batch.append(pool.pop())
            stats = {
                "step": step,
                **self.step([prompts[i] for i in batch], [labels[i] for i in batch]),
            }
            history.append(stats)
            logger.info("PPO %s", " ".join(f"{k}={v:.4g}" for k, v in stats.items()))
            bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{stats['kl']:.3f}")
        return history

    def save(self, out_dir: str | Path) -> Path:
        """Save the PEFT adapter (the tuned prompt) and the PPO config beside it."""
        out = Path(out_dir)
        self.policy.save_pretrained(out)
        (out / "ppo_config.json").write_text(json.dumps(asdict(self.config), indent=2))
        return out
