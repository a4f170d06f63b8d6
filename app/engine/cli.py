"""`vigil engine build`: ONNX -> validated, cached TensorRT engine (on the device itself)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from app.config import DEFAULT_MODEL_PATH, DEFAULT_SAMPLE_VIDEO


def validation_frames(source: str, n: int) -> list[np.ndarray]:
    """Evenly spaced frames of a video (the appliance's own footage is the best choice)."""
    cap = cv2.VideoCapture(source)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or n
    wanted = set(np.linspace(0, max(0, total - 1), num=min(n, total), dtype=int).tolist())
    frames, i = [], 0
    while len(frames) < len(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if i in wanted:
            frames.append(frame)
        i += 1
    cap.release()
    return frames


def cmd_build(args: argparse.Namespace) -> int:
    from app.engine.builder import BuildOptions, EngineBuildError, build_engine

    frames = validation_frames(args.source, args.frames)
    if not frames:
        print(f"error: no frames could be read from {args.source}", file=sys.stderr)
        return 2
    opts = BuildOptions(args.precision, args.imgsz, args.workspace_mb, args.dla_core)
    try:
        engine = build_engine(Path(args.model), Path(args.engine_dir), opts, frames)
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(engine)
    return 0


def add_cli(sub) -> None:
    e = sub.add_parser("engine", help="TensorRT engines (needs the `gpu` extra or JetPack)")
    esub = e.add_subparsers(dest="engine_cmd", required=True)
    b = esub.add_parser("build", help="build, validate and cache a TensorRT engine for this GPU")
    b.add_argument("--model", default=DEFAULT_MODEL_PATH, help="ONNX model")
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="int8 expects a Q/DQ ONNX (explicit quantization)")  # fmt: skip
    b.add_argument("--imgsz", type=int, default=640)
    b.add_argument("--workspace-mb", type=int, default=2048)
    b.add_argument("--dla-core", type=int, default=None, help="Jetson DLA core (GPU fallback on)")
    b.add_argument("--engine-dir", default="engines")
    b.add_argument("--source", default=DEFAULT_SAMPLE_VIDEO, help="video for the validation frames")
    b.add_argument("--frames", type=int, default=100, help="validation frames")
    b.set_defaults(func=cmd_build)
