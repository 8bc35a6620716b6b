"""The search's report: Pareto front of proxy loss against latency, chart and table.

A trial is on the front when no other trial is at least as fast *and* at least as good
(lower proxy loss) while better in one of the two. The recommendation for a budget is the
trial with the lowest proxy loss among those whose p50 latency meets it, for the given
budget and for half, three quarters, one and a half and twice it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from retrikt.tasks import get_task

BUDGET_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
#: What the proxy loss and fidelity are, for classification (False) and regression (True).
_PROXY = {
    False: "Proxy loss = KL(teacher soft labels || combined prediction); fidelity = share of "
    "argmax agreement",
    True: "Proxy loss = MSE against the teacher's scores; fidelity = their Pearson correlation",
}


def _number(value: float | None, digits: int) -> str:
    """A table cell; an undefined value (None, NaN) shows as a dash."""
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def pareto_front(trials: list[dict[str, Any]]) -> list[str]:
    """Names of the architectures on the front (by increasing latency)."""
    front, best = [], float("inf")
    for row in sorted(trials, key=lambda t: (t["latency_ms_p50"], t["loss"])):
        if row["loss"] < best and row["name"] not in front:
            front.append(row["name"])
            best = row["loss"]
    return front


def recommendations(trials: list[dict[str, Any]], budget_ms: float) -> list[dict[str, Any]]:
    """For each budget around ``budget_ms``: the lowest-loss trial meeting it (or none)."""
    out = []
    for factor in BUDGET_FACTORS:
        budget = round(budget_ms * factor, 3)
        meeting = [t for t in trials if t["latency_ms_p50"] <= budget]
        best = min(meeting, key=lambda t: t["loss"]) if meeting else None
        out.append({"budget_ms": budget, "trial": best["trial"] if best else None,
                    "name": best["name"] if best else None})  # fmt: skip
    return out


def write_report(result: dict[str, Any], out: Path) -> None:
    """``OUT/search.md`` (tables) and ``OUT/pareto.png`` (the chart)."""
    config, trials = result["config"], result["trials"]
    front = set(result["front"])
    budget = config["latency_budget_ms"]
    lines = [
        f"# Student architecture search: {config['task']}, budget {budget} ms",
        "",
        f"Parent `{config['parent']}` ({config['init']} init), teacher "
        f"`{config['teacher'] or '-'}` for hidden states, store `{config['store']}`; "
        f"{len(trials)} trials, each trained {config['proxy_epochs']} epochs on "
        f"{config['proxy_size']} training examples and scored on {config['proxy_size']} held-out "
        f"store entries. {_PROXY[get_task(config['task']).is_regression]}; latency = p50 at "
        "batch 1, tokenisation and retrieval "
        f"included, {config['latency_threads']} thread(s); reward = -loss - "
        f"{config['penalty']} x max(0, latency - budget).",
        "",
        "| trial | architecture | hidden | params (M) | p50 ms | proxy loss | fidelity | reward "
        "| hidden-state loss | front |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for row in sorted(trials, key=lambda t: t["latency_ms_p50"]):
        hidden = row.get("hidden_loss")  # the trial's last 5 steps; None: no teacher states
        lines.append(
            f"| {row['trial']} | {row['name']} | {row['architecture']['hidden']} | "
            f"{row['params'] / 1e6:.1f} | {row['latency_ms_p50']:.2f} | {row['loss']:.4f} | "
            f"{_number(row['fidelity'], 3)} | {row['reward']:.4f} | "
            f"{_number(hidden, 4)} | "
            f"{'*' if row['name'] in front else ''} |"
        )
    lines += ["", "## Recommended architecture per budget", "", "| budget ms | architecture |",
              "|---:|---|"]  # fmt: skip
    lines += [f"| {r['budget_ms']} | {r['name'] or 'none meets it'} |" for r in
              result["recommended"]]  # fmt: skip
    lines += ["", "## Finalists and the chosen student", ""]
    for f in result["finalists"]:
        held = f.get("heldout_score")
        lines.append(
            f"- {f['name']}{' (the full-width cut of the parent)' if f.get('incumbent') else ''}"
            f": p50 {f['latency_ms_p50']:.2f} ms"
            + (f", held-out training slice score {100 * held:.1f}" if held is not None else "")
        )
    student = result.get("student") or {}
    if student:
        metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in student["metrics"].items())
        lines += ["", f"Winner **{result['winner']['name']}** distilled on the whole training "
                  f"split in {student['train_seconds']} s -> `{student['path']}`; validation: "
                  f"{metrics}."]  # fmt: skip
    (out / "search.md").write_text("\n".join(lines) + "\n")
    plot_front(trials, front, budget, out / "pareto.png", f"{config['task']}: searched students")


def plot_front(
    trials: list[dict[str, Any]], front: set[str], budget: float, path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([t["latency_ms_p50"] for t in trials], [t["loss"] for t in trials], c="0.6",
               label="trials")  # fmt: skip
    on = sorted((t for t in trials if t["name"] in front), key=lambda t: t["latency_ms_p50"])
    on = list({t["name"]: t for t in on}.values())
    ax.plot([t["latency_ms_p50"] for t in on], [t["loss"] for t in on], "o-", c="C0",
            label="Pareto front")  # fmt: skip
    for t in on:
        ax.annotate(t["name"], (t["latency_ms_p50"], t["loss"]), fontsize=7)
    ax.axvline(budget, ls="--", c="C3", label=f"budget {budget} ms")
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel("proxy distillation loss (lower is better)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
