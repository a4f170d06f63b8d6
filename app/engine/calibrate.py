"""INT8 by explicit quantization: Q/DQ ONNX files made with ONNX Runtime's static quantization.

They are made from in-domain frames preprocessed exactly like inference. One calibration (activation
ranges of every tensor, calibrate_ranges) gives two files: the TensorRT one (what TensorRT builds as INT8:
TensorRT 11 has no other INT8 path) and its CPU twin for ONNX Runtime's integer kernels (TARGET_OPTIONS:
where each puts Q/DQ).

Quantizing the whole YOLO graph collapses its confidences: the detect head (box decode, the final concat and
sigmoid) needs float range. `exclude` picks what of it stays float:
- "head": every node of the detect head (the last `/model.N/` module of an Ultralytics export; the yolo
  layers' decode and output0 of a Darknet conversion, app/darknet.py);
- "head-post": only the head's non-Conv nodes and the DFL (faster, less accurate);
- "none": everything quantized (for comparison).
Which other modules stay float is measured per model and per target (`float_modules="auto"`,
search_float_modules): each module's sensitivity, then the most FLOPs the gate allows.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import cv2
import numpy as np

from app.assets import sha256_file
from app.engine.cpu_features import host_cpu_int8_isa, needs_reduce_range
from app.letterbox import Preprocessor

if TYPE_CHECKING:
    import onnx

    from app.inference.detector import Detector

EXCLUDE_POLICIES = ("head", "head-post", "none")
# Who runs the Q/DQ file. TensorRT takes only signed, symmetric INT8 (zero point 0) and float biases:
# its parser rejects a DequantizeLinear of an int32 bias. ONNX Runtime's CPU kernels fuse Q/DQ into
# QLinearConv only with an int32 bias and a quantized output, and are fastest with uint8 activations (u8s8).
# On x86 without VNNI those u8s8 kernels saturate on 8-bit weights, so "cpu" then gets 7-bit weights
# (reduce_range, app/engine/cpu_features.py). Measured on the YOLOv8 recipe, both splits: F1 0.922 / 0.905
# vs 0.940 / 0.940 with 8-bit ones. uint8 weights (u8u8 kernels, which do not saturate either) kept 0.940 /
# 0.948 but ran 0.84-1.04x FP32 (u8s8: 0.97-1.35x, same runs): no gain over the float model, so not offered.
QUANT_TARGETS = ("tensorrt", "cpu")
# minmax keeps only per-tensor min/max per frame; ORT's entropy/percentile calibrators keep every
# frame's full activations until the end of a chunk (CHUNK_FRAMES) and merge histograms between chunks.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Where the Q/DQ nodes go for each target (quantize()'s conv_only, conv_outputs, symmetric_activations):
# - tensorrt: Conv inputs and weights only, TensorRT's recommended placement (it fuses the next layer's
#   quantization into the convolution and its activation); quantizing the pre-activation Conv output as
#   well cost F1 0.87 against 0.90 with every convolution of YOLOv3-tiny quantized (docs/BENCHMARKS.md);
# - cpu: every op ONNX Runtime quantizes (QLinearConv needs a quantized output; LeakyRelu and MaxPool then
#   run on uint8 too: 2.2x FP32 against 2.1x for Conv alone, and more accurate), activations asymmetric
#   (uint8 with a zero point: the leaky outputs are mostly positive; symmetric ranges wasted half the grid:
#   shift 0.018 against 0.013 for the same modules).
TARGET_OPTIONS: dict[str, dict] = {
    "tensorrt": {"conv_only": True, "conv_outputs": False, "symmetric_activations": True},
    "cpu": {"conv_only": False, "conv_outputs": True, "symmetric_activations": False},
}


class Progress:
    """A long step's progress on stderr, one line at a time: `vigil engine: <what>: 12/64, 8 s, ~35 s left`.

    Prints the first step, then at most one line every `every_s` seconds, and the last step.

    Args:
        what: The step's name.
        total: Steps expected (may be raised later by assigning ``total``).
        stream: Where lines go; None is stderr at print time.
        every_s: Least seconds between two lines.
        enabled: False prints nothing (counting still works).
    """

    def __init__(
        self, what: str, total: int, *, stream: TextIO | None = None, every_s: float = 2.0, enabled: bool = True
    ) -> None:
        self.what, self.total, self.every_s, self.enabled = what, max(int(total), 0), every_s, enabled
        self.stream = stream
        self.done = 0
        self.t0 = time.monotonic()
        self._last = -1e9

    def elapsed(self) -> float:
        """Seconds since construction (monotonic)."""
        return time.monotonic() - self.t0

    def step(self, n: int = 1, note: str = "") -> None:
        """Count ``n`` steps done; print a line if it is the first, the last, or ``every_s`` has passed."""
        self.done += n
        now = time.monotonic()
        if self.done >= self.total or self.done == n or now - self._last >= self.every_s:
            self._last = now
            self.say(note)

    def say(self, note: str = "") -> None:
        """Print the progress line now, with an optional note in parentheses."""
        if not self.enabled:
            return
        el = self.elapsed()
        if self.total and self.done >= self.total:
            when = f"{el:.0f} s, done"
        elif self.done:
            when = f"{el:.0f} s, ~{el / self.done * (self.total - self.done):.0f} s left"
        else:
            when = f"{el:.0f} s"
        tail = f" ({note})" if note else ""
        print(f"vigil engine: {self.what}: {self.done}/{self.total}, {when}{tail}", file=self.stream or sys.stderr,
              flush=True)  # fmt: skip


@dataclass
class FrameSet:
    """Frames extracted from a video for calibration, and how (kept as calibration/<name>/frames.json)."""

    source: str
    source_sha256: str
    indices: list[int]
    files: list[str]
    created: str


def evenly_spaced_frames(video: str | Path, n: int, progress: Progress | None = None) -> list[tuple[int, np.ndarray]]:
    """Read `n` frames spread evenly over `video` (all of them when it has fewer).

    Returns:
        ``(frame index, (H, W, 3) uint8 BGR frame)`` pairs in file order.

    Raises:
        ValueError: OpenCV cannot read a frame count (not a video file).
    """
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total <= 0:
        cap.release()
        raise ValueError(f"{video}: cannot read a frame count (not a video file?)")
    want = set(np.linspace(0, total - 1, num=min(n, total)).round().astype(int).tolist())
    if progress is not None:
        progress.total = len(want)
    try:
        return _read_frames(cap, want, progress)
    finally:
        cap.release()


def frames_at(video: str | Path, indices: Collection[int]) -> list[tuple[int, np.ndarray]]:
    """Read the frames of `video` at `indices`, stopping after the last one.

    Returns:
        ``(frame index, (H, W, 3) uint8 BGR frame)`` pairs in file order, for the indices the file has.
    """
    cap = cv2.VideoCapture(str(video))
    try:
        return _read_frames(cap, set(indices), None)
    finally:
        cap.release()


def _read_frames(cap: cv2.VideoCapture, want: set[int], progress: Progress | None) -> list[tuple[int, np.ndarray]]:
    out: list[tuple[int, np.ndarray]] = []
    i = 0
    while len(out) < len(want):
        ok, frame = cap.read()
        if not ok:
            break
        if i in want:
            out.append((i, frame))
            if progress is not None:
                progress.step()
        i += 1
    return out


# A live source (camera, stream, pipeline) has no frame count to spread over: keep every Nth frame as it comes
# (at 25 fps, 500 frames take 100 s: a few minutes of scene instead of 20 s of near-duplicates).
LIVE_KEEP_EVERY = 5


def source_frames(source: str | int, n: int, progress: Progress | None = None) -> list[tuple[int, np.ndarray]]:
    """Read up to `n` frames of a camera source as app.capture opens it.

    A video file is spread evenly, an image folder picked evenly, a live source sampled every
    LIVE_KEEP_EVERY-th frame as it arrives.

    Returns:
        ``(frame index, (H, W, 3) uint8 BGR frame)`` pairs in source order.

    Raises:
        SourceError: The source cannot be opened.
    """
    from app.capture.sources import open_source

    src = open_source(source)
    if getattr(src, "kind", "") == "file" and not getattr(src, "is_live", False):
        return evenly_spaced_frames(str(source), n, progress)
    live = bool(getattr(src, "is_live", False))
    src.open()
    try:
        images: list[tuple[int, np.ndarray]] = []
        if progress is not None:
            progress.total = n
        i = 0
        while len(images) < (n if live else 10**9):
            frame = src.read()
            if frame is None:
                break
            if not live or i % LIVE_KEEP_EVERY == 0:
                images.append((i, frame.image.copy()))
                if live and progress is not None:
                    progress.step()
            i += 1
    finally:
        src.close()
    if not live:  # a folder or an image: pick evenly among what it holds
        keep = sorted(set(np.linspace(0, len(images) - 1, num=min(n, len(images))).round().astype(int).tolist()))
        images = [images[k] for k in keep] if images else []
        if progress is not None:
            progress.total = len(images)
            progress.step(len(images))
    return images


def extract_frames(video: str | int | Path, n: int, out_dir: str | Path, progress: Progress | None = None) -> FrameSet:
    """Save frames of `video` as PNG into `out_dir`, with a record of which and from what (frames.json).

    Args:
        video: A video file, or any camera source (see ``source_frames``); a URL is recorded with its
            credentials masked.
        n: Frames wanted.
        out_dir: Created if missing; files are ``frame_<index>.png``.
        progress: Progress to advance, if any.

    Returns:
        The record written to ``out_dir/frames.json`` (the source hash only for files).
    """
    from app.config import redact_url

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, got = [], []
    is_file = isinstance(video, Path) or (isinstance(video, str) and Path(video).is_file())
    if is_file:
        picked = evenly_spaced_frames(str(video), n, progress)
    else:  # a camera index or a source string (a Path always counts as a file)
        picked = source_frames(cast("str | int", video), n, progress)
    for i, frame in picked:
        name = f"frame_{i:06d}.png"
        cv2.imwrite(str(out / name), frame)
        files.append(name)
        got.append(i)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fs = FrameSet(redact_url(str(video)), sha256_file(str(video)) if is_file else "", got, files, created)
    (out / "frames.json").write_text(json.dumps(asdict(fs), indent=1))
    return fs


def load_frames(directory: str | Path) -> list[np.ndarray]:
    """Read calibration frames back: those frames.json lists, else every PNG in name order.

    Returns:
        ``(H, W, 3)`` uint8 BGR frames; unreadable files are skipped.
    """
    d = Path(directory)
    record = d / "frames.json"
    names = json.loads(record.read_text())["files"] if record.is_file() else sorted(p.name for p in d.glob("*.png"))
    return [img for img in (cv2.imread(str(d / n)) for n in names) if img is not None]


# Module names. Ultralytics exports name nodes /model.N/...: module N, the detect head the last one. Vigil's
# Darknet converter (app/darknet.py) names them after the Darknet layer: conv15, leaky14, maxpool11, route20,
# upsample19, shortcut4; the yolo layers' decode is yolo16.*, yolo23.*, joined by output0: the "head".
_ULTRALYTICS_NODE = re.compile(r"^/model\.(\d+)/")
_DARKNET_NODE = re.compile(r"^(?:conv|leaky|maxpool|upsample|route|shortcut|yolo)(\d+)(?:\.|$)")
_DARKNET_HEAD = re.compile(r"^yolo\d+\.")


def _is_darknet(model: onnx.ModelProto) -> bool:
    return any(_DARKNET_HEAD.match(n.name) for n in model.graph.node)


def _module(node_name: str, darknet: bool = False) -> int | None:
    m = (_DARKNET_NODE if darknet else _ULTRALYTICS_NODE).match(node_name)
    return int(m.group(1)) if m else None


def _head_node_names(model: onnx.ModelProto) -> set[str]:
    """Every node of the detect head.

    That is the last /model.N/ module of an Ultralytics export; the yolo layers' decode of a Darknet
    conversion and what joins their outputs (output0).
    """
    nodes = model.graph.node
    if _is_darknet(model):
        head = {n.name for n in nodes if _DARKNET_HEAD.match(n.name)}
        made_by = {out: n.name for n in nodes for out in n.output}
        for n in nodes:  # topological order: a node fed only by the head belongs to it
            srcs = [made_by[i] for i in n.input if i in made_by]
            if srcs and all(s in head for s in srcs):
                head.add(n.name)
        return head
    modules = [m for n in nodes if (m := _module(n.name)) is not None]
    if not modules:
        raise ValueError(
            "cannot find the detect head: neither an Ultralytics-style export (/model.N/ node names) nor a "
            "Darknet conversion (yolo<N>.* nodes)"
        )
    last = max(modules)
    return {n.name for n in nodes if _module(n.name) == last}


def node_modules(model: onnx.ModelProto) -> dict[str, int]:
    """Node name -> module number (Ultralytics /model.N/, Darknet layer index) for the nodes that have one."""
    darknet = _is_darknet(model)
    return {n.name: m for n in model.graph.node if (m := _module(n.name, darknet)) is not None}


def head_feeders(model: onnx.ModelProto) -> tuple[int, ...]:
    """The modules whose outputs the detect head reads, in ascending order.

    YOLOv8: 15, 18, 21; YOLO11: 16, 19, 22; YOLOv3-tiny from Darknet: 15, 22, the 1x1 prediction
    convolutions. These are the feature maps every box and score is computed from, where quantization
    error costs the most.

    Raises:
        ValueError: The model is neither an Ultralytics export nor a Darknet conversion.
    """
    head = _head_node_names(model)
    modules = node_modules(model)
    producer = {out: n.name for n in model.graph.node for out in n.output}
    feeders = {
        modules[src]
        for n in model.graph.node
        if n.name in head
        for i in n.input
        if (src := producer.get(i)) is not None and src not in head and src in modules
    }
    return tuple(sorted(feeders))


def head_nodes(model: onnx.ModelProto, policy: str) -> list[str]:
    """Names of the nodes that stay float under `policy` (an EXCLUDE_POLICIES name), in graph order.

    Raises:
        ValueError: The detect head cannot be found (policy other than "none").
    """
    if policy == "none":
        return []
    head = _head_node_names(model)
    nodes = [n for n in model.graph.node if n.name in head]
    if policy == "head":
        return [n.name for n in nodes]
    return [n.name for n in nodes if n.op_type != "Conv" or "/dfl/" in n.name]


def quantizable_modules(model: onnx.ModelProto, excluded: Collection[str] = ()) -> tuple[int, ...]:
    """Modules with a convolution that is not excluded: what a sensitivity search can keep float."""
    modules = node_modules(model)
    skip = set(excluded)
    return tuple(sorted({modules[n.name] for n in model.graph.node
                         if n.op_type == "Conv" and n.name in modules and n.name not in skip}))  # fmt: skip


# Recipes: quantize() options besides the target's placement (TARGET_OPTIONS). DEFAULT_RECIPE is what
# `vigil engine calibrate` uses: percentile ranges, the detect head float, and the modules kept float found by
# a sensitivity search on the calibration frames ("auto": search_float_modules), for any model.
DEFAULT_RECIPE: dict = {"method": "percentile", "exclude": "head", "keep_first_convs": 0, "placement": "target",
                        "float_modules": "auto"}  # fmt: skip
# quantize()'s `placement`: "target" = each target's own (TARGET_OPTIONS); "conv" = Conv inputs and outputs,
# "all" = every op, both symmetric (one grid for both files); None = the explicit options (default: "all")
PLACEMENTS: dict[str, dict | None] = {
    "target": None,
    "conv": {"conv_only": True, "conv_outputs": True, "symmetric_activations": True},
    "all": {"conv_only": False, "conv_outputs": True, "symmetric_activations": True},
}
# Measured on the Ultralytics YOLOv8s fall model (configs/fall.yaml) before the search existed, and what its
# gate test runs: convolutions only with their outputs quantized too, symmetric activations for both targets,
# the head, 3 stem convolutions and the head's feeders float (`--placement conv --keep-first-convs 3
# --float-modules head-feeders`).
YOLOV8_RECIPE: dict = {"method": "percentile", "exclude": "head", "conv_only": True, "conv_outputs": True,
                       "symmetric_activations": True, "keep_first_convs": 3,
                       "float_modules": "head-feeders"}  # fmt: skip

CHUNK_FRAMES = 8  # frames per calibration pass: histogram calibrators hold every activation of a pass
SEARCH_FRAMES = 100  # calibration frames the module search scores each candidate on (evenly picked)
SENSITIVITY_FRAMES = 24  # of those, the frames each module's own sensitivity is measured on
# The search keeps a module set only when it clears the gate by this much on the calibration frames: F1 on
# ~100 frames moves by ~0.01 with a box or two, and held-out frames scored up to 0.02 lower (docs/BENCHMARKS.md).
SEARCH_F1_MARGIN, SEARCH_SHIFT_MARGIN = 0.015, 0.005


class _Reader:
    """Feeds calibration frames to ONNX Runtime, preprocessed exactly like the live pipeline, in ranges.

    With `set_range`, ORT calibrates chunk by chunk and merges, so memory holds one chunk's activations.
    """

    def __init__(self, input_name: str, input_hw: tuple[int, int], frames: list[np.ndarray]) -> None:
        self._pre = Preprocessor(input_hw)
        self._name = input_name
        self._frames = frames
        self._it = iter(frames)

    def __len__(self) -> int:
        return len(self._frames)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._frames[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._it, None)
        if frame is None:
            return None
        blob, _ = self._pre(frame)
        return {self._name: blob.copy()}

    def rewind(self) -> None:
        self._it = iter(self._frames)


def model_input_hw(model: onnx.ModelProto, imgsz: int | None = None) -> tuple[int, int]:
    """The input (h, w) in pixels the detector runs `model` at, by app.inference.model_info's rules.

    A fixed input's own size, else `imgsz` or the metadata imgsz, on the stride grid.

    Raises:
        ModelShapeError: The size is not usable.
    """
    from app.backends.base import TensorSpec
    from app.inference.model_info import _input_hw, _stride

    meta = {p.key: p.value for p in model.metadata_props}
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.input[0].type.tensor_type.shape.dim]
    return _input_hw(TensorSpec(model.graph.input[0].name, tuple(dims), np.dtype(np.float32)), meta, imgsz,
                     _stride(meta))  # fmt: skip


def chunk_size(n: int, most: int = CHUNK_FRAMES) -> int:
    """The largest chunk <= `most` that divides `n` (ORT's strided calibration needs whole chunks)."""
    return next(c for c in range(min(most, max(n, 1)), 0, -1) if n % c == 0)


_ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer inside the block.

    It prints progress to stdout (where `vigil engine calibrate` writes its JSON reports) and warns about
    pre-processing on every call; our own progress lines replace both.
    """
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-process" not in record.getMessage()

    root = logging.getLogger()
    f = _Drop()
    root.addFilter(f)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(f)


def _local_copy(onnx_in: str | Path, folder: Path) -> Path:
    """`onnx_in` as a file in `folder` (a link, or a copy where links are not allowed)."""
    import shutil

    src = Path(onnx_in).resolve()
    dst = folder / src.name
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def calibrate_ranges(onnx_in: str | Path, frames: list[np.ndarray], cache: str | Path, *, method: str = "percentile",
                     percentile: float = 99.999, imgsz: int | None = None, progress: bool = True) -> Path:  # fmt: skip
    """Calibrate the activation ranges of every float tensor of `onnx_in` over `frames`, chunk by chunk.

    One calibration serves every target, placement and module set.

    Args:
        onnx_in: The float model.
        frames: ``(H, W, 3)`` uint8 BGR calibration frames, preprocessed like inference.
        cache: Where ONNX Runtime's calibration cache (JSON ranges) is written; folders are created.
        method: A CALIBRATION_METHODS name.
        percentile: For "percentile": the share of each tensor's values the range covers, in percent.
        imgsz: Input side for a dynamic model (see ``model_input_hw``).
        progress: Print progress lines on stderr.

    Returns:
        ``cache`` as a Path.

    Raises:
        ValueError: No frames, or an unknown method.
    """
    import onnx
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    if not frames:
        raise ValueError("no calibration frames")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method one of {CALIBRATION_METHODS}")
    model = onnx.load(str(onnx_in), load_external_data=False)
    inp = model.graph.input[0].name
    input_hw = model_input_hw(model, imgsz)
    del model

    class Reader(_Reader, CalibrationDataReader):
        pass

    reader = Reader(inp, input_hw, frames)
    chunk = CHUNK_FRAMES
    bar = Progress(f"calibrating ranges ({method}, {len(frames)} frames at {input_hw[0]}x{input_hw[1]})",
                   -(-len(frames) // chunk), enabled=progress)  # fmt: skip
    bar.say("chunks of " + str(chunk) + " frames")
    with tempfile.TemporaryDirectory(prefix="vigil-calib.") as tmp, _quiet_ort():
        # ONNX Runtime writes "<model>-inferred.onnx" beside the model it loads: a link in our own folder keeps
        # that out of engines/ (read-only on some installs; two calibrations of one model would collide there)
        local = _local_copy(onnx_in, Path(tmp))
        calibrator = create_calibrator(local, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]),
                                       extra_options={"percentile": percentile})  # fmt: skip
        for start in range(0, len(frames), chunk):
            reader.set_range(start, start + chunk)
            calibrator.collect_data(reader)
            bar.step()
        ranges = calibrator.compute_data()
        del calibrator
    Path(cache).parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, Path(cache))
    return Path(cache)


def quantize(onnx_in: str | Path, onnx_out: str | Path, frames: list[np.ndarray], *, method: str = "minmax",
             exclude: str = "head", per_channel: bool = True,
             keep_first_convs: int = 0, float_modules: tuple[int, ...] | str = (), target: str = "tensorrt",
             percentile: float = 99.999, ranges_cache: Path | None = None,
             reduce_range: bool | None = None, imgsz: int | None = None, conv_only: bool | None = None,
             conv_outputs: bool | None = None, symmetric_activations: bool | None = None,
             placement: str | None = None, min_f1: float = 0.95, max_shift: float = 0.03, progress: bool = False,
             _search: dict | None = None) -> dict:  # fmt: skip
    """Writes the Q/DQ model for `target` (QUANT_TARGETS); returns the settings (recorded beside it).

    `ranges_cache`: where the calibrated activation ranges are kept; an existing cache is reused instead of
    calibrating again, so the TensorRT and CPU files of one calibration quantize to the same levels.
    `reduce_range` (target "cpu" only): 7-bit weights, for x86 CPUs without VNNI, whose u8s8 kernels saturate
    on 8-bit ones (app/engine/cpu_features.py); None picks it from this machine's CPU flags.
    `imgsz`: the calibration input size of a dynamic model (default: as the detector picks it, from the
    model's metadata); a fixed input keeps its own.
    Placement (`placement`: a PLACEMENTS name, "target" being the target's own from TARGET_OPTIONS; the
    options below override it; with neither, every op, symmetric): `conv_only` quantizes Conv alone, else
    every op ONNX Runtime can; `conv_outputs` False leaves a Conv's output float (only its input and weights
    are quantized); `symmetric_activations` False gives asymmetric uint8 activations (target "cpu" only: TensorRT takes
    symmetric INT8 only). `float_modules` "auto" runs search_float_modules on `frames` against the gate
    `min_f1` / `max_shift` first (what `vigil engine calibrate` does); its findings go in the settings.

    Returns:
        The settings, also written to ``<onnx_out>.json``.

    Raises:
        ValueError: An unknown method, exclude policy, target or placement; reduce_range or asymmetric
            activations for target "tensorrt"; float_modules that are neither module numbers, "auto" nor
            "head-feeders"; no frames when they are needed (no ranges cache yet, or "auto").
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod

    if method not in CALIBRATION_METHODS or exclude not in EXCLUDE_POLICIES or target not in QUANT_TARGETS:
        raise ValueError(
            f"method one of {CALIBRATION_METHODS}, exclude one of {EXCLUDE_POLICIES}, target one of {QUANT_TARGETS}"
        )
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement one of {tuple(PLACEMENTS)}, not {placement!r}")
    where = (PLACEMENTS[placement] or TARGET_OPTIONS.get(target, {})) if placement else cast(dict, PLACEMENTS["all"])
    conv_only = where["conv_only"] if conv_only is None else conv_only
    conv_outputs = where["conv_outputs"] if conv_outputs is None else conv_outputs
    if symmetric_activations is None:
        symmetric_activations = where["symmetric_activations"]
    if target == "tensorrt" and reduce_range:
        raise ValueError("reduce_range is for target 'cpu': the TensorRT file keeps 8-bit symmetric weights")
    if target == "tensorrt" and not symmetric_activations:
        raise ValueError("TensorRT takes symmetric INT8 activations only (zero point 0)")
    cpu_choice: dict = {}
    if target == "cpu":
        host = host_cpu_int8_isa()
        cpu_choice = {"reduce_range_auto": reduce_range is None, "build_cpu": host}
        if reduce_range is None:
            reduce_range = needs_reduce_range(host)
    reduce_range = bool(reduce_range)
    model = onnx.load(str(onnx_in))
    input_hw = model_input_hw(model, imgsz)
    excluded = head_nodes(model, exclude)
    # The stem sees raw pixels (a range unlike any later layer): quantizing it costs the most accuracy.
    excluded += [n.name for n in model.graph.node if n.op_type == "Conv"][:keep_first_convs]
    # whole modules (/model.N/, a Darknet layer) whose quantization error measured too costly: "head-feeders",
    # the neck outputs the detect head reads, took F1 vs FP32 from 0.93 to 0.96 on the YOLOv8s fall model
    if float_modules == "head-feeders":
        float_modules = head_feeders(model)
    elif float_modules == "auto":
        if not frames:
            raise ValueError("float_modules 'auto' searches on the calibration frames: none given")
        with contextlib.ExitStack() as stack:
            if not ranges_cache:
                ranges_cache = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "ranges.json"
            if not Path(ranges_cache).is_file():
                calibrate_ranges(onnx_in, frames, ranges_cache, method=method, percentile=percentile, imgsz=imgsz,
                                 progress=progress)  # fmt: skip
            recipe: dict[str, Any] = {
                "method": method, "percentile": percentile, "exclude": exclude, "per_channel": per_channel,
                "keep_first_convs": keep_first_convs, "conv_only": conv_only, "conv_outputs": conv_outputs,
                "symmetric_activations": symmetric_activations,
            }  # fmt: skip
            search = search_float_modules(onnx_in, frames, ranges_cache=Path(ranges_cache), target=target,
                                          recipe=recipe, min_f1=min_f1, max_shift=max_shift, imgsz=imgsz,
                                          reduce_range=reduce_range, progress=progress)  # fmt: skip
            return quantize(onnx_in, onnx_out, frames, target=target, ranges_cache=ranges_cache,
                            reduce_range=reduce_range, float_modules=tuple(search["float_modules"]), imgsz=imgsz,
                            placement=placement, progress=progress, _search=search, **recipe)  # fmt: skip
    elif isinstance(float_modules, str):
        raise ValueError(f"float_modules: module numbers, 'auto' or 'head-feeders', not {float_modules!r}")
    modules = node_modules(model)
    float_modules = tuple(sorted({int(m) for m in float_modules}))
    excluded += [n.name for n in model.graph.node if modules.get(n.name) in float_modules]
    if float_modules and not conv_only:
        # a module without a convolution (MaxPool, Concat, Resize, Upsample) fed only by float modules stays
        # float too: quantizing it would cost accuracy and gain no integer kernel (with every convolution of
        # YOLOv3-tiny float, its quantized route and upsample still moved confidences by 0.004)
        conv_modules = {modules[n.name] for n in model.graph.node if n.op_type == "Conv" and n.name in modules}
        made_by = {out: n.name for n in model.graph.node for out in n.output}
        floating = set(excluded)
        for n in model.graph.node:
            m = modules.get(n.name)
            srcs = [made_by[i] for i in n.input if i in made_by]
            if m is not None and m not in conv_modules and srcs and all(x in floating for x in srcs):
                floating.add(n.name)
                excluded.append(n.name)
    excluded = list(dict.fromkeys(excluded))
    del model

    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        cache = Path(ranges_cache) if ranges_cache else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "r"
        if not cache.is_file():
            if not frames:
                raise ValueError("no calibration frames")
            calibrate_ranges(onnx_in, frames, cache, method=method, percentile=percentile, imgsz=imgsz,
                             progress=progress)  # fmt: skip
        options = dict(
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if target == "tensorrt" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[method]),
            nodes_to_exclude=excluded,
            op_types_to_quantize=["Conv"] if conv_only else None,
            extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True,
                           "QuantizeBias": target == "cpu",
                           **({} if conv_outputs else {"OpTypesToExcludeOutputQuantization": ["Conv"]})},
            calibration_cache_path=cache,
        )  # fmt: skip
        with _quiet_ort():
            local = _local_copy(onnx_in, Path(stack.enter_context(tempfile.TemporaryDirectory())))
            _quantize_static(str(local), str(onnx_out), None, **options)
    settings = {"target": target, "method": method,
                **({"percentile": percentile} if method == "percentile" else {}), "exclude": exclude,
                "excluded_nodes": len(excluded), "per_channel": per_channel,
                "reduce_range": reduce_range, "weight_bits": 7 if reduce_range else 8, **cpu_choice,
                "placement": placement, "conv_only": conv_only, "conv_outputs": conv_outputs,
                "symmetric_activations": symmetric_activations,
                "keep_first_convs": keep_first_convs, "float_modules": list(float_modules),
                "input_hw": list(input_hw), "calibration_frames": len(frames),
                "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    if _search is not None:
        settings["search"] = _search
    Path(str(onnx_out) + ".json").write_text(json.dumps(settings, indent=1))
    return settings


def module_conv_flops(onnx_in: str | Path, imgsz: int | None = None) -> tuple[dict[int, float], float]:
    """Count convolution FLOPs per module at the model's input size, and of the whole model.

    Output shapes come from one ONNX Runtime inference on a blank input; a multiply-add counts as 2 FLOPs.

    Returns:
        ``({module: FLOPs}, total FLOPs)``; convolutions outside any module count only in the total.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(onnx_in))
    h, w = model_input_hw(model, imgsz)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    known = {o.name for o in model.graph.output}
    for n in convs:
        if n.output[0] not in known:
            model.graph.output.append(helper.make_value_info(n.output[0], helper.TypeProto()))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run([n.output[0] for n in convs], {model.graph.input[0].name: np.zeros((1, 3, h, w), np.float32)})
    modules = node_modules(model)
    per: dict[int, float] = {}
    total = 0.0
    for n, out in zip(convs, outs, strict=True):
        f = 2.0 * float(np.prod(out.shape[1:])) * float(np.prod(shapes[n.input[1]][1:]))
        total += f
        if n.name in modules:
            per[modules[n.name]] = per.get(modules[n.name], 0.0) + f
    return per, total


def search_float_modules(onnx_in: str | Path, frames: list[np.ndarray], *, ranges_cache: Path, target: str,
                         recipe: dict, min_f1: float, max_shift: float, imgsz: int | None = None,
                         reduce_range: bool | None = None, f1_margin: float = SEARCH_F1_MARGIN,
                         shift_margin: float = SEARCH_SHIFT_MARGIN, progress: bool = True) -> dict:  # fmt: skip
    """The modules to keep float so that `target`'s file passes the gate, measured instead of guessed.

    Every convolution module the recipe does not already keep float is a candidate. Each one's sensitivity
    is its cost when it alone is quantized (on SENSITIVITY_FRAMES frames: (1 - F1) / (1 - min_f1) + shift /
    max_shift against FP32); candidates are ranked by convolution FLOPs per unit of that cost, and the
    longest prefix of the ranking that still clears the gate on the frames (F1 >= min_f1 + f1_margin,
    shift <= max_shift - shift_margin) is found by bisection: those modules are quantized, the rest stay
    float. Scored on the calibration frames (evenly picked, SEARCH_FRAMES at most), never the held-out ones.
    Returns the float modules with what was measured (ranking, sensitivity, each prefix tried, int8 FLOPs).
    """
    import onnx

    from app.config import ModelConfig
    from app.engine.agreement import agreement
    from app.inference.detector import Detector

    t0 = time.monotonic()
    frames = [frames[i] for i in sorted(set(np.linspace(0, len(frames) - 1, min(len(frames), SEARCH_FRAMES))
                                            .round().astype(int).tolist()))] if frames else []  # fmt: skip
    if not frames:
        raise ValueError("no frames to search on")
    options = {k: v for k, v in recipe.items() if k not in ("float_modules", "target")}
    model = onnx.load(str(onnx_in), load_external_data=False)
    base = head_nodes(model, options.get("exclude", "head"))
    base += [n.name for n in model.graph.node if n.op_type == "Conv"][: options.get("keep_first_convs", 0)]
    candidates = quantizable_modules(model, base)
    del model
    flops, total = module_conv_flops(onnx_in, imgsz)
    share = {m: flops.get(m, 0.0) / total for m in candidates}
    ref = Detector.from_config(ModelConfig(path=str(onnx_in), backend="onnxruntime", imgsz=imgsz, warmup_runs=0))
    prepared = [ref.prepare(f)[:2] for f in frames]
    ref_dets = [ref.decode(ref.infer(t)[0], g)[0] for t, g in prepared]
    ref.backend.close()
    sens_idx = sorted(set(np.linspace(0, len(frames) - 1, min(len(frames), SENSITIVITY_FRAMES)).round().astype(int)))

    def score(float_set: tuple[int, ...], idx: list[int] | None = None) -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="vigil-search.") as tmp:
            path = Path(tmp) / "candidate.onnx"
            quantize(onnx_in, path, [], target=target, ranges_cache=ranges_cache, imgsz=imgsz,
                     reduce_range=reduce_range, float_modules=float_set, **options)  # fmt: skip
            q = Detector.from_config(ModelConfig(path=str(path), backend="onnxruntime", imgsz=imgsz, warmup_runs=0))
            try:
                use = range(len(frames)) if idx is None else idx
                dets = [q.decode(q.infer(prepared[i][0])[0], prepared[i][1])[0] for i in use]
            finally:
                q.backend.close()
        a = agreement([ref_dets[i] for i in use], dets)
        return a.f1, a.mean_confidence_shift

    def passes(f1: float, shift: float) -> bool:
        return f1 >= min_f1 + f1_margin and shift <= max_shift - shift_margin

    tried: list[dict] = []

    def attempt(k: int, ranking: list[int], bar: Progress) -> bool:
        f1, shift = score(tuple(m for m in candidates if m not in ranking[:k]))
        ok = passes(f1, shift)
        tried.append({"int8_modules": ranking[:k], "f1": round(f1, 4), "shift": round(shift, 4), "passed": ok})
        bar.step(note=f"{k} modules int8: F1 {f1:.3f}, shift {shift:.3f}, {'passes' if ok else 'fails'}")
        return ok

    bar = Progress(f"module search ({target}): everything quantized", 1, enabled=progress)
    ranking = sorted(candidates, key=lambda m: -share[m])
    sensitivity: dict[int, dict] = {}
    if candidates and attempt(len(candidates), ranking, bar):
        keep_int8 = len(candidates)
    else:
        bar = Progress(f"module search ({target}): sensitivity, one module quantized at a time", len(candidates),
                       enabled=progress)  # fmt: skip
        for m in candidates:
            f1, shift = score(tuple(c for c in candidates if c != m), sens_idx)
            cost = (1 - f1) / max(1 - min_f1, 1e-6) + shift / max(max_shift, 1e-6)
            sensitivity[m] = {"f1": round(f1, 4), "shift": round(shift, 4), "cost": round(cost, 3),
                              "flops_share": round(share[m], 4)}  # fmt: skip
            bar.step(note=f"module {m}: F1 {f1:.3f}, shift {shift:.3f}")
        ranking = sorted(candidates, key=lambda m: -share[m] / max(sensitivity[m]["cost"], 1e-3))
        lo, hi = 0, len(candidates) - 1  # the longest passing prefix: 0 passes (nothing quantized), all failed
        steps = max(1, int(np.ceil(np.log2(max(hi - lo + 1, 2)))))
        bar = Progress(f"module search ({target}): bisecting the ranking {ranking}", steps, enabled=progress)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if attempt(mid, ranking, bar):
                lo = mid
            else:
                hi = mid - 1
        keep_int8 = lo
    int8 = ranking[:keep_int8]
    float_set = tuple(m for m in candidates if m not in int8)
    return {"float_modules": list(float_set), "int8_modules": sorted(int8), "ranking": ranking,
            "sensitivity": sensitivity, "tried": tried, "search_frames": len(frames),
            "int8_conv_flops_share": round(sum(flops.get(m, 0.0) for m in int8) / total, 4),
            "criterion": {"min_f1": round(min_f1 + f1_margin, 4), "max_shift": round(max_shift - shift_margin, 4)},
            "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip


def interleaved_fps(
    detectors: Mapping[str, Detector], tensors: Sequence[np.ndarray], rounds: int
) -> dict[str, list[float]]:
    """Time each detector's bare backend on the same prepared tensors, in interleaved rounds.

    Args:
        detectors: Name -> detector; only its backend runs (``backend.infer``), on the tensors as given.
        tensors: Preprocessed input tensors, the same for every detector.
        rounds: Rounds; in each, every detector in turn runs every tensor once.

    Returns:
        Name -> frames per second of each round, in round order.
    """
    fps: dict[str, list[float]] = {k: [] for k in detectors}
    for _ in range(rounds):
        for k, d in detectors.items():
            t = time.perf_counter()
            for x in tensors:
                d.backend.infer(x)
            fps[k].append(len(tensors) / (time.perf_counter() - t))
    return fps


def speedup_vs_fp32(fp32: str | Path, int8: str | Path, frames: list[np.ndarray], *, rounds: int = 3,
                    imgsz: int | None = None) -> dict:  # fmt: skip
    """Measure the backend-only speed of `int8` against `fp32` on ONNX Runtime.

    The same prepared tensors, interleaved rounds, medians (a shared machine shifts single rounds;
    interleaving shares the noise out).

    Returns:
        ``{"fp32_fps", "int8_fps", "speedup", "rounds", "frames"}``; fps are frames per second (medians).
    """
    import statistics

    from app.config import ModelConfig
    from app.inference.detector import Detector

    dets = {k: Detector.from_config(ModelConfig(path=str(p), backend="onnxruntime", imgsz=imgsz))
            for k, p in (("fp32", fp32), ("int8", int8))}  # fmt: skip
    try:
        tensors = [dets["fp32"].preprocess(f)[0] for f in frames]
        fps = interleaved_fps(dets, tensors, rounds)
    finally:
        for d in dets.values():
            d.backend.close()
    med = {k: statistics.median(v) for k, v in fps.items()}
    return {"fp32_fps": round(med["fp32"], 2), "int8_fps": round(med["int8"], 2),
            "speedup": round(med["int8"] / med["fp32"], 3), "rounds": rounds, "frames": len(tensors)}  # fmt: skip
