"""Versioned engine cache.

An engine is only ever loaded for the exact model, precision, input shape, GPU and TensorRT it was built for. A manifest
beside each engine records how it was built and whether it passed validation against ONNX Runtime; an engine that has
not passed is never used.

The runtime looks engines up here (`cached_engine`); the build tooling in `app.engine` writes them and
their manifests through the same key and format, so both sides depend on this module and not on each other.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from app.config import ModelConfig

Precision = Literal["fp32", "fp16", "int8"]
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class EngineKey:
    """What a TensorRT engine was built from and for; equal keys may share one cached engine.

    Attributes:
        onnx_sha256: SHA-256 of the source ONNX file.
        precision: The build precision (fp32, fp16, int8).
        input_shape: The input shape the engine was built for, at the top of its optimisation profile: (largest
            batch, 3, H, W), e.g. (4, 3, 416, 416) for `model.max_batch: 4` on an ONNX with a dynamic batch axis,
            (1, 3, 640, 640) for a fixed batch of 1. So `model.max_batch` is part of the key.
        compute_capability: The GPU's compute capability, "8.6", "8.7" (Orin), ...
        tensorrt_version: The TensorRT version that built it (engines are not portable across versions).
        dla_core: The Jetson DLA core, None for the GPU.
    """

    onnx_sha256: str
    precision: Precision
    input_shape: tuple[int, ...]
    compute_capability: str  # "8.6", "8.7" (Orin), ...
    tensorrt_version: str
    dla_core: int | None = None

    def digest(self) -> str:
        """Hex SHA-256 of the key's canonical JSON."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def filename(self, model_stem: str) -> str:
        """The engine file name: `<stem>.<precision>.sm<cc>[.dla<n>].<digest[:12]>.engine`."""
        dla = f".dla{self.dla_core}" if self.dla_core is not None else ""
        sm = self.compute_capability.replace(".", "")
        return f"{model_stem}.{self.precision}.sm{sm}{dla}.{self.digest()[:12]}.engine"


def engine_input_size(onnx_path: str | Path, imgsz: int | None) -> int:
    """The square input side an engine of this ONNX is built and looked up for.

    A fixed-size input is what it is (`imgsz` cannot change it); a dynamic one runs at `imgsz`, else the
    size in its metadata, else 640, rounded up to the model's stride as ONNX Runtime serving it does
    (`ModelInfo`, Ultralytics' check_imgsz: 650 -> 672), so `model.imgsz: 650` finds the 672 engine.
    Needs `onnx` (the `gpu` extra, like every engine path).
    """
    import ast

    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].dim_value > 0 and dims[2].dim_value == dims[3].dim_value:
        return int(dims[2].dim_value)
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        stride = int(ast.literal_eval(meta.get("stride", "32")))
        size = imgsz or ast.literal_eval(meta.get("imgsz", "640"))
        size = int(max(size) if isinstance(size, list | tuple) else size)
    except (ValueError, SyntaxError, TypeError):
        stride, size = 32, imgsz or 640
    stride = stride if 1 <= stride <= 256 else 32
    return -(-size // stride) * stride


def engine_batch(onnx_path: str | Path, max_batch: int) -> int:
    """The largest batch an engine of this ONNX is built and looked up for.

    `max_batch` (`model.max_batch`) when the ONNX input's batch dimension is dynamic, else that fixed dimension
    (an ONNX exported with batch 1 gives a batch-1 engine whatever `max_batch` says). Needs `onnx`.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return max(1, max_batch)


@dataclass
class Validation:
    """The accuracy check of a built engine against ONNX Runtime.

    Attributes:
        passed: `value` met `threshold`.
        metric: What was measured, e.g. "F1@IoU0.5 vs ONNX Runtime".
        value: The measured value.
        threshold: The value needed to pass.
        frames: The number of frames compared.
        detail: Extra figures for the report.
    """

    passed: bool
    metric: str  # e.g. "F1@IoU0.5 vs ONNX Runtime"
    value: float
    threshold: float
    frames: int
    detail: dict = field(default_factory=dict)


@dataclass
class Manifest:
    """The JSON sidecar (`<engine>.json`) describing a cached engine.

    Attributes:
        key: What the engine was built from and for.
        engine_file: The engine's file name.
        onnx_path: The source ONNX file.
        built_at: Build time, ISO 8601 UTC.
        build_seconds: Build duration, s.
        builder: Builder settings: workspace, flags, profile, calibration source, ...
        validation: The accuracy check, None when not validated.
        version: Manifest format version.
    """

    key: EngineKey
    engine_file: str
    onnx_path: str
    built_at: str
    build_seconds: float
    builder: dict  # workspace, flags, profile, calibration source ...
    validation: Validation | None = None
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        """Indented JSON, with the key's digest added as `key_digest`."""
        data = asdict(self)
        data["key"]["input_shape"] = list(self.key.input_shape)
        data["key_digest"] = self.key.digest()
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse `to_json` output (the stored `key_digest` is ignored and recomputed on demand)."""
        data = json.loads(text)
        data.pop("key_digest", None)
        key = data.pop("key")
        key["input_shape"] = tuple(key["input_shape"])
        validation = data.pop("validation", None)
        return cls(key=EngineKey(**key), validation=Validation(**validation) if validation else None, **data)


def manifest_path(engine: str | Path) -> Path:
    """The manifest next to an engine: `<engine>.json`."""
    return Path(str(engine) + ".json")


def write_manifest(manifest: Manifest, engine: str | Path) -> Path:
    """Write the manifest next to `engine` atomically (temp file, then rename); returns its path."""
    path = manifest_path(engine)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path)  # never a half-written manifest next to an engine
    return path


def now_iso() -> str:
    """The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CacheMiss(LookupError):
    """Why no usable engine is cached (the builder then builds one)."""


def lookup(cache_dir: str | Path, model_stem: str, key: EngineKey) -> Path:
    """The cached engine for exactly this key, validated; raises CacheMiss saying why not."""
    engine = Path(cache_dir) / key.filename(model_stem)
    mpath = manifest_path(engine)
    if not engine.is_file():
        raise CacheMiss(f"no engine {engine.name} yet")
    if not mpath.is_file():
        raise CacheMiss(f"{engine.name} has no manifest; rebuilding rather than trusting it")
    try:
        manifest = Manifest.from_json(mpath.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheMiss(f"{mpath.name} is unreadable ({exc}); rebuilding") from None
    if manifest.key != key:
        raise CacheMiss(f"{engine.name} was built for another key ({_diff(manifest.key, key)}); rebuilding")
    if manifest.validation is None or not manifest.validation.passed:
        raise CacheMiss(f"{engine.name} did not pass validation; rebuilding")
    return engine


def _diff(a: EngineKey, b: EngineKey) -> str:
    da, db = asdict(a), asdict(b)
    return ", ".join(f"{k}: {da[k]} != {db[k]}" for k in da if da[k] != db[k]) or "digest"


def cached_engine(cfg: ModelConfig) -> Path:
    """The validated engine for this ONNX on this GPU and TensorRT; raises CacheMiss saying why not."""
    import pycuda.driver as cuda
    import tensorrt as trt

    from app.assets import sha256_file

    cuda.init()
    major, minor = cuda.Device(cfg.tensorrt.device).compute_capability()
    size = engine_input_size(cfg.path, cfg.imgsz)
    batch = engine_batch(cfg.path, cfg.max_batch)
    key = EngineKey(sha256_file(cfg.path), cfg.precision, (batch, 3, size, size), f"{major}.{minor}", trt.__version__,
                    cfg.tensorrt.dla_core)  # fmt: skip
    return lookup(cfg.engine_dir, Path(cfg.path).stem, key)
