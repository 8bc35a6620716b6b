"""A user's own task through every command: build-store -> train-student -> evaluate ->
predict -> serve, for a CSV classification task, a JSONL sentence-pair task and a JSONL
multiple-choice task.

Tiny scale: a 1-layer random Llama (with SmolLM2's tokenizer) is the generator and the
teacher, and its sampler is replaced by one that writes well-formed examples of the
requested label (a random model writes none); everything after sampling runs for real:
parsing, the teacher's labels, selection, embedding, the store, the student.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from model_helpers import tiny_llama

from retrikt.cli import main
from retrikt.generator.templates import render_target
from retrikt.server import create_app
from retrikt.tasks import get_task

USER = Path(__file__).resolve().parent / "fixtures" / "user"
TOPICS = ["a lamp", "the invoice", "my parcel", "a login code", "the garden hose", "a refund",
          "the cable", "my tablet", "a voucher", "the courier"]  # fmt: skip
CASES = {
    "tickets": (
        ["--train", str(USER / "tickets.csv"), "--label-field", "queue", "--val-fraction", "0.34"],
        {"body": "I was charged twice this month, please refund me.", "id": 99},
    ),
    "questions": (
        ["--train", str(USER / "questions.jsonl"), "--text-field", "q1", "--pair-field", "q2",
         "--label-field", "same", "--val-fraction", "0.3"],
        {"q1": "How do I reset my password?", "q2": "How can I change a lost password?",
         "same": True},
    ),
    "situations": (
        ["--train", str(USER / "situations.jsonl"), "--text-field", "situation",
         "--choice-fields", "a,b", "--label-field", "answer", "--val-fraction", "0.34"],
        {"situation": "The kettle boiled.", "a": "I made tea.", "b": "I went skiing."},
    ),
}  # fmt: skip


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    monkeypatch.setenv("RETRIKT_FP32", "1")


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> str:
    model, tokenizer = tiny_llama()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _fake_sampler(task):
    """Sampler.sample that writes a new, well-formed example of the prompt's label."""

    def sample(self, prompts, seeds):
        texts = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            label = prompt.split("\n")[1].split(": ")[1]  # the template's label line
            topic = TOPICS[seed % len(TOPICS)]
            example = {name: f"A {label} note {seed % 97} on {topic} ({name})."
                       for name in task.fields}  # fmt: skip
            texts.append(render_target(task, example))
        return SimpleNamespace(texts=texts, lengths=[12] * len(texts))

    return sample


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_users_task_goes_through_every_command(
    name, tiny_generator, tmp_path, monkeypatch, capsys
):
    flags, item = CASES[name]
    monkeypatch.delenv("RETRIKT_DATA", raising=False)  # nothing may need a data folder
    spec = tmp_path / f"{name}.yaml"
    assert main(["task", "init", *flags, "--out", str(spec)]) == 0
    task = get_task(str(spec))
    monkeypatch.setattr("retrikt.generator.sampler.Sampler.sample", _fake_sampler(task))
    capsys.readouterr()

    store = tmp_path / "store"
    assert main(["build-store", "--task", str(spec), "--out", str(store),
                 "--generator", tiny_generator, "--encoder", "minilm-l6:1", "--rl", "none",
                 "--samples-per-label", "3", "--prompt-steps", "1", "--teacher-steps", "1",
                 "--prompt-num-virtual-tokens", "2", "--teacher-num-virtual-tokens", "2",
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    assert built["entries"] >= len(task.label_names)

    student = tmp_path / "student"
    assert main(["train-student", "--task", str(spec), "--store", str(store), "--out",
                 str(student), "--encoder", "minilm-l6:1", "--epochs", "1", "--batch-size", "8",
                 "--threads", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    config = json.loads((student / "config.json").read_text())
    assert config["task"] == name and config["task_spec"]["label_names"] == list(task.label_names)

    # The student folder is enough from here on: no spec path, no data folder.
    spec.unlink()
    assert main(["evaluate", "--model", str(student)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["task"] == name and scored["examples"] == len(task.read("validation"))
    assert tuple(scored["metrics"]) == task.metric_names

    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    texts = [item[name] for name in task.fields]  # the [text, pair] form
    source.write_text(json.dumps(item) + "\n" + json.dumps(texts) + "\n")
    assert main(["predict", "--model", str(student), "--input", str(source),
                 "--output", str(out)]) == 0  # fmt: skip
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["label"] in task.label_names for p in predictions] == [True, True]
    assert predictions[0]["neighbours"]

    with TestClient(create_app(str(student))) as client:
        assert client.get("/info").json()["fields"] == list(task.fields)
        answer = client.post("/predict", json={"inputs": [item]})
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["label"] == predictions[0]["label"]
        wrong = client.post("/predict", json={"inputs": [{"text": "no such column"}]})
        assert wrong.status_code == 422 and task.fields[0] in wrong.text


def test_a_teacher_tuned_on_a_users_task_keeps_its_spec(tiny_generator, tmp_path, capsys):
    from retrikt.teachers.loading import load_teacher

    flags, item = CASES["tickets"]
    spec = tmp_path / "tickets.yaml"
    assert main(["task", "init", *flags, "--out", str(spec)]) == 0
    capsys.readouterr()
    teacher_dir = tmp_path / "teacher"
    assert main(["train-teacher", "--task", str(spec), "--model", tiny_generator,
                 "--tuning", "lora", "--max-steps", "1", "--batch-size", "4", "--threads", "1",
                 "--lora-r", "2", "--out", str(teacher_dir)]) == 0  # fmt: skip
    text = capsys.readouterr().out  # the Trainer prints its logs first
    printed = json.loads(text[text.index('{\n "teacher"') :])
    assert set(printed["validation"]) == {"accuracy", "macro_f1", "examples"}
    task = get_task(str(spec))
    spec.unlink()  # the teacher folder rebuilds its task from the spec it keeps
    teacher = load_teacher(str(teacher_dir))
    probs = teacher.label_probs(task, [task.parse_input(item)])
    assert probs.shape == (1, 3)
