"""`vigil reload`: ask the running service to re-read its config file and apply it (README "Live config reload")."""

from __future__ import annotations

import argparse
import json

from app.cli.common import UsageError, add_config_args, load_config_args
from app.cli.service_client import call_service


def cmd_reload(args: argparse.Namespace) -> int:
    """`POST /api/config/reload` to the service found through the config; prints its answer as JSON.

    Raises:
        UsageError: The service rejected the new config (`error: <key>: <problem>`, exit 2), or cannot be reached.
    """
    cfg = load_config_args(args)
    answer = call_service(cfg, "POST", "/api/config/reload", {}, url=args.url, timeout_s=args.timeout)
    body = answer.body
    if answer.status == 200 and body.get("status") == "applied":
        print(json.dumps(body, indent=2))
        return 0
    if body.get("status") == "rejected":
        raise UsageError(f"config rejected, the running config stays: {body.get('error')}")
    raise UsageError(f"the service answered {answer.status}: {body.get('error') or body}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `reload` to the `vigil` subcommands."""
    r = sub.add_parser(
        "reload", help="make the running service re-read its config file and apply what changed (like SIGHUP)"
    )
    add_config_args(r, "the service's config (for its address and token; the service re-reads its own file)")
    r.add_argument("--url", default=None, help="the service's base URL instead of the config's http.host:port")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer (a model loads)")
    r.set_defaults(func=cmd_reload)
