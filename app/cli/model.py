"""`vigil model deploy|rollback|status`: blue-green model deployment on the running service (its HTTP API).

The outcome is printed as JSON on stdout; a rejection (bad path, failed load or validation, busy, nothing to
roll back to) prints `error: <reason>` and exits 2, the serving model untouched.
"""

from __future__ import annotations

import argparse
import json

from app.cli.common import UsageError, add_config_args, load_config_args
from app.cli.service_client import ServiceAnswer, call_service
from app.config import VigilConfig

EXTRA_WAIT_S = 120.0  # beyond worker.ready_timeout_s: warm-up, canary frames, the handover


def _deploy_timeout(cfg: VigilConfig) -> float:
    return cfg.worker.ready_timeout_s + EXTRA_WAIT_S


def _outcome(answer: ServiceAnswer) -> int:
    if answer.status != 200:
        reason = answer.body.get("error") or f"the service answered HTTP {answer.status}"
        raise UsageError(str(reason))
    print(json.dumps(answer.body, indent=2))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """POST /api/model {path, precision}: wait for the outcome."""
    cfg = load_config_args(args)
    body = {"path": args.path, **({"precision": args.precision} if args.precision else {})}
    return _outcome(call_service(cfg, "POST", "/api/model", body, url=args.url, timeout_s=_deploy_timeout(cfg)))


def cmd_rollback(args: argparse.Namespace) -> int:
    """POST /api/model/rollback: wait for the outcome."""
    cfg = load_config_args(args)
    return _outcome(call_service(cfg, "POST", "/api/model/rollback", {}, url=args.url, timeout_s=_deploy_timeout(cfg)))


def cmd_status(args: argparse.Namespace) -> int:
    """GET /api/model: the serving model, previous ones, the last deployment."""
    cfg = load_config_args(args)
    return _outcome(call_service(cfg, "GET", "/api/model", url=args.url))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `model deploy|rollback|status` to the `vigil` subcommands."""
    p = sub.add_parser("model", help="deploy, roll back or show the serving model (on the running service)")
    actions = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    d = actions.add_parser("deploy", help="deploy a model from model.deploy.models_dir, validated before traffic")
    d.add_argument("path", help="model file, relative to (or inside) model.deploy.models_dir")
    d.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="TensorRT engine precision (default: model.precision)")  # fmt: skip
    d.set_defaults(func=cmd_deploy)
    r = actions.add_parser("rollback", help="return to the previous model, validated the same way")
    r.set_defaults(func=cmd_rollback)
    s = actions.add_parser("status", help="the serving model, previous ones and the last deployment")
    s.set_defaults(func=cmd_status)
    for a in (d, r, s):
        add_config_args(a, "the service's YAML config (its http address and token)")
        a.add_argument("--url", default=None, help="the service's base URL (default: from the config's http)")
