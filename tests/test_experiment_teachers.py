"""``experiments/teachers.py`` keeps the rows of runs on other tasks made in parallel.

Each teacher costs minutes to hours, so one run per core, on different tasks, is the normal
way to fill teachers.md; a run that wrote the results it read at its start would erase the
rows the other run wrote meanwhile."""

from __future__ import annotations

import json
import sys

import pytest
from script_helpers import load_script


@pytest.fixture()
def teachers(monkeypatch):
    return load_script("teachers", monkeypatch)


def _row(accuracy: float) -> dict:
    return {
        "status": "ok", "tuning": "lora", "heldout": {"accuracy": accuracy},
        "validation": {"accuracy": accuracy}, "steps": 1, "minutes": 0.1, "peak_rss_gb": 1.0,
    }  # fmt: skip


def test_a_run_keeps_the_rows_a_parallel_run_wrote_meanwhile(teachers, tmp_path, monkeypatch):
    out = tmp_path / "teachers.md"
    results = out.with_suffix(".json")
    results.write_text(json.dumps({"cb": {"teachers": {}, "notes": ["a note kept by hand"]}}))

    def run_teacher(task, candidate, args):
        # the other process finishes its COPA teacher while this one trains on RTE
        other = json.loads(results.read_text())
        other["copa"] = {"teachers": {"gemma-lora": _row(0.62)}, "commands": [["--tasks", "copa"]]}
        results.write_text(json.dumps(other))
        return _row(0.70)

    monkeypatch.setattr(teachers, "run_teacher", run_teacher)
    argv = ["--tasks", "rte", "--teachers", "qwen-lora", "--no-student", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["teachers.py", *argv])
    teachers.main()

    written = json.loads(results.read_text())
    assert written["copa"]["teachers"]["gemma-lora"]["validation"]["accuracy"] == 0.62
    assert written["rte"]["teachers"]["qwen-lora"]["validation"]["accuracy"] == 0.70
    assert written["cb"]["notes"] == ["a note kept by hand"]
    report = out.read_text()
    assert "| gemma-lora | lora | 62.0 | 62.0 |" in report
    assert "| qwen-lora | lora | 70.0 | 70.0 |" in report
    assert "a note kept by hand" in report


def test_no_teachers_fills_the_student_column_without_training_any(teachers, tmp_path, monkeypatch):
    """The teachers' folders go with their machine; the student-ft column must still fill."""
    out = tmp_path / "teachers.md"
    row = {**_row(0.70), "cpu": "AMD EPYC, fp32"}
    out.with_suffix(".json").write_text(json.dumps({"rte": {"teachers": {"qwen-lora": row}}}))

    def no_training(*args):
        raise AssertionError("--no-teachers trained a teacher")

    student = {"seeds": 3, "metrics": {"accuracy": [0.60, 0.01]}, "minutes": 2.0}
    monkeypatch.setattr(teachers, "run_teacher", no_training)
    monkeypatch.setattr(teachers, "student_ft", lambda task, args: student)
    argv = ["--tasks", "rte", "--no-teachers", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["teachers.py", *argv])
    teachers.main()

    report = out.read_text()
    assert "| student-ft (minilm-l6, 3 seeds) | full | | 60.0 ± 1.0 |" in report
    assert "| qwen-lora | lora | 70.0 | 70.0 | +10.0 | 1 | 0.1 | 1.0 | AMD EPYC, fp32 |" in report
