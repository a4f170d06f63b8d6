"""Darknet (`.cfg` + `.weights`) to ONNX with numpy and onnx only: no torch, no Darknet, no OpenCV.

The graph takes Vigil's input (`images` [B, 3, H, W] float32 RGB 0..1, B and H, W dynamic, H and W
multiples of the model's largest stride) and emits the Ultralytics dense layout (`output0` [B, 4+C, N]:
cx, cy, w, h in input pixels, then C class scores = sigmoid(objectness) x sigmoid(class)), YOLO layers in
ascending stride order, cells row-major and anchors innermost within a layer (OpenCV's order). Ultralytics
style metadata (names, stride, imgsz, task) makes the model load in Vigil as an ordinary dense detector.

What a faithful conversion has to reproduce (Darknet's own rules, pjreddie/darknet and OpenCV's importer):

- weights: int32 major, minor, revision; then images seen, int64 when major*10+minor >= 2 (and both < 1000),
  else int32; then float32 blobs in layer order, per convolution: bias (n), for batch-normalised layers
  scale, mean, variance (n each), then the kernel (n x c x k x k). Every float is consumed exactly, or the
  weights do not belong to the cfg and conversion fails.
- batch norm folds into the convolution (in float64, rounded once). Darknet's CPU code divides by
  sqrt(var) + 1e-6 (blas.c normalize_cpu); OpenCV's importer, the reference Vigil checks against, by
  sqrt(var + 1e-6) (a BatchNorm layer with eps 1e-6). `bn_eps` picks either. On YOLOv3-tiny COCO both are
  within float rounding of OpenCV's outputs, the OpenCV form closer (largest raw output0 difference over the
  golden images: 3.0e-3 px and 6.8e-6 in a score, against 3.9e-3 px and 1.3e-5), so it is the default.
- convolution padding is size/2 when `pad=1` (so 0 for 1x1), else `padding`; activations leaky (0.1) or
  linear.
- maxpool pads `padding` (default size-1) split as floor(p/2) before and the rest after, padded cells never
  win (ONNX MaxPool pads behave that way): the stride-1 2x2 pool of YOLOv3-tiny pads right/bottom only.
- upsample is nearest-neighbour; route concatenates on channels (layer indices relative when negative).
- yolo: xy = (sigmoid(t) + cell) x stride, wh = exp(t) x anchor (cfg anchors are input pixels, selected
  by `mask`), score = sigmoid(obj) x sigmoid(cls).

Anything else in a cfg raises UnsupportedCfgError naming the section, its line and the option.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DarknetError",
    "Header",
    "Section",
    "UnsupportedCfgError",
    "convert",
    "parse_cfg",
    "parse_names",
    "probe_input",
    "read_weights",
]

OPSET = 17
IR_VERSION = 8  # fixed, not the installed onnx's newest: ONNX Runtime >= 1.10 and TensorRT 8.x read it
LEAKY_SLOPE = 0.1
BN_EPS = 1e-6
BN_EPS_MODES = ("darknet", "opencv")


class DarknetError(ValueError):
    """The cfg or weights are malformed, or do not belong together."""


class UnsupportedCfgError(DarknetError):
    """The cfg is valid Darknet but uses a layer or option this converter does not implement."""


# ---- cfg --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One ``[section]`` of a cfg with its raw ``key=value`` options."""

    kind: str  # "net", "convolutional", ...
    options: dict[str, str]
    line: int  # 1-based line of the [header]
    index: int = -1  # layer index as Darknet counts it ([net] is -1)

    def where(self) -> str:
        """Where the section is, for error messages: ``[kind] at line N (layer I)``."""
        return f"[{self.kind}] at line {self.line}" + (f" (layer {self.index})" if self.index >= 0 else "")


def parse_cfg(text: str) -> list[Section]:
    """Parse a Darknet cfg into sections in file order, as Darknet's read_cfg (parser.c) reads them.

    All whitespace is removed from a line, lines starting with '#' or ';' are skipped, options are
    `key=value`. The first section must be [net] (or [network]).

    Raises:
        DarknetError: A malformed header or option, an option before any section or given twice, no [net]
            first (or a second one), or no layers.
    """
    sections: list[Section] = []
    kind: str | None = None
    options: dict[str, str] = {}
    start = 0
    index = -1

    def close() -> None:
        if kind is not None:
            sections.append(Section(kind, dict(options), start, index if kind != "net" else -1))

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise DarknetError(f"cfg line {lineno}: malformed section header {raw.strip()!r}")
            close()
            kind = line[1:-1].lower()
            if kind == "network":
                kind = "net"
            if not sections and kind != "net":
                raise DarknetError(f"cfg line {lineno}: the first section must be [net], not [{kind}]")
            if kind == "net" and sections:
                raise DarknetError(f"cfg line {lineno}: a second [net] section")
            index = index + 1 if kind != "net" else -1
            options, start = {}, lineno
            continue
        if kind is None:
            raise DarknetError(f"cfg line {lineno}: option {raw.strip()!r} before any [section]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise DarknetError(f"cfg line {lineno}: expected key=value, got {raw.strip()!r}")
        if key in options:
            raise DarknetError(f"cfg line {lineno}: option {key!r} given twice in [{kind}]")
        options[key] = value
    close()
    if not sections:
        raise DarknetError("cfg has no [net] section")
    if len(sections) == 1:
        raise DarknetError("cfg has no layers after [net]")
    return sections


def parse_names(text: str) -> list[str]:
    """A Darknet .names file: one class name a line; blank lines ignored."""
    return [n.strip() for n in text.splitlines() if n.strip()]


# Options that only matter for training (or for Darknet's own bookkeeping): accepted and ignored
_TRAINING_ONLY = {
    "yolo": {
        "jitter", "ignore_thresh", "truth_thresh", "random", "num", "max_delta", "counters_per_class",
        "label_smooth_eps", "iou_normalizer", "cls_normalizer", "obj_normalizer", "uc_normalizer", "iou_loss",
        "iou_thresh_kind", "iou_thresh", "beta_nms", "nms_kind", "resize", "focal_loss", "map",
    },
    "convolutional": {"stopbackward", "dontload", "dontloadscales", "learning_rate"},
    "route": {"stopbackward"},
    "upsample": set(),
    "maxpool": set(),
    "shortcut": set(),
}  # fmt: skip
_USED = {
    "convolutional": {"batch_normalize", "filters", "size", "stride", "pad", "padding", "activation", "groups",
                      "dilation"},
    "maxpool": {"size", "stride", "padding"},
    "upsample": {"stride", "scale"},
    "route": {"layers", "groups", "group_id"},
    "shortcut": {"from", "activation", "weights_type", "weights_normalization"},
    "yolo": {"mask", "anchors", "classes", "scale_x_y", "new_coords"},
}  # fmt: skip


_T = TypeVar("_T")


def _option(sec: Section, key: str, parse: Callable[[str], _T], what: str, default: _T | None = None) -> _T:
    """Option `key` of `sec` read by `parse`; `default` when absent (required when `default` is None)."""
    raw = sec.options.get(key)
    if raw is None:
        if default is None:
            raise DarknetError(f"{sec.where()}: option {key!r} is required")
        return default
    try:
        return parse(raw)
    except ValueError:
        raise DarknetError(f"{sec.where()}: option {key}={raw!r} is not {what}") from None


def _int(sec: Section, key: str, default: int | None = None) -> int:
    return _option(sec, key, int, "an integer", default)


def _float(sec: Section, key: str, default: float) -> float:
    return _option(sec, key, float, "a number", default)


def _ints(sec: Section, key: str) -> list[int]:
    return _option(sec, key, lambda raw: [int(v) for v in raw.split(",") if v != ""], "a list of integers")


def _floats(sec: Section, key: str) -> list[float]:
    return _option(sec, key, lambda raw: [float(v) for v in raw.split(",") if v != ""], "a list of numbers")


def _unsupported(sec: Section, what: str) -> UnsupportedCfgError:
    return UnsupportedCfgError(f"{sec.where()}: {what} is not supported by this converter")


def _check_options(sec: Section) -> None:
    if sec.kind not in _USED:
        raise _unsupported(sec, f"layer type [{sec.kind}]")
    known = _USED[sec.kind] | _TRAINING_ONLY[sec.kind]
    unknown = sorted(set(sec.options) - known)
    if unknown:
        raise _unsupported(sec, f"option(s) {', '.join(unknown)}")


# ---- weights ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The weights file header: version, images seen in training, and its own size in bytes (16 or 20)."""

    major: int
    minor: int
    revision: int
    seen: int
    size: int  # bytes


def read_weights(data: bytes | bytearray | memoryview) -> tuple[Header, np.ndarray]:
    """Split a Darknet weights file into its header and its float32 values.

    Args:
        data: The whole ``.weights`` file.

    Returns:
        ``(header, floats)``: ``floats`` is a 1-D float32 array of everything after the header.

    Raises:
        DarknetError: Shorter than a header, or the rest is not a whole number of float32 values.
    """
    data = memoryview(data)
    if len(data) < 16:
        raise DarknetError(f"weights file of {len(data)} bytes is too short for a Darknet header")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        (seen,) = struct.unpack_from("<Q", data, 12)
        size = 20
    else:
        (seen,) = struct.unpack_from("<I", data, 12)
        size = 16
    rest = len(data) - size
    if rest < 0 or rest % 4:
        raise DarknetError(
            f"weights file: {rest} bytes after the {size}-byte header (version {major}.{minor}.{revision}) is "
            "not a whole number of float32 values; truncated or not a Darknet weights file"
        )
    floats = np.frombuffer(data, dtype="<f4", offset=size).astype(np.float32, copy=False)
    return Header(major, minor, revision, seen, size), floats


class _Floats:
    """Hands out the weights' floats in order and refuses to run short or leave any behind."""

    def __init__(self, floats: np.ndarray, header_bytes: int) -> None:
        self.floats = floats
        self.pos = 0
        self.header_bytes = header_bytes

    def take(self, n: int, what: str) -> np.ndarray:
        left = self.floats.size - self.pos
        if n > left:
            raise DarknetError(
                f"weights file ends early: {what} needs {n} floats at float offset {self.pos} "
                f"(byte {self.header_bytes + 4 * self.pos}), only {left} left; the weights do not match the cfg"
            )
        out = self.floats[self.pos : self.pos + n]
        self.pos += n
        return out

    def finish(self) -> None:
        left = self.floats.size - self.pos
        if left:
            raise DarknetError(
                f"{left} floats left over after the last layer ({self.pos} of {self.floats.size} consumed): "
                "the weights do not belong to this cfg"
            )


# ---- shape plan -----------------------------------------------------------------------------------------


@dataclass
class _Layer:
    sec: Section
    c: int
    h: int
    w: int
    attrs: dict[str, Any] = field(default_factory=dict)  # per layer kind: ints, lists, strs, bools


def _conv_plan(sec: Section, c: int, h: int, w: int) -> _Layer:
    filters = _int(sec, "filters")
    size = _int(sec, "size", 1)
    stride = _int(sec, "stride", 1)
    if _int(sec, "groups", 1) != 1:
        raise _unsupported(sec, "grouped convolution (groups != 1)")
    if _int(sec, "dilation", 1) != 1:
        raise _unsupported(sec, "dilated convolution (dilation != 1)")
    act = sec.options.get("activation", "logistic")
    if act not in ("leaky", "linear"):
        raise _unsupported(sec, f"activation={act}")
    bn = _int(sec, "batch_normalize", 0)
    if bn not in (0, 1):
        raise DarknetError(f"{sec.where()}: batch_normalize={bn}")
    if filters < 1 or size < 1 or stride < 1:
        raise DarknetError(f"{sec.where()}: filters, size and stride must be positive")
    pad = size // 2 if _int(sec, "pad", 0) else _int(sec, "padding", 0)
    oh = (h + 2 * pad - size) // stride + 1
    ow = (w + 2 * pad - size) // stride + 1
    if oh < 1 or ow < 1:
        raise DarknetError(f"{sec.where()}: input {h}x{w} is too small for a {size}x{size} convolution")
    attrs = {"filters": filters, "size": size, "stride": stride, "pad": pad, "bn": bool(bn), "act": act, "cin": c}
    return _Layer(sec, filters, oh, ow, attrs)


def _maxpool_plan(sec: Section, c: int, h: int, w: int) -> _Layer:
    size = _int(sec, "size", 1)
    stride = _int(sec, "stride", size)
    padding = _int(sec, "padding", size - 1)
    if size < 1 or stride < 1 or padding < 0:
        raise DarknetError(f"{sec.where()}: size and stride must be positive, padding not negative")
    oh = (h + padding - size) // stride + 1
    ow = (w + padding - size) // stride + 1
    if oh < 1 or ow < 1:
        raise DarknetError(f"{sec.where()}: input {h}x{w} is too small for a {size}x{size} maxpool")
    begin = padding // 2
    # Darknet reads cells begin..begin+(out-1)*stride+size-1 counted from -begin; what lies past the input
    # on the far side is padding (never the max), what the window never reaches is simply not read
    end_h = max(0, (oh - 1) * stride + size - h - begin)
    end_w = max(0, (ow - 1) * stride + size - w - begin)
    return _Layer(sec, c, oh, ow, {"size": size, "stride": stride, "pads": (begin, begin, end_h, end_w)})


def _plan(sections: Sequence[Section], in_hw: tuple[int, int], in_c: int) -> list[_Layer]:
    """Output shape and parameters of every layer for one input size."""
    layers: list[_Layer] = []
    c, (h, w) = in_c, in_hw

    def ref(sec: Section, i: int) -> int:
        j = sec.index + i if i < 0 else i
        if not 0 <= j < sec.index:
            raise DarknetError(f"{sec.where()}: refers to layer {i} (absolute {j}), not an earlier layer")
        if layers[j].sec.kind == "yolo":
            raise _unsupported(sec, f"taking the output of the [yolo] layer {j}")
        return j

    for sec in sections[1:]:
        _check_options(sec)
        kind = sec.kind
        if kind == "convolutional":
            layer = _conv_plan(sec, c, h, w)
        elif kind == "maxpool":
            if "stride_x" in sec.options or "stride_y" in sec.options:
                raise _unsupported(sec, "stride_x/stride_y")
            layer = _maxpool_plan(sec, c, h, w)
        elif kind == "upsample":
            stride = _int(sec, "stride", 2)
            if stride < 1:
                raise _unsupported(sec, f"stride={stride} (a negative stride downsamples)")
            if _float(sec, "scale", 1.0) != 1.0:
                raise _unsupported(sec, "scale != 1")
            layer = _Layer(sec, c, h * stride, w * stride, {"stride": stride})
        elif kind == "route":
            if _int(sec, "groups", 1) != 1:
                raise _unsupported(sec, "groups != 1 (channel slicing)")
            srcs = [ref(sec, i) for i in _ints(sec, "layers")]
            if not srcs:
                raise DarknetError(f"{sec.where()}: empty layers=")
            hw = {(layers[j].h, layers[j].w) for j in srcs}
            if len(hw) != 1:
                shapes = ", ".join(f"{j}: {layers[j].h}x{layers[j].w}" for j in srcs)
                raise DarknetError(f"{sec.where()}: routed layers have different sizes ({shapes}) at input {in_hw}")
            (rh, rw) = hw.pop()
            layer = _Layer(sec, sum(layers[j].c for j in srcs), rh, rw, {"sources": srcs})
        elif kind == "shortcut":
            if sec.options.get("activation", "linear") != "linear":
                raise _unsupported(sec, f"activation={sec.options['activation']}")
            if sec.options.get("weights_type", "none") != "none":
                raise _unsupported(sec, "weighted shortcut")
            j = ref(sec, _int(sec, "from"))
            if (layers[j].c, layers[j].h, layers[j].w) != (c, h, w):
                src = layers[j]
                raise _unsupported(sec, f"adding layer {j} of shape {src.c}x{src.h}x{src.w} to {c}x{h}x{w}")
            layer = _Layer(sec, c, h, w, {"source": j})
        else:  # yolo
            if _float(sec, "scale_x_y", 1.0) != 1.0:
                raise _unsupported(sec, "scale_x_y != 1 (YOLOv4 box decoding)")
            if _int(sec, "new_coords", 0) != 0:
                raise _unsupported(sec, "new_coords=1 (Scaled-YOLOv4 box decoding)")
            classes = _int(sec, "classes", 20)
            anchors = _floats(sec, "anchors")
            if len(anchors) % 2:
                raise DarknetError(f"{sec.where()}: anchors has an odd number of values")
            pairs = [(anchors[2 * i], anchors[2 * i + 1]) for i in range(len(anchors) // 2)]
            mask = _ints(sec, "mask") if "mask" in sec.options else list(range(len(pairs)))
            if any(not 0 <= m < len(pairs) for m in mask):
                raise DarknetError(f"{sec.where()}: mask {mask} refers past the {len(pairs)} anchors")
            if c != len(mask) * (5 + classes):
                raise DarknetError(
                    f"{sec.where()}: its input has {c} channels; {len(mask)} anchors x (5 + {classes} classes) "
                    f"needs {len(mask) * (5 + classes)}"
                )
            if in_hw[0] % h or in_hw[1] % w or in_hw[0] // h != in_hw[1] // w:
                raise UnsupportedCfgError(
                    f"{sec.where()}: a {h}x{w} grid on a {in_hw[0]}x{in_hw[1]} input has no single integer stride"
                )
            anchor_wh = [pairs[m] for m in mask]
            layer = _Layer(sec, c, h, w, {"classes": classes, "anchors": anchor_wh, "stride": in_hw[0] // h})
        layers.append(layer)
        c, h, w = layer.c, layer.h, layer.w
    if not any(layer.sec.kind == "yolo" for layer in layers):
        raise UnsupportedCfgError("cfg has no [yolo] layer: only YOLO detectors are converted")
    return layers


def _check_size_independent(sections: Sequence[Section], nominal: list[_Layer], in_c: int) -> None:
    """Check every padding and stride is the same at any input that is a multiple of the largest stride.

    The graph is emitted once with dynamic H, W; otherwise it would be right at one size only.
    """
    max_stride = max(int(layer.attrs["stride"]) for layer in nominal if layer.sec.kind == "yolo")
    for k in (1, 2, 3, 5, 7, 19):
        other = _plan(sections, (k * max_stride, k * max_stride), in_c)
        for a, b in zip(nominal, other):
            keys = ("pads", "stride", "pad")
            if any(a.attrs.get(key) != b.attrs.get(key) for key in keys):
                raise UnsupportedCfgError(
                    f"{a.sec.where()}: its padding or stride depends on the input size ({a.attrs} at the cfg's "
                    f"size, {b.attrs} at {k * max_stride}); a dynamic-size graph cannot express it"
                )


# ---- graph -------------------------------------------------------------------------------------------


def _fold(
    weights: np.ndarray,
    bias: np.ndarray,
    scale: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    bn_eps: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm folded into the preceding convolution, in float64, rounded once to float32."""
    var64 = var.astype(np.float64)
    denom = np.sqrt(var64) + BN_EPS if bn_eps == "darknet" else np.sqrt(var64 + BN_EPS)
    k = scale.astype(np.float64) / denom
    w = weights.astype(np.float64) * k[:, None, None, None]
    b = bias.astype(np.float64) - mean.astype(np.float64) * k
    return w.astype(np.float32), b.astype(np.float32)


def convert(
    cfg: str,
    weights: bytes | bytearray | memoryview,
    names: Sequence[str],
    *,
    bn_eps: str = "opencv",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Convert a Darknet YOLO detector to ONNX (see the module docstring for the graph and its rules).

    Args:
        cfg: The ``.cfg`` text.
        weights: The whole ``.weights`` file; every float must be consumed.
        names: Class names, one per class of the [yolo] layers.
        bn_eps: ``"opencv"`` (sqrt(var + eps), the default) or ``"darknet"`` (sqrt(var) + eps).
        metadata: Adds to (and may override) the metadata written from the cfg: names, stride, imgsz, task,
            description.

    Returns:
        The checked model: input ``images`` ``[B, 3, H, W]`` float32 RGB 0..1, output ``output0``
        ``[B, 4 + C, N]`` (cx, cy, w, h in input pixels, then class scores).

    Raises:
        ValueError: An unknown ``bn_eps``.
        DarknetError: A malformed cfg or weights file, weights that do not match the cfg, or a names count
            that differs from the classes.
        UnsupportedCfgError: A layer type or option this converter does not implement, channels other than
            3, no [yolo] layer, or [yolo] layers that disagree on the class count.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if bn_eps not in BN_EPS_MODES:
        raise ValueError(f"bn_eps must be one of {BN_EPS_MODES}, not {bn_eps!r}")
    sections = parse_cfg(cfg)
    net = sections[0]
    in_hw = (_int(net, "height", 416), _int(net, "width", 416))
    in_c = _int(net, "channels", 3)
    if in_c != 3:
        raise _unsupported(net, f"channels={in_c} (Vigil feeds RGB)")
    if min(in_hw) < 1:
        raise DarknetError(f"{net.where()}: width and height must be positive")
    layers = _plan(sections, in_hw, in_c)
    _check_size_independent(sections, layers, in_c)
    heads = [layer for layer in layers if layer.sec.kind == "yolo"]
    classes = {int(h.attrs["classes"]) for h in heads}
    if len(classes) != 1:
        raise UnsupportedCfgError(f"[yolo] layers disagree on the number of classes: {sorted(classes)}")
    nc = classes.pop()
    if len(names) != nc:
        raise DarknetError(f"{len(names)} class names for a model with {nc} classes")
    header, floats = read_weights(weights)
    feed = _Floats(floats, header.size)

    nodes: list = []
    inits: list = []
    outputs: dict[int, str] = {}

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    x = "images"
    for i, layer in enumerate(layers):
        kind, a = layer.sec.kind, layer.attrs
        if kind == "convolutional":
            n, cin, k = int(a["filters"]), int(a["cin"]), int(a["size"])
            where = layer.sec.where()
            bias = feed.take(n, f"{where} bias")
            if a["bn"]:
                scale = feed.take(n, f"{where} batch-norm scale")
                mean = feed.take(n, f"{where} batch-norm mean")
                var = feed.take(n, f"{where} batch-norm variance")
            kernel = feed.take(n * cin * k * k, f"{where} kernel").reshape(n, cin, k, k)
            if a["bn"]:
                if (var < 0).any():
                    raise DarknetError(f"{where}: negative batch-norm variance; not a Darknet weights file")
                kernel, bias = _fold(kernel, bias, scale, mean, var, bn_eps)
            p = int(a["pad"])
            w_name = const(f"conv{i}.weight", kernel.astype(np.float32))
            b_name = const(f"conv{i}.bias", bias.astype(np.float32))
            s = int(a["stride"])
            y = node("Conv", [x, w_name, b_name], f"conv{i}", kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
            if a["act"] == "leaky":
                y = node("LeakyRelu", [y], f"leaky{i}", alpha=LEAKY_SLOPE)
        elif kind == "maxpool":
            k, s = int(a["size"]), int(a["stride"])
            pads = list(a["pads"])
            y = node("MaxPool", [x], f"maxpool{i}", kernel_shape=[k, k], strides=[s, s], pads=pads)
        elif kind == "upsample":
            factor = float(a["stride"])
            scales = const(f"upsample{i}.scales", np.array([1, 1, factor, factor], np.float32))
            y = node(
                "Resize",
                [x, "", scales],
                f"upsample{i}",
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        elif kind == "route":
            srcs = [outputs[j] for j in a["sources"]]
            y = srcs[0] if len(srcs) == 1 else node("Concat", srcs, f"route{i}", axis=1)
        elif kind == "shortcut":
            y = node("Add", [x, outputs[int(a["source"])]], f"shortcut{i}")
        else:  # yolo: decoded per head below; the layer passes its input on like Darknet's
            layer.attrs["input"] = x
            y = x
        outputs[i] = y
        x = y
    feed.finish()

    decoded = []
    for head in sorted(heads, key=lambda h: int(h.attrs["stride"])):
        decoded.append(_yolo_head(node, const, head, nc))
    out = decoded[0] if len(decoded) == 1 else node("Concat", decoded, "output0", axis=2)
    if out != "output0":
        out = node("Identity", [out], "output0")

    graph = helper.make_graph(
        nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + nc, "anchors"])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vigil.darknet",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    strides = sorted({int(h.attrs["stride"]) for h in heads})
    meta = {
        "description": f"Darknet YOLO detector ({nc} classes, strides {strides}) converted by Vigil app/darknet.py",
        "task": "detect",
        "stride": str(max(strides)),
        "imgsz": str([in_hw[0], in_hw[1]]),
        "names": str(dict(enumerate(names))),
        "darknet_weights_version": f"{header.major}.{header.minor}.{header.revision}",
        "darknet_bn_eps": bn_eps,
    }
    meta.update(metadata or {})
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def _yolo_head(node: Callable[..., str], const: Callable[[str, np.ndarray], str], head: _Layer, nc: int) -> str:
    """[B, A*(5+C), H, W] raw -> [B, 4+C, H*W*A] decoded: cells row-major, anchors innermost."""
    i = head.sec.index
    a = head.attrs
    anchors = np.array(a["anchors"], np.float32)  # [A, 2] in input pixels
    na = len(anchors)
    raw = str(a["input"])
    p = f"yolo{i}"
    t = node("Reshape", [raw, const(f"{p}.shape", np.array([0, na, 5 + nc, -1], np.int64))], f"{p}.t")
    # grid offsets for a dynamic H x W: x varies fastest, matching the H*W flattening
    shape = node("Shape", [raw], f"{p}.in_shape")
    hw = node(
        "Slice",
        [shape, const(f"{p}.s2", np.array([2], np.int64)), const(f"{p}.s4", np.array([4], np.int64))],
        f"{p}.hw",
    )
    zero = const(f"{p}.zero", np.array(0, np.int64))
    one = const(f"{p}.one", np.array(1, np.int64))
    h = node("Gather", [shape, const(f"{p}.i2", np.array(2, np.int64))], f"{p}.h")
    w = node("Gather", [shape, const(f"{p}.i3", np.array(3, np.int64))], f"{p}.w")
    gx = node("Cast", [node("Range", [zero, w, one], f"{p}.rx")], f"{p}.fx", to=1)
    gy = node("Cast", [node("Range", [zero, h, one], f"{p}.ry")], f"{p}.fy", to=1)
    row = const(f"{p}.row", np.array([1, -1], np.int64))
    col = const(f"{p}.col", np.array([-1, 1], np.int64))
    flat = const(f"{p}.flat", np.array([1, 1, 1, -1], np.int64))
    gx = node("Reshape", [node("Expand", [node("Reshape", [gx, row], f"{p}.gx1"), hw], f"{p}.gx2"), flat], f"{p}.gx")
    gy = node("Reshape", [node("Expand", [node("Reshape", [gy, col], f"{p}.gy1"), hw], f"{p}.gy2"), flat], f"{p}.gy")
    grid = node("Concat", [gx, gy], f"{p}.grid", axis=2)  # [1, 1, 2, H*W]

    def part(lo: int, hi: int, name: str) -> str:
        starts = const(f"{p}.{name}.lo", np.array([lo], np.int64))
        ends = const(f"{p}.{name}.hi", np.array([hi], np.int64))
        axes = const(f"{p}.{name}.axis", np.array([2], np.int64))
        return node("Slice", [t, starts, ends, axes], f"{p}.{name}")

    stride = const(f"{p}.stride", np.array(float(a["stride"]), np.float32))
    cxy = node("Add", [node("Sigmoid", [part(0, 2, "txy")], f"{p}.sxy"), grid], f"{p}.cxy")
    xy = node("Mul", [cxy, stride], f"{p}.xy")
    wh = node(
        "Mul",
        [node("Exp", [part(2, 4, "twh")], f"{p}.ewh"), const(f"{p}.anchors", anchors.reshape(1, na, 2, 1))],
        f"{p}.wh",
    )
    obj = node("Sigmoid", [part(4, 5, "tobj")], f"{p}.obj")
    cls = node("Sigmoid", [part(5, 5 + nc, "tcls")], f"{p}.cls")
    score = node("Mul", [obj, cls], f"{p}.score")
    dec = node("Concat", [xy, wh, score], f"{p}.dec", axis=2)  # [B, A, 4+C, H*W]
    dec = node("Transpose", [dec], f"{p}.perm", perm=[0, 2, 3, 1])  # [B, 4+C, H*W, A]
    return node("Reshape", [dec, const(f"{p}.out_shape", np.array([0, 4 + nc, -1], np.int64))], f"{p}.out")


# ---- a fixed input for checking a converted model by its outputs --------------------------------------


def _triangle(t: np.ndarray) -> np.ndarray:
    """0..1 triangle wave of period 1, from exactly rounded IEEE operations only."""
    return np.abs(2.0 * (t - np.floor(t + 0.5)))


def probe_input(hw: tuple[int, int] = (416, 416)) -> np.ndarray:
    """A deterministic [1, 3, H, W] float32 RGB image in 0..1 (colour ramps, discs and bars).

    It makes a COCO detector respond at every stride (YOLOv3-tiny at 416: 0.64 from the stride-32 head,
    0.26 from the stride-16 one). Closed-form from +, -, x, /, floor and rounding only, no RNG and no
    transcendental functions (whose last bit varies with the CPU and numpy build): the same bytes everywhere.

    Args:
        hw: ``(height, width)`` in pixels.
    """
    h, w = hw
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = x / max(w - 1, 1), y / max(h - 1, 1)
    r = 0.15 + 0.7 * _triangle(0.75 * u + 0.25 * v)
    g = 0.15 + 0.7 * _triangle(0.35 * u - 0.65 * v + 0.5)
    b = 0.15 + 0.7 * _triangle(1.05 * u * v + 0.25)
    img = np.stack([r, g, b])
    red, orange, black = (0.9, 0.1, 0.1), (0.95, 0.55, 0.05), (0.05, 0.05, 0.05)
    discs = ((0.3, 0.35, 0.16, red), (0.72, 0.62, 0.2, black), (0.1, 0.6, 0.08, orange), (0.88, 0.15, 0.05, red))
    for cx, cy, rad, col in discs:  # large and small: both YOLOv3-tiny heads respond
        disc = (u - cx) ** 2 + (v - cy) ** 2 < rad**2
        img[:, disc] = np.array(col)[:, None]
    for k in range(6):  # vertical bars
        bar = (np.abs(u - (0.1 + 0.16 * k)) < 0.02) & (v > 0.75)
        img[:, bar] = 0.95 - 0.15 * k
    return np.round(img * 255).astype(np.float32)[None] / np.float32(255.0)
