"""Why a RetriKT student wins or loses: its validation score as the mix (lambda) moves.

A trained RetriKT student's prediction is ``mix * model + (1 - mix) * neighbours`` (the
neighbours' teacher labels, weighted by similarity). ``--tune-retrieval`` picks ``mix`` (with
``k`` and the temperature) on a slice held out from the *training* split; this script shows,
after the fact, what every other ``mix`` would have scored on *validation*, with the
student's own ``k`` and temperature. ``mix = 1`` is the student's encoder and head alone,
``mix = 0`` its retrieval alone. It is a diagnostic for the README's reading, never a way
to choose ``mix``: that would be tuning on validation.

The students are any RetriKT student folders, for example the harness's cached ones::

    OMP_NUM_THREADS=1 .venv/bin/python experiments/mix_sweep.py --data-dir ../shared/data \\
        --out experiments/results/mix_sweep-cb experiments/cache/models/cb-retrikt-s*/model
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

from retrikt.student.model import RetriKT

MIXES = [round(0.1 * i, 1) for i in range(11)]
logger = logging.getLogger("mix_sweep")


def sweep(folder: Path, data_dir: str) -> dict:
    """One student's validation task score (mean of the official metrics) at every mix."""
    model = RetriKT.from_pretrained(folder)
    task = model.task
    examples = task.read("validation", data_dir)
    raw = model.raw_outputs(examples)

    def score(mix: float) -> float:
        probs, _ = model.combined(raw, mix=mix)
        metrics = task.evaluate(task.predictions(probs), list(examples))
        return 100 * float(np.mean(list(metrics.values())))

    retrieval = model.config.retrieval
    return {
        "student": str(folder),
        "task": task.name,
        "chosen_mix": retrieval.mix,  # a user's --mix need not lie on the grid
        "chosen_score": score(retrieval.mix),
        "k": retrieval.k,
        "tuning": retrieval.tuning,
        "scores": {mix: score(mix) for mix in MIXES},
    }


def render(rows: list[dict], command: str) -> str:
    lines = [
        "# Validation score of trained RetriKT students against the mix (lambda)",
        "",
        "```",
        command,
        "```",
        "",
        "Score: the task's official metrics' mean on the whole validation split, x100, for "
        "each student at each `mix` (weight of the student's own prediction; 0 = its "
        "neighbours' teacher labels alone, 1 = its encoder and head alone), with the "
        "student's own `k` and retrieval temperature. *chosen* is the mix `--tune-retrieval` "
        "picked on held-out training examples, and its score. Diagnostic only: choosing mix "
        "here would be tuning on validation.",
        "",
        "| student | task | chosen (score) | best on validation | "
        + " | ".join(f"{m:.1f}" for m in MIXES)
        + " |",
        "|---|---|---|---|" + "---:|" * len(MIXES),
    ]
    for row in rows:
        scores = {float(m): s for m, s in row["scores"].items()}
        best = max(scores, key=scores.get)
        lines.append(
            f"| `{Path(row['student']).parent.name}` | {row['task']} "
            f"| {row['chosen_mix']:g} ({row['chosen_score']:.1f}) "
            f"| {best:.1f} ({scores[best]:.1f}) | "
            + " | ".join(f"{scores[m]:.1f}" for m in MIXES)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("students", nargs="+", type=Path, help="RetriKT student folders")
    parser.add_argument("--data-dir", required=True, help="folder with the tasks' data files")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    rows = [sweep(folder, args.data_dir) for folder in args.students]
    command = shlex.join(["OMP_NUM_THREADS=1", ".venv/bin/python", *sys.argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(render(rows, command))
    logger.info("wrote %s (.json)", args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
