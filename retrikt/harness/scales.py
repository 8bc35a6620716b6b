"""Scale presets and the harness's run config: how much data and compute each run gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retrikt.config import Config, option

#: Bump when a change to the harness alters results, so cached results are not reused.
HARNESS_VERSION = 1
DEFAULT_CACHE = "experiments/cache"
DEFAULT_RESULTS = "experiments/results"


# ---------------------------------------------------------------------------- scales
@dataclass
class Scale(Config):
    """How much data and compute one run gets; the results file states it.

    Every field but ``name`` is also a ``retrikt evaluate`` flag that overrides the preset.
    """

    name: str = option(help="the scale's name, stated in the results", cli=False)
    train_limit: int | None = option(
        help="training examples per task: a fixed random subset shared by every method and "
        "seed (None: all)",
        min=1,
    )
    eval_limit: int | None = option(
        help="validation examples scored (None: the whole official split)", min=1
    )
    epochs: int = option(help="student training epochs", min=1)
    batch_size: int = option(help="student and SetFit batch size", min=1)
    max_length: int = option(help="max tokens per student input", min=8)
    samples_per_label: int = option(
        help="store size: generated examples requested per label (per score bucket for STS-B)",
        min=1,
    )
    teacher_steps: int = option(help="steps of the teacher's soft prompt", min=0)
    prompt_steps: int = option(help="steps of the generator's soft prompt", min=0)
    rl_steps: int = option(help="steps of RL on the generator's prompt", min=0)
    setfit_iterations: int = option(help="SetFit's R: contrastive pairs per text and side", min=1)
    latency_examples: int = option(
        help="validation examples timed one at a time for the latency column", min=0
    )
    # The generator's sampler; experiments/sampling_sweep.py measures the choice.
    temperature: float = option(help="the generator's sampling temperature", min=1e-3)
    top_p: float = option(help="the generator's nucleus sampling mass", min=0.01, max=1)

    def describe(self) -> str:
        train = "all" if self.train_limit is None else f"at most {self.train_limit}"
        evals = (
            "the whole validation split"
            if self.eval_limit is None
            else (f"at most {self.eval_limit} validation examples")
        )
        return (
            f"scale `{self.name}`: {train} training examples per task (a fixed random subset, "
            f"the same for every method and seed), scored on {evals}; students train "
            f"{self.epochs} epochs at batch {self.batch_size}, max length {self.max_length}; "
            f"stores ask for {self.samples_per_label} generated examples per label (teacher "
            f"prompt {self.teacher_steps} steps, generator prompt {self.prompt_steps} steps, "
            f"RL {self.rl_steps} steps, all tuned on the same training subset; sampled at "
            f"temperature {self.temperature}, top-p {self.top_p}); SetFit "
            f"uses {self.setfit_iterations} pair iterations; latency is the p50 over "
            f"{self.latency_examples} examples at batch 1"
        )


SCALES: dict[str, Scale] = {
    # Minutes per task on 2 shared cores: small subsets, small stores, few steps; at most 300
    # validation examples (all of CB, COPA, RTE) because the LLM rows take ~1 s an example.
    "demo": Scale(
        "demo",
        train_limit=128,
        eval_limit=300,
        epochs=5,
        batch_size=16,
        max_length=128,
        samples_per_label=32,
        teacher_steps=20,
        prompt_steps=20,
        rl_steps=4,
        setfit_iterations=5,
        latency_examples=30,
        temperature=0.8,
        top_p=0.95,
    ),
    # The whole official training split for every method, scored on the whole validation
    # split: where RetriKT's users would use it. Stores ask for 1,000 generated examples per
    # label (>= 2,000 valid per task at the measured validity rates), and also hold the real
    # training examples with the teacher's soft labels. Hours per task on this machine:
    # every unit is cached, so a table fills in pieces.
    "full": Scale(
        "full",
        train_limit=None,
        eval_limit=None,
        epochs=5,
        batch_size=16,
        max_length=128,
        samples_per_label=1000,
        teacher_steps=100,
        prompt_steps=100,
        rl_steps=20,
        setfit_iterations=5,
        latency_examples=100,
        # experiments/results/sampling.md: across the six tasks, the most varied setting within
        # 0.05 of the best mean yield (CB's own best is T 0.6, MRPC's T 0.8); T 1.2 loses
        # 11-82% of the outputs to parse errors.
        temperature=1.0,
        top_p=0.9,
    ),
}


@dataclass
class HarnessConfig(Config):
    """One harness run: which tasks, methods and seeds, at which scale, written where."""

    tasks: list[str] = option(help="tasks to run", cli=False)
    methods: list[str] = option(help="methods to run (see METHODS)", cli=False)
    seeds: list[int] = option(help="training seeds", cli=False)
    scale: Scale = option(help="data and compute per run", cli=False)
    name: str = option(help="results name: writes <results-dir>/NAME.md/.json/.png")
    data_dir: str | None = option(None, "data folder", cli=False)
    encoder: str = option("minilm-l6", "student encoder preset")
    generator: str = option("smollm2-135m", "LLM preset for stores")
    cache_dir: str = option(DEFAULT_CACHE, "where artefacts and per-seed results are cached")
    results_dir: str = option(DEFAULT_RESULTS, "where the results table is written")
    units_dir: str | None = option(
        None,
        "where every finished (task, method, seed) result is kept, one small JSON file each "
        "named by the hash of its settings (default: RESULTS_DIR/units). Commit it: the cache "
        "of models and stores stays on one machine, these results fill the table in across "
        "machines and sessions",
    )
    #: Ready-made stores by task, used instead of building one (for every store-based method).
    stores: dict[str, Path] = option(
        default_factory=dict, help="ready-made stores by task", cli=False
    )
    #: Tuned teachers by task (``retrikt train-teacher`` folders): they label the stores and
    #: are the ``teacher`` row. Without one, the LLM's soft prompt labels the store.
    teachers: dict[str, Path] = option(
        default_factory=dict, help="tuned teachers by task", cli=False
    )
    threads: int | None = option(None, "torch CPU threads", cli=False)
    command: str = option("", "the command line, for the results file", cli=False)
    cached_only: bool = option(
        False,
        "write the table from the finished units in the cache and start nothing new (the rest "
        "show as pending): the table of a run that fills in over several sessions",
    )
