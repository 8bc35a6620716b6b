"""The one sampler of soft-prompted text: store generation, PPO/GRPO rollouts, reports, benches.

Why our own and not ``PeftModel.generate``: peft's prompt-learning generation glue finds the
KV cache by the name transformers passes it under. transformers 5.24 renamed it, peft 0.21
then sees no cache and re-injects the soft prompt in front of the whole sequence at every
step: the output is garbage and the cost quadratic, with no error. Here peft only trains and
saves the prompt; sampling calls the *base* model's ``generate`` with

* ``inputs_embeds`` = ``[virtual tokens][prompt text]`` (peft's own layout, so sampling sees
  exactly what prompt tuning trained on), each row's text padded *after* the head every
  prompt of the batch shares (:func:`shared_head_layout`),
* the matching attention mask (generate derives position ids from it, so the pads are
  neutral wherever they sit), and a KV cache already holding the shared head, computed once
  for the batch (:meth:`Sampler.head_cache`): rationale prompts repeat one instruction and two
  explained demos, most of every prompt, and batched generation would otherwise prefill it
  once a row,
* a fresh ``GenerationConfig``, so a model's own defaults (repetition penalty, top-k ...)
  never change the distribution,
* temperature and top-p as transformers' logits warpers, then :class:`RowSeededSampler`,
  which draws each row from its own seeded stream and records the log-probability of every
  token it draws under the distribution it drew from.

:func:`sampling_logprobs` applies the same warpers to logits from a full forward pass, so
PPO's recomputed log-probs equal the sampler's (ratio 1 before the first update).
Generation stops at EOS or at the template's ``###`` (one token in the packaged tokenizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from retrikt.generator.configs import SamplingConfig
from retrikt.generator.templates import END


def split_policy(model: Any) -> tuple[Any, torch.Tensor | None]:
    """(base LM, soft prompt ``(virtual tokens, hidden)`` or None) of a model or PeftModel.

    The prompt is the live parameter, so a sampler built once sees every RL update.
    """
    if not hasattr(model, "prompt_encoder"):
        return model, None
    from peft import PeftType

    adapter = model.active_adapter
    if model.peft_config[adapter].peft_type != PeftType.PROMPT_TUNING:
        raise ValueError(f"expected a prompt-tuning adapter, got {model.peft_config[adapter]}")
    return model.get_base_model(), model.prompt_encoder[adapter].embedding.weight


def prompt_inputs(
    base: Any, prompt: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(B, V + L, H)`` of ``[virtual tokens][text]`` and their attention mask."""
    tokens = base.get_input_embeddings()(input_ids)
    if prompt is None:
        return tokens, attention_mask
    virtual = prompt.to(tokens.dtype).unsqueeze(0).expand(len(input_ids), -1, -1)
    full_mask = torch.cat([attention_mask.new_ones(virtual.shape[:2]), attention_mask], dim=1)
    return torch.cat([virtual, tokens], dim=1), full_mask


def shared_head_layout(
    tokenizer: Any, prompts: Sequence[str], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids ``(B, L)`` laid out ``[shared head][pads][rest of the prompt]``, their
    attention mask, and the head's length.

    The head is the longest run of leading tokens every prompt has (at least one token of
    each prompt is left out of it, so every row has its own last position). Pads sit after
    it rather than before it so that one KV cache of the head serves every row; masked, they
    change nothing. With no shared head this is plain left padding.
    """
    rows = tokenizer(list(prompts)).input_ids
    head = 0
    limit = min(len(row) for row in rows) - 1
    while head < limit and all(row[head] == rows[0][head] for row in rows):
        head += 1
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :head], mask[i, :head] = torch.tensor(row[:head]), 1
        tail = row[head:]
        ids[i, width - len(tail) :], mask[i, width - len(tail) :] = torch.tensor(tail), 1
    return ids, mask, head


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask, as ``generate`` derives them (pads count 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _warpers(config: SamplingConfig) -> list[Any]:
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(config.temperature)]
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return warpers


def sampling_logprobs(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Log-probs ``(..., V)`` of the distribution the sampler draws from (temperature, top-p)."""
    shape = logits.shape
    scores = logits.float().reshape(-1, shape[-1])
    for warp in _warpers(config):
        scores = warp(None, scores)
    return torch.log_softmax(scores, dim=-1).reshape(shape)


class RowSeededSampler:
    """Gumbel-max sampling where each batch row draws from its own seeded generator.

    Added to the (temperature- and top-p-processed) scores before greedy selection, Gumbel
    noise makes the argmax a sample of the softmax; ``generate``'s own ``do_sample`` draws
    from one global stream, which would tie a job's output to its batch. It also records the
    log-prob of each drawn token, so callers need not keep the logits.
    """

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.logprobs: list[torch.Tensor] = []  # one (B,) tensor per step

    def __call__(self, input_ids: Any, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        noisy = scores + gumbel.to(scores.dtype)
        chosen = noisy.argmax(dim=-1, keepdim=True)
        self.logprobs.append(torch.log_softmax(scores.float(), -1).gather(-1, chosen)[:, 0])
        return noisy


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS and the template's closing ``###`` token (when it is one known token)."""
    ids = [tokenizer.eos_token_id]
    end = tokenizer.encode(END, add_special_tokens=False)
    if len(end) == 1 and end[0] != tokenizer.unk_token_id:
        ids.append(end[0])
    return ids


@dataclass
class Samples:
    """One sampled batch; ``(B, P)`` prompt tensors, ``(B, T)`` completion tensors."""

    prompt_ids: torch.Tensor  # padded after the shared head (:func:`shared_head_layout`)
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor  # pad after the stop token
    completion_mask: torch.Tensor  # 1 up to and including the stop token
    logprobs: torch.Tensor  # of each drawn token under the sampling distribution
    texts: list[str]  # a row that stopped by itself ends with ``###``; a cut row does not
    lengths: list[int]  # tokens generated, stop token included


class Sampler:
    """Samples continuations of text prompts from an LM with an optional soft prompt.

    Example::

        policy, tokenizer = load_policy("smollm2-135m", "cache/generator/cb-1a2b")
        sampler = Sampler(policy, tokenizer, SamplingConfig(temperature=0.8))
        batch = sampler.sample([generation_prompt(cb, 0)] * 4, seeds=[1, 2, 3, 4])
        batch.texts  # four contradictions, each closed by ``###`` unless cut

    Relations: :mod:`retrikt.generator.generation` runs it over a job plan with resume;
    :class:`retrikt.generator.ppo.PPOTrainer` samples its rollouts with it.
    """

    def __init__(self, model: Any, tokenizer: Any, config: SamplingConfig):
        self.base, self.prompt = split_policy(model)
        self.tokenizer, self.config = tokenizer, config
        self.stops = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> Samples:
        from transformers import GenerationConfig, LogitsProcessorList

        cfg = self.config
        ids, text_mask, head = shared_head_layout(self.tokenizer, prompts, self.pad_id)
        embeds, mask = prompt_inputs(self.base, self.prompt, ids, text_mask)
        head += mask.shape[1] - ids.shape[1]  # the virtual tokens are shared too
        sampler = RowSeededSampler(seeds)
        generation = GenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=cfg.min_new_tokens,
            do_sample=False,  # the sampling is RowSeededSampler's Gumbel-max
            eos_token_id=self.stops,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        new = self.base.generate(
            inputs_embeds=embeds,  # generate feeds only what the cache does not hold yet
            attention_mask=mask,
            past_key_values=self.head_cache(embeds, mask, head),
            generation_config=generation,
            logits_processor=LogitsProcessorList([*_warpers(cfg), sampler]),
        )  # only the new tokens: generate() was given embeddings, not ids
        logprobs = torch.stack(sampler.logprobs, dim=1)[:, : new.shape[1]]
        is_stop = torch.isin(new, torch.tensor(self.stops))
        after_stop = (is_stop.long().cumsum(-1) - is_stop.long()) > 0
        completion_mask = (~after_stop).long()
        texts, lengths = [], []
        for row, length in zip(new.tolist(), completion_mask.sum(-1).tolist(), strict=True):
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            if row[length - 1] in self.stops and END not in text:
                text += f"\n{END}"  # stopped by EOS: finished, unlike a cut at max_new_tokens
            texts.append(text)
            lengths.append(length)
        return Samples(
            ids,
            text_mask,
            new,
            completion_mask,
            logprobs * completion_mask,
            texts,
            lengths,
        )

    def head_cache(self, embeds: torch.Tensor, mask: torch.Tensor, head: int) -> Any:
        """A KV cache of the first ``head`` positions, computed on one row and repeated for
        every row (they are equal there), or None when there is nothing to share."""
        if head == 0 or len(embeds) == 1:
            return None
        from transformers import DynamicCache

        cache = DynamicCache(config=self.base.config)
        self.base(
            inputs_embeds=embeds[:1, :head],
            attention_mask=mask[:1, :head],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the vocabulary projection of the head is never used
        )
        cache.batch_repeat_interleave(len(embeds))
        return cache


@torch.no_grad()
def greedy_without_cache(
    model: Any, tokenizer: Any, prompts: Sequence[str], steps: int
) -> torch.Tensor:
    """Greedy tokens ``(B, steps)`` with no KV cache: the reference the cached path must equal.

    The whole sequence goes through the model at every step (slow, so only checks use it).
    Stop tokens are barred, as ``min_new_tokens`` bars them in a cached run of equal length.
    """
    base, prompt = split_policy(model)
    stops = stop_token_ids(tokenizer)
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc.input_ids, enc.attention_mask
    new = []
    for _ in range(steps):
        embeds, full_mask = prompt_inputs(base, prompt, ids, mask)
        logits = base(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions(full_mask),
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]
        logits[:, stops] = -torch.inf
        token = logits.argmax(-1, keepdim=True)
        new.append(token)
        ids = torch.cat([ids, token], dim=1)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    return torch.cat(new, dim=1)


def greedy_config(steps: int) -> SamplingConfig:
    """Greedy decoding of exactly ``steps`` tokens through the sampler (a tiny temperature
    makes the Gumbel-max draw the argmax), to compare with :func:`greedy_without_cache`."""
    return SamplingConfig(max_new_tokens=steps, min_new_tokens=steps, temperature=1e-3, top_p=1.0)
