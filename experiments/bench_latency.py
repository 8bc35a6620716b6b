"""Latency and throughput: the student alone, the RetriKT student with a 50k store, the LLM.

What is timed is what a user calls: ``RetriKT.predict(items)`` (input checks, tokenizing,
the encoder, and for RetriKT the store search, the combination rule and the explained
neighbours), and for the LLM the generator scoring the task's label words after the
teacher's chat prompt, one forward pass per input (``LLMClassifier``: the teacher's
computation, trimmed to the last position's logits). All three get the same real
validation inputs.

* Student alone and RetriKT share one encoder and head (each of ``--encoders``, untrained head:
  latency does not depend on the weights' values); RetriKT adds a store of ``--store-size``
  entries. Batch-1 calls alternate between the two, input by input, so a change in machine
  load hits both alike; the retrieval overhead is the ratio of their medians.
* The store's texts are synthetic but realistic: pairs (or single sentences) drawn from real
  GLUE/SuperGLUE sentences under ``--data-dir``, with random teacher distributions. Their
  keys are real embeddings by the student's own encoder (``refresh_keys``), so the index
  holds the geometry it would hold in use. Built once and cached under ``experiments/cache``.
* The 2 CPU cores are shared with other work, so every phase records how many cores other
  processes kept busy meanwhile (from ``/proc``); the report flags contaminated phases.

    python experiments/bench_latency.py --task cb --data-dir ../shared/data \\
        --out experiments/results/latency
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CACHE = REPO / "experiments" / "cache"
#: A phase is contaminated when other processes left its threads less than a core each,
#: give or take this much (averaged over the phase).
CONTAMINATION_SLACK = 0.25

logger = logging.getLogger("bench_latency")


# ----------------------------------------------------------------- machine load
def _proc_stat_busy() -> float:
    """Core-seconds the whole machine has spent busy since boot (first line of /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _pid_cpu(pid: int) -> float:
    """Core-seconds used by one process (all its threads), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """How busy the machine was during a phase, and how much of that was not us.

    ``pids`` are the processes doing the measured work (this one, a server child); the rest
    of the machine's busy time is other people's load competing for the same cores.
    """

    def __init__(self, pids: Sequence[int] = ()):
        self.pids = [os.getpid(), *pids]
        self.result: dict[str, float] = {}

    def __enter__(self) -> CpuMonitor:
        self.start = (time.perf_counter(), _proc_stat_busy(), sum(map(_pid_cpu, self.pids)))
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.start[0]
        busy = (_proc_stat_busy() - self.start[1]) / wall
        ours = (sum(map(_pid_cpu, self.pids)) - self.start[2]) / wall
        self.result = {
            "seconds": round(wall, 1),
            "cores_busy": round(busy, 2),
            "cores_ours": round(ours, 2),
            "cores_others": round(max(busy - ours, 0.0), 2),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }


def machine_context() -> dict[str, Any]:
    """A one-second sample of the machine: cores, load average and others' CPU use."""
    with CpuMonitor() as monitor:
        time.sleep(1.0)
    sample = monitor.result
    return {
        "cores": os.cpu_count(),
        **sample,
        "summary": f"load average {sample['loadavg_1m']} on {os.cpu_count()} cores, "
        f"{sample['cores_others']} cores busy with other work",
    }


# ------------------------------------------------------------------ the store
def sentence_pool(data_dir: str) -> list[str]:
    """Distinct real sentences from the GLUE/SuperGLUE files, to write realistic entries."""
    from retrikt.errors import DataError
    from retrikt.tasks import get_task

    pool: set[str] = set()
    for name in ("glue-rte", "mrpc", "stsb", "sst2", "cola", "cb", "rte"):
        task = get_task(name)
        try:
            examples = task.read("train", data_dir)
        except DataError as err:
            logger.warning("skipping %s for the sentence pool: %s", name, err)
            continue
        for ex in examples:
            pool.update(str(ex[f]).strip() for f in task.fields if len(str(ex[f]).split()) >= 3)
    return sorted(pool)


def synthetic_entries(task, pool: list[str], n: int, seed: int) -> list:
    """``n`` distinct entries whose fields are real sentences, with random teacher labels."""
    from retrikt.store import StoreEntry
    from retrikt.tasks import PAIR, SINGLE

    if task.task_type not in (SINGLE, PAIR) or task.name in ("wic", "wsc"):
        raise SystemExit(f"the synthetic store supports plain single/pair tasks, not {task.name}")
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    by_length = sorted(pool, key=len)
    short, long = by_length[: len(pool) // 2], by_length[len(pool) // 4 :]
    seen: set[tuple[str, ...]] = set()
    entries = []
    while len(entries) < n:
        # A pair's first text is usually the longer one (premise, passage, question).
        fields = tuple(rng.choice(long if i == 0 else short) for i in range(len(task.fields)))
        if fields in seen:
            continue
        seen.add(fields)
        example = dict(zip(task.fields, fields, strict=True))
        if task.is_regression:
            low, high = task.label_range
            soft = [float(rng.uniform(low, high))]
            requested: int | float = soft[0]
        else:
            soft = np_rng.dirichlet([0.5] * len(task.label_names)).astype(float).tolist()
            requested = int(np.argmax(soft))
        entries.append(
            StoreEntry(
                fields=example,
                text=task.render(example),
                requested_label=requested,
                soft_labels=soft,
                generator="synthetic:real-sentence-pairs",
            )
        )
    return entries


def build_models(args: argparse.Namespace, encoder: str) -> tuple[Path, Path]:
    """The cached student folders: without retrieval, and the same weights with a store."""
    import torch

    from retrikt.store import KnowledgeStore
    from retrikt.student import RetriKT
    from retrikt.tasks import get_task

    task = get_task(args.task)
    root = CACHE / f"bench-{task.name}-{encoder.replace(':', '_')}-{args.store_size}"
    plain, retrieval = root / "student", root / "retrikt"
    if not (plain / "config.json").is_file():
        torch.manual_seed(args.seed)
        RetriKT.from_encoder(task, encoder).save_pretrained(plain)
    if not (retrieval / "config.json").is_file():
        pool = sentence_pool(args.data_dir)
        logger.info("writing %d synthetic entries from %d real sentences", args.store_size,
                    len(pool))  # fmt: skip
        entries = synthetic_entries(task, pool, args.store_size, args.seed)
        source = KnowledgeStore.create(
            root / "source-store",
            task=task.name,
            label_names=list(task.label_names) if task.label_names else None,
            encoder_id="placeholder:random-unit-vectors",  # replaced by refresh_keys below
            dim=384,  # every MiniLM preset; the keys are recomputed below anyway
            teacher={"name": "synthetic random distributions"},
        )
        vectors = np.random.default_rng(args.seed).standard_normal((len(entries), 384))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        source.add(entries, vectors.astype(np.float32))
        source.save()
        model = RetriKT.from_pretrained(plain)
        model.attach_store(source, k=args.k)
        logger.info("embedding %d store keys with the student's encoder", len(entries))
        model.refresh_keys(batch_size=128)
        model.save_pretrained(retrieval)
    return plain, retrieval


# ----------------------------------------------------------------- timing
def percentiles(timings: Sequence[tuple[float, float]], inputs: int = 1) -> dict[str, float]:
    """Wall-clock percentiles, the CPU-time median, and inputs per second by each clock."""
    wall, cpu = (np.asarray(column) for column in zip(*timings, strict=True))
    return {
        "p50_ms": round(float(np.percentile(wall, 50)) * 1000, 2),
        "p95_ms": round(float(np.percentile(wall, 95)) * 1000, 2),
        "mean_ms": round(float(wall.mean()) * 1000, 2),
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)) * 1000, 2),
        "inputs_per_s": round(inputs / float(np.median(wall)), 2),
        "cpu_inputs_per_s": round(inputs / float(np.median(cpu)), 2),
        "n": len(wall),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call.

    With one thread, CPU time is the work itself, unaffected by waiting for a core that
    another process holds: what the wall time would be on an idle core.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(
    runners: dict[str, Callable[[list], Any]], batches: list[list], warmup: int = 3
) -> dict[str, list[tuple[float, float]]]:
    """Time every runner on every batch, alternating their order so drift hits all alike."""
    names = list(runners)
    for batch in batches[:warmup]:
        for name in names:
            runners[name](batch)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i, batch in enumerate(batches):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(lambda name=name, batch=batch: runners[name](batch)))
    return times


def cycle(items: list, n: int, size: int) -> list[list]:
    """``n`` batches of ``size`` items, walking through ``items`` in order and wrapping."""
    return [[items[(b * size + j) % len(items)] for j in range(size)] for b in range(n)]


def with_hnsw(model) -> None:
    """A what-if: give a loaded student's store an HNSW index over the same keys.

    The student's store copy gets the store's automatic choice (certified-exact search at
    this size) and ``RetriKT`` has no option for another yet, so this swaps the index of the
    loaded copy in memory (a private attribute; nothing is saved).
    """
    from retrikt.store import VectorIndex, choose_index

    keys = model.store.embeddings()
    model.store._index = VectorIndex.build(choose_index("hnsw", len(keys), keys.shape[1]), keys)


def in_bf16(predict: Callable[..., Any]) -> Callable[..., Any]:
    """A what-if: ``predict`` under bfloat16 autocast, as the LLM runs on CPUs that have it."""
    import torch

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return predict(*args, **kwargs)

    return run


def bench_students(args, plain_dir: Path, retrieval_dir: Path, items: list) -> dict[str, Any]:
    import torch

    from retrikt.generator.lm import bf16_supported
    from retrikt.student import RetriKT

    plain = RetriKT.from_pretrained(plain_dir)
    retrikt_model = RetriKT.from_pretrained(retrieval_dir)
    hnsw_model = RetriKT.from_pretrained(retrieval_dir)
    with_hnsw(hnsw_model)
    assert plain.store is None and retrikt_model.store is not None
    runners = {
        "student": plain.predict,
        "retrikt": retrikt_model.predict,
        "retrikt_hnsw": hnsw_model.predict,
    }
    if bf16_supported():
        runners["retrikt_bf16"] = in_bf16(retrikt_model.predict)
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "store": {
            "entries": len(retrikt_model.store),
            "index": retrikt_model.store.index_config.to_dict(),
            "k": retrikt_model.config.retrieval.k,
        },
    }
    with CpuMonitor() as monitor:
        single = interleaved(runners, cycle(items, args.requests, 1))
    out["batch1"] = {name: percentiles(t) for name, t in single.items()}
    out["batch1"]["cpu"] = monitor.result
    # The search alone, on the same inputs' real query vectors.
    queries = retrikt_model.embed_inputs(
        [retrikt_model.task.encoder_inputs(retrikt_model.task.parse_input(x))[0] for x in items]
    )
    k = retrikt_model.config.retrieval.k
    picks = queries[np.arange(args.requests) % len(queries)]
    for name, model in (("exact", retrikt_model), ("hnsw", hnsw_model)):
        times = [timed(lambda q=q, m=model: m.search(q[None, :], k)) for q in picks]
        out["batch1"][f"{name}_search_only"] = percentiles(times)
    exact, approx = retrikt_model.search(queries, k)[1], hnsw_model.search(queries, k)[1]
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)])
    out["batch1"]["hnsw_search_only"]["recall_at_k"] = round(float(recall), 3)
    with CpuMonitor() as monitor:
        batched = interleaved(
            {n: (lambda b, f=f: f(b, batch_size=32)) for n, f in runners.items()},
            cycle(items, args.passes, args.pass_size),
            warmup=1,
        )
    out["batch32"] = {name: percentiles(t, args.pass_size) for name, t in batched.items()}
    out["batch32"]["cpu"] = monitor.result
    return out


class LLMClassifier:
    """The generator classifying examples at its fastest reasonable: one forward pass each.

    It asks the teacher's question (``teacher_prompt``) and reads the label words' next-token
    logits like ``LLMTeacher``, but pads on the left and asks the model for the last
    position's logits only, instead of a 49k-word distribution at every token: the LLM gets
    its best shot. ``reference`` is the library's own path, to check against before timing.
    """

    def __init__(self, generator: str, task_name: str):
        from retrikt.generator.lm import compute_dtype, load_base
        from retrikt.generator.teacher import verbalizer_ids
        from retrikt.tasks import get_task

        self.task = get_task(task_name)
        self.model, self.tokenizer = load_base(generator)
        self.ids = verbalizer_ids(self.task, self.tokenizer)
        self.dtype = str(compute_dtype())

    def __call__(self, examples: list) -> np.ndarray:
        import torch

        from retrikt.generator.teacher import teacher_prompt

        prompts = [teacher_prompt(self.task, ex, self.tokenizer) for ex in examples]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(**batch, position_ids=positions, logits_to_keep=1).logits
        return logits[:, -1, self.ids].float().softmax(-1).numpy()

    def reference(self, examples: list) -> np.ndarray:
        import torch

        from retrikt.generator.teacher import verbalizer_logits

        with torch.inference_mode():
            logits = verbalizer_logits(self.model, self.tokenizer, self.task, examples, self.ids)
        return logits.softmax(-1).numpy()


def bench_llm(args, examples: list) -> dict[str, Any]:
    classify = LLMClassifier(args.generator, args.task)
    # One input at a time there is no padding, so the fast path must match the teacher's
    # exactly. (Padded batches also match in float32; in bfloat16 they drift by ~0.03.)
    check = examples[:4]
    gap = max(float(np.abs(classify([ex]) - classify.reference([ex])).max()) for ex in check)
    if gap > 1e-3:
        raise SystemExit(f"the fast LLM classifier differs from the teacher's path by {gap:.4f}")
    out: dict[str, Any] = {
        "generator": args.generator,
        "dtype": classify.dtype,
        "check": f"matches the teacher's verbalizer_logits within {gap:.1e} on {len(check)} inputs",
    }
    single = cycle(examples, args.llm_requests, 1)
    for batch in single[:2]:
        classify(batch)
    with CpuMonitor() as monitor:
        times = [timed(lambda b=b: classify(b)) for b in single]
    out["batch1"] = {**percentiles(times), "cpu": monitor.result}
    task = classify.task

    def in_batches(job: list) -> None:
        # Batches of similar lengths, as RetriKT.predict and LLMTeacher batch theirs.
        job = sorted(job, key=lambda ex: len(task.render(ex)))
        for start in range(0, len(job), 32):
            classify(job[start : start + 32])

    with CpuMonitor() as monitor:
        times = [timed(lambda j=j: in_batches(j)) for j in cycle(examples, 1, args.pass_size)]
    out["batch32"] = {**percentiles(times, args.pass_size), "cpu": monitor.result}
    # Batching need not help an LLM on CPU (each prompt is already ~150 tokens of work, and
    # batches add padding): compare throughput against its better way of running.
    for clock in ("inputs_per_s", "cpu_inputs_per_s"):
        out[f"best_{clock}"] = max(out["batch1"][clock], out["batch32"][clock])
    better = out["batch32"]["inputs_per_s"] >= out["batch1"]["inputs_per_s"]
    out["best_mode"] = "batch 32" if better else "batch 1"
    return out


# ----------------------------------------------------------------- report
def verdicts(s: dict[str, Any], llm: dict[str, Any], cpu: bool = False) -> dict[str, Any]:
    """The two speed targets for one encoder's student against the LLM, by one clock."""
    b1, b32 = s["batch1"], s["batch32"]
    ms, rate = ("cpu_p50_ms", "cpu_inputs_per_s") if cpu else ("p50_ms", "inputs_per_s")
    overhead1 = b1["retrikt"][ms] / b1["student"][ms] - 1
    overhead32 = b32["student"][rate] / b32["retrikt"][rate] - 1
    speedup1 = llm["batch1"][ms] / b1["retrikt"][ms]
    speedup32 = b32["retrikt"][rate] / llm[f"best_{rate}"]
    return {
        "retrieval_overhead_batch1": round(overhead1, 3),
        "retrieval_overhead_batch32": round(overhead32, 3),
        "retrieval_overhead_ok": max(overhead1, overhead32) <= 0.15,
        "speedup_vs_llm_batch1": round(speedup1, 1),
        "speedup_vs_llm_batch32": round(speedup32, 1),
        "speedup_ok": min(speedup1, speedup32) >= 30,
    }


def render(r: dict[str, Any]) -> str:
    llm, students = r["llm"], r["students"]
    first = next(iter(students.values()))
    store = first["store"]

    def cpu(c: dict) -> str:
        free = (os.cpu_count() or 1) - c["cores_others"]
        flag = " **contaminated**" if free < r["threads"] - CONTAMINATION_SLACK else ""
        return f"{c['cores_others']} cores busy with other work, load {c['loadavg_1m']}{flag}"

    def ok(flag: bool) -> str:
        return "met" if flag else "**missed**"

    def row(name: str, b1: dict, b32: dict) -> str:
        return (
            f"| {name} | {b1['p50_ms']} | {b1['p95_ms']} | {b1['cpu_p50_ms']} | "
            f"{b32['inputs_per_s']} | {b32['cpu_inputs_per_s']} |"
        )

    def target(encoder: str, clock: str, v: dict) -> str:
        return (
            f"| {encoder} | {clock} | batch 1: {v['retrieval_overhead_batch1']:+.1%}, batch 32: "
            f"{v['retrieval_overhead_batch32']:+.1%} | {ok(v['retrieval_overhead_ok'])} | "
            f"batch 1: {v['speedup_vs_llm_batch1']}x, batch 32: {v['speedup_vs_llm_batch32']}x "
            f"| {ok(v['speedup_ok'])} |"
        )

    rows, targets, searches, loads = [], [], [], []
    for encoder, s in students.items():
        b1, b32, v = s["batch1"], s["batch32"], s["verdicts"]
        rows.append(row(f"student alone ({encoder})", b1["student"], b32["student"]))
        rows.append(row(f"RetriKT ({encoder}, {store['entries']:,} store)", b1["retrikt"],
                        b32["retrikt"]))  # fmt: skip
        rows.append(row(f"RetriKT ({encoder}) with an HNSW index: what-if", b1["retrikt_hnsw"],
                        b32["retrikt_hnsw"]))  # fmt: skip
        if "retrikt_bf16" in b1:
            rows.append(row(f"RetriKT ({encoder}) in bf16 autocast: what-if", b1["retrikt_bf16"],
                            b32["retrikt_bf16"]))  # fmt: skip
        targets.append(target(encoder, "wall clock", v))
        targets.append(target(encoder, "CPU time", s["verdicts_cpu"]))
        flat, hnsw = b1["exact_search_only"], b1["hnsw_search_only"]
        searches.append(
            f"| {encoder} | {flat['p50_ms']} / {flat['p95_ms']} | {hnsw['p50_ms']} / "
            f"{hnsw['p95_ms']} | {hnsw['recall_at_k']} |"
        )
        loads.append(f"- {encoder} students, batch 1: {cpu(b1['cpu'])}")
        loads.append(f"- {encoder} students, batch 32: {cpu(b32['cpu'])}")
    rows.append(row(f"LLM {llm['generator']}", llm["batch1"], llm["batch32"]))
    nl = "\n"
    return f"""# Latency: student, RetriKT student with a {store["entries"]:,}-entry store, and the LLM

Command: `{r["command"]}`

Task {r["task"]}; inputs are its {r["inputs"]} real validation examples, cycled. For each
encoder, the student alone and RetriKT share one encoder and head (head untrained: latency
does not depend on the weights) and are timed through `RetriKT.predict` (checks, tokenizer,
encoder; RetriKT adds the store search, the combination rule and the explained neighbours),
alternating call by call. RetriKT retrieves k={store["k"]} from {store["entries"]:,} entries
with the index the student's store gets by default, `{store["index"]["factory"]}`
({store["index"]["kind"]}: certified exact). The store's texts are synthetic: pairs of real
GLUE/SuperGLUE sentences with random teacher distributions; its keys are real embeddings by
each student's own encoder. The LLM is `{llm["generator"]}` ({llm["dtype"]}) scoring the label
words after the teacher's chat prompt, one forward pass per input, left-padded and computing
only the last position's logits (its fastest reasonable form; {llm["check"]}).
torch threads: {r["threads"]}; 2 CPU cores shared with other engineers' jobs.

| model | batch 1 p50 ms | batch 1 p95 ms | batch 1 CPU ms p50 | batch 32 inputs/s | batch 32 inputs per CPU-s |
|---|---|---|---|---|---|
{nl.join(rows)}

The "what-if" rows are the same RetriKT student changed in one way that `RetriKT` does not
offer today: its store searched through the store's HNSW index (`HNSW32`, efSearch 64; the
index swapped in memory) instead of the exact default, or its forward pass run under
`torch.autocast(bfloat16)`, as the LLM above already runs on this CPU
(`retrikt.generator.lm.compute_dtype`) while the student runs in float32. Targets below are
judged on the student as shipped.

Batch 1: {first["batch1"]["student"]["n"]} calls per student, {llm["batch1"]["n"]} for the LLM. Throughput:
passes of {r["pass_size"]} inputs (the validation set, cycled) in batches of 32 of similar
lengths (`RetriKT.predict(items, batch_size=32)` sorts by length itself; the LLM's batches are
sorted the same way), {first["batch32"]["student"]["n"]} passes per student, {llm["batch32"]["n"]} for the LLM.

## Targets

Speed-up at batch 1 compares p50 latencies; at batch 32 it compares RetriKT's inputs/s with
the LLM's best throughput, {llm["best_inputs_per_s"]} inputs/s ({llm["best_mode"]}: one input
after another, {llm["batch1"]["inputs_per_s"]}/s, vs batches of 32,
{llm["batch32"]["inputs_per_s"]}/s). Each is judged by the wall clock (what a user waits) and by
CPU time (the work, immune to waiting for a core another job holds: with one thread, the
wall time an idle machine would show).

| encoder | clock | retrieval adds <= 15% to the student's time | | RetriKT >= 30x faster than the LLM | |
|---|---|---|---|---|---|
{nl.join(targets)}

## The store search alone (batch 1, real query vectors)

| encoder | exact (default) p50 / p95 ms | HNSW p50 / p95 ms | HNSW recall@{store["k"]} |
|---|---|---|---|
{nl.join(searches)}

## Machine load during each phase

- before: {r["machine_before"]["summary"]}
{nl.join(loads)}
- LLM, batch 1: {cpu(llm["batch1"]["cpu"])}
- LLM, batch 32: {cpu(llm["batch32"]["cpu"])}

A phase is marked contaminated when other processes left fewer free cores than the
{r["threads"]} thread(s) the models use (with {CONTAMINATION_SLACK} of slack, averaged over
the phase); the student/RetriKT comparison is interleaved and stays fair, but absolute times
and the LLM ratio are then pessimistic or noisy.
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cb")
    parser.add_argument("--data-dir", default=os.environ.get("RETRIKT_DATA", "../shared/data"))
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["minilm-l6", "minilm-l3"],
        help="student encoders to time (default: the default student and the smallest preset)",
    )
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's)")
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--store-size", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300, help="batch-1 calls per student")
    parser.add_argument(
        "--pass-size", type=int, default=128, help="inputs per throughput pass (batches of 32)"
    )
    parser.add_argument("--passes", type=int, default=5, help="throughput passes per student")
    parser.add_argument("--llm-requests", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="build the cached models and store, time nothing",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from retrikt.tasks import get_task

    task = get_task(args.task)
    examples = task.read("validation", args.data_dir)
    items = [{f: ex[f] for f in task.fields} for ex in examples]
    folders = {encoder: build_models(args, encoder) for encoder in args.encoders}
    if args.prepare_only:
        return
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    before = machine_context()
    llm = bench_llm(args, examples)
    students = {}
    for encoder, (plain_dir, retrieval_dir) in folders.items():
        students[encoder] = bench_students(args, plain_dir, retrieval_dir, items)
        students[encoder]["verdicts"] = verdicts(students[encoder], llm)
        students[encoder]["verdicts_cpu"] = verdicts(students[encoder], llm, cpu=True)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "task": task.name,
        "inputs": len(items),
        "threads": students[args.encoders[0]]["torch_threads"],
        "pass_size": args.pass_size,
        "machine_before": before,
        "students": students,
        "llm": llm,
    }
    print(json.dumps({e: [s["verdicts"], s["verdicts_cpu"]] for e, s in students.items()}))
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(render(report))


if __name__ == "__main__":
    main()
