"""Load test of ``retrikt serve``: N requests from C concurrent clients over localhost HTTP,
then a burst of maximum-size requests.

Starts ``retrikt serve`` on a free port (or uses ``--url`` of a running server), sends
``--requests`` POST /predict requests of ``--batch`` real validation inputs each from
``--clients`` concurrent clients (asyncio + httpx, one connection each, so the client
costs little CPU next to the server on the same cores), and reports latency percentiles,
throughput and every failure. With ``--bad-fraction`` some requests carry an invalid
input on purpose (an empty field, a number, a missing field): they must get a 422, and
count as failures otherwise.

Then ``--burst`` requests of the server's maximum size (``max_batch`` inputs, every field
``max_chars`` characters) arrive at once, while one 1-input probe request after another
measures what a small client sees meanwhile. The server must shed what does not fit in its
queue with an immediate 503 + Retry-After, and answer what it admitted, not stall.

    python experiments/load_test.py --model DIR --data-dir ../shared/data --bad-fraction 0.1 \\
        --burst 16 --out experiments/results/load_test

Request batching was compared with ``--requests 1000 --clients 8`` against a server of the
main branch before it (``--url``), and this one with ``--batch-wait-ms 0`` and ``2``, each with
the PyTorch and the int8 student (``experiments/results/load_test-batching-*``); the server
reports how many inputs each model call batched (``GET /metrics``, kept in the results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.bench_latency import CpuMonitor, machine_context  # noqa: E402
from retrikt.config import DefaultsHelpFormatter  # noqa: E402
from retrikt.tasks import get_task  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: str, max_batch: int, batch_wait_ms: float | None
) -> tuple[subprocess.Popen, str]:
    """``retrikt serve`` in a child process, returned once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "retrikt", "serve", "--model", model, "--port", str(port),
               "--max-batch", str(max_batch), "--no-access-log"]  # fmt: skip
    if batch_wait_ms is not None:
        command += ["--batch-wait-ms", str(batch_wait_ms)]
    print("starting:", " ".join(["retrikt", *command[3:]]), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"retrikt serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("retrikt serve did not answer /health within 300 s")


def spoil(item: dict, kind: int) -> dict:
    """An invalid copy of ``item``: a 422 the server must give without falling over."""
    first = next(iter(item))
    if kind == 0:
        return {**item, first: " "}  # empty field
    if kind == 1:
        return {**item, first: 12345}  # not a string
    return {k: v for k, v in item.items() if k != first}  # missing field


def plan(inputs: list[dict], n: int, batch: int, bad_fraction: float, seed: int) -> list[dict]:
    """The request bodies, fixed in advance so runs are comparable."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        items = [rng.choice(inputs) for _ in range(batch)]
        bad = rng.random() < bad_fraction
        if bad:
            items[0] = spoil(items[0], rng.randrange(3))
        bodies.append({"body": {"inputs": items}, "expect": 422 if bad else 200})
    return bodies


async def hammer(url: str, bodies: list[dict], clients: int) -> list[dict]:
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[dict] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not queue.empty():
                job = queue.get_nowait()
                start = time.perf_counter()
                try:
                    response = await http.post("/predict", json=job["body"])
                    status, ok = response.status_code, response.status_code == job["expect"]
                    if ok and status == 200:
                        ok = len(response.json()["predictions"]) == len(job["body"]["inputs"])
                except httpx.HTTPError as err:
                    status, ok = type(err).__name__, False
                seconds = time.perf_counter() - start
                results.append({"status": status, "ok": ok, "seconds": seconds, **job})

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


EXPECTED_BURST = (200, "503-full", "503-timeout")


def long_text(chars: int, seed: int) -> str:
    """``chars`` characters of distinct words: a maximum-size field."""
    words = [f"w{seed}x{i}" for i in range(chars // 4 + 1)]
    return " ".join(words)[:chars]


async def burst(url: str, fields: list[str], requests: int, limits: dict) -> dict:
    """``requests`` maximum-size requests at once, and 1-input probes one after another."""
    batch, chars = limits["max_batch"], limits["max_chars"]
    bigs = [{"inputs": [{f: long_text(chars, i * batch + j) for f in fields} for j in range(batch)]}
            for i in range(requests)]  # fmt: skip
    probe = {"inputs": [{f: f"A short {f} for the probe." for f in fields}]}
    timeout = httpx.Timeout(limits["timeout"] + 60)
    pool = httpx.Limits(max_connections=requests + 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=pool) as http:

        async def send(body: dict) -> dict:
            start = time.perf_counter()
            response = await http.post("/predict", json=body)
            status = response.status_code
            if status == 503:  # refused at admission (queue full) or after the deadline
                status = "503-timeout" if "timeout" in response.json()["error"] else "503-full"
            return {"status": status, "seconds": time.perf_counter() - start,
                    "retry_after": response.headers.get("retry-after")}  # fmt: skip

        start = time.perf_counter()
        tasks = [asyncio.create_task(send(body)) for body in bigs]
        probes = []
        await asyncio.sleep(0.2)  # the burst arrives first
        while not all(task.done() for task in tasks):
            probes.append(await send(probe))
            await asyncio.sleep(0.25)
        big = await asyncio.gather(*tasks)
        wall = time.perf_counter() - start

    def times(rows: list[dict], status: int | str) -> dict:
        seconds = [r["seconds"] for r in rows if r["status"] == status]
        if not seconds:
            return {"count": 0}
        return {"count": len(seconds), "p50_s": round(float(np.median(seconds)), 2),
                "max_s": round(max(seconds), 2)}  # fmt: skip

    return {
        "requests": requests,
        "inputs_per_request": batch,
        "chars_per_field": chars,
        "wall_seconds": round(wall, 1),
        "big_statuses": dict(Counter(str(r["status"]) for r in big)),
        "big_200": times(big, 200),
        "big_503_full": times(big, "503-full"),
        "big_503_timeout": times(big, "503-timeout"),
        "retry_after": sorted({r["retry_after"] for r in big if r["retry_after"]}),
        "probes": len(probes),
        "probe_statuses": dict(Counter(str(r["status"]) for r in probes)),
        "probe_200": times(probes, 200),
        "probe_503_full": times(probes, "503-full"),
        "probe_503_timeout": times(probes, "503-timeout"),
        "unexpected": sum(
            r["status"] not in (200, "503-full", "503-timeout") for r in big + probes
        ),
    }


def summarise(results: list[dict], wall: float) -> dict:
    good = np.array([r["seconds"] for r in results if r["ok"] and r["expect"] == 200]) * 1000
    return {
        "requests": len(results),
        "failures": sum(not r["ok"] for r in results),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "rejected_as_expected": sum(r["ok"] and r["expect"] == 422 for r in results),
        "wall_seconds": round(wall, 2),
        "requests_per_second": round(len(results) / wall, 1),
        "latency_ms": {f"p{q}": round(float(np.percentile(good, q)), 2) for q in (50, 90, 99)}
        | {"max": round(float(good.max()), 2), "mean": round(float(good.mean()), 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--model", help="student folder to serve (or give --url)")
    parser.add_argument("--url", help="an already running server instead of starting one")
    parser.add_argument(
        "--task", default="cb", help="task whose validation inputs are sent (the served student's)"
    )
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("RETRIKT_DATA", "../shared/data"),
        help="folder holding superglue/ and glue/ ($RETRIKT_DATA if set)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="POST /predict requests timed (after a warm-up)"
    )
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients, one connection each"
    )
    parser.add_argument("--batch", type=int, default=1, help="inputs per request")
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="share of requests (0-1) carrying an invalid input on purpose, which must get a 422",
    )
    parser.add_argument("--burst", type=int, default=0, help="maximum-size requests at once")
    parser.add_argument(
        "--batch-wait-ms", type=float, help="passed to the server it starts (default: serve's)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the request plan: the inputs and bad requests"
    )
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if not (args.model or args.url):
        parser.error("give --model DIR or --url URL")

    task = get_task(args.task)
    inputs = [{f: ex[f] for f in task.fields} for ex in task.read("validation", args.data_dir)]
    bodies = plan(inputs, args.requests, args.batch, args.bad_fraction, args.seed)
    proc = None
    if args.url:
        url = args.url
    else:
        proc, url = start_server(args.model, max(64, args.batch), args.batch_wait_ms)
    try:
        before = machine_context()
        asyncio.run(hammer(url, bodies[: 2 * args.clients], args.clients))  # warm-up, not counted
        with CpuMonitor([proc.pid] if proc else []) as monitor:
            start = time.perf_counter()
            results = asyncio.run(hammer(url, bodies, args.clients))
            wall = time.perf_counter() - start
        info = httpx.get(f"{url}/info", timeout=10).json()
        burst_result = None
        if args.burst:
            with CpuMonitor([proc.pid] if proc else []) as burst_monitor:
                burst_result = asyncio.run(burst(url, list(task.fields), args.burst,
                                                 info["limits"]))  # fmt: skip
            burst_result["machine"] = burst_monitor.result
        health = httpx.get(f"{url}/health", timeout=10).status_code
        metrics = httpx.get(f"{url}/metrics", timeout=10)  # servers before batching: 404
        batching = metrics.json() if metrics.status_code == 200 else None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "niceness": os.nice(0),  # the run yields the cores to other jobs when above 0
        "server": {"model": args.model or args.url, "task": info["task"],
                   "retrieval": info["retrieval"],
                   "store_size": info["store_size"], "encoder": info["config"].get("encoder")},
        "limits": info["limits"],
        "clients": args.clients, "batch": args.batch, "bad_fraction": args.bad_fraction,
        **summarise(results, wall),
        "burst": burst_result,
        "health_after": health,
        "batching": batching,
        "machine": {"before": before, "during": monitor.result, "after": machine_context()},
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(summary, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(render(summary))


def batching(metrics: dict | None, limits: dict) -> str:
    """What ``GET /metrics`` said after the run (warm-up included), if the server has it."""
    if metrics is None:
        return "\nThe server has no `/metrics` (it predates request batching).\n"
    return (
        f"\nBatching (`GET /metrics` after the run, warm-up included, `--batch-wait-ms` "
        f"{limits.get('batch_wait_ms')}): {metrics['requests']} requests answered by "
        f"{metrics['model_calls']} model calls, {metrics['mean_batch']} inputs per call on "
        f"average, at most {metrics['largest_batch']}; calls by inputs batched: "
        f"{metrics['batch_sizes']}.\n"
    )


def render(s: dict) -> str:
    lat = s["latency_ms"]
    m = s["machine"]
    lim = s["limits"]
    text = f"""# Load test of `retrikt serve`

Command: `{s["command"]}` (at niceness {s.get("niceness", 0)}: `nice` gives the cores to the
other jobs on this shared machine first)

Model: `{s["server"]["model"]}` (the `experiments/cache/bench-*` folders are built by
`python experiments/bench_latency.py --prepare-only`: an untrained head on the encoder, and a
store of synthetic entries with real embeddings).

Server: `retrikt serve` on localhost, started by the script or, with `--url`, by hand with
the same flags (`--max-batch 64 --no-access-log`,
default torch threads and the default limits: at most {lim["max_queue"]} inputs queued,
{lim["timeout"]:g} s per request, {lim["body_timeout"]:g} s per body), task
{s["server"]["task"]}, encoder {s["server"]["encoder"]}, retrieval {s["server"]["retrieval"]}
(store of {s["server"]["store_size"]} entries). Each request holds {s["batch"]} real validation
input(s); {s["bad_fraction"]:.0%} of the requests carry an invalid input on purpose (an empty
field, a number or a missing field). The clients (asyncio + httpx, one connection each) and
the server share the same 2 CPU cores, **on a machine shared with other jobs** (see the
machine load below). A failure is any answer other than the expected 200 (or 422 for the
inputs made invalid on purpose) with one prediction per input.

| requests | clients | inputs/request | invalid on purpose | failures | req/s | p50 ms | p90 ms | p99 ms | max ms |
|---|---|---|---|---|---|---|---|---|---|
| {s["requests"]} | {s["clients"]} | {s["batch"]} | {s["rejected_as_expected"]} (got 422) | {s["failures"]} | {s["requests_per_second"]} | {lat["p50"]} | {lat["p90"]} | {lat["p99"]} | {lat["max"]} |

HTTP statuses: {s["statuses"]}; `/health` after the run: {s["health_after"]}.
{batching(s.get("batching"), s["limits"])}
Machine load: before, {m["before"]["summary"]}; during the run the server and clients used
{m["during"]["cores_ours"]} cores and other work {m["during"]["cores_others"]} cores (load
average {m["during"]["loadavg_1m"]}); after, {m["after"]["summary"]}.
"""  # noqa: E501
    b = s["burst"]
    if b is None:
        return text
    batches = lim["max_queue"] / lim["max_batch"]

    def row(what: str, t: dict, note: str = "") -> str:
        return f"| {what} | {t['count']} | {note} | {t.get('p50_s', '-')} | {t.get('max_s', '-')} |"

    retry = ", ".join(b["retry_after"]) or "-"
    rows = "\n".join(
        [
            row("maximum-size, answered", b["big_200"], str(b["big_statuses"])),
            row("maximum-size, refused: queue full", b["big_503_full"], f"Retry-After {retry} s"),
            row("maximum-size, admitted, past the deadline", b["big_503_timeout"]),
            row("1-input probes, answered", b["probe_200"], str(b["probe_statuses"])),
            row("1-input probes, refused: queue full", b["probe_503_full"]),
            row("1-input probes, past the deadline", b["probe_503_timeout"]),
        ]
    )
    return (
        text
        + f"""
## Burst of maximum-size requests

{b["requests"]} requests of {b["inputs_per_request"]} inputs with every field
{b["chars_per_field"]:,} characters long, sent at once; meanwhile one 1-input probe request
after another (0.25 s apart). The queue holds {lim["max_queue"]} inputs ({batches:g} such
requests); the rest must be refused at once (503 with Retry-After).

| | count | statuses | p50 s | max s |
|---|---|---|---|---|
{rows}

Other statuses: {b["unexpected"]}. The burst took {b["wall_seconds"]} s; the server and clients
used {b["machine"]["cores_ours"]} cores and other work {b["machine"]["cores_others"]} cores.
An admitted request waits for at most {lim["max_queue"]} queued inputs plus the batch being
run, and never longer than the {lim["timeout"]:g} s deadline; a refused one is told so at once
instead of waiting behind the burst. Fields longer than 2,000 characters are clipped after
the word holding their 128th token before the model runs (the encoder reads no further):
without that, the tokenizer's pair truncation made each maximum-size pair cost ~5 s and 4 GB.
"""
    )


if __name__ == "__main__":
    main()
