"""Parity of exported students: PyTorch vs ONNX float32 vs ONNX int8, full validation splits.

For each task a small RetriKT student is trained (``minilm-l6``, ``--train-limit`` training
examples, ``--epochs`` epochs) with a store of training examples whose teacher labels are
their gold labels (a kNN memory: the export concerns the encoder, not where the store came
from), saved, and exported with ``retrikt export`` twice (float32, int8). The three folders
then predict the whole validation split through ``RetriKT.predict_examples`` (retrieval and
mixing included). Reported per task: the largest probability (or score) difference to
PyTorch, the share of inputs with the same label and the same retrieved neighbours, and
the official metrics of each. Students and exports are cached under ``experiments/cache``.

    python experiments/export_parity.py --tasks cb,copa,rte,mrpc,cola,stsb,sst2 \\
        --data-dir ../shared/data --threads 1 --out experiments/results/export_parity
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from retrikt.config import DefaultsHelpFormatter  # noqa: E402

CACHE = REPO / "experiments" / "cache" / "export-parity"

logger = logging.getLogger("export_parity")


def gold_store(task, examples: list, path: Path):
    """A store of ``examples`` whose soft labels are their gold labels (one-hot, or the score)."""
    from retrikt.store import KnowledgeStore, StoreEntry

    names = list(task.label_names) if task.label_names else None
    entries = []
    for ex in examples:
        soft = [float(ex["label"])] if names is None else [0.0] * len(names)
        if names is not None:
            soft[int(ex["label"])] = 1.0
        fields = {name: ex[name] for name in task.fields}
        entries.append(StoreEntry(fields=fields, text=task.render(ex), requested_label=ex["label"],
                                  soft_labels=soft, generator="gold"))  # fmt: skip
    store = KnowledgeStore.create(
        path, task=task.name, label_names=names, encoder_id="placeholder:replaced-by-training",
        dim=384, teacher={"name": "gold labels"},
    )  # fmt: skip
    vectors = np.random.default_rng(0).standard_normal((len(entries), 384)).astype(np.float32)
    store.add(entries, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    store.save()
    return store


def prepare(task_name: str, args: argparse.Namespace) -> dict[str, Path]:
    """The trained student folder and its two exports (cached)."""
    from retrikt.cli import main as retrikt
    from retrikt.student import RetriKT, TrainConfig
    from retrikt.tasks import get_task
    from retrikt.training import subsample, train

    task = get_task(task_name)
    root = CACHE / f"{task.name}-{args.encoder}-{args.train_limit}-{args.epochs}"
    folders = {"pytorch": root / "student", "onnx-fp32": root / "fp32", "onnx-int8": root / "int8"}
    if not (folders["pytorch"] / "config.json").is_file():
        config = TrainConfig(task=task.name, encoder=args.encoder, epochs=args.epochs,
                             train_limit=args.train_limit, seed=0)  # fmt: skip
        examples = subsample(task.read("train", args.data_dir), args.train_limit)
        shutil.rmtree(root / "source-store", ignore_errors=True)  # left by an interrupted run
        source = gold_store(task, examples, root / "source-store")
        model = RetriKT.from_encoder(task, args.encoder)
        model.attach_store(source, k=8)
        train(model, examples, config, source.entries())
        model.refresh_keys()
        model.save_pretrained(folders["pytorch"])
    for kind, extra in (("onnx-fp32", []), ("onnx-int8", ["--quantize", "int8"])):
        if not (folders[kind] / "model.onnx").is_file():
            code = retrikt(["export", "--model", str(folders["pytorch"]), "--out",
                            str(folders[kind]), *extra])  # fmt: skip
            if code:
                raise SystemExit(f"retrikt export failed for {task.name} ({kind})")
    return folders


def compare(task_name: str, folders: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    from retrikt.student import RetriKT
    from retrikt.tasks import get_task

    task = get_task(task_name)
    examples = task.read("validation", args.data_dir)
    out: dict[str, Any] = {"task": task.name, "examples": len(examples), "variants": {}}
    results = {}
    for kind, folder in folders.items():
        model = RetriKT.from_pretrained(folder)
        start = time.perf_counter()
        raw = model.raw_outputs(examples, batch_size=32)
        final, _ = model.combined(raw)
        seconds = time.perf_counter() - start
        predictions = task.predictions(final)
        labels = [round(p) if task.is_regression else p for p in predictions]
        results[kind] = (final, raw.rows, labels, raw.model)
        out["variants"][kind] = {
            "metrics": task.evaluate(predictions, examples),
            "examples_per_s": round(len(examples) / seconds, 1),
            "model_mb": round(sum(f.stat().st_size for f in folder.rglob("*")
                                  if f.is_file() and "store" not in f.parts) / 1e6, 1),
        }  # fmt: skip
    reference, ref_rows, ref_labels, ref_head = results["pytorch"]
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    for kind in ("onnx-fp32", "onnx-int8"):
        final, rows, labels, head = results[kind]
        flipped = np.array([a != b for a, b in zip(labels, ref_labels, strict=True)])
        out["variants"][kind] |= {
            # Where labels differ, how sure PyTorch was: the gap between its top two classes.
            "flipped_max_margin": None
            if top2 is None or not flipped.any()
            else float((top2[:, 1] - top2[:, 0])[flipped].max()),
            "same_head_label": None
            if top2 is None
            else float(np.mean(head.argmax(1) == ref_head.argmax(1))),
            "max_abs_diff": float(np.abs(final - reference).max()),
            "same_label": float(np.mean([a == b for a, b in zip(labels, ref_labels, strict=True)])),
            "same_neighbours": float(np.mean((rows == ref_rows).all(axis=1))),
            "neighbour_overlap": float(np.mean([len(set(a) & set(b)) / len(b)
                                                for a, b in zip(rows, ref_rows, strict=True)])),
        }  # fmt: skip
    return out


def render(report: dict[str, Any]) -> str:
    rows = []
    for r in report["tasks"]:
        v = r["variants"]
        pt = v["pytorch"]["metrics"]
        for kind in ("onnx-fp32", "onnx-int8"):
            d = v[kind]
            change = ", ".join(
                f"{name} {100 * (d['metrics'][name] - pt[name]):+.2f}" for name in pt
            )
            head = "-" if d["same_head_label"] is None else f"{100 * d['same_head_label']:.1f}%"
            margin = "-" if d["flipped_max_margin"] is None else f"{d['flipped_max_margin']:.3f}"
            rows.append(
                f"| {r['task']} | {r['examples']} | {kind} | {d['max_abs_diff']:.1e} | "
                f"{100 * d['same_label']:.1f}% | {head} | {margin} | "
                f"{100 * d['same_neighbours']:.1f}% | {100 * d['neighbour_overlap']:.1f}% | "
                f"{change} |"
            )
    scores = []
    for r in report["tasks"]:
        v = r["variants"]
        cells = [
            ", ".join(f"{name} {100 * value:.1f}" for name, value in v[kind]["metrics"].items())
            for kind in ("pytorch", "onnx-fp32", "onnx-int8")
        ]
        speed = " / ".join(
            str(v[k]["examples_per_s"]) for k in ("pytorch", "onnx-fp32", "onnx-int8")
        )
        scores.append(f"| {r['task']} | {' | '.join(cells)} | {speed} |")
    fp32_ok = all(r["variants"]["onnx-fp32"]["max_abs_diff"] <= 1e-4 for r in report["tasks"])
    int8_ok = all(r["variants"]["onnx-int8"]["same_label"] >= 0.99 for r in report["tasks"])
    nl = "\n"
    sizes = report["tasks"][0]["variants"]
    return f"""# Export parity: PyTorch vs ONNX float32 vs ONNX int8 (full validation splits)

Command: `{report["command"]}`

Each task's student: `{report["encoder"]}`, trained {report["epochs"]} epoch(s) on
{report["train_limit"]} training examples with a store of those examples (teacher labels =
gold labels), saved, then `retrikt export --format onnx` and `retrikt export --format onnx
--quantize int8`. All three folders predict the whole validation split through
`RetriKT.predict_examples` (tokenizer, encoder, k=8 retrieval, mixing). The students are
small and briefly trained (parity is about the export, not the score); the metric columns
show the int8 score change per task. "Head alone": the label of the student's own
prediction before the neighbours are mixed in. "Largest margin": among inputs whose label
changed, the largest gap between PyTorch's top two probabilities (a small number: only
near-ties flipped). "Same ranked neighbours": the k rows retrieved, in
the same order; "neighbour overlap": the share of PyTorch's k rows also retrieved. STS-B's
"label" is its score rounded to the nearest grade (0-5); its "max diff" is in score units.

Targets: float32 probabilities within 1e-4 of PyTorch on every input: **{"met" if fp32_ok else "missed"}**;
int8 same label on >= 99% of inputs: **{"met" if int8_ok else "missed"}** (per task below).

| task | inputs | export | max abs diff to PyTorch | same label | same label, head alone | largest PyTorch margin among changed labels | same ranked neighbours | neighbour overlap | metric change (points) |
|---|---|---|---|---|---|---|---|---|---|
{nl.join(rows)}

## Official metrics (x100) and prediction speed

Encoder files ({sizes["pytorch"]["model_mb"]} MB PyTorch, {sizes["onnx-fp32"]["model_mb"]} MB
ONNX float32, {sizes["onnx-int8"]["model_mb"]} MB int8, store excluded). Speed: examples/s
over the validation split at batch 32, {report["threads"]} thread(s), on a 2-core machine
**shared with other jobs** ({report["machine"]}): indicative only; see `latency.md` for
the controlled benchmark.

| task | PyTorch | ONNX float32 | ONNX int8 | examples/s (PyTorch / fp32 / int8) |
|---|---|---|---|---|
{nl.join(scores)}
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--tasks", default="cb,copa,rte,mrpc,cola,stsb", help="comma-separated task names"
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RETRIKT_DATA", "../shared/data"),
        help="folder holding superglue/ and glue/ ($RETRIKT_DATA if set)",
    )
    parser.add_argument("--encoder", default="minilm-l6", help="the students' encoder preset")
    parser.add_argument(
        "--train-limit",
        type=int,
        default=256,
        help="random training examples each student trains on and keeps in its store",
    )
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per student")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the ONNX sessions use as many)"
    )
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    tasks = []
    for name in args.tasks.split(","):
        folders = prepare(name, args)
        tasks.append(compare(name, folders, args))
        logger.info("%s", json.dumps(tasks[-1]))
    load = os.getloadavg()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "encoder": args.encoder,
        "train_limit": args.train_limit,
        "epochs": args.epochs,
        "threads": args.threads,
        "machine": f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) "
        f"on {os.cpu_count()} cores at the end",
        "tasks": tasks,
    }
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(render(report))


if __name__ == "__main__":
    main()
