"""Rationales (issue 13): the teacher-forced prompt, cached and resumable generation through
the one sampler, the store, predict's explanations, and rationales as a training signal."""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from model_helpers import tiny_llama
from store_helpers import labelled_store
from test_build_contents import _stub_stages
from test_student import TINY, cb_examples

import retrikt.generator.build as build
import retrikt.generator.lm as lm
from retrikt import cache
from retrikt.cli import main
from retrikt.errors import ConfigError
from retrikt.generator.configs import TRAIN_SOURCE, BuildConfig, SamplingConfig
from retrikt.generator.generation import SHARD_GLOB
from retrikt.generator.rationales import (
    END,
    Demo,
    clean_rationale,
    entry_label,
    pick_demos,
    rationale_prompt,
    write_rationales,
)
from retrikt.generator.sampler import Sampler
from retrikt.store import KnowledgeStore, StoreEntry
from retrikt.student import RetriKT
from retrikt.tasks import get_task
from retrikt.training import TrainConfig, train

CB, COPA = get_task("cb"), get_task("copa")
WHY = {
    0: "The premise states it directly.",
    1: "The premise says the opposite.",
    2: "The premise only makes it possible.",
}


# ----------------------------------------------------------------------- the prompt
def test_the_prompt_gives_the_gold_label_after_two_explained_examples():
    first, second, target = cb_examples()[:3]
    demos = [Demo(first, 0, "It says the cat was there."), Demo(second, 1, "Dry is not rain.")]
    prompt = rationale_prompt(CB, target, 2, demos)
    assert prompt.endswith(f"Hypothesis: {target['hypothesis']}\nAnswer: neutral\nExplanation:")
    for demo, answer in zip(demos, ("entailment", "contradiction"), strict=True):
        block = (
            f"Premise: {demo.example['premise']}\nHypothesis: {demo.example['hypothesis']}\n"
            f"Answer: {answer}\nExplanation: {demo.rationale}\n{END}"
        )
        assert block in prompt
    assert prompt.count(END) == 2 and prompt.startswith(f"Task: {CB.description}")


def test_a_copa_answer_names_the_choice():
    example = {"premise": "The man fell.", "question": "cause", "choice1": "He slipped.",
               "choice2": "He laughed.", "label": 0}  # fmt: skip
    assert rationale_prompt(COPA, example, 0, []).endswith(
        "Answer: choice 1 (He slipped.)\nExplanation:"
    )


def test_demos_have_different_labels_and_follow_the_seed():
    examples = cb_examples()
    demos = pick_demos(CB, examples, seed=0)
    assert len(demos) == 2 and demos[0]["label"] != demos[1]["label"]
    assert pick_demos(CB, examples, seed=0) == demos
    assert any(pick_demos(CB, examples, seed=s) != demos for s in range(1, 4))


def test_the_label_explained_is_gold_for_training_examples_and_the_teachers_otherwise():
    train = StoreEntry({}, "", 2, [0.7, 0.2, 0.1], generator=TRAIN_SOURCE)
    made = StoreEntry({}, "", 2, [0.7, 0.2, 0.1], generator="smollm2-135m")
    assert entry_label(CB, train) == 2 and entry_label(CB, made) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" It follows.\n###\nPremise: more", "It follows."),
        (" It follows. Then it was cut aft", "It follows."),
        (" no sentence end at all", "no sentence end at all"),
        ("\n###", None),
    ],
)
def test_a_rationale_ends_at_the_marker_or_its_last_full_sentence(text, expected):
    assert clean_rationale(text) == expected


# ----------------------------------------------------------------------- generation
@pytest.fixture
def tiny_lm(monkeypatch):
    """The real sampler on a tiny random Llama: counts the prompts it is asked to continue."""
    model, tokenizer = tiny_llama()
    monkeypatch.setattr(lm, "load_policy", lambda name, adapter=None, **_: (model, tokenizer))
    asked: list[str] = []
    real = Sampler.sample

    def sample(self, prompts, seeds):
        asked.extend(prompts)
        return real(self, prompts, seeds)

    monkeypatch.setattr(Sampler, "sample", sample)
    return asked


def _entries():
    return [
        StoreEntry(
            {k: ex[k] for k in CB.fields},
            f"{ex['premise']} [SEP] {ex['hypothesis']}",
            ex["label"],
            [1.0, 0.0, 0.0],
            generator=TRAIN_SOURCE,
        )  # fmt: skip
        for ex in cb_examples()
    ]


def _config(tmp_path):
    return BuildConfig(
        task="cb", out=str(tmp_path / "store"), rl="none", cache_dir=str(tmp_path / "cache"),
        rationales=True, rationale_tokens=6, sampling=SamplingConfig(batch_size=3),
    )  # fmt: skip


def test_rationales_are_generated_in_batches_and_resume_from_the_cache(tmp_path, tiny_lm):
    config, train = _config(tmp_path), cb_examples()
    entries = _entries()
    stats = write_rationales(config, CB, ["cb"], train, entries)
    demos, rows = 2, len(entries)
    assert len(tiny_lm) == demos + rows  # each prompt once: the 2 demos, then every entry
    assert stats["entries"] == rows and stats["tokens"] == stats["generated_tokens"] > 0
    assert all(e.rationale for e in entries)
    # every entry's prompt shows its gold label after the two explained demos
    for entry in entries:
        prompt = next(p for p in tiny_lm[demos:] if entry.fields["premise"] in p.split("\n\n")[-1])
        assert prompt.endswith(f"Answer: {CB.label_names[entry.requested_label]}\nExplanation:")
        assert prompt.count("Explanation:") == 3
    # a rerun asks for nothing and gives the same rationales
    again = _entries()
    assert write_rationales(config, CB, ["cb"], train, again)["generated_tokens"] == 0
    assert len(tiny_lm) == demos + rows
    assert [e.rationale for e in again] == [e.rationale for e in entries]
    # a run killed after some batches resumes with the rest only
    (shard,) = (tmp_path / "cache" / "rationales").glob(f"*/{SHARD_GLOB}")
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-2]))
    resumed = _entries()
    cost = write_rationales(config, CB, ["cb"], train, resumed)
    assert len(tiny_lm) == demos + rows + 2
    assert cost["tokens"] == stats["tokens"]
    assert cost["generated_tokens"] == sum(json.loads(line)["tokens"] for line in lines[-2:])
    assert [e.rationale for e in resumed] == [e.rationale for e in entries]


def test_equal_entries_share_one_rationale_and_count_once_as_distinct(tmp_path, tiny_lm):
    entries = _entries()
    twin = _entries()[0]  # the same example with the same label: the same job
    stats = write_rationales(_config(tmp_path), CB, ["cb"], cb_examples(), [*entries, twin])
    assert twin.rationale == entries[0].rationale
    assert stats["written"] == len(entries) + 1
    assert stats["distinct"] == len(entries)  # the tiny LM's rows differ; the twin's does not


def test_a_rationale_model_without_rationales_is_refused():
    with pytest.raises(ConfigError, match=r"rationale_model \(--rationale-model\) 'gpt'"):
        BuildConfig(task="cb", out="s", rl="none", rationale_model="gpt")
    assert BuildConfig(task="cb", out="s", rl="none", rationales=True, rationale_model="gpt")


def test_build_store_with_rationales_keeps_them_in_the_store(tmp_path, tiny_lm, monkeypatch):
    _stub_stages(monkeypatch, [])
    config = _config(tmp_path)
    config.store_examples = "train"
    store = KnowledgeStore.open(build.build_store(config))
    entries = store.entries()
    assert entries and all(e.rationale for e in entries)
    stats = store.manifest["generator"]["stats"]["rationales"]
    assert stats["written"] == len(entries) and len(stats["demos"]) == 2


def test_a_sharded_build_splits_the_rationales_and_stores_what_one_process_would(
    tmp_path, tiny_lm, monkeypatch
):
    """Two ranks (threads standing in for ``accelerate launch`` processes): rank 1 writes
    its share of the jobs rank 0 publishes, and the store is the single-process one."""
    _stub_stages(monkeypatch, [])
    rank1 = "rank-1"
    monkeypatch.setattr(
        build, "shard_info", lambda: (1, 2) if threading.current_thread().name == rank1 else (0, 2)
    )
    monkeypatch.setattr(cache, "wait_until", functools.partial(cache.wait_until, poll=0.05,
                                                              timeout=120))  # fmt: skip
    sharded = replace(_config(tmp_path / "sharded"), store_examples="train")
    helper = threading.Thread(target=build.build_store, args=(sharded,), name=rank1)
    helper.start()
    store = KnowledgeStore.open(build.build_store(sharded))
    helper.join()
    (work,) = (tmp_path / "sharded" / "cache" / "rationales").iterdir()
    shares = [
        {json.loads(line)["id"] for line in (work / f"generations.rank{r}.jsonl").open()}
        for r in (0, 1)
    ]
    assert len(shares[1]) == len(store) // 2 and not shares[0] & shares[1]
    assert len(list(work.glob("plan-*.json"))) == 1
    monkeypatch.setattr(build, "shard_info", lambda: (0, 1))
    alone = KnowledgeStore.open(
        build.build_store(replace(_config(tmp_path / "alone"), store_examples="train"))
    )
    assert [e.rationale for e in store.entries()] == [e.rationale for e in alone.entries()]
    assert all(e.rationale for e in store.entries())


# ----------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """A CB student on a store whose entries have rationales (one per label)."""
    folder = tmp_path_factory.mktemp("explained")
    examples = cb_examples()
    store = labelled_store(CB, examples, folder / "store", rationales=[
        f"{WHY[ex['label']]} ({i})" for i, ex in enumerate(examples)])  # fmt: skip
    torch.manual_seed(0)
    model = RetriKT.from_encoder(CB, TINY, max_length=48)
    model.attach_store(store, k=4)
    model.refresh_keys()
    model.save_pretrained(folder / "student")
    return model, folder


def test_predict_returns_the_neighbours_rationales_as_the_explanation(explained):
    model, _ = explained
    (prediction,) = model.predict([{"premise": "The cat sat on the mat.", "hypothesis": "A cat."}])
    assert len(prediction.neighbours) == 4
    for neighbour in prediction.neighbours:
        example = next(ex for ex in cb_examples() if ex["premise"] in neighbour.text)
        assert neighbour.rationale.startswith(WHY[example["label"]])
    voting = sorted((n for n in prediction.neighbours if n.label == prediction.label),
                    key=lambda n: -n.weight)  # fmt: skip
    assert prediction.explanation == [n.rationale for n in voting]
    assert prediction.explanation  # the top neighbour here agrees with the answer


def test_the_predict_command_and_a_reloaded_student_show_them(explained, tmp_path):
    model, folder = explained
    item = {"premise": "It is raining heavily in Paris.", "hypothesis": "It is dry."}
    want = model.predict([item])[0].to_dict()
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(item) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(folder / "student"), "--input", str(source),
                 "--output", str(out)]) == 0  # fmt: skip
    got = json.loads(out.read_text())
    assert got["explanation"] == want["explanation"]
    assert [n["rationale"] for n in got["neighbours"]] == [
        n["rationale"] for n in want["neighbours"]
    ]
    assert all(n["rationale"] for n in got["neighbours"])


def test_the_server_answers_with_the_rationales(explained):
    from fastapi.testclient import TestClient

    from retrikt.server import create_app

    _, folder = explained
    student = RetriKT.from_pretrained(folder / "student")
    item = {"premise": "The shop closes at six.", "hypothesis": "The shop is open at night."}
    want = student.predict([item])[0].to_dict()
    with TestClient(create_app(student)) as client:
        response = client.post("/predict", json={"inputs": [item]})
    assert response.status_code == 200
    (got,) = response.json()["predictions"]
    assert got["explanation"] == want["explanation"]
    assert [n["rationale"] for n in got["neighbours"]] == [
        n["rationale"] for n in want["neighbours"]
    ]


# ----------------------------------------------------------------------- training signal
def _cosines(model, examples, rationales):
    queries = model.embed_inputs([CB.encoder_inputs(ex)[0] for ex in examples])
    targets = model.embed_inputs([(r, None) for r in rationales])
    return (queries * targets).sum(-1)


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_the_rationale_loss_pulls_inputs_towards_their_rationales(weight, tmp_path):
    examples = cb_examples()
    rationales = [WHY[ex["label"]] for ex in examples]
    store = labelled_store(CB, examples, tmp_path / "s", rationales=rationales)
    torch.manual_seed(0)
    model = RetriKT.from_encoder(CB, TINY, max_length=48)
    model.attach_store(store)
    before = _cosines(model, examples, rationales)
    config = TrainConfig(task="cb", epochs=3, batch_size=4, lr=2e-4, rationale_loss=weight,
                         retrieval_loss=False)  # fmt: skip
    history = train(model, examples, config, store.entries())
    after = _cosines(model, examples, rationales)
    assert ("rationale" in history[0]) == (weight > 0)
    if weight:
        assert after.mean() > before.mean() + 0.05
        assert history[-1]["rationale"] < history[0]["rationale"]
    else:
        assert after.mean() < before.mean() + 0.05


def test_the_rationale_loss_needs_rationales_in_the_store(tmp_path):
    store = labelled_store(CB, cb_examples(), tmp_path / "s")
    model = RetriKT.from_encoder(CB, TINY, max_length=48)
    model.attach_store(store)
    with pytest.raises(ConfigError, match="--rationales"):
        train(model, cb_examples(), TrainConfig(task="cb", rationale_loss=1.0), store.entries())


def test_rationale_keys_embed_each_entry_with_its_rationale(tmp_path):
    examples = cb_examples()[:2]
    store = labelled_store(CB, examples, tmp_path / "s", rationales=["Why one.", None])
    model = RetriKT.from_encoder(CB, TINY, max_length=48)
    model.attach_store(store)
    inputs = model.memory.inputs(rationales=True)
    assert inputs[0] == (examples[0]["premise"], f"{examples[0]['hypothesis']} Why one.")
    assert inputs[1] == (examples[1]["premise"], examples[1]["hypothesis"])
    model.refresh_keys()
    plain = model.memory.keys.copy()
    model.config.retrieval.rationale_keys = True
    model.refresh_keys()
    assert not np.allclose(model.memory.keys[0], plain[0])
    np.testing.assert_allclose(model.memory.keys[1], plain[1], atol=1e-6)
    saved = model.save_pretrained(tmp_path / "student")
    assert RetriKT.from_pretrained(saved).config.retrieval.rationale_keys
