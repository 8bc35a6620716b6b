"""The evaluation harness: report numbers, cache keys, resume, and the tasks without real data."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from store_helpers import labelled_store

from retrikt import training
from retrikt.cache import ArtefactCache, key
from retrikt.cli import evaluate
from retrikt.encoder import Encoder
from retrikt.errors import RetriktError
from retrikt.harness.artefacts import TaskContext
from retrikt.harness.knn import KnnVote
from retrikt.harness.methods import METHODS, KnnOnly, StudentMethod
from retrikt.harness.report import _params, render_markdown, summarise
from retrikt.harness.running import run_harness
from retrikt.harness.scales import SCALES, HarnessConfig
from retrikt.store import KnowledgeStore
from retrikt.student.memory import CHOICE_FIELD, Memory
from retrikt.tasks import get_task

ENCODER = "minilm-l6:2"  # two layers of MiniLM: real weights, a fraction of the time
TINY = replace(
    SCALES["demo"], name="tiny", train_limit=16, epochs=1, max_length=64, latency_examples=3
)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(ENCODER, max_length=64)


@pytest.fixture(scope="module")
def cb_store(tmp_path_factory, data_dir) -> Path:
    """A tiny CB store of real training examples whose 'teacher' is the gold label."""
    task = get_task("cb")
    path = tmp_path_factory.mktemp("store") / "cb"
    labelled_store(task, task.read("train", data_dir)[-40:], path, ENCODER)
    return path


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _config(tmp_path: Path, data_dir: Path, store: Path, **changes) -> HarnessConfig:
    config = HarnessConfig(
        tasks=["cb"],
        methods=["student-ft", "knn-only"],
        seeds=[0, 1],
        scale=TINY,
        name="tiny",
        data_dir=str(data_dir),
        encoder=ENCODER,
        cache_dir=tmp_path / "cache",
        results_dir=tmp_path / "results",
        stores={"cb": store},
        command="retrikt evaluate --tasks cb --name tiny",
    )
    return replace(config, **changes)


def _summary(tmp_path: Path) -> list[dict]:
    return json.loads((tmp_path / "results" / "tiny.json").read_text())["summary"]


def test_report_caching_and_resume(tmp_path, data_dir, cb_store, monkeypatch):
    trains = Counter(training.train_student)
    fits = {cls: Counter(cls.fit) for cls in (StudentMethod, KnnOnly)}
    monkeypatch.setattr(training, "train_student", trains)
    for cls, counter in fits.items():
        monkeypatch.setattr(cls, "fit", lambda self, ctx, seed, c=counter: c(self, ctx, seed))

    config = _config(tmp_path, data_dir, cb_store)
    rows = run_harness(config)
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("student-ft", 0, "ok"),
        ("student-ft", 1, "ok"),
        ("knn-only", None, "ok"),  # does not depend on the seed: computed once
    ]
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (2, 2, 1)

    # The report: mean and sample std over seeds of what each run measured.
    report = json.loads((tmp_path / "results" / "tiny.json").read_text())
    runs = [r for r in report["runs"] if r["method"] == "student-ft"]
    accuracy = [r["metrics"]["accuracy"] for r in runs]
    student = next(s for s in report["summary"] if s["method"] == "student-ft")
    assert student["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracy))
    assert student["metrics"]["accuracy"]["std"] == pytest.approx(np.std(accuracy, ddof=1))
    assert student["runs"] == 2 and student["eval_examples"] == 56
    assert student["params"] > 10_000_000 and student["latency_ms_p50"] > 0
    # Each run counts its predicted classes by name, over the whole validation split.
    predicted = runs[0]["predicted_labels"]
    assert set(predicted) <= {"entailment", "contradiction", "neutral"}
    assert sum(predicted.values()) == 56
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert markdown.startswith("# RetriKT evaluation: tiny")
    assert "retrikt evaluate --tasks cb --name tiny" in markdown.split("##")[0]
    mean, std = 100 * np.mean(accuracy), 100 * np.std(accuracy, ddof=1)
    assert f"| student-ft | {mean:.1f} ± {std:.1f} |" in markdown
    assert "scale `tiny`: at most 16 training examples" in markdown
    assert (tmp_path / "results" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun recomputes nothing and reports the same numbers.
    again = run_harness(config)
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (2, 2, 1)
    assert again == rows

    # An interrupted run (one result lost, its trained student kept) redoes only the
    # evaluation; a changed setting redoes only the methods that depend on it.
    next((tmp_path / "results" / "units" / "cb" / "student-ft").glob("seed1-*.json")).unlink()
    run_harness(config)
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (2, 3, 1)
    run_harness(replace(config, seeds=[0], scale=replace(TINY, epochs=2)))
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (3, 4, 1)
    # One seed has no spread: its cells show the value alone, not a "± 0.0" it never measured.
    one = next(s for s in _summary(tmp_path) if s["method"] == "student-ft")
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert f"| student-ft | {100 * one['score']['mean']:.1f} | " in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("| student-ft |")
                and "±" in line]  # fmt: skip

    # --cached-only writes the table of what is finished and starts nothing new.
    rows = run_harness(replace(config, seeds=[0, 1, 2], cached_only=True))
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (3, 4, 1)
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("student-ft", 0, "ok"),
        ("student-ft", 1, "ok"),
        ("student-ft", 2, "pending"),
        ("knn-only", None, "ok"),
    ]
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert "|  | seed 2: not run yet |" in markdown
    two = next(s for s in _summary(tmp_path) if s["method"] == "student-ft")["score"]
    cell = f"{100 * two['mean']:.1f} ± {100 * two['std']:.1f} (n=2)"  # 2 of 3 seeds so far
    assert f"| student-ft | {cell} | " in markdown

    # Another machine: the cache of models is gone, the results (committed) are kept.
    before = run_harness(config)
    shutil.rmtree(tmp_path / "cache")
    assert run_harness(config) == before
    assert (trains.calls, fits[StudentMethod].calls, fits[KnnOnly].calls) == (3, 4, 1)


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, data_dir, cb_store, monkeypatch):
    def broken(self, ctx, seed):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(StudentMethod, "fit", broken)
    rows = run_harness(_config(tmp_path, data_dir, cb_store, seeds=[0]))
    assert [(r["method"], r["status"]) for r in rows] == [
        ("student-ft", "failed"),
        ("knn-only", "ok"),
    ]
    markdown = (tmp_path / "results" / "tiny.md").read_text()
    assert "student-ft / seed 0: RuntimeError: out of memory" in markdown


def _memory(task, fields, soft, keys):
    return Memory(task, fields, [str(f) for f in fields], np.asarray(soft, np.float32), keys)


def test_knn_vote_weights_neighbours_by_similarity(encoder):
    """Hand-made memory: the vote is softmax(sim / T) over the k nearest soft labels."""
    task = get_task("cb")
    fields = [{"premise": f"p{i}", "hypothesis": "h"} for i in range(3)]
    vote = KnnVote(task, encoder, _memory(task, fields, np.eye(3), np.eye(3, dtype=np.float32)))
    sims, rows = np.array([[0.8, 0.6, 0.0]]), np.array([[0, 1, 2]])
    expected = np.exp(np.array([0.8, 0.6]) / 0.1)
    expected /= expected.sum()
    np.testing.assert_allclose(vote.vote(sims, rows, 2, 0.1)[0], [*expected, 0.0], rtol=1e-5)
    np.testing.assert_allclose(vote.vote(sims, rows, 1, 0.1)[0], [1, 0, 0])  # nearest only


def test_copa_vote_is_per_choice(encoder):
    """Each choice is scored by its neighbours' plausibility, then normalised over choices."""
    task = get_task("copa")
    base = {"premise": "p", "question": "cause", "choice1": "a", "choice2": "b"}
    fields = [{**base, CHOICE_FIELD: 0}, {**base, CHOICE_FIELD: 1}]
    soft = [[0.9, 0.1], [0.9, 0.1]]  # the teacher thinks choice 1 is right: rows 0.9 and 0.1
    vote = KnnVote(task, encoder, _memory(task, fields, soft, np.eye(2, dtype=np.float32)))
    # The query's two choice inputs: the first is nearest row 1, the second nearest row 0.
    sims, rows = np.array([[0.9], [0.9]]), np.array([[1], [0]])
    np.testing.assert_allclose(vote.vote(sims, rows, 1, 0.1), [[0.1, 0.9]], rtol=1e-6)


def test_knn_search_leaves_out_the_query_itself(tmp_path, data_dir, encoder):
    task = get_task("cb")
    examples = task.read("train", data_dir)[:5]
    store = labelled_store(task, examples, tmp_path / "s", ENCODER)
    vote = KnnVote.from_store(task, store, encoder)
    sims, rows = vote.search(examples[:1], 2)
    assert rows[0, 0] == 0 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    sims, rows = vote.search(examples[:1], 2, exclude_own=True)
    assert 0 not in rows[0] and sims[0, 0] < 0.999


@pytest.mark.parametrize("task", ["boolq", "wic"])
def test_tasks_without_real_data_run_from_their_files(tmp_path, fixture_data_dir, task):
    config = _config(
        tmp_path,
        fixture_data_dir,
        tmp_path,
        tasks=[task],
        methods=["student-ft"],
        seeds=[0],
        stores={},
        name=task,
    )
    rows = run_harness(config)
    assert rows[0]["status"] == "ok", rows[0].get("reason")
    assert set(rows[0]["metrics"]) == {"accuracy"}
    assert rows[0]["train_examples"] == len(get_task(task).read("train", fixture_data_dir))


def test_summary_marks_missing_and_partial_runs():
    ok = {"status": "ok", "metrics": {"accuracy": 0.5}, "score": 0.5, "params": 1}
    ok |= {"train_seconds": 1.0, "latency_ms_p50": 1.0, "eval_examples": 4, "train_examples": 8}
    rows = [
        {"task": "cb", "method": "a", "seed": 0, **ok},
        {"task": "cb", "method": "a", "seed": 1, "status": "failed", "reason": "boom"},
        {"task": "cb", "method": "b", "seed": None, "status": "n/a", "reason": "no"},
    ]
    summary = {s["method"]: s for s in summarise(rows)}
    assert summary["a"]["status"] == "partial" and summary["a"]["runs"] == 1
    assert summary["a"]["missing_seeds"] == [1] and summary["a"]["reason"] == "boom"
    assert summary["a"]["score"] == {"mean": 0.5, "std": 0.0}
    assert summary["b"] == {"task": "cb", "method": "b", "runs": 0, "status": "n/a", "reason": "no"}


def test_a_run_that_predicts_one_class_is_flagged(tmp_path, data_dir, cb_store):
    """A score at the majority class's level may be a collapse onto it: the table says so."""
    ok = {"status": "ok", "metrics": {"accuracy": 0.1, "macro_f1": 0.1}, "score": 0.1}
    ok |= {"params": 1, "train_seconds": 1.0, "latency_ms_p50": 1.0}
    ok |= {"eval_examples": 56, "train_examples": 8}
    student = {"task": "cb", "method": "student-ft", **ok}
    rows = [
        {**student, "seed": 0, "predicted_labels": {"neutral": 56}},
        {**student, "seed": 1, "predicted_labels": {"entailment": 30, "neutral": 26}},
        {"task": "cb", "method": "knn-only", "seed": None, **ok},  # measured before the counts
    ]
    summary = summarise(rows)
    assert summary[0]["one_class"] == [{"seed": 0, "label": "neutral"}]
    assert "one_class" not in summary[1]
    markdown = render_markdown(_config(tmp_path, data_dir, cb_store), rows, summary)
    assert "|  | seed 0: predicts neutral for all 56 examples |" in markdown
    assert "seed 1: predicts" not in markdown and "the run: predicts" not in markdown


def test_cache_keys_hold_what_each_method_depends_on(tmp_path, data_dir, cb_store):
    """The LLM's result survives a change of student encoder; the student's does not."""
    cache = ArtefactCache(tmp_path)

    def method_key(method: str, **changes) -> str:
        ctx = TaskContext(_config(tmp_path, data_dir, cb_store, **changes), cache, get_task("cb"))
        return key(METHODS[method].spec(ctx, 0))

    other_encoder = {"encoder": "minilm-l6:3"}
    assert method_key("llm-zeroshot") == method_key("llm-zeroshot", **other_encoder)
    assert method_key("student-ft") != method_key("student-ft", **other_encoder)
    assert method_key("student-ft") != method_key("student-ft", scale=replace(TINY, epochs=3))
    assert method_key("knn-only") == method_key("knn-only", scale=replace(TINY, epochs=3))
    # Without a given store, a student that learns from one depends on how it is built.
    built = {"stores": {}}
    assert method_key("retrikt", **built) != method_key(
        "retrikt", **built, scale=replace(TINY, samples_per_label=8)
    )
    assert method_key("retrikt", **built) != method_key(
        "retrikt", **built, scale=replace(TINY, temperature=1.0)
    )
    ctx = TaskContext(_config(tmp_path, data_dir, cb_store, **built), cache, get_task("cb"))
    assert ctx.store_spec("ppo") != ctx.store_spec("none")  # RL or not: two stores
    # The scale's sampler is the one the store's generator and its RL rollouts use.
    hot = TaskContext(
        _config(tmp_path, data_dir, cb_store, **built, scale=replace(TINY, top_p=0.5)),
        cache,
        get_task("cb"),
    )
    assert hot.build_config("ppo").sampling.top_p == 0.5


def _mixed_store(
    source: Path,
    path: Path,
    train: int,
    teacher: dict | None = None,
    generator: dict | None = None,
) -> Path:
    """``source``'s entries, the first ``train`` of them marked as real training examples."""
    store = KnowledgeStore.open(source)
    entries = [
        replace(e, generator="train" if i < train else "gen") for i, e in enumerate(store.entries())
    ]
    mixed = KnowledgeStore.create(
        path,
        task=store.task,
        label_names=store.label_names,
        encoder_id=store.encoder_id,
        dim=store.dim,
        teacher=teacher,
        generator=generator,
    )
    mixed.add(entries, store.embeddings())
    mixed.save()
    return path


def test_a_given_store_stands_for_the_refined_store_and_its_parts(tmp_path, data_dir, cb_store):
    """``--store`` is the RL-refined store of both kinds: the train-only and generated-only
    ablations are its entries of that kind, and an ablation of another generator does not run."""
    mixed = _mixed_store(cb_store, tmp_path / "mixed", train=10)
    config = _config(tmp_path, data_dir, mixed)
    ctx = TaskContext(config, ArtefactCache(tmp_path / "cache"), get_task("cb"))
    assert ctx.store("ppo").path == mixed
    parts = {
        kind: KnowledgeStore.open(ctx.store("ppo", kind).path) for kind in ("train", "generated")
    }
    assert {k: len(s) for k, s in parts.items()} == {"train": 10, "generated": 30}
    assert set(parts["train"].column("generator").to_pylist()) == {"train"}
    assert parts["train"].ids() == KnowledgeStore.open(mixed).ids()[:10]
    specs = [key(ctx.store_spec("ppo", kind)) for kind in ("both", "train", "generated")]
    assert len(set(specs)) == 3
    assert METHODS["retrikt-train-store"].not_applicable(ctx) is None
    assert "one generator" in METHODS["retrikt-no-rl"].not_applicable(ctx)
    only_generated = _mixed_store(cb_store, tmp_path / "gen", train=0)
    ctx = TaskContext(_config(tmp_path, data_dir, only_generated), ctx.cache, get_task("cb"))
    with pytest.raises(RetriktError, match="holds no train entries"):
        ctx.store("ppo", "train")


def test_a_given_store_that_does_not_exist_is_built_there_first(
    tmp_path, data_dir, cb_store, monkeypatch
):
    """``--store cb=DIR`` with nothing at DIR builds the store there (the scale's settings),
    then every method keys on its identity; ``--cached-only`` builds nothing."""
    from retrikt.generator import build

    built = []

    def fake_build(config):
        built.append(config)
        _mixed_store(cb_store, Path(config.out), train=10)

    monkeypatch.setattr(build, "build_store", fake_build)
    new = tmp_path / "stores" / "cb"
    config = _config(tmp_path, data_dir, new, methods=["knn-only"])
    (row,) = run_harness(replace(config, cached_only=True))
    assert row["status"] == "pending" and not built and not new.exists()
    (row,) = run_harness(config)
    assert row["status"] == "ok", row
    assert [(c.out, c.rl, c.store_examples) for c in built] == [(str(new), "ppo", "both")]
    assert KnowledgeStore.open(new).verify().entry_count == 40
    run_harness(config)
    assert len(built) == 1


def test_a_store_kept_as_its_manifest_alone_still_finds_its_results(tmp_path, data_dir, cb_store):
    """Git keeps an experiment store's manifest, not its data: on a new machine
    ``--cached-only`` finds the results by the manifest's identity, and a run that would need
    the data says what the folder is instead of failing inside a method. The table says how
    the store was built, from its manifest."""
    record = {"id": "llm+cb-1", "rl": "none", "stats": {"kept": 30, "training_examples": 10}}
    store = _mixed_store(cb_store, tmp_path / "stores" / "cb", train=10, generator=record)
    config = _config(tmp_path, data_dir, store, methods=["knn-only"])
    (row,) = run_harness(config)
    assert row["status"] == "ok", row
    store_id = KnowledgeStore.open(store).store_id
    assert (
        f"(store id `{store_id}`, version 2, 40 entries from 30 generated by `llm+cb-1` "
        "(RL `none`) and 10 training examples; teacher `none recorded`)"
    ) in (Path(config.results_dir) / "tiny.md").read_text()
    for child in store.iterdir():  # what a clone holds: manifest.json alone
        if child.name != "manifest.json":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    shutil.rmtree(config.cache_dir, ignore_errors=True)  # a new machine: units alone
    (again,) = run_harness(replace(config, cached_only=True))
    assert (again["status"], again["score"]) == ("ok", row["score"])
    with pytest.raises(RetriktError, match="holds only the manifest of store"):
        run_harness(config)


def test_the_teacher_row_is_found_by_the_store_it_labelled(tmp_path, data_dir, cb_store):
    """On a machine without the teacher's weights its result is keyed by the id the store
    records, so the committed result is found; with neither, the error names the folder, for
    the teacher row and for a store that would have to be built."""
    teacher = {"id": "tuned:cb:qwen2.5-0.5b+lora:0123456789ab", "adapter": None}
    store = _mixed_store(cb_store, tmp_path / "mixed", train=10, teacher=teacher)
    gone = {"teachers": {"cb": tmp_path / "gone"}}
    ctx = TaskContext(
        _config(tmp_path, data_dir, store, **gone), ArtefactCache(tmp_path), get_task("cb")
    )
    assert METHODS["teacher"].spec(ctx, None)["teacher"] == teacher["id"]
    ctx = TaskContext(_config(tmp_path, data_dir, cb_store, **gone), ctx.cache, get_task("cb"))
    with pytest.raises(RetriktError, match="gone does not exist"):
        METHODS["teacher"].spec(ctx, None)
    unbuilt = replace(_config(tmp_path, data_dir, cb_store, **gone), stores={})
    ctx = TaskContext(unbuilt, ctx.cache, get_task("cb"))  # the store would be built here
    with pytest.raises(RetriktError, match="gone does not exist"):
        METHODS["retrikt"].spec(ctx, 0)


def test_a_teacher_folder_that_did_not_label_the_store_is_named_once(
    tmp_path, data_dir, cb_store, caplog
):
    """A teacher folder retrained since the store was built (another machine, precision) has
    other weights: the teacher row keys on the folder's teacher, and one warning names both
    ids, so that its "not run yet" row or a table mixing two teachers is not a surprise."""
    from retrikt.teachers.loading import TEACHER_CONFIG, tuned_folder_id

    folder = tmp_path / "teacher"
    folder.mkdir()
    meta = {"task": "cb", "base_model": "qwen2.5-0.5b", "tuning": "lora"}
    (folder / TEACHER_CONFIG).write_text(json.dumps(meta))
    (folder / "adapter_model.safetensors").write_bytes(b"retrained")
    labelled_by = {"id": "tuned:cb:qwen2.5-0.5b+lora:0123456789ab", "adapter": None}
    store = _mixed_store(cb_store, tmp_path / "mixed", train=10, teacher=labelled_by)
    config = _config(tmp_path, data_dir, store, teachers={"cb": folder})
    ctx = TaskContext(config, ArtefactCache(tmp_path), get_task("cb"))
    with caplog.at_level(logging.WARNING, logger="retrikt.harness.artefacts"):
        ids = {METHODS["teacher"].spec(ctx, None)["teacher"] for _ in range(3)}
    assert ids == {tuned_folder_id(folder)} != {labelled_by["id"]}
    (warning,) = [r.getMessage() for r in caplog.records]
    assert tuned_folder_id(folder) in warning and labelled_by["id"] in warning
    caplog.clear()
    agreeing = _mixed_store(cb_store, tmp_path / "agreeing", train=10,
                            teacher={"id": tuned_folder_id(folder), "adapter": None})  # fmt: skip
    ctx = TaskContext(replace(config, stores={"cb": agreeing}), ctx.cache, get_task("cb"))
    with caplog.at_level(logging.WARNING, logger="retrikt.harness.artefacts"):
        assert METHODS["teacher"].spec(ctx, None)["teacher"] == tuned_folder_id(folder)
        unbuilt = replace(config, stores={"cb": tmp_path / "built-later"})
        ctx = TaskContext(unbuilt, ctx.cache, get_task("cb"))  # a store the run builds there
        assert METHODS["teacher"].spec(ctx, None)["teacher"] == tuned_folder_id(folder)
    assert not caplog.records


def test_cli_arguments_build_the_config(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    evaluate.add_harness_arguments(parser)
    args = parser.parse_args(
        [
            "--tasks",
            "cb,STS-B",
            "--methods",
            "student-ft",
            "--seeds",
            "0,2",
            "--name",
            "x",
            "--train-limit",
            "8",
            "--store",
            f"cb={tmp_path}",
        ]
    )
    config = evaluate.harness_config(args)
    assert config.tasks == ["cb", "stsb"] and config.seeds == [0, 2]
    assert config.scale.train_limit == 8 and config.scale.name == "demo*"
    assert config.stores == {"cb": tmp_path}
    with pytest.raises(RetriktError, match="TASK=DIR"):
        evaluate.harness_config(
            parser.parse_args(["--tasks", "cb", "--name", "x", "--store", "cb"])
        )


def test_parameter_counts_that_print_alike_are_shown_once():
    assert _params({22_713_603, 22_713_219}) == "22.7M"
    assert _params({22_713_603, 17_390_000}) == "17.4M/22.7M"
    assert _params(set()) == "—"
