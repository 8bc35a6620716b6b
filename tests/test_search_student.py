"""search-student: slicing, importance, hidden-state distillation, latency cache, the search."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from store_helpers import labelled_store
from test_student import cb_examples
from test_training import cb_pool

from retrikt.cache import ArtefactCache
from retrikt.cli import main
from retrikt.errors import RetriktError
from retrikt.models import resolve_model
from retrikt.search import latency as latency_module
from retrikt.search import search as search_module
from retrikt.search.config import SearchConfig
from retrikt.search.report import pareto_front, recommendations, write_report
from retrikt.search.search import reward, run_search, sample_architecture
from retrikt.student import RetriKT, TrainConfig
from retrikt.student.hidden import HiddenStateLoss, TeacherStates, layer_pairs, teacher_states
from retrikt.student.memory import origin_key
from retrikt.student.slicing import (
    Architecture,
    Importance,
    importance,
    save_encoder,
    slice_encoder,
    student_on,
    unit_masks,
)
from retrikt.student_folder import load_student
from retrikt.tasks import get_task
from retrikt.training import train

PARENT = "minilm-l6:2"  # two real layers: fast, and layer selection has a choice


@pytest.fixture(scope="module")
def parent() -> RetriKT:
    return RetriKT.from_encoder("cb", PARENT).eval()


def random_importance(arch: Architecture, seed: int = 0) -> Importance:
    g = torch.Generator().manual_seed(seed)
    return Importance(
        layer_rank=torch.randperm(arch.layers, generator=g).tolist(),
        hidden=torch.rand(arch.hidden, generator=g),
        heads=torch.rand(arch.layers, arch.heads, generator=g),
        query=torch.rand(arch.layers, arch.hidden, generator=g),
        value=torch.rand(arch.layers, arch.hidden, generator=g),
        ffn=torch.rand(arch.layers, arch.ffn, generator=g),
    )


def embed(student: RetriKT, examples=None) -> torch.Tensor:
    with torch.no_grad():
        return student.embed(student.tokenize(examples or cb_examples()))


# --------------------------------------------------------------------------- slicing
def test_slicing_everything_keeps_the_parent_outputs(parent):
    bert = parent.encoder.auto_model
    full = Architecture.of(bert.config)
    ranks = random_importance(full)
    ranks.layer_rank = [1, 0]  # kept layers stay in the parent's order
    sliced = student_on(parent, slice_encoder(bert, full, ranks)).eval()
    assert torch.allclose(embed(sliced), embed(parent), atol=1e-5)


def test_sliced_shapes_are_consistent_and_reload_from_a_folder(parent, tmp_path):
    bert = parent.encoder.auto_model
    arch = Architecture(layers=1, heads=6, head_dim=24, ffn=512)
    small = slice_encoder(bert, arch, random_importance(Architecture.of(bert.config)))
    assert Architecture.of(small.config) == arch and small.config.hidden_size == 144
    layer = small.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (144, 144)
    assert layer.intermediate.dense.weight.shape == (512, 144)
    assert small.embeddings.word_embeddings.weight.shape[1] == 144
    student = student_on(parent, small).eval()
    assert embed(student).shape == (len(cb_examples()), 144)
    folder = save_encoder(student, tmp_path / "encoder")
    reloaded = RetriKT.from_encoder("cb", str(folder)).eval()  # an ordinary encoder folder
    assert torch.allclose(embed(reloaded), embed(student), atol=1e-6)


def test_slicing_heads_and_neurons_equals_masking_them_in_the_parent(parent):
    """Without LayerNorm (which sees fewer dimensions after slicing), a sliced layer's
    attention and FFN outputs are the parent's with the dropped units masked to zero."""
    bert = parent.encoder.auto_model
    shape = Architecture.of(bert.config)
    arch = Architecture(layers=2, heads=6, head_dim=24, ffn=700)
    ranks = random_importance(shape, seed=3)
    ranks.layer_rank = [0, 1]
    small = slice_encoder(bert, arch, ranks)
    hid = torch.sort(torch.argsort(ranks.hidden, descending=True)[: arch.hidden]).values
    x = torch.randn(2, 7, shape.hidden)
    keep = torch.zeros(shape.hidden)
    keep[hid] = 1
    x = x * keep  # the residual stream outside the kept dimensions is zero
    masks = {name: torch.zeros(shape.layers, n) for name, n in
             (("query", shape.hidden), ("value", shape.hidden), ("ffn", shape.ffn))}  # fmt: skip
    for layer in range(shape.layers):
        heads = torch.argsort(ranks.heads[layer], descending=True)[: arch.heads]
        for h in heads.tolist():
            cut = slice(h * 32, (h + 1) * 32)
            for name in ("query", "value"):
                best = torch.argsort(getattr(ranks, name)[layer][cut], descending=True)
                masks[name][layer, h * 32 + best[: arch.head_dim]] = 1
        masks["ffn"][layer, torch.argsort(ranks.ffn[layer], descending=True)[: arch.ffn]] = 1
    for i in range(2):
        big, cut = bert.encoder.layer[i], small.encoder.layer[i]
        with torch.no_grad(), unit_masks(bert, masks):
            expected_attn = big.attention.output.dense(big.attention.self(x)[0])[..., hid]
            expected_ffn = big.output.dense(big.intermediate(x))[..., hid]
        with torch.no_grad():
            got_attn = cut.attention.output.dense(cut.attention.self(x[..., hid])[0])
            got_ffn = cut.output.dense(cut.intermediate(x[..., hid]))
        assert torch.allclose(got_attn, expected_attn, atol=1e-5)
        assert torch.allclose(got_ffn, expected_ffn, atol=1e-5)


def test_importance_ranks_every_unit_deterministically(parent, tmp_path):
    store = labelled_store(get_task("cb"), cb_pool(), tmp_path / "store")
    entries = store.entries()
    student = RetriKT.from_encoder("cb", PARENT)
    first = importance(student, entries, batch_size=4)
    again = importance(RetriKT.from_encoder("cb", PARENT), entries, batch_size=4)
    assert sorted(first.layer_rank) == [0, 1]
    assert first.heads.shape == (2, 12) and first.ffn.shape == (2, 1536)
    assert first.hidden.shape == (384,) and (first.value > 0).any()
    assert first.layer_rank == again.layer_rank
    assert torch.allclose(first.ffn, again.ffn)
    first.save(tmp_path / "ranks.safetensors")
    loaded = Importance.load(tmp_path / "ranks.safetensors")
    assert loaded.layer_rank == first.layer_rank and torch.equal(loaded.heads, first.heads)


def test_a_saved_sliced_student_reloads_to_the_same_predictions(parent, tmp_path):
    store = labelled_store(get_task("cb"), cb_pool(), tmp_path / "store")
    bert = parent.encoder.auto_model
    arch = Architecture(layers=1, heads=4, head_dim=32, ffn=256)
    student = student_on(parent, slice_encoder(bert, arch, random_importance(Architecture.of(
        bert.config))))  # fmt: skip
    student.attach_store(store, k=2)
    config = TrainConfig(task="cb", epochs=1, batch_size=4, seed=0)
    train(student, cb_examples(), config, store.entries())
    student.save_pretrained(tmp_path / "student")
    reloaded = load_student(tmp_path / "student")
    examples = [{**ex, "label": None} for ex in cb_pool()]
    assert np.allclose(reloaded.predict_examples(examples), student.predict_examples(examples),
                       atol=1e-6)  # fmt: skip


# ------------------------------------------------------------------ hidden states
def test_layer_pairs_map_student_layers_uniformly_onto_the_teacher():
    assert layer_pairs(1, 24) == [(0, 24)]
    assert layer_pairs(2, 24) == [(0, 12), (1, 24)]
    assert layer_pairs(4, 6) == [(0, 2), (1, 3), (2, 5), (3, 6)]
    assert layer_pairs(6, 3) == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3)]


def synthetic_states(task, examples, layers=3, width=16) -> TeacherStates:
    inputs = [item for ex in examples for item in task.encoder_inputs(ex)]
    states = np.random.default_rng(0).normal(size=(len(inputs), layers + 1, width))
    index = {json.dumps(list(item)): i for i, item in enumerate(inputs)}
    return TeacherStates("synthetic", states.astype(np.float16), index)


def test_hidden_state_loss_decreases_in_the_training_loop(tmp_path):
    task = get_task("cb")
    examples = cb_pool()
    student = RetriKT.from_encoder(task, "minilm-l6:1")
    hidden = HiddenStateLoss(synthetic_states(task, examples), task, 1, student.hidden_size)
    config = TrainConfig(task="cb", epochs=12, batch_size=12, lr=1e-4, seed=0)
    history = train(student, examples, config, hidden=hidden)
    assert "hidden" in history[0] and history[-1]["hidden"] < 0.85 * history[0]["hidden"]
    # Beside the retrieval objectives too (they build their own dict of losses).
    store = labelled_store(task, examples, tmp_path / "store")
    student.attach_store(store, k=2)
    history = train(
        student, examples, TrainConfig(task="cb", epochs=1, batch_size=12), hidden=hidden
    )
    assert {"hidden", "combined", "retrieval"} <= set(history[0])
    with pytest.raises(RetriktError, match="no teacher hidden states"):
        hidden.states.lookup(task, [{"premise": "unseen", "hypothesis": "x", "label": 0}])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A 2-layer, 32-wide BERT classifier with CB's labels: a teacher in seconds."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    names = get_task("cb").label_names
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_teacher_states_are_pooled_per_layer_and_cached(tiny_teacher, tmp_path, monkeypatch):
    task = get_task("cb")
    cache = ArtefactCache(tmp_path / "cache")
    states = teacher_states(tiny_teacher, task, cb_examples(), cache=cache)
    assert states.layers == 2 and states.width == 32
    assert states.lookup(task, cb_examples()).shape == (len(cb_examples()), 3, 32)
    monkeypatch.setattr(
        "retrikt.student.hidden._run_teacher", lambda *a: pytest.fail("not from the cache")
    )
    again = teacher_states(tiny_teacher, task, cb_examples(), cache=cache)
    assert np.array_equal(np.asarray(again.states), np.asarray(states.states))


# -------------------------------------------------------------- latency and reward
def test_latency_is_measured_once_per_architecture(parent, tmp_path, monkeypatch):
    cache = ArtefactCache(tmp_path / "cache")
    bert = parent.encoder.auto_model
    arch = Architecture(layers=1, heads=4, head_dim=32, ffn=256)
    student = student_on(parent, slice_encoder(bert, arch, random_importance(Architecture.of(
        bert.config)))).eval()  # fmt: skip
    timed = [{**ex, "label": None} for ex in cb_examples()]
    calls = []
    measure = latency_module.measure_latency

    def counting(*args):
        calls.append(1)
        return measure(*args)

    monkeypatch.setattr(latency_module, "measure_latency", counting)
    refreshed = []
    monkeypatch.setattr(student, "refresh_keys", lambda: refreshed.append(1))  # no store here
    first = latency_module.cached_latency(cache, arch, student, timed, threads=1, refresh=True)
    second = latency_module.cached_latency(cache, arch, student, timed, threads=1, refresh=True)
    assert len(calls) == 1 and first["latency_ms_p50"] == second["latency_ms_p50"] > 0
    assert refreshed == [1]  # the store is embedded for the measurement only, not on a hit
    other = Architecture(layers=1, heads=4, head_dim=32, ffn=512)
    latency_module.cached_latency(cache, other, student, timed, threads=1)
    assert len(calls) == 2  # another architecture is timed again


def test_reward_penalises_only_the_time_over_budget():
    assert reward(0.5, latency_ms=8.0, budget_ms=10.0, penalty=0.1) == -0.5
    assert reward(0.5, latency_ms=12.0, budget_ms=10.0, penalty=0.1) == pytest.approx(-0.7)
    assert reward(0.4, 30.0, 10.0, 0.1) < reward(0.6, 9.0, 10.0, 0.1)


def test_sampled_architectures_stay_in_the_search_space():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    parent = Architecture(6, 12, 32, 1536)
    for _ in range(40):
        arch = sample_architecture(study.ask(), parent)
        arch.check_within(parent)
        assert 128 <= arch.hidden <= 384 and arch.ffn % 256 == 0


def test_pareto_front_and_recommendations():
    rows = [
        {"trial": 0, "name": "a", "latency_ms_p50": 5.0, "loss": 0.9},
        {"trial": 1, "name": "b", "latency_ms_p50": 8.0, "loss": 0.5},
        {"trial": 2, "name": "c", "latency_ms_p50": 9.0, "loss": 0.7},  # dominated by b
        {"trial": 3, "name": "d", "latency_ms_p50": 20.0, "loss": 0.3},
    ]
    assert pareto_front(rows) == ["a", "b", "d"]
    by_budget = {r["budget_ms"]: r["name"] for r in recommendations(rows, 10.0)}
    assert by_budget == {5.0: "a", 7.5: "a", 10.0: "b", 15.0: "b", 20.0: "d"}


def test_regression_proxy_is_mse_and_fidelity_the_pearson_correlation(tmp_path):
    """STS-B has no argmax: fidelity is the correlation with the teacher's scores, and a
    table cell it cannot fill (a constant prediction) shows a dash, not "nan"."""

    def scored(predictions, teacher):
        student = SimpleNamespace(
            task=get_task("stsb"),
            raw_outputs=lambda examples, exclude_own: examples,
            combined=lambda raw: (np.array(predictions, dtype=np.float32)[:, None], None),
        )
        entries = [SimpleNamespace(fields={"sentence1": "a", "sentence2": "b"}, soft_labels=[t])
                   for t in teacher]  # fmt: skip
        return search_module.proxy_loss(student, entries)

    teacher = [0.0, 1.0, 2.0, 3.0]
    got = scored([0.5, 1.5, 2.5, 3.5], teacher)  # shifted by 0.5: perfectly correlated
    assert got["loss"] == pytest.approx(0.25) and got["fidelity"] == pytest.approx(1.0)
    assert scored([3.0, 2.0, 1.0, 0.0], teacher)["fidelity"] == pytest.approx(-1.0)
    flat = scored([2.0] * 4, teacher)
    assert np.isnan(flat["fidelity"]) and flat["loss"] == pytest.approx(1.5)

    trial = {"trial": 0, "name": "L1-H4x32-F256", "architecture": {"hidden": 128},
             "params": 4e6, "latency_ms_p50": 3.0, "loss": 1.5, "fidelity": flat["fidelity"],
             "reward": -1.5, "hidden_loss": None}  # fmt: skip
    config = {"task": "stsb", "latency_budget_ms": 5.0, "parent": PARENT, "init": "slice",
              "teacher": None, "store": "s", "proxy_epochs": 1, "proxy_size": 4,
              "latency_threads": 1, "penalty": 0.1}  # fmt: skip
    write_report({"config": config, "trials": [trial], "front": [trial["name"]],
                  "recommended": [], "finalists": []}, tmp_path)  # fmt: skip
    report = (tmp_path / "search.md").read_text()
    assert "MSE against the teacher's scores" in report and "KL" not in report
    assert "| 1.5000 | — | -1.5000 | — |" in report and "nan" not in report


def test_incumbent_is_the_deepest_full_width_cut_within_budget(monkeypatch):
    from types import SimpleNamespace

    timed = []

    def fake_latency(cache, arch, student, examples, threads, refresh=False):
        assert refresh  # an untrained candidate's store keys are embedded before timing
        timed.append(arch.layers)
        return {"latency_ms_p50": 4.0 * arch.layers}

    monkeypatch.setattr(search_module, "cached_latency", fake_latency)
    bert = SimpleNamespace(num_hidden_layers=6, num_attention_heads=12, hidden_size=384,
                           intermediate_size=1536)  # fmt: skip
    searcher = SimpleNamespace(
        parent=SimpleNamespace(encoder=SimpleNamespace(auto_model=SimpleNamespace(config=bert))),
        candidate=lambda arch: SimpleNamespace(),
        cache=None, data=SimpleNamespace(timed=[]),
        config=SimpleNamespace(latency_threads=1, latency_budget_ms=10.0),
    )  # fmt: skip
    row = search_module.Searcher.incumbent(searcher)
    assert row["name"] == "L2-H12x32-F1536" and row["latency_ms_p50"] == 8.0
    assert timed == [1, 2, 3]  # stops at the first depth over budget
    searcher.config.latency_budget_ms = 3.0
    assert search_module.Searcher.incumbent(searcher) is None


# ------------------------------------------------------------------------ the search
def test_a_finalist_is_scored_without_its_held_out_examples_own_store_entries(
    tmp_path, monkeypatch
):
    """The store holds the training split: a held-out example's own entry (the teacher's
    label) must be neither distilled on nor retrieved when the finalist is scored."""
    task = get_task("cb")
    examples = cb_pool()
    store = labelled_store(task, examples, tmp_path / "store")
    data = search_module.SearchData(task, examples, [], [], [], [], store)
    config = SearchConfig(task="cb", store=str(store.path), latency_budget_ms=10,
                          out=str(tmp_path / "out"), heldout_fraction=0.25)  # fmt: skip
    seen = {}

    class Student:
        def raw_outputs(self, examples, exclude_own=False):
            seen["scored"], seen["exclude_own"] = examples, exclude_own
            return examples

        def combined(self, raw):
            return np.eye(3)[[ex["label"] for ex in raw]], None

    monkeypatch.setattr(search_module.Searcher, "candidate", lambda self, arch: Student())

    def train(student, fit, cfg, entries, hidden):
        seen["entries"] = entries

    monkeypatch.setattr(search_module, "train", train)
    parent = SimpleNamespace(config=SimpleNamespace(encoder=PARENT))
    searcher = search_module.Searcher(config, data, parent, None, None)
    result = searcher.finalist(Architecture(1, 4, 32, 256))
    held = {origin_key(task, ex) for ex in seen["scored"]}
    assert seen["exclude_own"] and result["heldout_examples"] == len(held) > 0
    assert not held & {origin_key(task, e.fields) for e in seen["entries"]}
    assert len(seen["entries"]) == len(store) - len(held)
    assert result["heldout_score"] == 1.0  # scored against gold, through Task.predictions


def test_finalists_are_redone_when_only_their_own_settings_change(tmp_path):
    """--epochs and --heldout-fraction do not touch the study's trials but do the finalists'
    scores: a rerun with other values must not reuse the old finalist results."""
    store = labelled_store(get_task("cb"), cb_pool(), tmp_path / "store")
    data = search_module.SearchData(get_task("cb"), [], [], [], [], [], store)

    def path(**changes):
        config = SearchConfig(task="cb", store=str(store.path), latency_budget_ms=10,
                              out=str(tmp_path / "out"), **changes)  # fmt: skip
        searcher = search_module.Searcher(config, data, None, None, None)
        return searcher.settings_key(), searcher.finalist_path(Architecture(1, 4, 32, 256))

    settings, first = path()
    for changes in ({"epochs": 3}, {"heldout_fraction": 0.3}):
        same_study, other = path(**changes)
        assert same_study == settings and other != first
    assert path(trials=40)[1] == first  # more trials: the same finalists


def test_search_runs_resumes_after_a_kill_and_saves_an_ordinary_student(
    data_dir, tmp_path, tiny_teacher, monkeypatch
):
    task = get_task("cb")
    store = labelled_store(task, task.read("train", data_dir)[:40], tmp_path / "store")
    out = tmp_path / "search"
    args = [
        "search-student", "--task", "cb", "--store", str(store.path), "--latency-budget-ms",
        "1000", "--out", str(out), "--teacher", tiny_teacher, "--parent", PARENT,
        "--data-dir", str(data_dir), "--train-limit", "24", "--proxy-size", "8",
        "--proxy-epochs", "1", "--epochs", "1", "--finalists", "2", "--latency-examples", "3",
    ]  # fmt: skip
    assert main([*args, "--trials", "2"]) == 0
    first = json.loads((out / "search.json").read_text())
    assert len(first["trials"]) == 2
    # The teacher's hidden states reached every trial's training, and the report shows it.
    assert all(t["hidden_loss"] is not None and t["hidden_loss"] > 0 for t in first["trials"])
    assert f"{first['trials'][0]['hidden_loss']:.4f}" in (out / "search.md").read_text()
    for name in ("search.md", "pareto.png", "study.sqlite3"):
        assert (out / name).is_file()
    assert first["front"] and first["recommended"][2]["name"] is not None

    # The saved student is an ordinary folder: it reloads and scores what training scored.
    student = load_student(out / "student")
    metrics = json.loads((out / "student" / "eval_results.json").read_text())["metrics"]
    from retrikt.student import evaluate_model

    assert evaluate_model(student, task, task.read("validation", data_dir)) == pytest.approx(
        metrics
    )
    assert student.hidden_size == first["winner"]["architecture"]["hidden"]
    # The parent's full-width cut within budget (here all of it) was a finalist, scored.
    cut = [f for f in first["finalists"] if f.get("incumbent")]
    assert [f["name"] for f in cut] == ["L2-H12x32-F1536"]
    assert all("heldout_score" in f for f in first["finalists"])
    assert first["winner"]["heldout_score"] == max(f["heldout_score"] for f in first["finalists"])

    # A run killed inside a trial leaves it RUNNING in the study; the rerun retries it.
    import optuna

    study = optuna.load_study(study_name="search-student",
                              storage=f"sqlite:///{out / 'study.sqlite3'}")  # fmt: skip
    tried = {t["name"] for t in first["trials"]}
    arch = next(a for a in (Architecture(1, 4, 32, 256), Architecture(1, 5, 32, 512))
                if a.name not in tried)  # fmt: skip
    study.enqueue_trial({"layers": 1, "heads": arch.heads, "head_dim": 32, "ffn": arch.ffn})
    killed = study.ask()
    assert sample_architecture(killed, Architecture(2, 12, 32, 1536)) == arch
    scored = []
    proxy_loss = search_module.proxy_loss
    monkeypatch.setattr(search_module, "proxy_loss", lambda *a: scored.append(1) or proxy_loss(*a))
    assert main([*args, "--trials", "3"]) == 0
    again = json.loads((out / "search.json").read_text())
    assert len(scored) == 1  # only the interrupted trial ran; the two done ones were kept
    assert [t["reward"] for t in again["trials"][:2]] == [t["reward"] for t in first["trials"]]
    assert again["trials"][2]["architecture"] == arch.to_dict()
    states = [
        t.state.name
        for t in optuna.load_study(
            study_name="search-student", storage=f"sqlite:///{out / 'study.sqlite3'}"
        ).trials
    ]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]  # fmt: skip

    # Another budget is another search: the folder refuses it instead of mixing rewards.
    with pytest.raises(RetriktError, match="latency_budget_ms"):
        cfg = SearchConfig(task="cb", store=str(store.path), latency_budget_ms=5, out=str(out),
                           parent=PARENT, data_dir=str(data_dir), train_limit=24,
                           proxy_size=8, teacher=tiny_teacher, latency_examples=3,
                           proxy_epochs=1, epochs=1)  # fmt: skip
        run_search(cfg)
