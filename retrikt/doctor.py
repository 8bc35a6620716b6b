"""``retrikt doctor``: the facts that decide whether, and how fast, RetriKT runs on this machine.

* **Versions** of the libraries RetriKT leans on, and whether they are the ones in
  ``requirements.lock`` (a checkout installed with ``make setup`` matches it exactly).
* **CPU features**: bf16 matmuls are fast only with AVX512-BF16 or AMX; elsewhere the LLM runs
  in float32, several times slower. RetriKT picks the dtype from this (``RETRIKT_FP32=1``
  forces float32).
* **The sampler seam**: soft-prompted greedy generation through the KV cache must give the
  same tokens as a full recompute without it. This is what broke silently with
  transformers 5.24 + peft 0.21 (peft's glue; RetriKT's own sampler does not use it). peft's
  own ``generate`` is checked too, for users who call it; its result is information only.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: The distributions whose versions are reported (and compared with the lock).
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "sentence-transformers",
    "tokenizers",
    "faiss-cpu",
    "numpy",
    "scikit-learn",
    "datasets",
)
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"


@dataclass
class Report:
    """What ``doctor`` found; ``ok`` is False when RetriKT would produce wrong output here."""

    versions: dict[str, str | None] = field(default_factory=dict)
    lock_mismatches: list[str] = field(default_factory=list)
    cpu: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check["ok"] for check in self.checks if check["required"])


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def lock_mismatches(lock: Path = LOCK_FILE) -> list[str]:
    """``name: installed X, lock Y`` for every locked package installed at another version."""
    if not lock.is_file():
        return []
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", lock.read_text(), flags=re.M)
    wrong = []
    for name, pinned in pins:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed, lock {pinned}")
            continue
        if installed != pinned:
            wrong.append(f"{name}: installed {installed}, lock {pinned}")
    return wrong


def cpu_features() -> dict[str, Any]:
    from retrikt.generator.lm import bf16_supported, compute_dtype

    flags: set[str] = set()
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        if match := re.search(r"^flags\s*:\s*(.*)$", text, flags=re.M):
            flags = set(match.group(1).split())
        if match := re.search(r"^model name\s*:\s*(.*)$", text, flags=re.M):
            model = match.group(1)
    return {
        "model": model,
        "threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "bf16_fast": bf16_supported(),
        # The vector kernels torch dispatches to (ATEN_CPU_CAPABILITY can lower them): fp32
        # training is bit-reproducible across CPUs only with the same kernels.
        "kernels": torch.backends.cpu.get_cpu_capability(),
        "llm_dtype": str(compute_dtype()).removeprefix("torch."),
    }


def sampler_checks(generator: str = "smollm2-135m", steps: int = 16) -> list[dict[str, Any]]:
    """Cached vs uncached soft-prompted greedy generation, in float32 (exact comparison)."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    from retrikt.generator.lm import load_base
    from retrikt.generator.sampler import Sampler, greedy_config, greedy_without_cache

    base, tokenizer = load_base(generator, dtype=torch.float32)
    torch.manual_seed(0)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=8,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    policy = get_peft_model(base, config).eval()
    prompts = ["Premise: The hotel was full.\nHypothesis:", "Write a short sentence:"]
    started = time.perf_counter()
    reference = greedy_without_cache(policy, tokenizer, prompts, steps)
    uncached_s = time.perf_counter() - started
    sampler = Sampler(policy, tokenizer, greedy_config(steps))
    started = time.perf_counter()
    ours = sampler.sample(prompts, seeds=[0, 1]).completion_ids
    cached_s = time.perf_counter() - started
    # One unpadded prompt: peft drops position ids, which shifts a left-padded row by design.
    enc = tokenizer(prompts[:1], return_tensors="pt")
    with torch.no_grad():
        peft_out = policy.generate(
            **enc,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            eos_token_id=sampler.stops,
            pad_token_id=sampler.pad_id,
        )[:, -steps:]
    return [
        {
            "name": "RetriKT sampler: cached == uncached",
            "ok": torch.equal(ours, reference),
            "required": True,
            "detail": f"{steps} tokens x {len(prompts)} prompts; cached {cached_s:.2f} s, "
            f"uncached {uncached_s:.2f} s",
        },
        {
            "name": "peft PeftModel.generate (not used by RetriKT)",
            "ok": torch.equal(peft_out, reference[:1]),
            "required": False,
            "detail": "agrees with the reference"
            if torch.equal(peft_out, reference[:1])
            else "DISAGREES with the reference on this stack",
        },
    ]


def diagnose(generator: str = "smollm2-135m", run_checks: bool = True) -> Report:
    report = Report(versions(), lock_mismatches(), cpu_features())
    if run_checks:
        report.checks = sampler_checks(generator)
    return report
