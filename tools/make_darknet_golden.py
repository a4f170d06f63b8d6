#!/usr/bin/env python3
"""Record OpenCV 4's own Darknet detections of YOLOv3-tiny (COCO) as a golden file.

The reference is `cv2.dnn.readNetFromDarknet` (OpenCV 4; OpenCV 5 removed the Darknet reader), run in a
throwaway virtual environment in /tmp with `opencv-python-headless<5` and numpy, on exactly the tensors
Vigil feeds its models (app.letterbox: letterbox to 416x416, pad 114, RGB, /255). For each
image the tool:

1. takes OpenCV's raw head tensors (the linear convolutions feeding each [yolo] layer) and decodes them in
   numpy by Darknet's rule: xy = (sigmoid(t) + cell) x stride, wh = exp(t) x anchor, score =
   sigmoid(obj) x sigmoid(cls), giving Vigil's dense layout [1, 84, N] (heads by ascending stride, cells
   row-major, anchors innermost);
2. cross-checks that decode against OpenCV's own [yolo] layer outputs wherever OpenCV keeps a score (it
   zeroes scores under its 0.2 threshold); a disagreement stops the tool;
3. applies Vigil's dense decoder (app.inference.decode: conf 0.25, iou 0.7, class-aware NMS, boxes mapped
   back to the source image), which is the NMS `vigil detect` applies, so the golden boxes compare 1:1 with
   Vigil's. NMS itself is checked against Ultralytics elsewhere (tests/test_parity.py).

It also records the reference outputs on app.darknet.probe_input((416, 416)), which app/assets.py keeps as
`_COCO_PROBE` to verify a converted model at fetch time, and prints that constant.

Images: frames 0, 60, 125, 200 of calibration/samples/bikes.mp4 and Ultralytics' bus.jpg and zidane.jpg
(shipped in the `ultralytics` package, the `export` extra), each with its sha256. With the converted model
present (engines/yolov3-tiny-coco.onnx, `vigil assets fetch model-coco`) it prints how far ONNX Runtime's
raw outputs are from OpenCV's. Re-run after changing the conversion rules or the preprocessing:

    .venv/bin/python tools/make_darknet_golden.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.assets import fetch, sha256_file  # noqa: E402
from app.darknet import parse_cfg, parse_names, probe_input  # noqa: E402
from app.engine.calibrate import frames_at  # noqa: E402
from app.inference.decode import DecodeParams, OutputLayout, YoloDecoder  # noqa: E402
from app.letterbox import Preprocessor  # noqa: E402

VIDEO_FRAMES = (0, 60, 125, 200)
ULTRALYTICS_IMAGES = ("bus.jpg", "zidane.jpg")
IMGSZ = 416
CONF, IOU = 0.25, 0.7
PROBE_PER_HEAD = 3
OPENCV_SPEC = "opencv-python-headless<5"

# Runs inside the OpenCV 4 venv: no Vigil imports there
_REFERENCE_SCRIPT = r"""
import json, sys
import cv2
import numpy as np

cfg, weights, tensors, out, yolo_ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
assert int(cv2.__version__.split(".")[0]) == 4, cv2.__version__
net = cv2.dnn.readNetFromDarknet(cfg, weights)
net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
names = list(net.getLayerNames())
wanted = []
for i in yolo_ids:
    conv = names[names.index(f"permute_{i}") - 1]
    assert conv.startswith("conv_"), conv
    wanted += [conv, f"yolo_{i}"]
data = np.load(tensors)
result = {}
for key in data.files:
    net.setInput(data[key])
    for name, arr in zip(wanted, net.forward(wanted)):
        result[f"{key}/{name}"] = arr
np.savez(out, **result)
print(json.dumps({"opencv": cv2.__version__, "numpy": np.__version__, "layers": wanted}))
"""


def _sig(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v.astype(np.float64)))


def _images(video: Path) -> dict[str, dict]:
    images: dict[str, dict] = {
        f"bikes.mp4#{idx}": {"img": frame, "file_sha256": sha256_file(video)}
        for idx, frame in frames_at(video, VIDEO_FRAMES)
    }
    missing = [f for f in VIDEO_FRAMES if f"bikes.mp4#{f}" not in images]
    if missing:
        raise SystemExit(f"{video} has no frame(s) {missing}")
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        raise SystemExit("the ultralytics package (the `export` extra) is needed for bus.jpg and zidane.jpg")
    assets = Path(spec.origin).parent / "assets"
    for name in ULTRALYTICS_IMAGES:
        images[name] = {"img": cv2.imread(str(assets / name)), "file_sha256": sha256_file(assets / name)}
    return images


def pixels_sha256(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def _heads(cfg_text: str) -> list[dict]:
    heads = []
    for sec in parse_cfg(cfg_text):
        if sec.kind == "yolo":
            anchors = [float(v) for v in sec.options["anchors"].split(",")]
            mask = [int(v) for v in sec.options["mask"].split(",")]
            heads.append({"id": sec.index, "anchors": [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]})
    return heads


def decode_raw(raw: np.ndarray, anchors: list[tuple[float, float]], hw: tuple[int, int]) -> np.ndarray:
    """One head [1, A*(5+C), H, W] -> [4+C, H*W*A] (cx, cy, w, h in input pixels; scores), cells row-major,
    anchors innermost, float64."""
    _, ch, h, w = raw.shape
    na = len(anchors)
    t = raw[0].reshape(na, ch // na, h, w).transpose(2, 3, 0, 1).reshape(h * w * na, ch // na).astype(np.float64)
    gy, gx, a = np.meshgrid(np.arange(h), np.arange(w), np.arange(na), indexing="ij")
    stride = hw[0] / h
    anc = np.asarray(anchors, np.float64)[a.ravel()]
    cx = (_sig(t[:, 0]) + gx.ravel()) * stride
    cy = (_sig(t[:, 1]) + gy.ravel()) * stride
    bw = np.exp(t[:, 2]) * anc[:, 0]
    bh = np.exp(t[:, 3]) * anc[:, 1]
    scores = _sig(t[:, 4:5]) * _sig(t[:, 5:])
    return np.concatenate([np.stack([cx, cy, bw, bh], 1), scores], 1).T


def cross_check(dense_head: np.ndarray, yolo_out: np.ndarray, hw: tuple[int, int]) -> float:
    """OpenCV's [yolo] output rows (x, y, w, h normalised to the input, objectness, obj x cls, zeroed under
    its threshold) against our decode; returns the largest difference (pixels or score)."""
    ours = dense_head.T  # [N, 4+C]
    theirs_box = yolo_out[:, :4].astype(np.float64) * np.array([hw[1], hw[0], hw[1], hw[0]])
    theirs_cls = yolo_out[:, 5:].astype(np.float64)
    kept = theirs_cls > 0
    box_diff = np.abs(ours[:, :4] - theirs_box)
    # boxes are compared where OpenCV kept any score (elsewhere exp() of large logits is meaningless)
    rows = kept.any(1)
    worst = max(
        float(box_diff[rows].max(initial=0.0)), float(np.abs(ours[:, 4:][kept] - theirs_cls[kept]).max(initial=0))
    )
    missing = (ours[:, 4:] > 0.21) & ~kept  # OpenCV drops scores <= 0.2 only
    if missing.any():
        raise SystemExit(f"OpenCV zeroed {int(missing.sum())} scores above its threshold (an NMS in the yolo layer?)")
    if worst > 1e-3:
        raise SystemExit(f"our decode of OpenCV's raw heads differs from OpenCV's [yolo] outputs by {worst}")
    return worst


def make_venv(path: Path) -> Path:
    py = path / "bin" / "python"
    if py.exists():
        return py
    t0 = time.monotonic()
    print(f"creating {path} with {OPENCV_SPEC} and numpy ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", OPENCV_SPEC, "numpy"], check=True
    )
    print(f"  ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(REPO / "calibration/samples/bikes.mp4"))
    ap.add_argument("--onnx", default=str(REPO / "engines/yolov3-tiny-coco.onnx"), help="compared when present")
    ap.add_argument("--out", default=str(REPO / "tests/golden/darknet_yolov3_tiny_416.json"))
    ap.add_argument("--venv", help="reuse (or create and keep) this OpenCV 4 venv instead of a throwaway one")
    args = ap.parse_args()

    cfg, weights, names_file = fetch(["yolov3-tiny-cfg", "yolov3-tiny-weights", "coco-names"], REPO)
    names = parse_names(names_file.read_text())
    heads = _heads(cfg.read_text())
    images = _images(Path(args.video))
    pre = Preprocessor((IMGSZ, IMGSZ))
    tensors: dict[str, np.ndarray] = {}
    for i, (_key, item) in enumerate(images.items()):
        tensors[f"t{i}"], item["geometry"] = pre(item["img"])
    tensors["probe"] = probe_input((IMGSZ, IMGSZ))

    tmp = Path(tempfile.mkdtemp(prefix="vigil-darknet-golden-", dir="/tmp"))
    try:
        py = make_venv(Path(args.venv) if args.venv else tmp / "venv")
        np.savez(tmp / "in.npz", **tensors)
        res = subprocess.run(
            [str(py), "-c", _REFERENCE_SCRIPT, str(cfg), str(weights), str(tmp / "in.npz"), str(tmp / "out.npz"),
             json.dumps([h["id"] for h in heads])],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        info = json.loads(res.stdout.strip().splitlines()[-1])
        ref = dict(np.load(tmp / "out.npz"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"reference: OpenCV {info['opencv']} (numpy {info['numpy']}), layers {info['layers']}", file=sys.stderr)

    head_rows: list[int] = []

    def dense(key: str) -> tuple[np.ndarray, float]:
        parts, worst = [], 0.0
        order = sorted(heads, key=lambda h: -ref[f"{key}/yolo_{h['id']}"].shape[0])  # more rows: finer stride
        for h in order:
            conv = info["layers"][info["layers"].index(f"yolo_{h['id']}") - 1]
            d = decode_raw(ref[f"{key}/{conv}"], h["anchors"], (IMGSZ, IMGSZ))
            worst = max(worst, cross_check(d, ref[f"{key}/yolo_{h['id']}"], (IMGSZ, IMGSZ)))
            parts.append(d)
        head_rows[:] = [d.shape[1] for d in parts]
        return np.concatenate(parts, 1)[None].astype(np.float32), worst

    decoder = YoloDecoder(OutputLayout.DENSE, len(names), DecodeParams(conf=CONF, iou=IOU))
    cases, denses, worst_cross = [], {}, 0.0
    for i, (key, item) in enumerate(images.items()):
        d, worst = dense(f"t{i}")
        worst_cross = max(worst_cross, worst)
        denses[f"t{i}"] = d
        det = decoder([d.copy()], item["geometry"])
        cases.append(
            {
                "image": key,
                "file_sha256": item["file_sha256"],
                "pixels_sha256": pixels_sha256(item["img"]),
                "shape": list(item["img"].shape[:2]),
                "detections": [
                    {"class_id": int(c), "label": names[int(c)], "confidence": float(s), "box": [float(v) for v in b]}
                    for b, s, c in zip(det.xyxy.tolist(), det.confidence.tolist(), det.class_id.tolist())
                ],
            }
        )
    probe, worst = dense("probe")
    worst_cross = max(worst_cross, worst)
    p = probe[0].astype(np.float64)
    best = p[4:].max(0)
    rows, lo = [], 0
    for n in head_rows:  # the best anchors of every head, finest stride first
        for i in lo + np.argsort(-best[lo : lo + n], kind="stable")[:PROBE_PER_HEAD]:
            rows.append((int(i), int(p[4:, i].argmax()), float(best[i])))
        lo += n
    first = int(best.argmax())
    second_cls = int(np.argsort(-p[4:, first], kind="stable")[1])
    rows.append((first, second_cls, float(p[4 + second_cls, first])))
    probe_rows = [
        {"index": i, "class_id": c, "score": round(s, 6), "box": [round(float(v), 3) for v in p[:4, i]]}
        for i, c, s in rows
    ]
    src = {f.name: sha256_file(f) for f in (cfg, weights, names_file)}
    golden = {
        "generator": "tools/make_darknet_golden.py",
        "reference": f"OpenCV {info['opencv']} cv2.dnn.readNetFromDarknet, CPU; raw heads decoded in numpy "
        "(checked against OpenCV's [yolo] layers), then Vigil's dense NMS and letterbox mapping",
        "opencv": info["opencv"],
        "sources": src,
        "imgsz": IMGSZ,
        "conf": CONF,
        "iou": IOU,
        "preprocess": "app.letterbox.Preprocessor((416, 416)): letterbox, pad 114, RGB, /255",
        "cases": cases,
        "probe": {
            "input": "app.darknet.probe_input((416, 416))",
            "input_sha256": hashlib.sha256(tensors["probe"].tobytes()).hexdigest(),
            "top": probe_rows,
        },
    }
    Path(args.out).write_text(json.dumps(golden, indent=1) + "\n")
    n = sum(len(c["detections"]) for c in cases)
    print(f"wrote {args.out}: {n} boxes in {len(cases)} images; decode cross-check max diff {worst_cross:.2e}")
    print("app/assets.py _COCO_PROBE:")
    print("_COCO_PROBE: tuple[tuple[int, int, float, float, float, float, float], ...] = (")
    for r in probe_rows:
        print(f"    ({r['index']}, {r['class_id']}, {r['score']}, {', '.join(str(v) for v in r['box'])}),")
    print(")")

    onnx_path = Path(args.onnx)
    if onnx_path.is_file():
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        box_d = score_d = 0.0
        for key, d in [*denses.items(), ("probe", probe)]:
            y = sess.run(["output0"], {"images": tensors[key]})[0]
            box_d = max(box_d, float(np.abs(y[:, :4] - d[:, :4]).max()))
            score_d = max(score_d, float(np.abs(y[:, 4:] - d[:, 4:]).max()))
        print(f"{onnx_path.name} vs OpenCV, raw output0: max |box diff| {box_d:.2e} px, max |score diff| {score_d:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
