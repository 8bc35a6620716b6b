"""``retrikt predict``: JSON lines in, JSON lines out, and every way a line can be wrong."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from retrikt.cli import main
from retrikt.student import RetriKT
from retrikt.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
CB = get_task("cb")
GOOD = [
    {"premise": "It rained all day in the city.", "hypothesis": "The streets were wet."},
    ["A man is sleeping on the sofa.", "A man is running."],
    {"premise": "She said she might come.", "hypothesis": "She will come.", "idx": 7},
]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    """A real, small CB student (2-layer MiniLM, untrained head: predicting needs no skill)."""
    folder = tmp_path_factory.mktemp("student")
    RetriKT.from_encoder("cb", "minilm-l6:2").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def expected(student_dir) -> list[dict]:
    """What the Python API answers for GOOD, which the command must reproduce line by line."""
    return [p.to_dict() for p in RetriKT.from_pretrained(student_dir).predict(GOOD)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _same(got: dict, want: dict) -> bool:
    return got["label"] == want["label"] and got["probs"] == pytest.approx(want["probs"], abs=1e-5)


def test_file_to_file_matches_the_python_api(student_dir, expected, tmp_path):
    source = _write(tmp_path / "in.jsonl", [json.dumps(item) for item in GOOD])
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(student_dir), "--input", str(source),
                 "--output", str(out), "--batch-size", "2"])  # fmt: skip
    assert code == 0
    got = _read(out)
    assert len(got) == len(GOOD)
    assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    assert not list(tmp_path.glob(".out.jsonl.*"))  # the temporary file was renamed away


def test_stdin_to_stdout_skips_blank_lines(student_dir, expected, monkeypatch, capsys):
    lines = [json.dumps(GOOD[0]), "", "   ", json.dumps(GOOD[1])]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["predict", "--model", str(student_dir)]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(got) == 2
    assert _same(got[0], expected[0]) and _same(got[1], expected[1])


def test_empty_input_writes_nothing(student_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(student_dir), "--input",
                 str(_write(tmp_path / "in.jsonl", [])), "--output", str(out)])  # fmt: skip
    assert code == 0
    assert out.read_text() == ""


BAD_LINES = [
    # (id, line, substrings the error must contain)
    ("invalid-json", '{"premise": "p", ', ["not valid JSON"]),
    ("missing-field", '{"premise": "p"}', ["missing field 'hypothesis'"]),
    ("empty-text", '{"premise": "p", "hypothesis": "  "}', ["field 'hypothesis' is empty"]),
    ("number-field", '{"premise": 1, "hypothesis": "h"}', ["'premise' must be a string"]),
    ("one-text-for-pair", '"just one text"', ["needs 2 text(s)", "got 1"]),
    ("not-an-object", "42", ["expected an object", "got int"]),
    ("unknown-label", '{"premise": "p", "hypothesis": "h", "label": "x"}', ["unknown label 'x'"]),
    ("oversize-text", json.dumps({"premise": "p" * 20_001, "hypothesis": "h"}), ["max 20000"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "needles"), [c[1:] for c in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_a_bad_line_fails_with_its_line_number(student_dir, tmp_path, caplog, bad, needles):
    source = _write(tmp_path / "in.jsonl", [json.dumps(GOOD[0]), "", bad, json.dumps(GOOD[1])])
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(student_dir), "--input", str(source),
                 "--output", str(out), "--batch-size", "1"])  # fmt: skip
    assert code == 1
    assert f"{source}:3:" in caplog.text
    assert "--skip-invalid" in caplog.text
    for needle in needles:
        assert needle in caplog.text
    # Nothing is left behind, not even the line predicted before the bad one.
    assert not out.exists()
    assert not list(tmp_path.glob(".out.jsonl.*"))


def test_a_lone_surrogate_is_a_bad_line_not_a_crash(student_dir, tmp_path, caplog):
    source = _write(tmp_path / "in.jsonl", ['{"premise": "caf\\ud800", "hypothesis": "h"}'])
    assert main(["predict", "--model", str(student_dir), "--input", str(source)]) == 1
    assert f"{source}:1: field 'premise'" in caplog.text


def test_skip_invalid_writes_errors_in_place(student_dir, expected, tmp_path, caplog):
    lines = [json.dumps(GOOD[0]), "{oops", json.dumps(GOOD[1]), '{"premise": "p"}',
             json.dumps(GOOD[2])]  # fmt: skip
    source = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(student_dir), "--input", str(source),
                 "--output", str(out), "--batch-size", "2", "--skip-invalid"])  # fmt: skip
    assert code == 0
    got = _read(out)
    assert len(got) == 5
    assert got[1]["line"] == 2 and "not valid JSON" in got[1]["error"]
    assert got[3]["line"] == 4 and "missing field 'hypothesis'" in got[3]["error"]
    assert _same(got[0], expected[0]) and _same(got[2], expected[1]) and _same(got[4], expected[2])
    assert "2 of 5 lines were invalid" in caplog.text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--input", "/no/such/file.jsonl"], "--input /no/such/file.jsonl: no such file"),
        (["--output", "/no/such/folder/out.jsonl"], "folder /no/such/folder does not exist"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
    ids=["missing-input", "missing-output-folder", "zero-batch"],
)
def test_bad_arguments_exit_1_with_a_message(student_dir, tmp_path, caplog, args, needle):
    source = _write(tmp_path / "in.jsonl", [json.dumps(GOOD[0])])
    assert main(["predict", "--model", str(student_dir), "--input", str(source), *args]) == 1
    assert needle in caplog.text


def test_a_folder_that_is_no_student_exits_1(tmp_path, caplog):
    source = _write(tmp_path / "in.jsonl", [json.dumps(GOOD[0])])
    out = tmp_path / "out.jsonl"
    args = ["predict", "--model", str(tmp_path), "--input", str(source), "--output", str(out)]
    assert main(args) == 1
    assert "is not a RetriKT student folder" in caplog.text
    assert not out.exists()


def test_non_utf8_input_exits_1(student_dir, tmp_path, caplog):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"premise": "caf\xe9", "hypothesis": "h"}\n')
    assert main(["predict", "--model", str(student_dir), "--input", str(source)]) == 1
    assert "is not UTF-8 text" in caplog.text


def test_a_bad_stdin_line_is_named_by_its_number(student_dir, monkeypatch, caplog):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(GOOD[0]) + "\n\n[1, 2]\n"))
    assert main(["predict", "--model", str(student_dir)]) == 1
    assert "stdin:3: field 'premise' must be a string, got int" in caplog.text


def test_the_installed_command_pipes_stdin_to_stdout(student_dir, expected):
    """The real process, as a shell user runs it: streams, exit code, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "retrikt", "predict", "--model", str(student_dir),
               "--skip-invalid"]  # fmt: skip
    lines = [json.dumps(item) for item in GOOD] + ["[1, 2]"]
    run = subprocess.run(command, input="\n".join(lines) + "\n", capture_output=True, text=True,
                         env=env, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(got) == 4
    assert all(_same(g, e) for g, e in zip(got[:3], expected, strict=True))
    assert got[3] == {"error": "stdin:4: field 'premise' must be a string, got int", "line": 4}
    assert "1 of 4 lines were invalid" in run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------- issue 18: damaged student folders
def _garbage_head(folder: Path) -> None:
    (folder / "head.safetensors").write_bytes(b"not a safetensors file" * 4)


def _empty_encoder(folder: Path) -> None:
    shutil.rmtree(folder / "encoder")
    (folder / "encoder").mkdir()


DAMAGE = {
    "garbage-head": (_garbage_head, "head.safetensors is not a readable safetensors file"),
    "config-list": (lambda f: (f / "config.json").write_text("[]"),
                    "config.json must hold a JSON object"),
    "config-not-utf8": (lambda f: (f / "config.json").write_bytes(b"\xff{"),
                        "config.json is not UTF-8 text"),
    "config-nested": (lambda f: (f / "config.json").write_text("[" * 100_000),
                      "config.json is nested too deeply"),
    "empty-encoder": (_empty_encoder, "holds no encoder (no config.json)"),
    "encoder-weights": (lambda f: (f / "encoder" / "model.safetensors").write_bytes(b"x" * 64),
                        "model.safetensors is not a readable safetensors file"),
    "head-shape": (lambda f: save_file({"head.weight": torch.zeros(2, 2)}, f / "head.safetensors"),
                   "is not a loadable student folder (RuntimeError"),
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_student_folder_exits_1_naming_the_file(student_dir, tmp_path, caplog, damage):
    """Issue 18.4: these ended in SafetensorError / AttributeError / ValueError tracebacks."""
    folder = tmp_path / "student"
    shutil.copytree(student_dir, folder)
    spoil, needle = DAMAGE[damage]
    spoil(folder)
    source = _write(tmp_path / "in.jsonl", [json.dumps(GOOD[0])])
    assert main(["predict", "--model", str(folder), "--input", str(source)]) == 1
    assert needle in caplog.text
    caplog.clear()
    assert main(["serve", "--model", str(folder), "--port", "0"]) == 1
    assert needle in caplog.text


def test_a_deeply_nested_line_exits_1(student_dir, tmp_path, caplog):
    """Issue 18.4: `predict` on deeply nested JSON was a RecursionError traceback."""
    source = _write(tmp_path / "in.jsonl", ["[" * 100_000])
    assert main(["predict", "--model", str(student_dir), "--input", str(source)]) == 1
    assert "in.jsonl:1: JSON nested too deeply" in caplog.text
