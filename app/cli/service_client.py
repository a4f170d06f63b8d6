"""Talking to the running Vigil service from the command line (`vigil model ...`, `vigil reload`).

The service's address and token come from the same config the service runs with: `http.host`/`http.port`
(a wildcard bind is reached on loopback), `http.tls_cert_file` (HTTPS), and the token from `http.token_file`,
`http.token_env` or the one the service generated into the state directory. Plain `urllib`: one request,
no session to keep.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.cli.common import UsageError
from app.config import VigilConfig
from app.netaddr import is_loopback
from app.secret_files import SecretFileError, read_secret_file
from app.web.auth import TOKEN_FILENAME

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    """The service's answer: HTTP status and its JSON body (`{}` when the body was not JSON)."""

    status: int
    body: dict


def service_url(cfg: VigilConfig, override: str | None = None) -> str:
    """The base URL of the running service (no trailing slash).

    Raises:
        UsageError: `http.enabled` is false or `http.port` is 0 (nothing to reach) and no override was given.
    """
    if override:
        return override.rstrip("/")
    h = cfg.http
    if not h.enabled or h.port == 0:
        raise UsageError("the service's HTTP API is off (http.enabled) or on a random port (http.port: 0); "
                         "give --url")  # fmt: skip
    host = WILDCARDS.get(h.host, h.host)
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if h.tls_cert_file else 'http'}://{host}:{h.port}"


def service_token(cfg: VigilConfig) -> str | None:
    """The token the service expects, from where it reads it; None when none is available (never generates one).

    Raises:
        UsageError: `http.token_file` is set but cannot be read.
    """
    h = cfg.http
    if h.token_file:
        try:
            return read_secret_file(h.token_file, "http.token_file")
        except SecretFileError as exc:
            raise UsageError(str(exc)) from exc
    if h.token_env:
        return os.environ.get(h.token_env, "").strip() or None
    path = Path(h.state_dir or cfg.state_dir) / TOKEN_FILENAME
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def call_service(
    cfg: VigilConfig, method: str, path: str, body: dict | None = None, *, url: str | None = None,
    timeout_s: float = 30.0,
) -> ServiceAnswer:  # fmt: skip
    """One JSON request to the running service; any HTTP status comes back as an answer.

    Args:
        cfg: The service's config (address, TLS, token).
        method: `GET` or `POST`.
        path: E.g. `/api/model`.
        body: Sent as JSON when given.
        url: Base URL instead of the one from the config.
        timeout_s: Whole request limit, s.

    Raises:
        UsageError: Nothing answers at that address, or the connection failed.
    """
    base = service_url(cfg, url)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    token = service_token(cfg)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = None
    if base.startswith("https://"):
        host = urllib.parse.urlsplit(base).hostname or ""
        # The service's own (often self-signed) certificate: trusted on loopback, verified anywhere else.
        context = ssl._create_unverified_context() if is_loopback(host) else ssl.create_default_context()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            return ServiceAnswer(resp.status, _json(resp.read()))
    except urllib.error.HTTPError as exc:
        return ServiceAnswer(exc.code, _json(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"no Vigil service answers at {base} ({reason}); is it running?") from None


def _json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error": raw[:200].decode("utf-8", "replace")}
    return body if isinstance(body, dict) else {"value": body}
