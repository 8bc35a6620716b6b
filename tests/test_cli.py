"""The command line: help, tasks, inspect-data and its error paths."""

import json
import subprocess
import sys

from retrikt.cli import main

COMMANDS = ["build-store", "train-student", "predict", "evaluate", "serve", "models", "tasks",
            "inspect-data", "store"]  # fmt: skip


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "retrikt", "--help"], capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ")}
    assert set(COMMANDS) <= listed  # each as its own entry ("store", not only "build-store")


def test_tasks_lists_all_with_metrics(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "multirc" in out and "f1a, exact_match" in out
    assert "stsb" in out and "pearson, spearman" in out


def test_inspect_data_real_cb(capsys, data_dir):
    assert main(["inspect-data", "--task", "cb", "--data-dir", str(data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["labels"] == {
        "entailment": 115,
        "contradiction": 119,
        "neutral": 16,
    }
    assert report["splits"]["test"]["labelled"] == 0


def test_inspect_data_fixture_multirc(capsys, fixture_data_dir):
    assert main(["inspect-data", "--task", "multirc", "--data-dir", str(fixture_data_dir)]) == 0
    assert "validation      7 examples" in capsys.readouterr().out


def test_inspect_data_errors_exit_1_with_a_message(tmp_path, caplog):
    (tmp_path / "superglue" / "CB").mkdir(parents=True)
    (tmp_path / "superglue" / "CB" / "train.jsonl").write_text('{"premise": "a"\n')
    assert main(["inspect-data", "--task", "cb", "--data-dir", str(tmp_path)]) == 1
    assert "train.jsonl:1: not valid JSON" in caplog.text
    assert main(["inspect-data", "--task", "nope", "--data-dir", str(tmp_path)]) == 1
    assert "unknown task 'nope'" in caplog.text


def test_evaluate_needs_exactly_one_form(caplog):
    """`retrikt evaluate` scores students (--model) or runs the harness (--tasks), not both."""
    assert main(["evaluate"]) == 1
    assert "give --model DIR (one student) or --tasks" in caplog.text
    assert main(["evaluate", "--model", "x", "--tasks", "cb", "--name", "n"]) == 1
    assert "not both" in caplog.text
    assert main(["evaluate", "--tasks", "cb"]) == 1
    assert "needs --tasks and --name" in caplog.text
