"""The student: combination rule, heads of every task type, saving/loading, prediction API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from store_helpers import labelled_store

from retrikt.errors import ConfigError, DataError, ModelFileError, StoreError
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.student import RetriKT, evaluate_model
from retrikt.student.memory import memory_rows
from retrikt.tasks import CHOICE, CLASSIFICATION, SCORE, get_task

TINY = "minilm-l6:1"  # one transformer layer: real weights, fast

CB = [
    ("The cat sat on the mat all day.", "The cat was on the mat.", 0),
    ("It is raining heavily in Paris.", "The weather in Paris is dry.", 1),
    ("She said she might come to the party.", "She will come to the party.", 2),
    ("The shop closes at six every evening.", "The shop is open at night.", 1),
    ("He bought a new red bicycle yesterday.", "He owns a bicycle.", 0),
    ("I am not sure the train is on time.", "The train is late.", 2),
]
COPA = [
    ("The man broke his toe.", "cause", "He dropped a hammer on his foot.", "He got a hole in his sock.", 0),  # noqa: E501
    ("I tipped the bottle.", "effect", "The liquid in the bottle froze.", "The liquid poured out.", 1),  # noqa: E501
]  # fmt: skip
STSB = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A dog runs in the park.", "A woman is cooking pasta.", 0.2),
    ("Two kids are playing football.", "Children play soccer outside.", 3.6),
]
COLA = [("The book was read by her.", 1), ("Book the her read was.", 0)]


def cb_examples(rows=CB):
    return [
        {"premise": p, "hypothesis": h, "label": y, "idx": i} for i, (p, h, y) in enumerate(rows)
    ]


def copa_examples():
    keys = ("premise", "question", "choice1", "choice2", "label")
    return [{**dict(zip(keys, row, strict=True)), "idx": i} for i, row in enumerate(COPA)]


def stsb_examples():
    return [
        {"sentence1": a, "sentence2": b, "label": y, "idx": i} for i, (a, b, y) in enumerate(STSB)
    ]


def cola_examples():
    return [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(COLA)]


EXAMPLES = {"cb": cb_examples, "copa": copa_examples, "stsb": stsb_examples, "cola": cola_examples}


@pytest.fixture(scope="module")
def cb_store(tmp_path_factory):
    """A small CB store of the hand-made examples with gold one-hot soft labels."""
    return labelled_store(get_task("cb"), cb_examples(), tmp_path_factory.mktemp("s") / "cb")


# ------------------------------------------------------------------------ memory
def test_copa_store_rows_hold_one_key_per_choice():
    task = get_task("copa")
    ex = copa_examples()[0]
    entry = StoreEntry(
        fields={f: ex[f] for f in task.fields}, text="t", requested_label=0, soft_labels=[0.7, 0.3]
    )
    rows = memory_rows(task, [entry])
    assert [r.fields["choice"] for r in rows] == [0, 1]
    assert rows[0].text == "The man broke his toe. because He dropped a hammer on his foot."
    assert all(r.soft_labels == [0.7, 0.3] for r in rows)


# ------------------------------------------------------------------------- heads
@pytest.mark.parametrize(
    ("task_name", "head", "width"),
    [("cb", CLASSIFICATION, 3), ("cola", CLASSIFICATION, 2), ("copa", CHOICE, 2), ("stsb", SCORE, 1)],  # noqa: E501
)  # fmt: skip
def test_head_of_every_task_type_learns_a_tiny_batch(task_name, head, width):
    torch.manual_seed(0)
    task = get_task(task_name)
    model = RetriKT.from_encoder(task, TINY, max_length=48)
    assert model.config.head == head
    examples = EXAMPLES[task_name]()
    features = model.tokenize(examples)
    per = 2 if head == CHOICE else 1
    assert features["input_ids"].shape[0] == per * len(examples)
    if task.task_type in ("pair", "regression", "multiple_choice"):  # real pair input
        assert (features["token_type_ids"] == 1).any()
    else:
        assert not (features["token_type_ids"] == 1).any()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model.task_loss(model(features, len(examples)).outputs, examples)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    probs = model.predict_examples(examples)
    assert probs.shape == (len(examples), width)
    if head == SCORE:
        assert np.all((probs >= 0) & (probs <= 5))
    else:
        assert np.allclose(probs.sum(-1), 1, atol=1e-5)
        # a memorised tiny batch is predicted right
        assert probs.argmax(-1).tolist() == [ex["label"] for ex in examples]


def test_regression_prediction_is_clipped_to_the_score_range():
    model = RetriKT.from_encoder("stsb", TINY, max_length=32)
    with torch.no_grad():
        model.head.bias.fill_(100.0)
    scores = model.predict_examples(stsb_examples())
    assert np.all(scores == 5.0)
    prediction = model.predict([["A cat.", "A dog."]])[0]
    assert prediction.score == 5.0 and prediction.label == "5.00" and prediction.probs is None


# -------------------------------------------------------------- predict + save / load
def test_predict_validates_items_and_accepts_every_form():
    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    forms = [
        {"premise": "It rained.", "hypothesis": "The ground is wet."},
        ["It rained.", "The ground is wet."],
    ]
    first, second = model.predict(forms)
    assert first.probs == pytest.approx(second.probs)
    assert set(first.probs) == {"entailment", "contradiction", "neutral"}
    assert first.label == max(first.probs, key=first.probs.get)
    json.dumps(first.to_dict())  # JSON-safe
    with pytest.raises(DataError, match="item 1: missing field 'hypothesis'"):
        model.predict([forms[0], {"premise": "only one"}])
    with pytest.raises(DataError, match="empty"):
        model.predict([["  ", "x"]])
    assert model.predict([]) == []


def test_save_and_load_give_identical_predictions(tmp_path):
    model = RetriKT.from_encoder("copa", "minilm-l6:2", max_length=48)
    with torch.no_grad():  # move the head off its initialisation
        model.head.weight.normal_()
    examples = copa_examples()
    before = model.predict(examples)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json",
        "encoder",
        "head.safetensors",
    }
    loaded = RetriKT.from_pretrained(tmp_path / "m")
    assert loaded.encoder.config.num_hidden_layers == 2
    after = loaded.predict(examples)
    assert [p.to_dict() for p in after] == [p.to_dict() for p in before]
    assert set(after[0].probs) == {"choice1", "choice2"}


def test_loading_a_broken_folder_says_what_is_missing(tmp_path):
    with pytest.raises(ModelFileError, match="head.safetensors is missing"):
        (tmp_path / "config.json").write_text("{}")
        (tmp_path / "encoder").mkdir()
        RetriKT.from_pretrained(tmp_path)


def test_retrieval_round_trip_identical_predictions_and_neighbours(tmp_path, cb_store):
    model = RetriKT.from_encoder("cb", TINY, max_length=48)
    model.attach_store(cb_store, k=3, mix=0.4, retrieval_temperature=0.1)
    model.refresh_keys()
    items = [["The dog sat on the mat.", "The dog was on the mat."], ["It rains.", "It is dry."]]
    before = model.predict(items)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "store" / "manifest.json").is_file()
    loaded = RetriKT.from_pretrained(tmp_path / "m")
    assert loaded.store is not None and len(loaded.store) == len(cb_store)
    assert loaded.store.encoder_id == loaded.config.retrieval.store_encoder_id
    after = loaded.predict(items)
    for a, b in zip(after, before, strict=True):
        assert a.label == b.label
        assert a.probs == pytest.approx(b.probs, abs=1e-6)
        assert [(n.text, n.label) for n in a.neighbours] == [
            (n.text, n.label) for n in b.neighbours
        ]
        assert [n.similarity for n in a.neighbours] == pytest.approx(
            [n.similarity for n in b.neighbours], abs=1e-5
        )
    # The explanation is the prediction: probs = mix * model + (1 - mix) * weighted teacher vote.
    raw = loaded.raw_outputs([loaded.task.parse_input(i) for i in items])
    names = list(loaded.task.label_names)
    for row, prediction in enumerate(after):
        assert len(prediction.neighbours) == 3
        assert sum(n.weight for n in prediction.neighbours) == pytest.approx(1, abs=1e-5)
        vote = np.zeros(3)
        for n in prediction.neighbours:
            vote[names.index(n.label)] += n.weight  # one-hot teacher labels
        expected = 0.4 * raw.model[row] + 0.6 * vote
        assert [prediction.probs[name] for name in names] == pytest.approx(expected, abs=1e-5)


def test_copa_retrieval_neighbours_are_per_choice(tmp_path):
    task = get_task("copa")
    store = labelled_store(task, copa_examples(), tmp_path / "copa-store")
    model = RetriKT.from_encoder(task, TINY, max_length=48)
    model.attach_store(store, k=2)
    model.refresh_keys()
    assert len(model.memory) == 2 * len(store)
    model.save_pretrained(tmp_path / "m")
    loaded = RetriKT.from_pretrained(tmp_path / "m")
    prediction = loaded.predict([copa_examples()[0]])[0]
    assert [n.choice for n in prediction.neighbours] == ["choice1"] * 2 + ["choice2"] * 2
    assert {n.label for n in prediction.neighbours} <= {"plausible", "implausible"}
    # Its own example is in the store: each choice input finds its own row first.
    assert prediction.neighbours[0].label == "plausible"  # choice1 is the answer
    assert prediction.neighbours[2].label == "implausible"


def test_a_modified_student_store_is_refused(tmp_path, cb_store):
    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    model.attach_store(cb_store, k=2)
    model.refresh_keys()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["retrieval"]["store_manifest_sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(StoreError, match="not the store this student was saved with"):
        RetriKT.from_pretrained(tmp_path / "m")


def test_a_store_for_another_task_is_refused(tmp_path):
    store = KnowledgeStore.create(
        tmp_path / "rte", task="rte", label_names=["entailment", "not_entailment"],
        encoder_id="x", dim=4,
    )  # fmt: skip
    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    with pytest.raises(StoreError, match="store for task 'rte'"):
        model.attach_store(store)


def test_evaluate_model_scores_with_official_metrics():
    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    metrics = evaluate_model(model, get_task("cb"), cb_examples())
    assert set(metrics) == {"accuracy", "macro_f1"}
    preds = model.predict_examples(cb_examples()).argmax(-1)
    assert metrics["accuracy"] == pytest.approx(np.mean(preds == [y for *_, y in CB]))


def test_config_json_records_versions_and_unknown_keys_are_refused(tmp_path):
    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert {"retrikt", "torch", "transformers", "sentence-transformers"} <= set(config["versions"])
    config["temperatur"] = 0.1  # a typo, or a key from a newer RetriKT
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="unknown StudentConfig keys temperatur"):
        RetriKT.from_pretrained(tmp_path / "m")


def test_a_format_1_folder_still_loads(tmp_path, cb_store):
    """Version 1 saved the encoder as a plain HF folder and the temperature as log_temperature."""
    from safetensors.torch import load_file, save_file

    model = RetriKT.from_encoder("cb", TINY, max_length=32)
    model.attach_store(cb_store, k=2, retrieval_temperature=0.2)
    model.refresh_keys()
    model.save_pretrained(tmp_path / "m")
    items = [["It rains.", "It is dry."]]
    before = model.predict(items)[0].probs
    head = load_file(tmp_path / "m" / "head.safetensors")
    head["log_temperature"] = head.pop("log_retrieval_temperature")
    save_file(head, tmp_path / "m" / "head.safetensors")
    encoder = tmp_path / "m" / "encoder"
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (encoder / name).unlink()
    shutil.rmtree(encoder / "1_Pooling")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["versions"]
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "format_version": 1}))
    loaded = RetriKT.from_pretrained(tmp_path / "m")
    assert loaded.retrieval_temperature.item() == pytest.approx(0.2)
    assert loaded.predict(items)[0].probs == pytest.approx(before, abs=1e-6)
