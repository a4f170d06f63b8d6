"""The one reader of secret files: stripped text, and errors that name the key and the reason, never the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError
from app.secret_files import SecretFileError, read_secret_file


def test_the_secret_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("  s3cret-value \n")
    assert read_secret_file(str(path), "mqtt.password_file") == "s3cret-value"


def test_a_missing_file_names_the_key_the_path_and_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "none"
    with pytest.raises(SecretFileError) as info:
        read_secret_file(str(path), "http.token_file")
    assert str(info.value) == f"http.token_file: cannot read {path}: No such file or directory"
    assert isinstance(info.value, ConfigError), "the CLI reports every ConfigError the same way"


def test_a_file_that_is_not_utf8_is_reported_without_quoting_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xffsecret\xfe")
    with pytest.raises(SecretFileError) as info:
        read_secret_file(str(path), "http.ice_servers.0.credential_file")
    assert str(info.value) == f"http.ice_servers.0.credential_file: cannot read {path}: not UTF-8 text"
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the decoder's text shows a byte"
