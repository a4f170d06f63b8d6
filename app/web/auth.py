"""API token: from a file or the environment, else generated once into the state directory (0600)."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.config import HttpConfig
from app.netaddr import is_loopback
from app.secret_files import SecretFileError, read_secret_file

log = logging.getLogger(__name__)

TOKEN_FILENAME = "http-token"


class TokenError(ValueError):
    """The configured token cannot be used: unreadable file, unset variable, or shorter than 16 characters."""


@dataclass(frozen=True)
class TokenSource:
    """The API token in force and where it came from.

    Attributes:
        token: The token; None when none is required (loopback bind).
        origin: Where it came from, for the log (never the token itself).
        generated: True when it was generated into the state directory by this run.
    """

    token: str | None  # None: no token needed
    origin: str  # where it came from, for the log (never the token itself)
    generated: bool = False


def resolve_token(cfg: HttpConfig) -> TokenSource:
    """A token when one is required (non-loopback bind by default), from the first source that has one."""
    required = cfg.require_token if cfg.require_token is not None else not is_loopback(cfg.host)
    if cfg.token_file:
        try:
            token = read_secret_file(cfg.token_file, "http.token_file")
        except SecretFileError as exc:
            raise TokenError(str(exc)) from exc
        if len(token) < 16:
            raise TokenError("http.token_file: the token must be at least 16 characters")
        return TokenSource(token, f"http.token_file {cfg.token_file}")
    if cfg.token_env:
        token = os.environ.get(cfg.token_env, "").strip()
        if len(token) < 16:
            raise TokenError(f"http.token_env: ${cfg.token_env} is unset or shorter than 16 characters")
        return TokenSource(token, f"http.token_env ${cfg.token_env}")
    if not required:
        return TokenSource(None, "none (loopback bind)")
    path = Path(cfg.state_dir or os.environ.get("STATE_DIRECTORY", ".vigil-state")) / TOKEN_FILENAME
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= 16:
            return TokenSource(token, f"generated earlier, {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    # O_EXCL|0600 so the token is never readable by others, not even for an instant.
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return TokenSource(token, f"generated into {path}", generated=True)


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison; False when no token was presented."""
    if presented is None:
        return False
    # surrogateescape: aiohttp hands undecodable header bytes over as surrogates; they must compare unequal, not raise.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogateescape"))


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token of a request: `Authorization: Bearer <token>`, else the `token` query parameter, else None."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return query.get("token")
