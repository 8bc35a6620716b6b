"""Training: the loop's helpers, the retrieval objectives, tuning, and the real CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from store_helpers import labelled_store
from test_student import TINY, cb_examples, copa_examples, stsb_examples

from retrikt.cli import main
from retrikt.errors import RetriktError
from retrikt.student import RetriKT
from retrikt.tasks import get_task
from retrikt.training import (
    TrainConfig,
    agreement,
    distill_loss,
    length_grouped_batches,
    retrieval_objectives,
    split_for_tuning,
    subsample,
    tune_retrieval,
)

MORE_CB = [
    ("The museum opens at nine on Sundays.", "The museum opens on Sundays.", 0),
    ("Tom never learned to swim as a child.", "Tom swam every day as a child.", 1),
    ("Maybe the meeting was moved to Friday.", "The meeting is on Friday.", 2),
    ("All the cookies were eaten by noon.", "Some cookies were eaten.", 0),
    ("The river froze during the cold winter.", "The river was warm in winter.", 1),
    ("Perhaps he forgot his keys at work.", "He left his keys at work.", 2),
]


def cb_pool():
    return cb_examples() + cb_examples(MORE_CB)


def kill_in_epoch_two(monkeypatch) -> None:
    """Make the training loop raise KeyboardInterrupt as its second epoch starts (a kill)."""
    import retrikt.training as training

    epochs_started = []

    def killed_in_epoch_two(*args, **kwargs):
        epochs_started.append(1)
        if len(epochs_started) == 2:
            raise KeyboardInterrupt
        return length_grouped_batches(*args, **kwargs)

    monkeypatch.setattr(training, "length_grouped_batches", killed_in_epoch_two)


# ----------------------------------------------------------------------- helpers
def test_length_grouped_batches_cover_every_example_once_with_similar_lengths():
    lengths = list(np.random.default_rng(1).integers(1, 500, size=203))
    batches = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(0))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert all(1 <= len(b) <= 16 for b in batches)
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches if len(b) == 16])
    assert spread < 0.5 * np.ptp(lengths)  # grouped, unlike random batches
    again = length_grouped_batches(lengths, 16, torch.Generator().manual_seed(0))
    assert again == batches


def test_subsample_is_the_same_whatever_the_seed_and_split_is_disjoint():
    examples = [{"idx": i} for i in range(100)]
    subset = subsample(examples, 30)
    assert len(subset) == 30 and subset == subsample(examples, 30)
    assert subsample(examples, None) == examples
    train, tune = split_for_tuning(subset, 0.2, seed=3)
    assert len(tune) == 6 and len(train) == 24
    assert {e["idx"] for e in train}.isdisjoint({e["idx"] for e in tune})
    assert split_for_tuning(subset, 0.0, seed=3) == (subset, [])


def test_invalid_settings_are_refused():
    with pytest.raises(RetriktError, match=r"TrainConfig.mix \(--mix\) must be at most 1"):
        TrainConfig(task="cb", mix=1.5)
    with pytest.raises(RetriktError, match="retrieval_temperature .* must be at least"):
        TrainConfig(task="cb", retrieval_temperature=0)


# ---------------------------------------------------------------------- objectives
def test_agreement_by_hand_for_every_head():
    values = torch.tensor([[[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]]])
    assert agreement(get_task("cb"), values, [{"label": 0}]).tolist()[0] == pytest.approx(
        [0.7, 0.0]
    )
    values = torch.tensor([[[4.0], [0.0]]])  # 1 - |score - 3| / 5
    assert agreement(get_task("stsb"), values, [{"label": 3.0}]).tolist()[0] == pytest.approx(
        [0.8, 0.4]
    )
    # one example whose answer is choice 2: its choice-1 input wants implausible neighbours
    values = torch.tensor([[[0.9], [0.2]], [[0.9], [0.2]]])
    assert agreement(get_task("copa"), values, [{"label": 1}]).tolist() == [
        pytest.approx([0.1, 0.8]),
        pytest.approx([0.9, 0.2]),
    ]


def test_retrieval_objective_reduces_its_loss(tmp_path):
    torch.manual_seed(0)
    task = get_task("cb")
    store = labelled_store(task, cb_examples(MORE_CB), tmp_path / "store")
    model = RetriKT.from_encoder(task, TINY, max_length=48)
    model.attach_store(store, retrieval_temperature=0.05)
    model.refresh_keys()
    config = TrainConfig(task="cb", train_k=6, combined_ce=False, retrieval_loss=True)
    batch = cb_examples()
    optimizer = torch.optim.AdamW(model.encoder.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        out = model(model.tokenize(batch), len(batch))
        dist = model.distribution(out.outputs)
        loss = retrieval_objectives(model, out.pooled, dist, batch, config)["retrieval"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("task_name", ["cb", "stsb"])
def test_combined_ce_and_distillation_reduce_their_losses(tmp_path, task_name):
    torch.manual_seed(0)
    task = get_task(task_name)
    gold, teacher = (cb_examples(), cb_examples(MORE_CB)) if task_name == "cb" else (
        stsb_examples()[:2], stsb_examples()[2:] + [{**stsb_examples()[0], "sentence1": "A man."}]
    )  # fmt: skip
    store = labelled_store(task, teacher, tmp_path / "store")
    model = RetriKT.from_encoder(task, TINY, max_length=48)
    model.attach_store(store)
    model.refresh_keys()
    config = TrainConfig(task=task_name, retrieval_loss=False)
    entries = store.entries()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    history = []
    for _ in range(6):
        out = model(model.tokenize(gold), len(gold))
        dist = model.distribution(out.outputs)
        losses = retrieval_objectives(model, out.pooled, dist, gold, config)
        assert set(losses) == {"combined"}
        losses["distill"] = distill_loss(model, entries)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["combined"] < 0.9 * history[0]["combined"]
    assert history[-1]["distill"] < 0.9 * history[0]["distill"]


def test_training_examples_never_retrieve_themselves(tmp_path):
    task = get_task("copa")
    store = labelled_store(task, copa_examples(), tmp_path / "store")
    model = RetriKT.from_encoder(task, TINY, max_length=32)
    model.attach_store(store)
    model.refresh_keys()
    examples = copa_examples()
    raw = model.raw_outputs(examples, k=4, exclude_own=True)
    # 2 examples x 2 choices in the store; each input may only see the other example's 2 rows.
    for i, rows in enumerate(raw.rows):
        own = i // 2
        found = [r for r in rows if r >= 0]
        assert len(found) == 2
        assert all(model.memory.fields[r]["premise"] != examples[own]["premise"] for r in found)
    with_own = model.raw_outputs(examples, k=1)
    assert [model.memory.fields[r]["premise"] for r in with_own.rows[:, 0]] == [
        ex["premise"] for ex in examples for _ in range(2)
    ]


CB_ENTAILMENTS = [
    ("The cat sat on the mat all day.", "The cat was on the mat.", 0),
    ("He bought a new red bicycle yesterday.", "He owns a bicycle.", 0),
    ("The museum opens at nine on Sundays.", "The museum opens on Sundays.", 0),
    ("All the cookies were eaten by noon.", "Some cookies were eaten.", 0),
]


@pytest.mark.parametrize(("teacher", "expected_mix"), [("right", 0.0), ("wrong", 1.0)])
def test_tuning_trusts_the_neighbours_only_when_they_help(tmp_path, teacher, expected_mix):
    """All examples are entailments: a right teacher makes the vote certain, a wrong one
    makes every bit of weight on it lower the gold probability."""
    task = get_task("cb")
    examples = cb_examples(CB_ENTAILMENTS)
    labelled = [{**ex, "label": 0 if teacher == "right" else 1} for ex in examples]
    store = labelled_store(task, labelled, tmp_path / "store")
    model = RetriKT.from_encoder(task, TINY, max_length=32)
    model.attach_store(store)
    model.refresh_keys()
    tuning = tune_retrieval(model, examples)
    assert tuning["mix"] == expected_mix
    assert model.config.retrieval.mix == expected_mix
    assert tuning["retrieval_temperature"] == pytest.approx(
        model.retrieval_temperature.item(), rel=1e-5
    )


# ------------------------------------------------------------------- end to end (CLI)
def test_train_and_evaluate_the_default_student_on_a_cb_slice(tmp_path, data_dir, capsys):
    """The real packaged minilm-l6 (all 6 layers) on 16 CB examples, then `retrikt evaluate`."""
    out = tmp_path / "student"
    code = main([
        "train-student", "--task", "cb", "--data-dir", str(data_dir), "--no-retrieval",
        "--out", str(out), "--train-limit", "16", "--epochs", "1", "--max-length", "64",
    ])  # fmt: skip
    assert code == 0
    trained = json.loads((out / "eval_results.json").read_text())
    assert trained["examples"] == 56 and trained["train_examples"] == 16
    assert set(trained["metrics"]) == {"accuracy", "macro_f1"}
    capsys.readouterr()
    assert main([
        "evaluate", "--task", "cb", "--data-dir", str(data_dir), "--model", str(out),
        "--out", str(tmp_path / "eval.json"),
    ]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == pytest.approx(trained["metrics"])
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == printed["metrics"]
    # several students: a Markdown comparison table, and the JSON list in --out
    assert main([
        "evaluate", "--data-dir", str(data_dir), "--model", str(out), "--model", str(out),
        "--out", str(tmp_path / "both.json"),
    ]) == 0  # fmt: skip
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| model | retrieval | accuracy | macro_f1 | examples/s |"
    accuracy = f"{100 * printed['metrics']['accuracy']:.1f}"
    assert [row.split(" | ")[2] for row in table[4:]] == [accuracy, accuracy]
    assert len(json.loads((tmp_path / "both.json").read_text())) == 2
    loaded = RetriKT.from_pretrained(out)
    assert loaded.encoder.config.num_hidden_layers == 6
    assert loaded.config.training["train_limit"] == 16
    examples = get_task("cb").read("validation", data_dir)[:8]
    again = RetriKT.from_pretrained(out)
    assert np.array_equal(loaded.predict_examples(examples), again.predict_examples(examples))


def test_a_resumed_student_reports_the_seconds_of_every_piece(tmp_path, data_dir, monkeypatch):
    """Killed in epoch 2 and rerun, ``train_student``'s train_seconds (what the harness's
    Train s column shows) includes the first run's epochs, not only the rerun's."""
    import retrikt.training as training

    config = TrainConfig(task="cb", encoder="minilm-l6:1", train_limit=8,
                         epochs=2, batch_size=4, max_length=32)  # fmt: skip
    kill_in_epoch_two(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        training.train_student(config, data_dir, tmp_path / "student")
    monkeypatch.undo()
    path = tmp_path / "student" / "checkpoint" / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    assert saved["epoch"] == 1 and saved["seconds"] > 0
    saved["seconds"] = 10_000.0  # as if the first piece had run for hours
    torch.save(saved, path)
    result = training.train_student(config, data_dir, tmp_path / "student")
    assert 10_000 < result.seconds < 10_000 + 600
    written = json.loads((tmp_path / "student" / "eval_results.json").read_text())
    assert written["train_seconds"] == round(result.seconds, 1)


def test_train_the_retrieval_student_from_the_cli(tmp_path, data_dir):
    task = get_task("cb")
    store = labelled_store(task, subsample(task.read("train", data_dir), 24), tmp_path / "store")
    out = tmp_path / "student"
    code = main([
        "train-student", "--task", "cb", "--data-dir", str(data_dir), "--store", str(store.path),
        "--out", str(out), "--encoder", "minilm-l6:2", "--train-limit", "24", "--epochs", "1",
        "--max-length", "48", "--batch-size", "8", "--train-k", "8", "--tune-retrieval",
    ])  # fmt: skip
    assert code == 0
    assert not (out / "checkpoint").exists()  # the epoch checkpoints go once the student is saved
    results = json.loads((out / "eval_results.json").read_text())
    assert results["tune_examples"] == 4 and results["train_examples"] == 20
    student = RetriKT.from_pretrained(out)
    retrieval = student.config.retrieval
    assert retrieval.source["store_id"] == store.store_id
    assert retrieval.tuning["examples"] == 4 and retrieval.k == retrieval.tuning["k"]
    # the student's keys are its own: re-embedding the rows reproduces the saved vectors
    saved = np.array(student.store.embeddings())
    fresh = student.embed_inputs(student.memory.inputs())
    assert np.allclose(saved, fresh, atol=1e-4)
    prediction = student.predict([["It rained all day.", "It was dry."]])[0]
    assert len(prediction.neighbours) == retrieval.k


def test_train_student_needs_a_store_or_no_retrieval(tmp_path, caplog):
    assert main(["train-student", "--task", "cb", "--out", str(tmp_path / "x")]) == 1
    assert "--store PATH" in caplog.text


def test_train_student_flags_come_from_train_config_and_tuning_is_explicit(tmp_path):
    from retrikt.cli import build_parser
    from retrikt.config import from_args
    from retrikt.errors import ConfigError
    from retrikt.training import train_student

    argv = ["train-student", "--task", "cb", "--out", "x", "--store", "s", "--k", "3"]
    args = build_parser().parse_args([*argv, "--mix", "0.7", "--no-distill"])
    config = from_args(TrainConfig, args)
    assert (config.k, config.mix, config.distill, config.tune_retrieval) == (3, 0.7, False, False)
    assert config.epochs == TrainConfig(task="cb").epochs  # defaults from the dataclass
    assert from_args(
        TrainConfig, build_parser().parse_args([*argv, "--tune-retrieval"])
    ).tune_retrieval
    with pytest.raises(ConfigError, match="--tune-retrieval tunes retrieval: give a --store"):
        train_student(TrainConfig(task="cb", tune_retrieval=True), None, tmp_path)


def test_the_stores_examples_reach_distillation_training(tmp_path):
    """student-kd's setting (no combined CE, no retrieval KL): the store still trains the head.

    The committed demo table had student-kd equal to student-ft on CB in every cell; this
    checks that the store's examples do reach the distilled student's training.
    """
    from retrikt.training import train

    task = get_task("cb")
    store = labelled_store(task, cb_examples(MORE_CB), tmp_path / "store")
    heads = {}
    for distill in (False, True):
        torch.manual_seed(0)
        model = RetriKT.from_encoder(task, TINY, max_length=48)
        model.attach_store(store)
        config = TrainConfig(
            task="cb", epochs=1, batch_size=2, combined_ce=False, retrieval_loss=False,
            distill=distill, lr=1e-3,
        )  # fmt: skip
        history = train(model, cb_examples(), config, store.entries())
        assert ("distill" in history[0]) == distill
        heads[distill] = torch.cat([p.detach().flatten() for p in model.head.parameters()])
    assert not torch.allclose(heads[False], heads[True])


def test_classic_kd_does_not_re_embed_the_store_each_epoch(tmp_path, monkeypatch):
    """Without the retrieval objectives the neighbours are never read, so the store's keys
    are embedded once, at the end (for the saved student), instead of every epoch too."""
    from retrikt.training import train

    task = get_task("cb")
    store = labelled_store(task, cb_examples(MORE_CB), tmp_path / "store")
    calls, refresh = [], RetriKT.refresh_keys
    monkeypatch.setattr(RetriKT, "refresh_keys", lambda *a: calls.append(1) or refresh(*a))
    for objectives, refreshes in ((False, 1), (True, 3 + 1)):
        model = RetriKT.from_encoder(task, TINY, max_length=48)
        model.attach_store(store)
        calls.clear()
        config = TrainConfig(task="cb", epochs=3, batch_size=4, combined_ce=objectives,
                             retrieval_loss=objectives)  # fmt: skip
        history = train(model, cb_examples(), config, store.entries())
        assert len(calls) == refreshes
        assert ("combined" in history[0]) == objectives and "distill" in history[0]
        assert model.memory.keys.shape[0] == len(store)  # fresh keys for the saved student


def test_a_killed_training_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path, monkeypatch):
    """Stopped in its second epoch and rerun, training goes on from the first epoch's
    checkpoint and ends where an uninterrupted run ends: the weights, the store keys and
    the loss history (so the optimizer, schedule and random streams were restored too)."""
    import retrikt.training as training

    task = get_task("cb")
    store = labelled_store(task, cb_examples(MORE_CB), tmp_path / "store")
    config = TrainConfig(task="cb", epochs=3, batch_size=4, lr=1e-3, train_k=4)
    checkpoints = tmp_path / "checkpoints"

    def fresh(seed):
        torch.manual_seed(seed)
        model = RetriKT.from_encoder(task, TINY, max_length=48)
        model.attach_store(store)
        return model

    def run(model, train_config=config):
        return training.train(model, cb_pool(), train_config, store.entries(), None, checkpoints)

    unbroken = fresh(0)
    expected = training.train(unbroken, cb_pool(), config, store.entries())

    kill_in_epoch_two(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run(fresh(0))
    monkeypatch.undo()
    assert torch.load(checkpoints / "checkpoint.pt", weights_only=False)["epoch"] == 1

    resumed = fresh(1)  # other initial weights: the checkpoint's must replace them
    assert run(resumed) == expected
    weights = resumed.state_dict()
    for name, want in unbroken.state_dict().items():
        assert torch.equal(want, weights[name]), name
    assert np.array_equal(unbroken.memory.keys, resumed.memory.keys)

    # a checkpoint is resumed only by the run that wrote it
    with pytest.raises(RetriktError, match="checkpoint.pt was written by a training run with"):
        run(fresh(0), TrainConfig(task="cb", epochs=3, batch_size=4, lr=2e-3, train_k=4))
