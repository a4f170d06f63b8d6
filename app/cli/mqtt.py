"""`vigil mqtt tail`: watch what the appliance publishes (`app.mqtt.tail`)."""

from __future__ import annotations

import argparse

from app.cli.common import UsageError, add_config_args, load_config_args, positive_int, positive_seconds


def cmd_tail(args: argparse.Namespace) -> int:
    """Tail the configured broker until `--count`, `--timeout` or Ctrl-C; a broker failure is a usage error."""
    from app.mqtt.tail import TailError, tail

    cfg = load_config_args(args)
    try:
        tail(cfg, args.topic, args.count, args.timeout)
    except TailError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `mqtt tail` to the `vigil` subcommands."""
    p = sub.add_parser("mqtt", help="MQTT tools")
    actions = p.add_subparsers(dest="mqtt_command", required=True, metavar="ACTION")
    t = actions.add_parser("tail", help="subscribe to the appliance's topics and print them readably")
    add_config_args(t)
    t.add_argument("--topic", action="append", default=[], help="topic filter (default: <base>/#)")
    t.add_argument("--count", type=positive_int, default=None, help="exit after N messages")
    t.add_argument("--timeout", type=positive_seconds, default=None, help="exit after S seconds")
    t.set_defaults(func=cmd_tail)
