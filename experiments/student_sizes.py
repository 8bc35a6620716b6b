"""The extreme-compression axis: score against latency and parameters as the student shrinks.

Issue 12.5: the paper's regime is a student around 1% of its LLM. This reads the harness
tables of one task set run with several student encoders against the same store (one
``retrikt evaluate ... --encoder E --store TASK=DIR`` table per encoder) and writes, per task
and store, the score of ``student-ft``, ``student-kd`` and ``retrikt`` against the student's
p50 latency at batch 1 and its parameter count, plus the teacher's row when the tables have
it::

    .venv/bin/python experiments/student_sizes.py --out experiments/results/student_sizes \\
        experiments/results/table-full-minilm-l6.json \\
        experiments/results/table-full-minilm-l3.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from retrikt.config import DefaultsHelpFormatter  # noqa: E402
from retrikt.harness.report import format_mean_sd, mean_sd  # noqa: E402

METHODS = ("student-ft", "student-kd", "retrikt")
REFERENCES = ("teacher", "llm-prompt")  # whichever the tables have: the model being replaced
logger = logging.getLogger("student_sizes")


Group = tuple[str, str | None]  # (task, the store its students used; None if not recorded)


def collect(paths: list[Path]) -> dict[Group, list[dict]]:
    """Rows by (task, store): one per (encoder, method) with score, latency and parameters.

    Grouped by store as well as task because the axis compares students *on the same store*:
    a table that ran a task on another store (say the main table's COPA column, beside a
    size sweep on a newer COPA store) must not join that task's curve."""
    by_group: dict[Group, list[dict]] = {}
    for path in paths:
        table = json.loads(path.read_text())
        encoder = table["config"]["encoder"]
        stores = table["config"].get("stores") or {}
        per_seed: dict[tuple[str, str], dict[int, float]] = {}
        for run in table["runs"]:
            if run["status"] == "ok":
                per_seed.setdefault((run["task"], run["method"]), {})[run["seed"]] = run["score"]
        for row in table["summary"]:
            # "partial": some seeds still to run (units fill in over sessions); shown with n=
            if row["status"] not in ("ok", "partial") or row["method"] not in METHODS + REFERENCES:
                continue
            by_group.setdefault((row["task"], stores.get(row["task"])), []).append(
                {
                    "encoder": encoder,
                    "method": row["method"],
                    "score": 100 * row["score"]["mean"],
                    "std": 100 * row["score"]["std"],
                    "runs": row["runs"],
                    "partial": row["status"] == "partial",
                    "latency_ms": row["latency_ms_p50"],
                    "params_m": row["params"] / 1e6,
                    "scale": table["scale"]["name"],
                    "per_seed": per_seed.get((row["task"], row["method"]), {}),
                }
            )
    return by_group


def size_axes(groups: dict[Group, list[dict]]) -> dict[Group, list[dict]]:
    """The groups with more than one student: one student on a store has no size axis.

    The harness tables of a sweep also hold tasks that only the largest student ran (the main
    table's other columns); they would otherwise show as one-point curves."""
    kept = {}
    for group, rows in groups.items():
        students = {r["encoder"] for r in rows if r["method"] in METHODS}
        if len(students) > 1:
            kept[group] = rows
        else:
            logger.info("%s on %s: one student only, no size axis; left out", *group)
    return kept


def _title(group: Group, groups: dict[Group, list[dict]]) -> str:
    """The task, with the store's folder name when the task has curves on two stores."""
    task, store = group
    if store is not None and sum(t == task for t, _ in groups) > 1:
        return f"{task} ({Path(store).name})"
    return task


def _unique_references(rows: list[dict]) -> list[dict]:
    """The teacher appears in every table: keep it once."""
    seen, kept = set(), []
    for row in rows:
        if row["method"] in REFERENCES:
            if row["method"] in seen:
                continue
            seen.add(row["method"])
        kept.append(row)
    return kept


def paired_gaps(rows: list[dict]) -> list[dict]:
    """Per student, largest first: ``retrikt`` minus each baseline, seed by seed.

    Differences are taken within a seed, then averaged, so the spread shown is that of the
    difference itself rather than the two rows' spreads side by side: the test of "RetriKT
    wins here". Only seeds both methods ran count (n says how many)."""
    by_encoder: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["method"] in METHODS:
            by_encoder.setdefault(row["encoder"], {})[row["method"]] = row
    with_retrikt = [(e, m) for e, m in by_encoder.items() if "retrikt" in m]
    gaps = []
    for encoder, methods in sorted(with_retrikt, key=lambda em: -_size(em[1]["retrikt"])):
        gap = {"encoder": encoder, "params_m": methods["retrikt"]["params_m"]}
        for baseline in ("student-ft", "student-kd"):
            if baseline not in methods:
                continue
            ours, theirs = methods["retrikt"]["per_seed"], methods[baseline]["per_seed"]
            seeds = sorted(set(ours) & set(theirs))
            if seeds:
                mean, sd = mean_sd([100 * (ours[s] - theirs[s]) for s in seeds])
                gap[baseline] = {"mean": mean, "std": sd, "runs": len(seeds)}
        gaps.append(gap)
    return gaps


def _format_gap(gap: dict | None) -> str:
    if gap is None:
        return "—"
    sign = "+" if gap["mean"] >= 0 else ""
    return f"{sign}{format_mean_sd(gap['mean'], gap['std'], gap['runs'])} (n={gap['runs']})"


def write_markdown(groups: dict[Group, list[dict]], out: Path, command: str) -> None:
    lines = [
        "# Student size: score against latency and parameters",
        "",
        "```",
        command,
        "```",
        "",
        "Score = mean of the task's official metrics x100 (mean ± sd over seeds); latency = p50 "
        "at batch 1, one example at a time, tokenisation included (as the harness measures "
        "it); the teacher row is the model the student replaces. *of teacher*: the score as a "
        "share of the teacher's; *speedup*: the teacher's p50 over the student's (batch 1, "
        "so a throughput ratio for one-at-a-time serving).",
        "",
    ]
    for group, rows in groups.items():
        lines += [f"## {_title(group, groups)}", ""]
        if group[1] is not None:
            lines += [f"Store: `{group[1]}` (the same for every student below).", ""]
        lines += [
            "| student | method | score | p50 ms | params (M) | of teacher | speedup |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        rows = _unique_references(rows)
        teacher = next((r for r in rows if r["method"] in REFERENCES), None)
        for row in rows:
            encoder = "-" if row["method"] in REFERENCES else row["encoder"]
            share = speedup = ""
            if teacher is not None and row is not teacher:
                share = f"{100 * row['score'] / teacher['score']:.0f}%"
                speedup = f"{teacher['latency_ms'] / row['latency_ms']:.0f}x"
            shown = format_mean_sd(row["score"], row["std"], row["runs"])
            if row["partial"]:
                shown += f" (n={row['runs']})"
            lines.append(
                f"| {encoder} | {row['method']} | {shown} | "
                f"{row['latency_ms']:.1f} | {row['params_m']:.1f} | {share} | {speedup} |"
            )
        lines += [
            "",
            "RetriKT minus each baseline, paired by seed (mean ± sd of the differences):",
            "",
            "| student | params (M) | retrikt − student-ft | retrikt − student-kd |",
            "|---|---:|---:|---:|",
        ]
        for gap in paired_gaps(rows):
            lines.append(
                f"| {gap['encoder']} | {gap['params_m']:.1f} | "
                f"{_format_gap(gap.get('student-ft'))} | {_format_gap(gap.get('student-kd'))} |"
            )
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def _size(row: dict) -> float:
    return row["params_m"]


def plot(groups: dict[Group, list[dict]], out: Path) -> None:
    fig, axes = plt.subplots(2, len(groups), figsize=(max(5, 4 * len(groups)), 7), squeeze=False)
    for col, group in enumerate(groups):
        rows = _unique_references(groups[group])
        for row_axis, (field, label) in enumerate(
            (("latency_ms", "p50 latency at batch 1 (ms)"), ("params_m", "parameters (M)"))
        ):
            ax = axes[row_axis][col]
            for method in METHODS:
                # Joined in order of size, so a line runs from the largest student down.
                ordered = sorted((r for r in rows if r["method"] == method), key=_size)
                if ordered:
                    ax.errorbar(
                        [r[field] for r in ordered],
                        [r["score"] for r in ordered],
                        yerr=[r["std"] for r in ordered],
                        marker="o",
                        capsize=3,
                        label=method,
                    )
            for ref in (r for r in rows if r["method"] in REFERENCES):
                ax.scatter([ref[field]], [ref["score"]], marker="*", s=150, label=ref["method"])
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label)
            ax.set_title(_title(group, groups))
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("score")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("tables", nargs="+", type=Path, help="harness .json tables")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/results/student_sizes"),
        help="writes OUT.md and OUT.png",
    )
    parser.add_argument("--tasks", help="comma-separated tasks to show (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    groups = size_axes(collect(args.tables))
    if args.tasks:
        groups = {g: rows for g, rows in groups.items() if g[0] in args.tasks.split(",")}
    if not groups:
        parser.error("no task in these tables ran more than one student on one store")
    command = ".venv/bin/python experiments/student_sizes.py " + shlex.join(sys.argv[1:])
    write_markdown(groups, args.out, command)
    plot(groups, args.out)
    logger.info("wrote %s.md and .png", args.out)


if __name__ == "__main__":
    main()
