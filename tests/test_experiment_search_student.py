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
