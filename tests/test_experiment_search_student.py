"""``experiments/search_student.py`` adds a task to its report without erasing the others.

A task's search and students cost an hour or more, so tasks are run one command at a time
(or on different machines); each section keeps the command and the machine that made it."""

from __future__ import annotations

import json

from script_helpers import load_script


def _script(monkeypatch):
    return load_script("search_student", monkeypatch)


def test_earlier_tasks_are_kept_with_their_command_and_machine_unless_redone(tmp_path, monkeypatch):
    script = _script(monkeypatch)
    report = tmp_path / "search_student.json"
    assert script.earlier_tasks(report, ["copa"]) == []  # no report yet
    old_machine = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu"}
    report.write_text(json.dumps({  # the format before tasks carried their own command
        "command": "search_student.py --tasks cb", "machine": old_machine,
        "tasks": [{"task": "cb", "rows": []}, {"task": "copa", "rows": []}],
    }))  # fmt: skip
    kept = script.earlier_tasks(report, ["copa"])
    assert kept == [{"task": "cb", "rows": [], "command": "search_student.py --tasks cb",
                     "machine": old_machine,
                     "store": "the training split labelled by the teacher"}]  # fmt: skip
    assert script.earlier_tasks(report, ["cb", "copa"]) == []


def test_the_report_says_how_each_finalist_got_there_and_what_it_scored(monkeypatch):
    script = _script(monkeypatch)
    searched = {
        "name": "L3-H12x24-F1536",
        "loss": 1.2412,
        "latency_ms_p50": 9.41,
        "heldout_metrics": {"pearson": 0.516, "spearman": 0.489},
        "heldout_score": 0.5025,
    }
    incumbent = {"name": "L2-H12x32-F1536", "incumbent": True, "latency_ms_p50": 7.1,
                 "heldout_metrics": {"pearson": 0.605, "spearman": 0.555}}  # fmt: skip
    rows = [script.finalist_row(f) for f in (searched, incumbent)]
    assert rows[0]["proxy_loss"] == 1.2412 and not rows[0]["incumbent"]
    assert rows[1]["incumbent"] and rows[1]["proxy_loss"] is None
    assert script.finalists_line(rows) == (
        "Finalists on the held-out slice of the training split: L3-H12x24-F1536 (proxy loss "
        "1.241, 9.4 ms): 51.6 / 48.9; L2-H12x32-F1536 (the incumbent cut, 7.1 ms): 60.5 / 55.5."
    )
    alone = script.finalist_row({"name": "L1-H8x16-F256", "loss": 0.7, "latency_ms_p50": 5.2})
    assert script.finalists_line([alone]).endswith("(proxy loss 0.700, 5.2 ms): not scored.")
