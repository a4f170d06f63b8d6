"""`vigil export`: an Ultralytics .pt model to ONNX with the metadata the runtime reads (`app.export`)."""

from __future__ import annotations

import argparse

from app.cli.common import UsageError, positive_int, setup_logging


def cmd_export(args: argparse.Namespace) -> int:
    """Export the model; prints the path of the .onnx written."""
    from app.export import ExportError, export_onnx

    setup_logging(args.log_level or "info")
    try:
        path = export_onnx(
            args.model,
            imgsz=args.imgsz,
            half=args.half,
            dynamic=args.dynamic,
            nms=args.nms,
            output=args.output,
        )
    except ExportError as exc:
        raise UsageError(str(exc)) from exc
    print(path)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the `vigil` subcommands."""
    e = sub.add_parser("export", help="export an Ultralytics .pt model to ONNX (needs the `export` extra)")
    e.add_argument("model")
    e.add_argument("--imgsz", type=positive_int, default=640)
    e.add_argument("--half", action="store_true")
    e.add_argument("--dynamic", action="store_true")
    e.add_argument("--nms", action="store_true", help="embed NMS (end-to-end [1,N,6] output)")
    e.add_argument("--output", default=None, help="destination .onnx (default: next to the model)")
    e.set_defaults(func=cmd_export)
