"""Run the evaluation harness: the multi-task form of ``retrikt evaluate``.

Same options as ``retrikt evaluate --tasks ...`` (see ``retrikt.harness.add_arguments``), for
use before that form is wired into the CLI, e.g.::

    .venv/bin/python experiments/run_table.py --tasks cb,rte --methods student-ft,setfit \\
        --seeds 0,1,2 --scale demo --name demo --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import logging
import sys

from retrikt import harness
from retrikt.errors import RetriktError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="data folder (default: $RETRIKT_DATA)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    harness.add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return harness.run(args)
    except RetriktError as err:
        logging.getLogger("retrikt").error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
