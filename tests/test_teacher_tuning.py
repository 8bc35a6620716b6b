"""Teacher tuning: training, save/load, resume, COPA and STS-B heads, the held-out slice,
config errors, external classifiers and build-store's use of a tuned folder.

Models are a tiny random Llama with SmolLM2's real tokenizer (a few seconds per run); the
data is a toy CB whose label is the hypothesis's last word, so a working head learns it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_helpers import tiny_llama

from retrikt.cli import main
from retrikt.errors import ConfigError, RetriktError
from retrikt.generator.build import BuildConfig, TaskData, prepare_teacher
from retrikt.generator.lm import bf16_supported
from retrikt.generator.teacher import LLMTeacher
from retrikt.models import resolve_model
from retrikt.tasks import get_task
from retrikt.teachers.classifier import (
    ClassifierTeacher,
    Collator,
    encode,
    load_classifier,
    pad,
    task_loss,
    task_scores,
)
from retrikt.teachers.config import TeacherConfig
from retrikt.teachers.loading import TEACHER_CONFIG, is_llm, load_teacher, weights_digest
from retrikt.teachers.tuning import CHECKPOINTS, load_teacher_data, train_teacher

CB, COPA, STSB = get_task("cb"), get_task("copa"), get_task("stsb")
KEYWORDS = ("sunny", "rainy", "cloudy")  # the toy CB label is the hypothesis's last word


@pytest.fixture(autouse=True)
def fp32(monkeypatch):
    """Loaded teachers would use bf16 on AVX512-BF16 CPUs; comparisons need fp32."""
    monkeypatch.setenv("RETRIKT_FP32", "1")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 1-layer random Llama saved as an HF folder, with SmolLM2's tokenizer."""
    model, tokenizer = tiny_llama()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _toy_cb(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    subjects = ["The town", "Our garden", "The old harbour", "A quiet valley", "The city park"]
    rows = []
    for i in range(n):
        label = i % 3
        premise = f"{rng.choice(subjects)} had weather on day {rng.randint(1, 99)}."
        rows.append({"premise": premise, "hypothesis": f"It was {KEYWORDS[label]}",
                     "label": CB.label_names[label], "idx": i})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = root / "superglue" / "CB"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", 60, 0), ("val", 12, 1)):
        lines = [json.dumps(row) for row in _toy_cb(n, seed)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return str(root)


def _config(tiny_base, toy_data, out, **overrides) -> TeacherConfig:
    settings = dict(task="cb", out=str(out), data_dir=toy_data, model=tiny_base, batch_size=8,
                    lr=5e-3, max_steps=30, eval_steps=10, max_length=64)  # fmt: skip
    return TeacherConfig(**{"heldout_fraction": 0.2, **settings, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_base, toy_data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIKT_FP32", "1")
        return train_teacher(_config(tiny_base, toy_data, tmp_path_factory.mktemp("t") / "cb"))


def test_loss_falls_on_a_separable_task_and_the_folder_is_complete(trained):
    losses = [entry["loss"] for entry in trained.log_history if "loss" in entry]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert trained.results["heldout"]["accuracy"] >= 0.75
    # The Trainer's held-out scores (length-grouped training, in-order evaluation) chose the
    # model that was kept: its best is what the kept model scores.
    best = max(e["eval_accuracy"] for e in trained.log_history if "eval_accuracy" in e)
    assert trained.results["heldout"]["accuracy"] == pytest.approx(best)
    assert trained.results["validation"]["examples"] == 12
    out = trained.out
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / CHECKPOINTS).exists()
    meta = json.loads((out / TEACHER_CONFIG).read_text())
    assert meta["tuning"] == "lora" and meta["label_names"] == list(CB.label_names)
    assert set(meta["versions"]) == {"retrikt", "torch", "transformers", "peft"}
    assert json.loads((out / "eval_results.json").read_text()) == trained.results


def test_save_then_load_gives_the_same_probabilities(trained, toy_data):
    examples = CB.read("validation", toy_data)
    loaded = load_teacher(str(trained.out), batch_size=5)
    assert isinstance(loaded, ClassifierTeacher) and loaded.id == trained.teacher.id
    before, after = trained.teacher.label_probs(CB, examples), loaded.label_probs(CB, examples)
    assert after.shape == (12, 3)
    np.testing.assert_allclose(after, before, atol=1e-5)
    with pytest.raises(RetriktError, match="trained for cb, not rte"):
        loaded.label_probs(get_task("rte"), [{"premise": "a", "hypothesis": "b"}])


def test_full_fine_tuning_saves_weights_that_load_the_same(tiny_base, toy_data, tmp_path):
    result = train_teacher(_config(tiny_base, toy_data, tmp_path / "full", tuning="full",
                                   max_steps=2, eval_steps=None, lr=1e-3))  # fmt: skip
    assert (result.out / "model.safetensors").is_file()
    examples = CB.read("validation", toy_data)
    loaded = load_teacher(str(result.out))
    np.testing.assert_allclose(
        loaded.label_probs(CB, examples), result.teacher.label_probs(CB, examples), atol=1e-5
    )


def test_bf16_autocast_trains_and_loads_where_the_cpu_supports_it(
    tiny_base, toy_data, tmp_path, monkeypatch
):
    monkeypatch.delenv("RETRIKT_FP32")
    if not bf16_supported():
        pytest.skip("this CPU has no AVX512-BF16/AMX: training stays fp32")
    result = train_teacher(_config(tiny_base, toy_data, tmp_path / "bf16", max_steps=2))
    loaded = load_teacher(str(result.out))
    assert loaded.model.dtype == torch.bfloat16
    examples = CB.read("validation", toy_data)
    np.testing.assert_allclose(
        loaded.label_probs(CB, examples), result.teacher.label_probs(CB, examples), atol=5e-3
    )


def test_precision_fp32_trains_in_fp32_on_any_cpu(tiny_base, toy_data, tmp_path, monkeypatch):
    """--precision fp32 gives the weights of a CPU without bf16, and the folder records it."""
    reference = train_teacher(_config(tiny_base, toy_data, tmp_path / "env", max_steps=2))
    monkeypatch.delenv("RETRIKT_FP32")  # auto would now pick bf16 on an AVX512-BF16 CPU
    chosen = train_teacher(
        _config(tiny_base, toy_data, tmp_path / "flag", max_steps=2, precision="fp32")
    )
    assert weights_digest(chosen.out) == weights_digest(reference.out)
    saved = json.loads((chosen.out / TEACHER_CONFIG).read_text())
    assert saved["precision"] == "fp32"
    assert saved["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()


class Killed(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_base, toy_data, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # checkpoint-2 is on disk
                raise Killed

    class Steps(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)

    settings = dict(max_steps=4, eval_steps=2, grad_accum=2)  # LoRA dropout and shuffling
    config = _config(tiny_base, toy_data, tmp_path / "cb", **settings)
    with pytest.raises(Killed):
        train_teacher(config, callbacks=[Kill()])
    assert (tmp_path / "cb" / CHECKPOINTS / "checkpoint-2").is_dir()
    with pytest.raises(ConfigError, match="lr: 0.005 then, 0.001 now"):
        train_teacher(_config(tiny_base, toy_data, tmp_path / "cb", **settings, lr=1e-3))
    steps = Steps()
    result = train_teacher(config, callbacks=[steps])
    assert steps.seen == [3, 4]
    assert [e["step"] for e in result.log_history if "loss" in e] == [1, 2, 3, 4]
    whole = train_teacher(_config(tiny_base, toy_data, tmp_path / "whole", **settings))
    assert weights_digest(result.out) == weights_digest(whole.out)  # resuming changes nothing
    with pytest.raises(RetriktError, match="already holds a teacher"):
        train_teacher(config)


def test_copa_scores_each_choice_and_softmaxes_over_the_choices(tiny_base):
    model, tokenizer = load_classifier(tiny_base, COPA)
    assert model.config.num_labels == 1
    example = {"premise": "The man fell.", "question": "cause", "choice1": "He slipped.",
               "choice2": "He laughed.", "label": 0}  # fmt: skip
    swapped = {**example, "choice1": example["choice2"], "choice2": example["choice1"]}
    teacher = ClassifierTeacher(model, tokenizer, "tiny")
    probs = teacher.label_probs(COPA, [example, swapped, example])
    assert probs.shape == (3, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[1], probs[0][::-1], atol=1e-6)  # rows follow the choices
    rows = encode(COPA, tokenizer, [example, swapped], 64)
    assert [len(r) for r in rows] == [2, 2]
    batch = Collator(tokenizer.pad_token_id, regression=False)(
        [{"rows": r, "labels": 0} for r in rows]
    )
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].tolist() == [0, 0]
    labels = batch.pop("labels")
    scores = task_scores(COPA, model(**batch).logits)
    assert scores.shape == (2, 2)
    expected = -torch.log_softmax(scores, dim=-1)[:, 0].mean()
    assert torch.isclose(task_loss(COPA, scores, labels), expected)


def test_regression_gives_one_score_in_the_tasks_range(tiny_base):
    model, tokenizer = load_classifier(tiny_base, STSB)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    with torch.no_grad():
        model.score.weight.fill_(1.0)  # scores far outside 0..5 must be clipped
    examples = [{"sentence1": f"A dog runs {i}.", "sentence2": "A dog is running."}
                for i in range(3)]  # fmt: skip
    probs = ClassifierTeacher(model, tokenizer, "tiny").label_probs(STSB, examples)
    assert probs.shape == (3, 1) and probs.dtype == np.float32
    assert ((probs >= 0) & (probs <= 5)).all()
    scores, gold = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0])
    assert task_loss(STSB, scores, gold).item() == pytest.approx(0.5)
    batch = Collator(tokenizer.pad_token_id, regression=True)([{"rows": [[5, 6]], "labels": 2.4}])
    assert batch["labels"].dtype == torch.float32


def test_the_heldout_slice_is_training_data_and_never_validation(data_dir):
    config = TeacherConfig(task="cb", out="unused", data_dir=str(data_dir))
    data = load_teacher_data(config)
    render = CB.render
    train = {render(ex) for ex in CB.read("train", data_dir)}
    heldout, fit = {render(ex) for ex in data.heldout}, {render(ex) for ex in data.fit}
    validation = {render(ex) for ex in data.validation}
    assert heldout <= train and not heldout & fit and not heldout & validation
    assert len(heldout) + len(fit) == 250 and 20 <= len(heldout) <= 30
    assert {ex["label"] for ex in data.heldout} == {0, 1, 2}  # stratified: neutral included
    assert [ex["idx"] for ex in load_teacher_data(config).heldout] == [
        ex["idx"] for ex in data.heldout
    ]
    other = load_teacher_data(TeacherConfig(task="cb", out="x", data_dir=str(data_dir), seed=1))
    assert {ex["idx"] for ex in other.heldout} != {ex["idx"] for ex in data.heldout}


def test_config_mistakes_are_config_errors_naming_the_flag(capsys):
    with pytest.raises(ConfigError, match=r"TeacherConfig.tuning \(--tuning\) must be one of"):
        TeacherConfig(task="cb", out="x", tuning="lroa")
    with pytest.raises(ConfigError, match=r"\(--heldout-fraction\) must be below 1"):
        TeacherConfig(task="cb", out="x", heldout_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown TeacherConfig keys lora_rank"):
        TeacherConfig.from_dict({"task": "cb", "out": "x", "lora_rank": 8})
    with pytest.raises(SystemExit):
        main(["train-teacher", "--task", "cb", "--out", "x", "--tunning", "full"])
    assert "--tunning" in capsys.readouterr().err


def test_prompt_tuning_sits_behind_the_same_command(tiny_base, toy_data, tmp_path, capsys):
    out = tmp_path / "prompt"
    code = main(["train-teacher", "--task", "cb", "--data-dir", toy_data, "--model", tiny_base,
                 "--tuning", "prompt", "--max-steps", "2", "--batch-size", "4",
                 "--num-virtual-tokens", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["id"].startswith(f"llm:{tiny_base}+prompt:")
    assert set(printed["validation"]) == {"accuracy", "macro_f1", "examples"}
    teacher = load_teacher(str(out))
    assert isinstance(teacher, LLMTeacher) and teacher.id == printed["id"]


def _classifier(tiny_base, folder, names):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_base, num_labels=len(names), id2label=dict(enumerate(names))
    )
    model.config.pad_token_id = 2
    model.save_pretrained(folder)
    tokenizer = load_classifier(tiny_base)[1]
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def test_any_sequence_classifier_is_matched_to_the_task_by_label_name(tiny_base, tmp_path):
    mnli = ["NEUTRAL", "CONTRADICTION", "ENTAILMENT"]  # CB's labels, in another order
    model, tokenizer = _classifier(tiny_base, tmp_path / "mnli", mnli)
    teacher = load_teacher(str(tmp_path / "mnli"))
    assert isinstance(teacher, ClassifierTeacher) and teacher.id.startswith("hf:")
    examples = [{"premise": "It rained all day.", "hypothesis": "The ground was wet."}]
    rows = encode(CB, tokenizer, examples, 256)[0]
    with torch.no_grad():
        raw = model(**pad(rows, tokenizer.pad_token_id)).logits.softmax(-1)[0].numpy()
    np.testing.assert_allclose(teacher.label_probs(CB, examples)[0], raw[[2, 1, 0]], atol=1e-5)

    _classifier(tiny_base, tmp_path / "binary", ["negative", "positive"])
    with pytest.raises(RetriktError, match="must have exactly 3 labels.*it has 2"):
        load_teacher(str(tmp_path / "binary")).label_probs(CB, examples)


def test_a_model_without_a_classification_head_is_refused(tiny_base):
    assert is_llm(tiny_base) and is_llm("smollm2-135m")
    minilm = resolve_model("minilm-l6").path  # an encoder: its head would be random
    with pytest.raises(RetriktError, match="neither an LLM.*train-teacher --model"):
        load_teacher(minilm)


def test_build_store_uses_a_tuned_folder_without_a_soft_prompt_stage(
    trained, toy_data, tmp_path, monkeypatch
):
    import retrikt.generator.build as build

    def no_prompt_tuning(*args, **kwargs):
        raise AssertionError("a tuned teacher needs no soft prompt")

    monkeypatch.setattr(build, "train_teacher_prompt", no_prompt_tuning)
    assert not is_llm(str(trained.out))
    config = BuildConfig(task="cb", out=str(tmp_path / "store"), teacher=str(trained.out),
                         rl="none", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    data = TaskData(CB, CB.read("train", toy_data), CB.read("validation", toy_data))
    teacher, info = prepare_teacher(config, data)
    assert teacher.id == trained.teacher.id == info["id"]
    assert info["tuning"] == "lora" and info["prompt_steps"] == 0 and info["adapter"] is None
    assert info["heldout"] == trained.results["heldout"]
    assert info["validation"] == trained.results["validation"]
    assert prepare_teacher(config, data)[1] == info  # the measurement is cached


def test_the_harness_scores_a_tuned_teacher_and_keys_stores_by_its_weights(
    trained, toy_data, tmp_path
):
    import shutil
    from dataclasses import replace

    from retrikt.cache import ArtefactCache
    from retrikt.harness.artefacts import TaskContext
    from retrikt.harness.running import run_harness
    from retrikt.harness.scales import SCALES, HarnessConfig

    scale = replace(SCALES["demo"], name="tiny", latency_examples=0)
    config = HarnessConfig(tasks=["cb"], methods=["teacher"], seeds=[0], scale=scale, name="t",
                           data_dir=toy_data, cache_dir=str(tmp_path / "cache"),
                           results_dir=str(tmp_path / "results"),
                           teachers={"cb": trained.out})  # fmt: skip
    (row,) = run_harness(config)
    assert row["status"] == "ok", row
    # The harness row is the teacher's own validation score (the same examples, all of them).
    validation = trained.results["validation"]
    assert row["metrics"]["accuracy"] == pytest.approx(validation["accuracy"])
    assert row["eval_examples"] == validation["examples"]
    assert row["info"]["tuning"] == "lora"

    # A store is keyed by the teacher's weights, not by where its folder lies, and by what it holds.
    copy = tmp_path / "copy"
    shutil.copytree(trained.out, copy)
    cache, task = ArtefactCache(tmp_path / "cache"), get_task("cb")
    here = TaskContext(config, cache, task)
    there = TaskContext(replace(config, teachers={"cb": copy}), cache, task)
    assert here.store_spec("ppo") == there.store_spec("ppo")
    assert here.store_spec("ppo", "train") != here.store_spec("ppo")
    assert here.build_config("ppo").teacher == str(trained.out)
    assert here.build_config("none", tuned=False).teacher is None  # the llm-prompt row's store
    without = TaskContext(replace(config, teachers={}), cache, task)
    assert without.store_spec("ppo") != here.store_spec("ppo")

    (row,) = run_harness(replace(config, teachers={}, name="t2"))
    assert row["status"] == "n/a" and "--teacher" in row["reason"]


def test_the_recorded_kernels_follow_the_environment():
    """ATEN_CPU_CAPABILITY lowers torch's kernels, which is how an AVX2 CPU's fp32 teacher is
    rebuilt bit for bit on an AVX512 one; the machine record must name the lowered kernels."""
    code = "from retrikt.doctor import cpu_features; print(cpu_features()['kernels'])"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "DEFAULT"
