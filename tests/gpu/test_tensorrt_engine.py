"""On a GPU machine: build the default model's FP16 engine, validate it against ONNX Runtime, load it
through `auto`, and compare engine time with the end-to-end detect time."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from app.backends import load_backend
from app.backends.tensorrt import tensorrt_available
from app.config import ModelConfig
from app.engine.builder import BuildOptions, build_engine
from app.engine.cache import Manifest, manifest_path
from app.engine.calibrate import evenly_spaced_frames
from app.inference.detector import Detector

_OK, _WHY = tensorrt_available()
# Skipped as a whole without TensorRT, pycuda and a CUDA device (CI, the development machines).
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason=f"GPU suite: {_WHY}")]


@pytest.fixture(scope="module")
def fp16_engine(default_model: Path, sample_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = [f for _, f in evenly_spaced_frames(sample_video, 50)]
    return build_engine(default_model, tmp_path_factory.mktemp("engines"), BuildOptions("fp16"), frames)


def test_fp16_engine_passes_validation_and_is_chosen_by_auto(fp16_engine: Path, default_model: Path) -> None:
    manifest = Manifest.from_json(manifest_path(fp16_engine).read_text())
    assert manifest.validation is not None and manifest.validation.passed, manifest.validation
    cfg = ModelConfig(path=str(default_model), engine_dir=str(fp16_engine.parent))
    backend, reason = load_backend(cfg)
    assert backend.name == "tensorrt" and fp16_engine.name in reason
    backend.close()


def test_engine_time_vs_end_to_end(fp16_engine: Path, sample_video: Path) -> None:
    det = Detector.from_config(ModelConfig(path=str(fp16_engine), backend="tensorrt"))
    frames = [f for _, f in evenly_spaced_frames(sample_video, 60)]
    det.warmup(10)
    engine_ms, total_ms = [], []
    for f in frames:
        t0 = time.perf_counter()
        _, timings = det.detect(f)
        total_ms.append((time.perf_counter() - t0) * 1e3)
        engine_ms.append(timings.inference_ms)
    print(f"engine p50 {statistics.median(engine_ms):.2f} ms, end-to-end p50 {statistics.median(total_ms):.2f} ms")
    assert statistics.median(total_ms) < 100
