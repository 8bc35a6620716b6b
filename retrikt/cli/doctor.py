"""``retrikt doctor``: versions, CPU features, and the sampler check on the installed stack."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "doctor",
        help="check this machine: versions, bf16/AMX, and soft-prompted generation",
        description=(
            "Print the library versions (and any difference from requirements.lock), the CPU "
            "features that decide the LLM's speed (AVX512-BF16/AMX: bf16; otherwise float32), "
            "and run the sampler check: soft-prompted generation through the KV cache must "
            "equal a full recompute (a few seconds on the packaged SmolLM2). Exit code 1 if "
            "the check fails: then generation on this stack would write wrong text."
        ),
    )
    sub.add_argument("--generator", default="smollm2-135m", help="LLM preset or folder to check")
    sub.add_argument("--no-checks", action="store_true", help="only versions and CPU features")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.doctor import diagnose

    report = diagnose(args.generator, run_checks=not args.no_checks)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
        return 0 if report.ok else 1
    lines = ["versions:"]
    lines += [
        f"  {name:22} {version or 'not installed'}" for name, version in report.versions.items()
    ]
    if report.lock_mismatches:
        lines.append("differs from requirements.lock (run `make setup` to install the lock):")
        lines += [f"  {item}" for item in report.lock_mismatches]
    else:
        lines.append("  (matches requirements.lock, or no lock beside this install)")
    cpu = report.cpu
    lines += [
        "cpu:",
        f"  {cpu['model']}, {cpu['threads']} torch threads, {cpu['kernels']} kernels",
        f"  AVX512-BF16 {'yes' if cpu['avx512_bf16'] else 'no'}, "
        f"AMX-BF16 {'yes' if cpu['amx_bf16'] else 'no'}: the LLM runs in {cpu['llm_dtype']}",
    ]
    if report.checks:
        lines.append("checks:")
        for check in report.checks:
            mark = "PASS" if check["ok"] else ("FAIL" if check["required"] else "note")
            lines.append(f"  [{mark}] {check['name']}: {check['detail']}")
    lines.append("doctor: OK" if report.ok else "doctor: FAILED (see the checks above)")
    print("\n".join(lines))
    return 0 if report.ok else 1
