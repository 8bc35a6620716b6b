"""Baseline: the fine-tuned minilm-l6 student without retrieval, 3 seeds per task.

Trains and evaluates ``retrikt train-student --no-retrieval`` at a low-resource scale on the
validation split of CB, COPA, RTE, MRPC, CoLA and STS-B, and writes
``experiments/results/baseline.md`` (mean ± std over seeds) and ``baseline.json``.

Every finished (task, seed) run is stored in the JSON at once, so the script resumes where it
stopped when it is killed; runs made with a different scale are not reused.

    .venv/bin/python experiments/run_baseline.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from retrikt.config import DefaultsHelpFormatter
from retrikt.tasks import get_task
from retrikt.training import TrainConfig, set_threads, train_student

HERE = Path(__file__).resolve().parent
TASKS = ("cb", "copa", "rte", "mrpc", "cola", "stsb")
SEEDS = (0, 1, 2)
#: Low-resource scale that fits 18 runs in about an hour on 2 shared CPU cores: the small
#: sets (CB 250, COPA 400) are used whole for 4 epochs, the others capped at 500 examples
#: (the same fixed subset for every seed) for 3 epochs.
TRAIN_LIMIT = 500
EPOCHS = {"cb": 4, "copa": 4}
DEFAULT_EPOCHS = 3
#: What makes two runs comparable (a cached run is reused only when all of these match).
SCALE_KEYS = ("encoder", "lr", "head_lr", "batch_size", "max_length", "train_limit",
              "warmup_ratio", "weight_decay", "max_grad_norm")  # fmt: skip

logger = logging.getLogger("baseline")


def run_config(task: str, seed: int, encoder: str, max_length: int) -> TrainConfig:
    return TrainConfig(
        task=task,
        encoder=encoder,
        epochs=EPOCHS.get(task, DEFAULT_EPOCHS),
        seed=seed,
        train_limit=TRAIN_LIMIT,
        max_length=max_length,
    )


def summarise(runs: dict[str, dict]) -> dict[str, dict]:
    """Mean and sample std (ddof=1) of every metric over the finished seeds of each task."""
    summary = {}
    for task in TASKS:
        done = [r for r in runs.values() if r["task"] == task]
        if not done:
            continue
        names = get_task(task).metric_names
        values = {m: np.array([r["metrics"][m] for r in done]) for m in names}
        summary[task] = {
            "seeds": sorted(r["seed"] for r in done),
            "train_examples": done[0]["train_examples"],
            "epochs": done[0]["config"]["epochs"],
            "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in done])), 1),
            "metrics": {
                m: {
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                }
                for m, v in values.items()
            },
        }
    return summary


def write_markdown(path: Path, command: str, scale: dict, summary: dict[str, dict]) -> None:
    lines = [
        "# Baseline: fine-tuned minilm-l6 student (no retrieval)",
        "",
        "```",
        command,
        "```",
        "",
        f"Encoder `{scale['encoder']}`, max_length {scale['max_length']}, batch "
        f"{scale['batch_size']}, lr {scale['lr']} (head {scale['head_lr']}), AdamW with 10% "
        "linear warmup, length-grouped batches with dynamic padding. Low-resource scale: the "
        "training split is capped at "
        f"{TRAIN_LIMIT:,} examples (one fixed random subset shared by all seeds; CB and COPA "
        "are used whole), 4 epochs for CB and COPA, 3 for the others. Scores are on the "
        "official validation split, x100, mean ± sample std over the seeds listed. CPU only "
        "(2 shared cores).",
        "",
        "| task | metric | mean ± std | seeds | train examples | epochs | train s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, row in summary.items():
        metrics = ", ".join(row["metrics"])
        one_seed = len(row["seeds"]) == 1  # no spread to report yet
        values = ", ".join(
            f"{100 * v['mean']:.1f}" + ("" if one_seed else f" ± {100 * v['std']:.1f}")
            for v in row["metrics"].values()
        )
        seeds = ",".join(map(str, row["seeds"]))
        lines.append(
            f"| {task} | {metrics} | {values} | {seeds} | {row['train_examples']} | "
            f"{row['epochs']} | {row['train_seconds_mean']:.0f} |"
        )
    missing = [f"{t}/{s}" for t in TASKS for s in SEEDS if t not in summary
               or s not in summary[t]["seeds"]]  # fmt: skip
    if missing:
        lines += ["", f"Not finished yet: {', '.join(missing)}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RETRIKT_DATA", "../shared/data"),
        help="folder holding superglue/ and glue/ ($RETRIKT_DATA if set)",
    )
    parser.add_argument("--encoder", default="minilm-l6", help="the student's encoder preset")
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per input, longer ones are truncated"
    )
    parser.add_argument(
        "--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks to run"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=HERE / "results" / "baseline",
        help="writes RESULTS.json and RESULTS.md; runs already in RESULTS.json at the same "
        "scale are reused",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    set_threads(args.threads)
    command = "python experiments/run_baseline.py " + shlex.join(sys.argv[1:] if argv is None
                                                                   else argv)  # fmt: skip
    json_path, md_path = args.results.with_suffix(".json"), args.results.with_suffix(".md")
    saved = json.loads(json_path.read_text()) if json_path.is_file() else {}
    config = asdict(run_config("rte", 0, args.encoder, args.max_length))
    scale = {k: config[k] for k in SCALE_KEYS}
    scale["epochs"] = {task: EPOCHS.get(task, DEFAULT_EPOCHS) for task in TASKS}
    same_scale = all(saved.get("scale", {}).get(k) == v for k, v in scale.items())
    runs: dict[str, dict] = saved.get("runs", {}) if same_scale else {}

    for seed in SEEDS:  # seed-major: a partial table already covers every task
        for task in args.tasks:
            key = f"{task}/{seed}"
            if key in runs:
                logger.info("%s: cached, skipping", key)
                continue
            config = run_config(task, seed, args.encoder, args.max_length)
            with tempfile.TemporaryDirectory(prefix="retrikt-baseline-") as out:
                result = train_student(config, args.data_dir, out)
                record = json.loads((Path(out) / "eval_results.json").read_text())
            runs[key] = {"task": task, "seed": seed, **record}
            logger.info("%s done: %s (%.0f s)", key, result.metrics, result.seconds)
            summary = summarise(runs)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"command": command, "scale": scale, "summary": summary, "runs": runs}
            json_path.write_text(json.dumps(payload, indent=2) + "\n")
            write_markdown(md_path, command, scale, summary)
    write_markdown(md_path, command, scale, summarise(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
