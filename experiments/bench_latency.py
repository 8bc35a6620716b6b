"""Latency and throughput: the RetriKT student in PyTorch, ONNX fp32 and ONNX int8, with and
without its store, against the tuned LLM teacher it replaces.

What is timed is what a user calls, tokenisation included: ``RetriKT.predict(items)`` (input
checks, tokenizing, the encoder, and with a store the search, the combination rule and the
explained neighbours), and the teacher's ``label_probs`` (tokenizing, the LLM with its
classification head). All get the same real validation inputs, at batch 1 and batch 32,
with each of ``--threads`` (torch, onnxruntime and faiss alike).

* Six student variants share one encoder and head (``--encoder``, untrained head: latency
  does not depend on the weights' values): the PyTorch folder without and with a store of
  ``--store-size`` entries, and both exported by ``retrikt export`` (float32, int8). Calls
  alternate between them, input by input, so a change in machine load hits all alike; the
  retrieval overhead is the ratio of their medians.
* The store's texts are synthetic but realistic: pairs (or single sentences) drawn from real
  GLUE/SuperGLUE sentences under ``--data-dir``, with random teacher distributions. Their
  keys are real embeddings by the student's own encoder (``refresh_keys``), so the index
  holds the geometry it would hold in use. Built once and cached under ``experiments/cache``.
* The teacher (``--teacher``, a ``retrikt train-teacher`` folder) runs as ``load_teacher``
  loads it: bf16 on CPUs with AVX512-BF16/AMX, and float32 as on CPUs without
  (``RETRIKT_FP32=1``).
* The 2 CPU cores are shared with other work, so every phase records how many cores other
  processes kept busy meanwhile (from ``/proc``); the report flags contaminated phases.

    python experiments/bench_latency.py --task cb --data-dir ../shared/data \\
        --teacher ../main/runs/teachers/cb-lora --threads 1,2 --out experiments/results/latency
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

from retrikt.config import DefaultsHelpFormatter  # noqa: E402

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


def build_models(args: argparse.Namespace, encoder: str) -> dict[tuple[str, bool], Path]:
    """The cached student folders by (runtime, retrieval): PyTorch without retrieval, the same
    weights with a store, and both exported to ONNX float32 and int8."""
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
    folders = {("pytorch", False): plain, ("pytorch", True): retrieval}
    for runtime in ("onnx", "int8"):
        folders[runtime, False] = exported(plain, runtime)
        folders[runtime, True] = exported(retrieval, runtime)
    return folders


def exported(folder: Path, runtime: str) -> Path:
    """``folder`` exported by ``retrikt export`` (float32 for "onnx", or int8); cached."""
    from retrikt.cli import main as retrikt

    out = folder.parent / f"{folder.name}-{runtime}"
    if not (out / "model.onnx").is_file():
        extra = ["--quantize", "int8"] if runtime == "int8" else []
        if retrikt(["export", "--model", str(folder), "--out", str(out), *extra]):
            raise SystemExit(f"retrikt export failed for {folder}")
    return out


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


RUNTIMES = {"pytorch": "PyTorch fp32", "onnx": "ONNX fp32", "int8": "ONNX int8"}


def bench_students(args, folders: dict[tuple[str, bool], Path], items: list) -> dict[str, Any]:
    """Every runtime with and without retrieval, batch 1 and batch 32, interleaved."""
    import torch

    from retrikt.student import RetriKT

    models = {
        f"{runtime}{'+store' if store else ''}": RetriKT.from_pretrained(folder)
        for (runtime, store), folder in folders.items()
    }
    hnsw = RetriKT.from_pretrained(folders["int8", True])
    with_hnsw(hnsw)
    models["int8+store-hnsw"] = hnsw
    retrieval = models["pytorch+store"]
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "store": {
            "entries": len(retrieval.store),
            "index": retrieval.store.index_config.to_dict(),
            "k": retrieval.config.retrieval.k,
        },
    }
    runners = {name: model.predict for name, model in models.items()}
    with CpuMonitor() as monitor:
        single = interleaved(runners, cycle(items, args.requests, 1))
    out["batch1"] = {name: percentiles(t) for name, t in single.items()}
    out["batch1"]["cpu"] = monitor.result
    with CpuMonitor() as monitor:
        batched = interleaved(
            {n: (lambda b, f=f: f(b, batch_size=32)) for n, f in runners.items()},
            cycle(items, args.passes, args.pass_size),
            warmup=1,
        )
    out["batch32"] = {name: percentiles(t, args.pass_size) for name, t in batched.items()}
    out["batch32"]["cpu"] = monitor.result
    return out


def bench_teacher(args, examples: list, dtype: str) -> dict[str, Any]:
    """The tuned teacher labelling the same inputs: ``label_probs`` (tokenizer included).

    ``dtype`` "float32" loads it as on a CPU without AVX512-BF16/AMX (``RETRIKT_FP32``).
    """
    from retrikt.tasks import get_task
    from retrikt.teachers.loading import load_teacher

    if dtype == "float32":
        os.environ["RETRIKT_FP32"] = "1"
    try:
        teacher = load_teacher(args.teacher, batch_size=32)
    finally:
        os.environ.pop("RETRIKT_FP32", None)
    task = get_task(args.task)
    out: dict[str, Any] = {"id": teacher.id, "dtype": str(teacher.model.dtype)}
    single = cycle(examples, args.teacher_requests, 1)
    for batch in single[:2]:
        teacher.label_probs(task, batch)
    with CpuMonitor() as monitor:
        times = [timed(lambda b=b: teacher.label_probs(task, b)) for b in single]
    out["batch1"] = {**percentiles(times), "cpu": monitor.result}
    passes = cycle(examples, args.teacher_passes, args.teacher_pass_size)
    with CpuMonitor() as monitor:
        times = [timed(lambda p=p: teacher.label_probs(task, p)) for p in passes]
    out["batch32"] = {**percentiles(times, args.teacher_pass_size), "cpu": monitor.result}
    # Batching need not help an LLM on CPU (padding): judge against its better way.
    out["best_inputs_per_s"] = max(out["batch1"]["inputs_per_s"], out["batch32"]["inputs_per_s"])
    return out


# ----------------------------------------------------------------- report
def verdicts(s: dict[str, Any], teacher: dict[str, Any], runtime: str) -> dict[str, Any]:
    """Retrieval overhead and the speed-up over the teacher, for one runtime (wall clock)."""
    b1, b32 = s["batch1"], s["batch32"]
    plain, store = runtime, f"{runtime}+store"
    overhead1 = b1[store]["p50_ms"] / b1[plain]["p50_ms"] - 1
    overhead32 = b32[plain]["inputs_per_s"] / b32[store]["inputs_per_s"] - 1
    return {
        "retrieval_overhead_batch1": round(overhead1, 3),
        "retrieval_overhead_batch32": round(overhead32, 3),
        "speedup_batch1": round(teacher["batch1"]["p50_ms"] / b1[store]["p50_ms"], 1),
        "speedup_batch32": round(b32[store]["inputs_per_s"] / teacher["best_inputs_per_s"], 1),
    }


def cpu_description() -> dict[str, Any]:
    """The CPU model and the instruction sets that decide bf16 and int8 speed."""
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")  # fmt: skip
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))  # fmt: skip
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model, "flags": [f for f in wanted if f in flags],
            "bf16": "avx512_bf16" in flags or "amx_bf16" in flags}  # fmt: skip


def render(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    first = next(iter(r["runs"].values()))
    store = first["students"]["store"]
    nl = "\n"

    def contaminated(c: dict, threads: int) -> bool:
        return (os.cpu_count() or 1) - c["cores_others"] < threads - CONTAMINATION_SLACK

    def load(c: dict, threads: int) -> str:
        flag = " **contaminated**" if contaminated(c, threads) else ""
        return f"{c['cores_others']} cores busy with other work, load {c['loadavg_1m']}{flag}"

    def row(name: str, b1: dict, b32: dict) -> str:
        return (f"| {name} | {b1['p50_ms']} | {b1['p95_ms']} | {b1['cpu_p50_ms']} | "
                f"{b32['inputs_per_s']} | {b32['cpu_inputs_per_s']} |")  # fmt: skip

    sections, targets, loads = [], [], []
    size = f"{store['entries'] // 1000}k" if store["entries"] >= 1000 else str(store["entries"])
    for key, run in r["runs"].items():
        threads, s, rows = int(key), run["students"], []
        for runtime, label in RUNTIMES.items():
            for suffix, what in (("", "student alone"), ("+store", f"RetriKT, {size} store")):
                name = runtime + suffix
                rows.append(row(f"{what} ({label})", s["batch1"][name], s["batch32"][name]))
        rows.append(row("RetriKT (ONNX int8), HNSW index: what-if", s["batch1"]["int8+store-hnsw"],
                        s["batch32"]["int8+store-hnsw"]))  # fmt: skip
        for dtype, t in run["teachers"].items():
            rows.append(row(f"teacher, {dtype} ({t['dtype']})", t["batch1"], t["batch32"]))
        phases = [s["batch1"]["cpu"], s["batch32"]["cpu"]] + [
            t[b]["cpu"] for t in run["teachers"].values() for b in ("batch1", "batch32")
        ]
        warning = (
            "**Every phase below is contaminated**: other jobs left fewer free cores than "
            f"the {threads} threads, which then time-share what is left; these numbers "
            "measure that contention, not the models.\n"
            if all(contaminated(c, threads) for c in phases)
            else ""
        )
        sections.append(f"""### {threads} thread(s)

{warning}
| model | batch 1 p50 ms | batch 1 p95 ms | batch 1 CPU ms p50 | batch 32 inputs/s | batch 32 inputs per CPU-s |
|---|---|---|---|---|---|
{nl.join(rows)}
""")  # noqa: E501
        for dtype, verdict in run["verdicts"].items():
            for runtime, v in verdict.items():
                met = v["speedup_batch32"] >= 30
                one, many = v["retrieval_overhead_batch1"], v["retrieval_overhead_batch32"]
                ok = max(one, many) <= 0.15
                overhead = f"{one:+.1%} / {many:+.1%}"
                label = f"{threads} (contaminated)" if warning else str(threads)
                targets.append(
                    f"| {label} | {RUNTIMES[runtime]} | {dtype} | {overhead}"
                    f" | {'met' if ok else '**missed**'} | {v['speedup_batch1']}x | "
                    f"{v['speedup_batch32']}x | {'met' if met else '**missed**'} |"
                )
        loads.append(
            f"- {threads} thread(s), students batch 1: {load(s['batch1']['cpu'], threads)}"
        )
        loads.append(
            f"- {threads} thread(s), students batch 32: {load(s['batch32']['cpu'], threads)}"
        )
        for dtype, t in run["teachers"].items():
            loads.append(f"- {threads} thread(s), teacher {dtype}: batch 1 "
                         f"{load(t['batch1']['cpu'], threads)}; batch 32 "
                         f"{load(t['batch32']['cpu'], threads)}")  # fmt: skip
    teacher = next(iter(first["teachers"].values()))
    return f"""# Latency: the RetriKT student (PyTorch, ONNX fp32, ONNX int8) against the teacher it replaces

Command: `{r["command"]}`

CPU: {cpu["model"]}, {os.cpu_count()} cores; flags {", ".join(cpu["flags"])}:
bf16 **{"available" if cpu["bf16"] else "not available"}** (AVX512-BF16/AMX). Machine: 2 cores
shared with other engineers' jobs; load before the run: {r["machine_before"]["summary"]}.

Task {r["task"]}; inputs are its {r["inputs"]} real validation examples, cycled. Everything
is timed through what a user calls, tokenisation included: the students through
`RetriKT.predict` (checks, tokenizer, encoder; with a store also the search, the mixing
rule and the explained neighbours), the teacher through `label_probs`. The student is
`minilm-l6` with an untrained head (latency does not depend on the weights), alone and with
a store of {store["entries"]:,} entries (k={store["k"]}, the default index `{store["index"]["factory"]}`,
certified exact; synthetic pairs of real GLUE/SuperGLUE sentences, keys embedded by the
student), in three runtimes: the PyTorch folder, and `retrikt export` of it in ONNX float32
and int8. The seven student variants are timed call by call in alternation, so a change in
machine load hits all alike. The "HNSW" row is a what-if: the int8 student's store searched
through an HNSW index swapped in memory (`RetriKT` does not offer it today).

The teacher is the tuned LLM the student replaces: `{teacher["id"]}` (SmolLM2-135M with a
LoRA merged into it and a classification head, loaded by `load_teacher`), in bf16 as
`load_teacher` runs it on this CPU and in float32 (`RETRIKT_FP32=1`, how it runs on CPUs
without AVX512-BF16/AMX); max {r["teacher_max_length"]} tokens, batches of 32.

Batch 1: {first["students"]["batch1"]["pytorch"]["n"]} calls per student variant,
{teacher["batch1"]["n"]} for the teacher. Batch 32: passes of {r["pass_size"]} inputs in
batches of 32 ({first["students"]["batch32"]["pytorch"]["n"]} pass(es) per student variant;
the teacher: {teacher["batch32"]["n"]} pass(es) of {r["teacher_pass_size"]}).
CPU ms: the process's CPU time per call (with one thread, the wall time an idle core would
show; with two it adds both threads' work).

{nl.join(sections)}
## Targets (wall clock)

Retrieval overhead: RetriKT against the same runtime without a store (batch 1: p50 latency;
batch 32: throughput); target <= 15%. Speed-up: the teacher's p50 latency over RetriKT's at
batch 1, and RetriKT's throughput at batch 32 over the teacher's best throughput (batch 1
or 32, whichever is faster); target >= 30x at batch 32 for the int8 student.

| threads | student | teacher | retrieval adds (batch 1 / 32) | <= 15% | speed-up batch 1 | speed-up batch 32 | >= 30x |
|---|---|---|---|---|---|---|---|
{nl.join(targets)}

## Machine load during each phase

{nl.join(loads)}

A phase is marked contaminated when other processes left fewer free cores than the threads
the models use (with {CONTAMINATION_SLACK} of slack, averaged over the phase); the student
variants are interleaved and stay comparable, but absolute times and the teacher ratio are
then noisy.
"""  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--task",
        default="cb",
        help="task whose validation inputs are timed (a plain single-text or pair task)",
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RETRIKT_DATA", "../shared/data"),
        help="folder holding superglue/ and glue/: the inputs, and the sentences of the "
        "synthetic store ($RETRIKT_DATA if set)",
    )
    parser.add_argument("--encoder", default="minilm-l6", help="the student's encoder preset")
    parser.add_argument("--teacher", default="runs/teachers/cb-lora",
                        help="the tuned teacher folder (retrikt train-teacher)")  # fmt: skip
    parser.add_argument("--teacher-dtypes", default="bf16,float32",
                        help="bf16 (where the CPU has it) and/or float32")  # fmt: skip
    parser.add_argument("--threads", default="1,2", help="torch/onnxruntime/faiss threads")
    parser.add_argument(
        "--store-size",
        type=int,
        default=50_000,
        help="entries in the synthetic store (built once per size and cached)",
    )
    parser.add_argument(
        "--k", type=int, default=8, help="neighbours the student retrieves per input"
    )
    parser.add_argument("--requests", type=int, default=150, help="batch-1 calls per student")
    parser.add_argument("--pass-size", type=int, default=128, help="inputs per throughput pass")
    parser.add_argument("--passes", type=int, default=3, help="throughput passes per student")
    parser.add_argument(
        "--teacher-requests", type=int, default=30, help="batch-1 calls per teacher dtype"
    )
    parser.add_argument(
        "--teacher-pass-size",
        type=int,
        default=64,
        help="inputs per teacher throughput pass (in batches of 32)",
    )
    parser.add_argument(
        "--teacher-passes", type=int, default=1, help="throughput passes per teacher dtype"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the student's untrained head and of the synthetic store (used when "
        "they are first built; the cache is not keyed by it)",
    )
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the cached models, store and exports only")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from retrikt.generator.lm import bf16_supported
    from retrikt.tasks import get_task

    task = get_task(args.task)
    examples = task.read("validation", args.data_dir)
    items = [{f: ex[f] for f in task.fields} for ex in examples]
    folders = build_models(args, args.encoder)
    if args.prepare_only:
        return
    import faiss
    import torch

    dtypes = [d for d in args.teacher_dtypes.split(",") if d != "bf16" or bf16_supported()]
    before = machine_context()
    runs = {}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)  # onnxruntime sessions take torch's count when loaded
        faiss.omp_set_num_threads(threads)
        run: dict[str, Any] = {"students": bench_students(args, folders, items)}
        run["teachers"] = {dtype: bench_teacher(args, examples, dtype) for dtype in dtypes}
        run["verdicts"] = {
            dtype: {rt: verdicts(run["students"], t, rt) for rt in RUNTIMES}
            for dtype, t in run["teachers"].items()
        }
        runs[threads] = run
        logger.info("%d thread(s): %s", threads, json.dumps(run["verdicts"]))
    meta = json.loads((Path(args.teacher) / "teacher_config.json").read_text())
    report = {
        "command": " ".join(["python", *sys.argv]),
        "task": task.name,
        "inputs": len(items),
        "cpu": cpu_description(),
        "pass_size": args.pass_size,
        "teacher_pass_size": args.teacher_pass_size,
        "teacher_max_length": meta["max_length"],
        "machine_before": before,
        "runs": runs,
    }
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(render(report))


if __name__ == "__main__":
    main()
