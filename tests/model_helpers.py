"""A tiny random Llama with SmolLM2's real tokenizer: the real generate/Trainer paths in seconds."""

from __future__ import annotations

from typing import Any

import torch

from retrikt.models import GENERATOR, resolve_model


def tiny_llama(max_positions: int = 512) -> tuple[Any, Any]:
    """(a 1-layer, 32-wide randomly initialised ``LlamaForCausalLM``, SmolLM2's tokenizer)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m", GENERATOR).path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(config).eval(), tokenizer
