"""``retrikt store``: inspect, verify, sample, merge, re-embed and condense knowledge stores."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from typing import Any

DESCRIPTION = """\
Work with a knowledge store folder (made by `retrikt build-store`).

  info     what the store holds: task, labels, encoder, index, provenance, files; its
           teachers, how often they agree and each one's score on the real training
           examples in the store
  verify   re-hash every file against the manifest; exit 1 naming a bad file, or
           an empty store left by an interrupted write
  sample   print a few entries readably
  merge    combine stores of the same task and encoder, dropping duplicates and
           recording which store and generator each entry came from
  reindex  re-embed every entry with another encoder into a new store
  condense keep a share of every label's entries (dataset distillation), chosen by one
           of several methods; the new store's manifest records its source and how

info and sample check file sizes but skip hashing; use verify for a full check.
merge, reindex --out and condense write the new store beside OUT and rename it into
place, so a run that is killed leaves no store at OUT and can simply be run again.
"""

CONDENSE_DESCRIPTION = """\
Write a new store at OUT keeping round(RATIO * n) of each label's n entries (of each
score bucket for a regression task), so the condensed store keeps the source's label
balance. Methods (each runs within one label at a time):

{methods}

A label whose share rounds to zero is an error naming the smallest ratio that keeps one of
every label; a label the source has no entries of is logged and stays absent. The manifest
records the lineage (source path, id, version and content digest, method, ratio, seed,
settings, entries per label); `retrikt store info OUT` shows it.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "store",
        help="inspect, verify, sample, merge, re-embed or condense a knowledge store",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    info = actions.add_parser(
        "info",
        help="summarise a store",
        description="Print a store's manifest summary, label and generator counts, and files.",
    )
    info.add_argument("path", help="store folder")
    info.add_argument("--json", action="store_true", help="print the full manifest as JSON")
    info.set_defaults(func=_info)

    verify = actions.add_parser(
        "verify",
        help="check every file's size and sha256",
        description="Re-hash every file of the current version against the manifest and check "
        "the row counts agree; exits 1 with the name of the first bad file.",
    )
    verify.add_argument("path", help="store folder")
    verify.add_argument("--encoder", help="also require this encoder id")
    verify.set_defaults(func=_verify)

    sample = actions.add_parser(
        "sample",
        help="print a few entries",
        description="Print randomly chosen entries: fields, requested label, teacher soft "
        "labels, rewards, generator and provenance.",
    )
    sample.add_argument("path", help="store folder")
    sample.add_argument(
        "-n", type=_positive_int, default=5, help="how many entries, at least 1 (default 5)"
    )
    sample.add_argument("--seed", type=int, default=0, help="which random entries (default 0)")
    sample.set_defaults(func=_sample)

    merge = actions.add_parser(
        "merge",
        help="combine stores into a new one",
        description="Write a new store at OUT holding every distinct entry of the inputs (the "
        "first copy of a duplicate wins). Inputs must share task, labels and encoder; each "
        "entry keeps its generator and source store, and the manifest lists every input.",
    )
    merge.add_argument("out", help="new store folder")
    merge.add_argument(
        "paths", nargs="+", metavar="PATH", help="stores to merge, in priority order"
    )
    merge.add_argument(
        "--index",
        default="auto",
        choices=["auto", "flat", "hnsw", "ivfpq", "ivfsq"],
        help="index of the merged store (default: auto, chosen by size)",
    )
    merge.set_defaults(func=_merge)

    reindex = actions.add_parser(
        "reindex",
        help="re-embed a store with another encoder",
        description="Embed every entry's stored text with ENCODER (a preset name from "
        "`retrikt models` or a sentence-transformers folder) and rebuild the index.",
    )
    reindex.add_argument("path", help="store folder")
    reindex.add_argument("--encoder", required=True, help="encoder preset or folder")
    target = reindex.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write the re-embedded store to this new folder")
    target.add_argument(
        "--in-place", action="store_true", help="save it as a new version of PATH instead"
    )
    reindex.add_argument("--batch-size", type=_positive_int, default=64, help="encoder batch size")
    reindex.set_defaults(func=_reindex)

    from retrikt.condense import METHODS, CondenseConfig
    from retrikt.config import add_arguments

    condense = actions.add_parser(
        "condense",
        help="keep a class-balanced share of a store's entries",
        description=CONDENSE_DESCRIPTION.format(
            methods="\n".join(f"  {m.name:18s} {m.description}" for m in METHODS.values())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    condense.add_argument("path", help="source store folder")
    condense.add_argument("--out", required=True, help="new store folder")
    add_arguments(condense, CondenseConfig, required=("ratio", "method"))
    condense.set_defaults(func=_condense)


def _positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (argparse then exits 2 with a one-line message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _open(path: str, verify: bool = False, encoder: str | None = None):
    from retrikt.store import KnowledgeStore

    return KnowledgeStore.open(path, verify=verify, expected_encoder=encoder)


def _label_name(store, label: Any) -> str:
    names = store.label_names
    return names[int(label)] if names is not None else f"{float(label):.3g}"


def _info(args: argparse.Namespace) -> int:
    store = _open(args.path)
    manifest = store.manifest
    if args.json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
        return 0
    encoder = manifest["encoder"]
    index = manifest["index"]
    labels = ", ".join(store.label_names) if store.label_names else "none (regression)"
    print(f"store      {store.path}  (version {store.version}, updated {manifest['updated']})")
    print(f"task       {store.task}   labels: {labels}")
    norm = "normalized" if encoder["normalized"] else "not normalized"
    print(f"encoder    {encoder['id']}  ({encoder['dim']}-dim, {norm})")
    print(f"entries    {len(store)}")
    print(f"digest     {store.digest}  (store id {store.store_id})")
    print(
        f"index      {index['kind']} ({index['factory']}), requested {index['requested']}, "
        f"search {index['search_params']}"
    )
    print(f"generator  {json.dumps(manifest['generator'])}")
    print(f"teacher    {json.dumps(manifest['teacher'])}")
    if len(store):
        if store.label_names is not None:
            counts = Counter(_label_name(store, v) for v in store.requested_labels())
            print("requested  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        generators = Counter(g or "?" for g in store.column("generator").to_pylist())
        print("written by " + ", ".join(f"{k} {v}" for k, v in generators.most_common()))
    for line in _teacher_lines(store, manifest):
        print(line)
    for source in manifest["sources"]:
        print(
            f"source     {source['path']} ({source['store_id'][:8]}): {source['added']} added, "
            f"{source['duplicates']} duplicates"
        )
    lineage = manifest.get("condensed_from")
    while lineage is not None:
        kept = ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in lineage["kept"].items())
        print(
            f"condensed  from {lineage['path']} ({lineage['store_id'][:8]} version "
            f"{lineage['version']}, digest {lineage['digest'][:16]}): {lineage['method']}, "
            f"ratio {lineage['ratio']:g}, seed {lineage['seed']}, {lineage['entries']} -> "
            f"{sum(v[1] for v in lineage['kept'].values())} entries ({kept})"
        )
        lineage = lineage.get("condensed_from")
    for name, record in manifest["files"].items():
        print(f"file       {name:16s} {record['size']:>14,d} bytes  sha256 {record['sha256'][:16]}")
    return 0


def _teacher_lines(store, manifest: dict[str, Any]) -> list[str]:
    if not len(store):
        return []
    from retrikt.teachers.ensemble import teacher_report

    report = teacher_report(store)
    if not report["teachers"]:
        return []
    listed = {t.get("id"): t for t in manifest.get("teachers") or [] if isinstance(t, dict)}
    combination = manifest.get("combination") or {}
    lines = [f"teachers   {len(report['teachers'])}" + (
        f", the store's label is their {combination['rule']}" if combination else "")]  # fmt: skip
    weights = dict(zip(combination.get("teachers", []), combination.get("weights") or [],
                       strict=False))  # fmt: skip
    scores = (combination.get("heldout") or {}).get("scores") or {}
    for teacher in report["teachers"]:
        info = listed.get(teacher, {})
        parts = []
        if teacher in weights:
            parts.append(f"weight {weights[teacher]:.3f}")
        heldout = info.get("heldout") or {}
        if isinstance(heldout, dict) and heldout:
            parts.append("own held-out " + _metrics(heldout))
        if scores.get(teacher) is not None:
            held = combination["heldout"]["examples"]
            parts.append(f"common held-out ({held} ex.) {scores[teacher]:.3f}")
        train = report["train"].get(teacher)
        if train:
            parts.append(f"on {train['examples']} training entries " + _metrics(train))
        lines.append(f"  teacher  {teacher}: " + "; ".join(parts))
    if "store label" in report["train"]:
        lines.append(
            "  store    label on training entries " + _metrics(report["train"]["store label"])
        )
    agree = report["agreement"]
    if len(report["teachers"]) > 1 and agree["entries"]:
        pairs = ", ".join(f"{k} {v:.1%}" for k, v in agree["pairs"].items())
        lines.append(f"agreement  all teachers on {agree['all']:.1%} of {agree['entries']} "
                     f"entries; pairs: {pairs}")  # fmt: skip
    return lines


def _metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "examples")


def _verify(args: argparse.Namespace) -> int:
    report = _open(args.path, verify=True, encoder=args.encoder).verify()
    size = sum(report.files.values())
    print(
        f"OK {report.path}: version {report.version}, {report.entry_count} entries, "
        f"{len(report.files)} files ({size:,d} bytes) match their sha256; index {report.index}; "
        f"digest {report.digest}"
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    store = _open(args.path)
    rows = sorted(random.Random(args.seed).sample(range(len(store)), min(args.n, len(store))))
    names = store.label_names
    for number, (row, entry) in enumerate(zip(rows, store.entries(rows), strict=True), start=1):
        print(f"[{number}/{len(rows)}] row {row}  id {entry.id}")
        print(f"  generator  {entry.generator or '?'}   source store {entry.source[:8]}")
        if names is not None:
            teacher = " | ".join(
                f"{n} {p:.2f}" for n, p in zip(names, entry.soft_labels, strict=True)
            )
        else:
            teacher = f"score {entry.soft_labels[0]:.3g}"
        print(f"  requested  {_label_name(store, entry.requested_label)}   teacher  {teacher}")
        if len(entry.teacher_labels) > 1:
            for name, probs in entry.teacher_labels.items():
                shown = (" | ".join(f"{n} {p:.2f}" for n, p in zip(names, probs, strict=True))
                         if names is not None else f"score {probs[0]:.3g}")  # fmt: skip
                print(f"    {name}: {shown}")
        if entry.rewards:
            print("  rewards    " + ", ".join(f"{k} {v:.3f}" for k, v in entry.rewards.items()))
        for name, value in entry.fields.items():
            print(f"  {name}: {value}")
        if entry.rationale:
            print(f"  rationale: {entry.rationale}")
        print()
    return 0


def _merge(args: argparse.Namespace) -> int:
    from retrikt.store import KnowledgeStore

    merged = KnowledgeStore.merge(args.paths, args.out, index=args.index)
    for source in merged.manifest["sources"]:
        print(
            f"{source['path']}: {source['entries']} entries, {source['added']} added, "
            f"{source['duplicates']} duplicates"
        )
    print(f"wrote {merged.path}: {len(merged)} entries, index {merged.index_config.kind}")
    return 0


def _reindex(args: argparse.Namespace) -> int:
    from retrikt.encoder import Encoder

    store = _open(args.path, verify=True)
    encoder = Encoder(args.encoder)
    new = store.reindex(
        lambda texts: encoder.encode(texts, batch_size=args.batch_size),
        encoder.model_id,
        out=None if args.in_place else args.out,
    )
    print(
        f"wrote {new.path}: {len(new)} entries embedded with {new.encoder_id} "
        f"({new.dim}-dim), index {new.index_config.kind}"
    )
    return 0


def _condense(args: argparse.Namespace) -> int:
    from retrikt.condense import CondenseConfig, condense
    from retrikt.config import from_args

    config = from_args(CondenseConfig, args)
    new = condense(args.path, args.out, config)
    lineage = new.manifest["condensed_from"]
    kept = ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in lineage["kept"].items())
    print(
        f"wrote {new.path}: {len(new)} of {lineage['entries']} entries kept by "
        f"{config.method} (ratio {config.ratio:g}, seed {config.seed}): {kept}; "
        f"digest {new.digest}"
    )
    return 0
