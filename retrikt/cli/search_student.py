"""``retrikt search-student``: search the student's architecture under a latency budget."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
Search a student encoder for TASK that answers within --latency-budget-ms (p50 at batch 1
on this machine, tokenisation and retrieval included), after KD-NAS.

  candidates  BERT encoders of 1-6 layers, 4-12 heads of 16/24/32 dims (hidden 128-384)
              and FFN 256-1536, cut out of --parent (minilm-l6) by keeping its most
              important layers, heads and neurons (gradient x activation), or randomly
              initialised (--init random, the baseline)
  reward      -(distillation loss on a proxy set) - penalty x max(0, latency - budget);
              each trial trains --proxy-epochs on --proxy-size examples with the store's
              soft labels, retrieval and (with --teacher) hidden-state distillation
  controller  Optuna TPE; the study is OUT/study.sqlite3: rerun the command after a kill
              and it continues (up to --trials complete trials)
  output      OUT/search.md and OUT/pareto.png (Pareto front, recommended architecture per
              budget), OUT/search.json, and OUT/student: the winner distilled on the whole
              training split, an ordinary student folder for predict, serve and evaluate
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search-student",
        help="search the student's architecture under a latency budget (KD-NAS)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from retrikt.config import add_arguments
    from retrikt.search.config import SearchConfig

    add_arguments(p, SearchConfig, required=("task", "store", "latency_budget_ms", "out"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retrikt.config import from_args
    from retrikt.search.config import SearchConfig
    from retrikt.search.search import run_search
    from retrikt.training import set_threads

    config = from_args(SearchConfig, args)
    set_threads(config.threads)
    result = run_search(config)
    winner = result["winner"]
    print(
        json.dumps(
            {
                "out": config.out,
                "winner": winner["name"],
                "latency_ms_p50": winner["latency_ms_p50"],
                "student": result["student"]["path"],
                "metrics": result["student"]["metrics"],
            },
            indent=1,
        )
    )
    return 0
