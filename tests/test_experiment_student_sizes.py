"""``experiments/student_sizes.py`` pairs RetriKT with its baselines seed by seed.

The claim the student-size axis tests is a *difference* (RetriKT's gain over fine-tuning grows
as the student shrinks); two rows' spreads overlap long before their paired difference does,
so the report computes the difference per seed, and only on the seeds both methods ran."""

from __future__ import annotations

import json
import statistics
import sys

import pytest
from script_helpers import load_script


@pytest.fixture()
def sizes(monkeypatch):
    return load_script("student_sizes", monkeypatch)


def _table(
    path, encoder: str, params: int, scores: dict[str, dict[int, float]], store: str = "s"
) -> None:
    """A harness table of CB on ``store`` with the given per-seed scores (missing = pending)."""
    runs, summary = [], []
    for method, by_seed in scores.items():
        for seed, score in by_seed.items():
            runs.append(
                {"task": "cb", "method": method, "seed": seed, "status": "ok", "score": score}
            )
        values = list(by_seed.values())
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        status = "ok" if len(values) == 3 else "partial"  # the harness's word for seeds to run
        summary.append(
            {
                "task": "cb", "method": method, "runs": len(values), "status": status,
                "score": {"mean": mean, "std": std}, "params": params, "latency_ms_p50": 10.0,
            }
        )  # fmt: skip
    runs.append({"task": "cb", "method": "retrikt", "seed": 9, "status": "failed"})
    table = {
        "config": {"encoder": encoder, "stores": {"cb": store}},
        "scale": {"name": "full"},
        "runs": runs,
    }
    path.write_text(json.dumps({**table, "summary": summary}))


def test_gaps_are_paired_by_seed_and_listed_largest_student_first(sizes, tmp_path, monkeypatch):
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    _table(
        small, "tiny", 10_000_000,
        {
            "student-ft": {0: 0.50, 1: 0.60},
            "student-kd": {0: 0.55, 1: 0.55, 2: 0.70},
            "retrikt": {0: 0.54, 1: 0.62, 2: 0.90},  # seed 2 has no student-ft to pair with
        },
    )  # fmt: skip
    _table(large, "big", 20_000_000, {"student-ft": {0: 0.60}, "retrikt": {0: 0.58}})
    out = tmp_path / "sizes"
    monkeypatch.setattr(
        sys, "argv", ["student_sizes.py", "--out", str(out), str(small), str(large)]
    )
    sizes.main()

    report = out.with_suffix(".md").read_text()
    gaps = report.split("paired by seed")[1].splitlines()
    rows = [line for line in gaps if line.startswith("| big") or line.startswith("| tiny")]
    # big first (20M), and with no student-kd run it has no second gap
    assert rows[0] == "| big | 20.0 | -2.0 (n=1) | — |"
    # tiny: ft gaps +4, +2 -> 3.0 ± 1.4 on seeds 0-1; kd gaps -1, +7, +20 -> 8.7 ± 10.6
    assert rows[1] == "| tiny | 10.0 | +3.0 ± 1.4 (n=2) | +8.7 ± 10.6 (n=3) |"
    # rows with seeds still to run are shown, and say over how many seeds they stand
    assert "| tiny | student-ft | 55.0 ± 7.1 (n=2) |" in report
    assert "| tiny | retrikt | 68.7 ± 18.9 |" in report  # all three seeds ran: no n=
    assert out.with_suffix(".png").stat().st_size > 0


def test_each_store_is_its_own_curve_and_one_student_stores_are_left_out(
    sizes, tmp_path, monkeypatch
):
    """The axis compares students on one store: a task run on two stores gives two curves,
    and a store that only one student ran (a main table's other column) gives none."""
    tables = []
    for name, encoder, params, store, score in [
        ("a", "big", 20_000_000, "stores/old", 0.6),
        ("b", "tiny", 10_000_000, "stores/old", 0.5),
        ("c", "big", 20_000_000, "stores/new", 0.7),
        ("d", "tiny", 10_000_000, "stores/new", 0.65),
        ("e", "big", 20_000_000, "stores/lonely", 0.9),
    ]:
        tables.append(tmp_path / f"{name}.json")
        _table(
            tables[-1], encoder, params, {"retrikt": dict.fromkeys((0, 1, 2), score)}, store=store
        )
    out = tmp_path / "sizes"
    monkeypatch.setattr(sys, "argv", ["student_sizes.py", "--out", str(out), *map(str, tables)])
    sizes.main()

    report = out.with_suffix(".md").read_text()
    assert "## cb (old)" in report and "## cb (new)" in report
    new = report.split("## cb (new)")[1]
    assert "Store: `stores/new`" in new
    assert "| big | retrikt | 70.0 ± 0.0 |" in new and "| tiny | retrikt | 65.0 ± 0.0 |" in new
    assert "60.0" not in new  # the old store's rows stay in their own section
    assert "lonely" not in report and "90.0" not in report


def test_tables_without_a_size_axis_are_refused(sizes, tmp_path, monkeypatch, capsys):
    only = tmp_path / "only.json"
    _table(only, "big", 20_000_000, {"retrikt": dict.fromkeys((0, 1, 2), 0.6)})
    monkeypatch.setattr(sys, "argv", ["student_sizes.py", "--out", str(tmp_path / "o"), str(only)])
    with pytest.raises(SystemExit):
        sizes.main()
    assert "more than one student" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()
