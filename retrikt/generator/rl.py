"""RL refinement of the supervised soft prompt: ``ppo``, ``grpo`` or ``none``.

* ``ppo`` - the project's own PPO (:mod:`retrikt.generator.ppo`; trl no longer has one), with
  a value head, GAE and a KL penalty against the supervised prompt.
* ``grpo`` - trl's ``GRPOTrainer``: a group of ``num_generations`` completions per prompt,
  advantages relative to the group, no value head. Each reward term becomes its own trl
  reward function with its weight in ``reward_weights``, so trl logs every term and sums
  them to exactly the same total. The policy is passed as the PEFT model itself, so trl
  trains the existing prompt and (with ``kl_coef`` > 0) keeps a frozen copy of it as the
  KL reference; that copy is removed before saving.
* ``none`` - keep the supervised prompt.

Every method saves a PEFT adapter folder (``out_dir``) with ``rl.json`` (method, task,
config) and, for the RL methods, ``rl_log.jsonl`` (every logged term of every step).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from retrikt.errors import RetriktError
from retrikt.generator.ppo import PPOConfig, PPOTrainer, RewardFn
from retrikt.tasks import Task

logger = logging.getLogger(__name__)

METHODS = ("ppo", "grpo", "none")


@dataclass
class RLConfig(PPOConfig):
    """PPO's settings, shared by GRPO where they mean the same thing, plus GRPO's own.

    GRPO uses steps, batch_size (completions per step), lr, kl_coef (trl's beta), clip
    (trl's epsilon), max_new_tokens, temperature, top_k, max_grad_norm and seed; the value
    head, GAE and PPO-epoch settings are PPO's only.
    """

    num_generations: int = 4  # GRPO group size: completions per prompt


def refine(
    method: str,
    policy,
    tokenizer,
    task: Task,
    prompts: list[str],
    labels: list,
    reward_fn: RewardFn,
    config: RLConfig,
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
    if method == "ppo":
        trainer = PPOTrainer(policy, tokenizer, reward_fn, config)
        history = trainer.train(prompts, labels)
        trainer.save(out)
    else:
        if method == "grpo":
            history = _grpo(policy, tokenizer, prompts, labels, reward_fn, config)
        policy.save_pretrained(out)
    manifest = {"method": method, "task": task.name, "config": asdict(config)}
    (out / "rl.json").write_text(json.dumps(manifest, indent=2))
    if history:
        with (out / "rl_log.jsonl").open("w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in history)
    logger.info(
        "RL (%s) on %s: %d logged steps; adapter in %s", method, task.name, len(history), out
    )
    return out


def trl_reward_functions(reward_fn: RewardFn) -> tuple[list[Callable], list[float]]:
    """One trl reward function per reward term, and their weights.

    The terms and weights come from ``reward_fn.weights`` (a ``RewardWeights``); a reward
    function without weights becomes a single ``total`` term. trl calls the functions in
    order on the same batch: the first one runs ``reward_fn`` and the others read its
    result, so ``reward_fn`` (and its memory of accepted examples) sees each batch once.
    """
    weights = reward_fn.weights.terms if hasattr(reward_fn, "weights") else {"total": 1.0}
    last: dict[str, list[dict[str, float]]] = {}

    def term_function(name: str, first: bool) -> Callable:
        def term(prompts: list, completions: list[str], label: list, **_: Any) -> list[float]:
            if first:
                last["scores"] = reward_fn(list(completions), list(label))
            return [score[name] for score in last["scores"]]

        term.__name__ = name  # trl logs a reward function under its name
        return term

    functions = [term_function(name, i == 0) for i, name in enumerate(weights)]
    return functions, list(weights.values())


def _grpo(
    policy,
    tokenizer,
    prompts: list[str],
    labels: list,
    reward_fn: RewardFn,
    config: RLConfig,
) -> list[dict[str, Any]]:
    import tempfile

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if config.batch_size % config.num_generations:
        raise RetriktError(
            f"GRPO needs batch_size ({config.batch_size}) to be a multiple of num_generations "
            f"({config.num_generations})"
        )
    functions, weights = trl_reward_functions(reward_fn)
    scratch = tempfile.TemporaryDirectory(prefix="retrikt-grpo-")  # trl wants an output_dir
    args = GRPOConfig(
        output_dir=scratch.name,
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        num_generations=config.num_generations,
        learning_rate=config.lr,
        beta=config.kl_coef,
        epsilon=config.clip,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=1.0,
        max_grad_norm=config.max_grad_norm,
        reward_weights=weights,
        seed=config.seed,
        # CPU training in float32: trl defaults to bf16 and gradient checkpointing, which
        # only pay off on accelerators (and checkpointing a frozen base is pure overhead).
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
    )
    dataset = Dataset.from_dict({"prompt": list(prompts), "label": list(labels)})
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=functions,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    with scratch:
        trainer.train()
    if "ref" in policy.peft_config:  # trl's frozen copy of the starting prompt (KL reference)
        policy.delete_adapter("ref")
    return [row for row in trainer.state.log_history if "loss" in row or "reward" in row]
