"""The harness's report: mean ± std over seeds, a Markdown table, a JSON file and a chart."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from retrikt.cache import write_json_atomic
from retrikt.harness.methods import METHODS
from retrikt.harness.scales import HarnessConfig
from retrikt.tasks import get_task

logger = logging.getLogger(__name__)


def _std(values: list[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for a single run."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, method): mean ± std of every metric and of the task score over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"]), []).append(row)
    out = []
    for (task, method), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        entry: dict[str, Any] = {"task": task, "method": method, "runs": len(ok)}
        if not ok:
            entry["status"] = group[0]["status"]
            entry["reason"] = group[0].get("reason", "")
            out.append(entry)
            continue
        missing = [r for r in group if r["status"] != "ok"]  # failed, or pending
        entry["status"] = "ok" if not missing else "partial"
        if missing:
            entry["reason"] = missing[0].get("reason", "")
            entry["missing_seeds"] = [r["seed"] for r in missing]
        metric_names = list(ok[0]["metrics"])
        entry["metrics"] = {
            name: {
                "mean": float(np.mean([r["metrics"][name] for r in ok])),
                "std": _std([r["metrics"][name] for r in ok]),
            }
            for name in metric_names
        }
        scores = [r["score"] for r in ok]
        entry["score"] = {"mean": float(np.mean(scores)), "std": _std(scores)}
        entry["seeds"] = [r["seed"] for r in ok]
        entry["params"] = ok[0]["params"]
        entry["train_seconds"] = float(np.mean([r["train_seconds"] for r in ok]))
        entry["artefact_seconds"] = ok[0].get("artefact_seconds", 0.0)
        latencies = [r["latency_ms_p50"] for r in ok if r.get("latency_ms_p50") is not None]
        entry["latency_ms_p50"] = float(np.median(latencies)) if latencies else None
        entry["eval_examples"] = ok[0]["eval_examples"]
        entry["train_examples"] = ok[0]["train_examples"]
        out.append(entry)
    return out


def averages(summary: list[dict], tasks: list[str], methods: list[str]) -> dict[str, float]:
    """Per method, the mean task score over ``tasks``, only when it ran on all of them."""
    scores: dict[str, dict[str, float]] = {}
    for entry in summary:
        if "score" in entry:
            scores.setdefault(entry["method"], {})[entry["task"]] = entry["score"]["mean"]
    return {
        m: float(np.mean([scores[m][t] for t in tasks]))
        for m in methods
        if m in scores and all(t in scores[m] for t in tasks)
    }


def _cell(stat: dict[str, float] | None, seeded: bool) -> str:
    if stat is None:
        return "—"
    mean = f"{100 * stat['mean']:.1f}"
    return f"{mean} ± {100 * stat['std']:.1f}" if seeded else mean


def render_markdown(config: HarnessConfig, rows: list[dict], summary: list[dict]) -> str:
    tasks = [get_task(t).name for t in config.tasks]
    by_key = {(e["task"], e["method"]): e for e in summary}
    seeded = {m: (METHODS[m].seeded if m in METHODS else True) for m in config.methods}
    lines = [
        f"# RetriKT evaluation: {config.name}",
        "",
        "```",
        config.command or "(run from Python)",
        "```",
        "",
        f"- {config.scale.describe()}.",
        f"- Student encoder `{config.encoder}`, generator `{config.generator}`, seeds "
        f"{', '.join(map(str, config.seeds))}; every number is on the official validation "
        "split with the task's official metrics, ×100, as mean ± sample std over seeds "
        "(methods that do not depend on the seed ran once and show no ±).",
        "- Task score = mean of the task's official metrics (the GLUE convention). Latency: "
        f"CPU, batch 1, p50 in ms, {config.threads or os.cpu_count()} torch thread(s), on a "
        f"{os.cpu_count()}-core machine shared with other jobs (indicative only). Train s: "
        "seconds to fit the method itself (mean over seeds; in the summary, over tasks).",
        "",
        "## Summary (task score)",
        "",
        "| method | " + " | ".join(tasks) + " | average | params | train s | latency ms |",
        "|---|" + "---:|" * (len(tasks) + 4),
    ]
    avg = averages(summary, tasks, config.methods)
    for method in config.methods:
        cells, params, train, latency = [], set(), [], []
        for task in tasks:
            entry = by_key.get((task, method))
            if entry is None or "score" not in entry:
                cells.append("n/a" if entry and entry["status"] == "n/a" else "—")
                continue
            cells.append(_cell(entry["score"], seeded[method]))
            params.add(entry["params"])
            train.append(entry["train_seconds"])
            if entry["latency_ms_p50"] is not None:
                latency.append(entry["latency_ms_p50"])
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {f'{100 * avg[method]:.1f}' if method in avg else '—'}"
            + f" | {_params(params)} | {f'{np.mean(train):.0f}' if train else '—'}"
            + f" | {f'{np.median(latency):.1f}' if latency else '—'} |"
        )
    for task in tasks:
        task_obj = get_task(task)
        entries = [by_key[(task, m)] for m in config.methods if (task, m) in by_key]
        if not entries:
            continue
        n_eval = next((e["eval_examples"] for e in entries if "eval_examples" in e), "?")
        n_train = next((e["train_examples"] for e in entries if "train_examples" in e), "?")
        metric_names = list(task_obj.metric_names)
        lines += [
            "",
            f"## {task} ({n_train} training / {n_eval} validation examples)",
            "",
            "| method | "
            + " | ".join(metric_names)
            + " | runs | params | train s | store/prompt build s | latency ms |",
            "|---|" + "---:|" * (len(metric_names) + 5),
        ]
        for entry in entries:
            method = entry["method"]
            if "metrics" not in entry:
                note = entry.get("reason", "")
                lines.append(
                    f"| {method} | {entry['status']}: {note} |" + " |" * (len(metric_names) + 4)
                )
                continue
            cells = [_cell(entry["metrics"][name], seeded[method]) for name in metric_names]
            latency = entry["latency_ms_p50"]
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {entry['runs']}"
                + f" | {_params({entry['params']})} | {entry['train_seconds']:.0f}"
                + f" | {entry['artefact_seconds'] or '—'}"
                + f" | {'—' if latency is None else f'{latency:.1f}'} |"
            )
            if entry["status"] == "partial":
                seeds = ", ".join(map(str, entry["missing_seeds"]))
                lines.append(
                    f"|  | seed {seeds}: {entry['reason']} |" + " |" * (len(metric_names) + 4)
                )
    failures = [r for r in rows if r["status"] == "failed"]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {r['task']} / {r['method']} / seed {r['seed']}: {r['reason']}" for r in failures
        ]
    descriptions = [f"- `{m}`: {METHODS[m].description}" for m in config.methods if m in METHODS]
    lines += ["", "## Methods", "", *descriptions, ""]
    return "\n".join(lines)


def _params(values: set[int]) -> str:
    """Parameter counts in millions; heads of different tasks differ by a few parameters, so
    counts that print alike are shown once."""
    if not values:
        return "—"
    return "/".join(dict.fromkeys(f"{v / 1e6:.1f}M" for v in sorted(values)))


def render_chart(config: HarnessConfig, summary: list[dict], path: Path) -> None:
    """Grouped bars: task score per method and task, with the seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [get_task(t).name for t in config.tasks]
    by_key = {(e["task"], e["method"]): e for e in summary if "score" in e}
    avg = averages(summary, tasks, config.methods)
    columns = tasks + (["average"] if avg else [])
    width = 0.8 / max(len(config.methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(columns) + 2), 4.5))
    x = np.arange(len(columns))
    for i, method in enumerate(config.methods):
        means, stds = [], []
        for task in tasks:
            entry = by_key.get((task, method))
            means.append(100 * entry["score"]["mean"] if entry else np.nan)
            stds.append(100 * entry["score"]["std"] if entry else 0.0)
        if avg:
            means.append(100 * avg.get(method, np.nan))
            stds.append(0.0)
        ax.bar(
            x + (i - (len(config.methods) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=2,
            label=method,
        )
    ax.set_xticks(x, columns)
    ax.set_ylabel("task score (×100, validation)")
    ax.set_title(f"{config.name}: {config.encoder}, scale {config.scale.name}")
    ax.legend(
        fontsize=8,
        ncols=min(len(config.methods), 4),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(config: HarnessConfig, rows: list[dict]) -> dict[str, Path]:
    """Write ``<results_dir>/<name>.md``, ``.json`` and ``.png``; returns their paths."""
    summary = summarise(rows)
    base = Path(config.results_dir) / config.name
    paths = {ext: base.with_suffix(f".{ext}") for ext in ("md", "json", "png")}
    payload = {
        "name": config.name,
        "command": config.command,
        "scale": asdict(config.scale),
        "scale_description": config.scale.describe(),
        "config": {
            k: v
            for k, v in asdict(config).items()
            if k not in ("scale", "command", "stores", "teachers")
        }
        | {"stores": {k: str(v) for k, v in config.stores.items()}}
        | {"teachers": {k: str(v) for k, v in config.teachers.items()}},
        "average_task_score": averages(summary, config.tasks, config.methods),
        "summary": summary,
        "runs": rows,
    }
    write_json_atomic(paths["json"], payload)
    paths["md"].write_text(render_markdown(config, rows, summary))
    render_chart(config, summary, paths["png"])
    logger.info("wrote %s (.json, .png)", paths["md"])
    return paths
