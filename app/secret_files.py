"""Secrets kept in files (broker password, API token, TURN credentials): one reader, one error text.

The config only ever names the file, so the secret stays out of config dumps and `ps`. The error says which
config key pointed where and why the file could not be read, and never quotes the content: not even a
decoding error, whose own text would show a byte of the secret.
"""

from __future__ import annotations

from pathlib import Path

from app.config import ConfigError


class SecretFileError(ConfigError):
    """A secret file could not be read; the message is `key: cannot read path: reason`."""


def read_secret_file(path: str, key: str) -> str:
    """The secret in a UTF-8 text file, without surrounding whitespace (the trailing newline editors add).

    Args:
        path: The file the config names.
        key: The dotted config key that names it (`mqtt.password_file`), for the error message.

    Returns:
        The file's text, stripped; empty when the file is empty (callers judge whether that is enough).

    Raises:
        SecretFileError: The file is missing, unreadable or not UTF-8. The message names `key`, `path` and the
            operating system's reason, never the content.
    """
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise SecretFileError(f"{key}: cannot read {path}: not UTF-8 text") from None
