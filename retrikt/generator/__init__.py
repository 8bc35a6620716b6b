"""Knowledge extraction: the LLM writes new labelled examples of a task.

Stages, each in its own module: ``templates`` (a text format the code can parse back),
``teacher`` (the LLM scoring an example's labels), ``prompt_tuning`` (supervised soft
prompts), ``reward``/``ppo``/``rl`` (RL refinement), ``generation`` (batched, sharded,
resumable sampling) and ``build`` (the whole ``retrikt build-store`` pipeline).
Nothing heavy is imported here, so ``import retrikt.generator.templates`` stays cheap.
"""
