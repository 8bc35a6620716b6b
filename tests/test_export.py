"""``retrikt export``: an ONNX (float32 or int8) student that predicts as the PyTorch one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from store_helpers import labelled_store

from retrikt.cli import main
from retrikt.errors import ModelFileError
from retrikt.server import create_app
from retrikt.student import RetriKT, TrainConfig
from retrikt.student_folder import load_student
from retrikt.tasks import get_task
from retrikt.training import train

RTE = get_task("rte")


@pytest.fixture(scope="module")
def rte(data_dir) -> tuple[list, list]:
    """A slice of real RTE: 32 training examples (also the store), 40 validation examples."""
    return RTE.read("train", data_dir)[:32], RTE.read("validation", data_dir)[:40]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, rte) -> Path:
    """A real RetriKT student (2-layer MiniLM) briefly trained on the slice, with its store."""
    folder = tmp_path_factory.mktemp("export")
    train_examples, _ = rte
    store = labelled_store(RTE, train_examples, folder / "source", encoder="minilm-l6:2")
    model = RetriKT.from_encoder(RTE, "minilm-l6:2")
    model.attach_store(store, k=4)
    config = TrainConfig(task="rte", encoder="minilm-l6:2", epochs=2, head_lr=5e-3)
    train(model, train_examples, config, store.entries())
    model.refresh_keys()
    return model.save_pretrained(folder / "student")


@pytest.fixture(scope="module")
def exported(student_dir, tmp_path_factory) -> dict[str, Path]:
    """The student exported by the command line, in float32 and in int8."""
    root = tmp_path_factory.mktemp("exported")
    folders = {"fp32": root / "fp32", "int8": root / "int8"}
    assert main(["export", "--model", str(student_dir), "--out", str(folders["fp32"])]) == 0
    assert main(["export", "--model", str(student_dir), "--out", str(folders["int8"]),
                 "--format", "onnx", "--quantize", "int8"]) == 0  # fmt: skip
    return folders


def _predict(folder: Path, examples: list) -> tuple[np.ndarray, np.ndarray]:
    model = RetriKT.from_pretrained(folder)
    raw = model.raw_outputs(examples)
    return model.combined(raw)[0], raw.rows


def test_the_exported_folder_is_a_student_folder_with_its_store_unchanged(student_dir, exported):
    for folder in exported.values():
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["config.json", "head.safetensors", "model.onnx", "store", "tokenizer"]
        for name in ("config.json", "head.safetensors"):
            assert (folder / name).read_bytes() == (student_dir / name).read_bytes()
        for file in (student_dir / "store").rglob("*"):
            if file.is_file() and file.name != ".lock":
                copy = folder / "store" / file.relative_to(student_dir / "store")
                assert copy.read_bytes() == file.read_bytes()
    fp32, int8 = (exported[k] / "model.onnx" for k in ("fp32", "int8"))
    assert int8.stat().st_size < fp32.stat().st_size / 3  # int8 weights


def test_float32_export_predicts_as_pytorch(student_dir, exported, rte):
    _, validation = rte
    reference, rows = _predict(student_dir, validation)
    probs, onnx_rows = _predict(exported["fp32"], validation)
    assert np.abs(probs - reference).max() < 1e-4
    assert (onnx_rows == rows).all()  # the same neighbours


def test_int8_export_keeps_the_labels(student_dir, exported, rte):
    _, validation = rte
    reference, _ = _predict(student_dir, validation)
    probs, _ = _predict(exported["int8"], validation)
    assert reference.std(0).max() > 0.01  # the trained student does not answer a constant
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_an_int8_answer_does_not_depend_on_the_inputs_batched_with_it(exported, rte):
    _, validation = rte
    model = RetriKT.from_pretrained(exported["int8"])
    together = model.predict_examples(validation[:8], batch_size=8)
    alone = np.concatenate([model.predict_examples([ex]) for ex in validation[:8]])
    # What a served request gets, whatever it is batched with (float rounding aside).
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_predict_evaluate_and_serve_load_an_exported_folder(
    student_dir, exported, rte, data_dir, tmp_path, capsys
):
    _, validation = rte
    items = [{name: ex[name] for name in RTE.fields} for ex in validation[:3]]
    expected = [p.to_dict() for p in RetriKT.from_pretrained(student_dir).predict(items)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    out = tmp_path / "out.jsonl"
    folder = str(exported["fp32"])
    assert main(["predict", "--model", folder, "--input", str(source), "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [n["text"] for g in got for n in g["neighbours"]] == [
        n["text"] for e in expected for n in e["neighbours"]
    ]
    capsys.readouterr()
    args = ["evaluate", "--data-dir", str(data_dir), "--threads", "1"]
    assert main([*args, "--model", str(student_dir)]) == 0
    pytorch = json.loads(capsys.readouterr().out)["metrics"]
    assert main([*args, "--model", folder]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == pytest.approx(pytorch, abs=1e-9)
    with TestClient(create_app(exported["int8"])) as client:
        assert client.get("/info").json()["retrieval"] is True
        answer = client.post("/predict", json={"inputs": items}).json()["predictions"]
        assert len(answer) == 3 and all(p["neighbours"] for p in answer)


def test_export_refuses_what_it_cannot_do(student_dir, exported, tmp_path, caplog):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", "--model", str(student_dir), "--out", str(taken)]) == 1
    assert "not empty" in caplog.text and (taken / "keep.txt").read_text() == "mine"
    assert main(["export", "--model", str(exported["fp32"]), "--out", str(tmp_path / "x")]) == 1
    assert "already exported" in caplog.text
    with pytest.raises(SystemExit):
        main(["export", "--model", str(student_dir), "--out", str(tmp_path / "y"),
              "--quantize", "int4"])  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no staging folder left behind
    with pytest.raises(ModelFileError, match="cannot be saved again"):
        RetriKT.from_pretrained(exported["fp32"]).save_pretrained(tmp_path / "again")


def test_a_damaged_onnx_file_is_a_one_line_error(exported, tmp_path):
    import shutil

    broken = Path(shutil.copytree(exported["fp32"], tmp_path / "broken"))
    (broken / "model.onnx").write_bytes(os.urandom(64))
    with pytest.raises(ModelFileError, match="model.onnx is not a loadable ONNX model"):
        load_student(broken)
