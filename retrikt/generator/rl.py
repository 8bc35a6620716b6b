"""RL refinement of the supervised soft prompt: ``ppo``, ``grpo`` or ``none``.

* ``ppo`` - the paper's method: value head, GAE and a KL penalty against the supervised
  prompt (:class:`retrikt.generator.ppo.PPOTrainer` with ``advantage="gae"``).
* ``grpo`` - group-relative advantages over ``num_generations`` completions per prompt, no
  value head (the same trainer with ``advantage="group"``).
* ``none`` - keep the supervised prompt.

Both RL methods sample their rollouts with the store's sampling settings (temperature, top-p,
stop tokens, token limit), so the policy RL optimises is the one that writes the store.
Every method saves a PEFT adapter folder (``out_dir``) with ``rl.json`` (method, task,
configs) and, for the RL methods, ``rl_log.jsonl`` (every logged term of every step).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from retrikt.errors import RetriktError
from retrikt.generator.configs import RL_METHODS, RLConfig
from retrikt.generator.ppo import PPOTrainer, RewardFn
from retrikt.generator.sampler import SamplingConfig
from retrikt.tasks import Task

logger = logging.getLogger(__name__)

METHODS = RL_METHODS
_ADVANTAGE = {"ppo": "gae", "grpo": "group"}


def refine(
    method: str,
    policy: Any,
    tokenizer: Any,
    task: Task,
    prompts: list[str],
    labels: list,
    reward_fn: RewardFn,
    config: RLConfig,
    sampling: SamplingConfig,
    out_dir: Path,
) -> Path:
    """Refine ``policy``'s soft prompt with ``method`` and save it; returns the adapter folder.

    ``prompts[i]`` asks for an example with ``labels[i]``; ``reward_fn(completions, labels)``
    returns one dict per completion with ``total`` and the reward terms.
    """
    if method not in METHODS:
        raise RetriktError(f"unknown RL method {method!r}; choose one of {', '.join(METHODS)}")
    if len(prompts) != len(labels) or not prompts:
        raise RetriktError(f"RL needs prompts with labels; got {len(prompts)} and {len(labels)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if method == "none":
        policy.save_pretrained(out)
    else:
        config = replace(config, advantage=_ADVANTAGE[method])
        trainer = PPOTrainer(policy, tokenizer, reward_fn, config, sampling)
        history = trainer.train(prompts, labels)
        trainer.save(out)
    manifest = {
        "method": method,
        "task": task.name,
        "config": config.to_dict(),
        "sampling": sampling.to_dict(),
    }
    (out / "rl.json").write_text(json.dumps(manifest, indent=2))
    if history:
        with (out / "rl_log.jsonl").open("w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in history)
    logger.info(
        "RL (%s) on %s: %d logged steps; adapter in %s", method, task.name, len(history), out
    )
    return out
