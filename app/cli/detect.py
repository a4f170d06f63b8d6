"""`vigil detect`: every frame of an image, folder or video through the model; JSON lines on stdout."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from app.cli.common import UsageError, positive_int, setup_logging
from app.config import DEFAULT_MODEL_PATH, format_validation_error

log = logging.getLogger("vigil")


def cmd_detect(args: argparse.Namespace) -> int:
    """One JSON object per frame (`frame`, `file`, `pts`, `detections`, `latency_ms`) on stdout."""
    from app.backends import BackendError
    from app.capture.sources import SourceError, open_source
    from app.config import ModelConfig
    from app.inference.detector import Detector
    from app.inference.model_info import ModelShapeError
    from app.pipeline.offline import detect_frames

    setup_logging(args.log_level or "warning")
    try:
        mcfg = ModelConfig(
            path=args.model,
            conf=args.conf,
            iou=args.iou,
            imgsz=args.imgsz,
            backend=args.backend,
            threads=args.threads,
            max_det=args.max_det,
            classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        )
    except ValidationError as exc:
        raise UsageError(f"invalid option: {format_validation_error(exc)}") from exc
    try:
        detector = Detector.from_config(mcfg)
    except (BackendError, ModelShapeError) as exc:
        raise UsageError(str(exc)) from exc
    source = open_source(args.source)
    try:
        source.open()
    except SourceError as exc:
        raise UsageError(str(exc)) from exc
    out = sys.stdout
    try:
        for res in detect_frames(detector, source, args.max_frames):
            record = {
                "frame": res.frame.index,
                **({"file": res.frame.file} if res.frame.file is not None else {}),
                "pts": round(res.frame.pts, 3),
                "detections": res.detections.to_list(detector.names),
                "latency_ms": res.timings.as_dict(),
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            out.flush()
    except SourceError as exc:
        raise UsageError(str(exc)) from exc
    except BrokenPipeError:
        return 0  # `vigil detect ... | head` is fine
    finally:
        source.close()
        detector.close()
    if source.corrupt:
        log.warning("%d unreadable frame(s) skipped in %s", source.corrupt, source.description)
    if source.shortfall:
        log.warning("%s", source.shortfall)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `detect` to the `vigil` subcommands."""
    d = sub.add_parser("detect", help="detect on every frame of an image, folder or video; JSON lines on stdout")
    d.add_argument("source")
    d.add_argument("--model", default=DEFAULT_MODEL_PATH)
    d.add_argument("--conf", type=float, default=0.25)
    d.add_argument("--iou", type=float, default=0.7)
    d.add_argument(
        "--imgsz", type=positive_int, default=None, help="input size of a dynamic model (rounded up to its stride)"
    )
    d.add_argument("--max-det", type=positive_int, default=300)
    d.add_argument("--max-frames", type=positive_int, default=None)
    d.add_argument("--classes", default=None, help="keep only these classes: labels or ids, comma-separated")
    d.add_argument("--backend", default="auto", choices=["auto", "onnxruntime"])
    d.add_argument("--threads", type=int, default=0, help="backend threads (0 = all cores)")
    d.set_defaults(func=cmd_detect)
