"""Loading the generator LLM (optionally with a soft-prompt adapter) at the right precision.

Shared by the teacher, prompt tuning, RL and generation so that all of them see the same
weights, dtype and tokenizer settings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from retrikt.models import GENERATOR, resolve_model

logger = logging.getLogger(__name__)


def bf16_supported() -> bool:
    """bf16 matmuls are fast on CPUs with AVX512-BF16/AMX; elsewhere they are emulated."""
    if os.environ.get("RETRIKT_FP32"):
        return False
    checker = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(checker and checker())


def compute_dtype() -> torch.dtype:
    return torch.bfloat16 if bf16_supported() else torch.float32


def load_base(generator: str, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """The frozen base LM (eval mode, bf16 where supported unless ``dtype``) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(generator, GENERATOR)
    offline = resolved.preset is not None
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=offline)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=dtype or compute_dtype(), local_files_only=offline
    )
    model.eval()
    model.requires_grad_(False)
    contiguous_logits_input(model)
    return model, tokenizer


def contiguous_logits_input(model: Any) -> None:
    """Hand the vocabulary projection a contiguous input.

    Why: ``generate``'s prefill and PPO's scoring keep the logits of the last positions only
    (``logits_to_keep``), a strided slice of the hidden states. torch 2.13's matmul folds
    such a 3D view into one matrix product only when a gradient may be needed; with a frozen
    weight (``requires_grad_(False)`` above) it multiplies every row with its own copy of the
    weight. For Qwen2.5-0.5B's 151,936 x 896 projection in bf16 on one core that made a
    CoLA rationale take 3.99 s instead of 2.10 s, about 2 s a row
    (``experiments/results/rationale_throughput.md``; float32 is not measured there).
    """
    model.get_output_embeddings().register_forward_pre_hook(
        lambda _, args: (args[0].contiguous(), *args[1:])
    )


def load_policy(
    generator: str, adapter_dir: str | Path | None = None, trainable: bool = False
) -> tuple[Any, Any]:
    """The LM with a saved soft prompt (a ``PeftModel``), or the bare LM when no adapter.

    ``trainable=True`` keeps the soft prompt's gradients on (RL continues from it).
    """
    model, tokenizer = load_base(generator)
    if adapter_dir is None:
        return model, tokenizer
    from peft import PeftModel

    policy = PeftModel.from_pretrained(model, str(adapter_dir))
    # PEFT refuses is_trainable=True for prompt-learning adapters, so unfreeze the prompt here.
    policy.prompt_encoder.requires_grad_(trainable)
    policy.eval()  # no dropout in rollouts or scoring; gradients do not need train mode
    return policy, tokenizer
