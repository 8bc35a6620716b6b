"""``experiments/multi_teacher.py`` keeps the rows of runs of other variants made in parallel.

A student costs up to an hour a seed, so one run per core, each on its own variants, is the
normal way to fill multi_teacher.md; a run that wrote the results it read at its start would
erase the rows the other run wrote meanwhile, and one command a task would misname them. Rows
are grouped by task and lead teacher: a retrained teacher's seeds are not averaged with the
old one's."""

from __future__ import annotations

import json

import pytest
from script_helpers import load_script

RTE = "rte / tuned:rte:qwen"  # a section: the task and its lead teacher


@pytest.fixture()
def multi_teacher(monkeypatch):
    return load_script("multi_teacher", monkeypatch)


def _store(name: str, *ids: str) -> dict:
    teachers = [{"id": i, "validation": {"accuracy": 0.7}} for i in ids or ["tuned:rte:qwen"]]
    return {
        "name": name, "entries": 10, "build_seconds": 60.0, "teachers": teachers,
        "label_validation": {"accuracy": 0.7}, "combination": None, "rationales": {},
        "report": {"agreement": {}, "train": {}}, "demos": None, "rationale_examples": [],
    }  # fmt: skip


def _student(accuracy: float) -> dict:
    return {"metrics": {"accuracy": accuracy}, "seconds": 120.0}


def test_a_run_keeps_the_rows_a_parallel_run_wrote_meanwhile(multi_teacher, tmp_path, monkeypatch):
    results = tmp_path / "multi_teacher.json"
    earlier = {"variants": {"single": {"store": _store("single"), "train": {},
                                       "seeds": {"0": _student(0.60)},
                                       "command": "multi_teacher.py --tasks copa"}},
               "task": "copa"}  # fmt: skip
    results.write_text(json.dumps({"results": {"copa / tuned:rte:qwen": earlier}}))

    def student_for(ctx, cache, variant, store, spec, seed):
        # the other process finishes its 'single' seed meanwhile, with its own command
        other = json.loads(results.read_text())
        row = {"store": _store("single"), "train": {}, "seeds": {"0": _student(0.62)},
               "command": "multi_teacher.py --variants single"}  # fmt: skip
        rte = other["results"].setdefault(RTE, {"task": "rte", "variants": {}})
        rte["variants"]["single"] = row
        results.write_text(json.dumps(other))
        return _student(0.66)

    monkeypatch.setattr(multi_teacher, "TaskContext", lambda *args: None)
    monkeypatch.setattr(multi_teacher, "_teachers", lambda args, task: ["qwen", "gemma"])
    monkeypatch.setattr(multi_teacher, "store_for", lambda *args: ("store", {}, {}))
    monkeypatch.setattr(multi_teacher, "store_summary", lambda store, info: _store("multi-mean"))
    monkeypatch.setattr(multi_teacher, "student_for", student_for)
    argv = ["--data-dir", "data", "--tasks", "rte", "--variants", "multi-mean", "--seeds", "1",
            "--results-dir", str(tmp_path)]  # fmt: skip
    multi_teacher.main(argv)

    written = json.loads(results.read_text())["results"]
    assert written["copa / tuned:rte:qwen"] == earlier
    rte = written[RTE]["variants"]
    assert rte["single"]["seeds"]["0"]["metrics"]["accuracy"] == 0.62
    assert rte["multi-mean"]["seeds"] == {"1": _student(0.66)}
    report = (tmp_path / "multi_teacher.md").read_text()
    commands = ["multi_teacher.py --tasks copa", "multi_teacher.py --variants single",
                "multi_teacher.py --data-dir data --tasks rte --variants multi-mean"]  # fmt: skip
    assert all(command in report for command in commands)
    assert "| single | single | 70.0 | 62.0 | 1 |" in report
    assert "| multi-mean | multi-mean | 70.0 | 66.0 | 1 |" in report


def _record_over(multi_teacher, tmp_path, monkeypatch, new: dict) -> dict:
    """``record`` of ``new`` over an 'rte single' row of seed 0 led by tuned:rte:qwen."""
    row = {"store": _store("single"), "train": {}, "seeds": {"0": _student(0.60)},
           "command": "first run"}  # fmt: skip
    (tmp_path / "multi_teacher.json").write_text(
        json.dumps({"results": {RTE: {"task": "rte", "variants": {"single": row}}}})
    )
    monkeypatch.setattr(multi_teacher, "write_report", lambda results, args: None)
    args = type("Args", (), {"results_dir": str(tmp_path)})()
    return multi_teacher.record(args, "rte", new.pop("variant"), new)


def test_a_rerun_of_one_seed_keeps_the_other_seeds(multi_teacher, tmp_path, monkeypatch):
    new = {"variant": "single", "store": _store("single"), "train": {},
           "seeds": {"1": _student(0.64)}, "command": "second run"}  # fmt: skip
    results = _record_over(multi_teacher, tmp_path, monkeypatch, new)
    assert set(results[RTE]["variants"]["single"]["seeds"]) == {"0", "1"}
    assert results[RTE]["variants"]["single"]["command"] == "second run"


def test_a_retrained_lead_teacher_gets_a_section_of_its_own(multi_teacher, tmp_path, monkeypatch):
    new = {"variant": "single", "store": _store("single", "tuned:rte:qwen-again"), "train": {},
           "seeds": {"0": _student(0.64)}, "command": "rerun"}  # fmt: skip
    results = _record_over(multi_teacher, tmp_path, monkeypatch, new)
    assert results[RTE]["variants"]["single"]["seeds"] == {"0": _student(0.60)}
    again = results["rte / tuned:rte:qwen-again"]
    assert again["task"] == "rte"
    assert again["variants"]["single"]["seeds"] == {"0": _student(0.64)}


def test_a_row_of_other_teachers_is_refused_not_averaged(multi_teacher, tmp_path, monkeypatch):
    new = {"variant": "single", "store": _store("single", "tuned:rte:qwen", "tuned:rte:gemma"),
           "train": {}, "seeds": {"1": _student(0.64)}, "command": "rerun"}  # fmt: skip
    with pytest.raises(SystemExit, match="another --results-dir"):
        _record_over(multi_teacher, tmp_path, monkeypatch, new)


def test_the_rationale_speed_counts_only_the_tokens_the_build_generated(multi_teacher, tmp_path):
    def rationale_row(**stats) -> dict:
        store = {**_store("single+rationales"), "rationales": {
            "model": "qwen", "entries": 100, "written": 100, "tokens": 4800, "seconds": 600.0,
            **stats}}  # fmt: skip
        return {"store": store, "train": {}, "seeds": {"0": _student(0.6)}, "command": "c"}

    args = type("Args", (), {"results_dir": str(tmp_path)})()
    resumed = {"single+rationale-loss": rationale_row(generated_tokens=1200, distinct=37)}
    multi_teacher.write_report({RTE: {"task": "rte", "variants": resumed}}, args)
    report = (tmp_path / "multi_teacher.md").read_text()
    assert (
        "100 of 100 written by qwen (37 distinct), 4800 tokens; the build generated 1200 in"
        " 10.0 min" in report
    )
    assert "(2.0 tok/s)" in report  # 1200 / 600 s, not 4800 / 600 s
    older = {"single+rationale-loss": rationale_row()}  # recorded before the count existed
    multi_teacher.write_report({RTE: {"task": "rte", "variants": older}}, args)
    report = (tmp_path / "multi_teacher.md").read_text()
    assert "4800 tokens; the build 10.0 min, resumed rows not told apart" in report
    assert "tok/s" not in report
