"""Shared fixtures: real models (the fetched ones, and small generated ONNX graphs) and paths."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Ultralytics (the reference in parity tests) resolves public DNS names at import unless told it is
# offline; tests touch loopback only.
os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from support.onnx_models import dense_constant_model, slow_dense_model  # noqa: E402

from app.pipeline.records import ResultRecord  # noqa: E402
from app.pipeline.service import ServiceBase  # noqa: E402

FALL_MODEL = REPO / "engines" / "fall-detection-yolov8s.onnx"
COCO_MODEL = REPO / "engines" / "yolov3-tiny-coco.onnx"
SAMPLE_VIDEO = REPO / "calibration" / "samples" / "bikes.mp4"
ARTIFACTS = REPO / "test-artifacts"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make test` (it fetches the pinned assets) or `vigil assets fetch`")
    return path


@pytest.fixture(scope="session")
def fall_model() -> Path:
    """The fall profile's model (configs/fall.yaml): Ultralytics YOLOv8s, Normal/Fall, 640."""
    return _require(FALL_MODEL)


@pytest.fixture(scope="session")
def coco_model() -> Path:
    """The default model: Darknet YOLOv3-tiny COCO converted at fetch time, dynamic input."""
    return _require(COCO_MODEL)


@pytest.fixture(scope="session")
def sample_video() -> Path:
    return _require(SAMPLE_VIDEO)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """64x64 input, always one 'person' box at the centre with score 0.9: ~0.2 ms a frame."""
    return dense_constant_model(models_dir / "tiny.onnx", np.array([[32, 32, 16, 16, 0.9, 0.05]]))


@pytest.fixture(scope="session")
def slow_model(models_dir: Path) -> Path:
    """320x320 input with real convolutions: tens of ms a frame, slower than a 25 fps camera needs."""
    return slow_dense_model(models_dir / "slow.onnx")


@pytest.fixture
def broker(tmp_path: Path):
    """A real mosquitto on a free loopback port, stopped after the test."""
    from support.broker import Broker

    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def make_video(path: Path, frames: int = 50, size: tuple[int, int] = (160, 120), fps: float = 25.0) -> Path:
    """A real MP4 (mp4v) with a moving bright square, so frames differ."""
    import cv2

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(frames):
        img = np.full((h, w, 3), 40, np.uint8)
        x = (i * 3) % max(1, w - 20)
        img[h // 3 : h // 3 + 20, x : x + 20] = 230
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="session")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "small.mp4")


def wait_until(cond, timeout: float = 10.0, period: float = 0.02) -> bool:
    """Poll `cond` until it holds or `timeout` passes (tests wait on real threads and processes)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(period)
    return False


def vigil_shm_segments(pid: int | None = None) -> set[str]:
    prefix = f"vigil-{pid}-" if pid is not None else "vigil-"
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)}


@pytest.fixture(scope="session")
def host_kernel(tmp_path_factory: pytest.TempPathFactory):
    """app/backends/letterbox.cu built for the host (ctypes library), for the GPU-path tests without a GPU."""
    from support.cuda_emulation import build_host_kernel

    dll = build_host_kernel(tmp_path_factory.mktemp("letterbox"))
    if dll is None:
        pytest.skip("g++ is not installed")
    return dll


class Collect(ServiceBase):
    """A service that keeps every result record as the JSON object `vigil run` prints."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_result(self, record: ResultRecord) -> None:
        self.records.append(record.as_json())


def run_driven(pipe, driver):
    """Run a LivePipeline while `driver` acts on it from a thread; the pipeline stops when the driver
    returns or fails, and a failing driver's assertion is raised here (not lost in its thread)."""
    import asyncio
    import threading

    failure: list[BaseException] = []

    def drive() -> None:
        try:
            driver()
        except BaseException as exc:
            failure.append(exc)
        finally:
            wait_until(lambda: pipe._loop is not None, 60)
            pipe._loop.call_soon_threadsafe(pipe.request_stop, "test driver done")

    t = threading.Thread(target=drive, name="test-driver", daemon=True)
    t.start()
    summary = asyncio.run(pipe.run())
    t.join(10)
    if failure:
        raise failure[0]
    return summary
