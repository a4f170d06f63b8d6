"""`vigil export`: Ultralytics .pt -> ONNX with the metadata the runtime reads.

Only this module touches ultralytics/torch, and only when called: the appliance runtime never imports
them (they come with the optional `export` extra).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REQUIRED_METADATA = ("names", "stride", "imgsz", "task")


class ExportError(RuntimeError):
    """The model cannot be exported: missing file, ultralytics not installed, or the export failed."""


def export_onnx(
    model: str | Path,
    *,
    imgsz: int = 640,
    half: bool = False,
    dynamic: bool = False,
    nms: bool = False,
    output: str | Path | None = None,
) -> Path:
    """Export an Ultralytics `.pt` model to ONNX with Vigil's metadata.

    Args:
        model: The `.pt` weights.
        imgsz: Square input size, pixels.
        half: Export FP16 weights.
        dynamic: Dynamic batch and input size.
        nms: Include NMS in the graph.
        output: Where to write the `.onnx`; next to `model` when None.

    Returns:
        The path of the written ONNX file.

    Raises:
        ExportError: `model` does not exist, ultralytics is missing, or the export failed.
    """
    src = Path(model)
    if not src.is_file():
        raise ExportError(f"model {src} does not exist")
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub, no DNS probes: exporting is a local job
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ExportError(
            "exporting needs the `export` extra (ultralytics, onnx, onnxslim): pip install '.[export]'"
        ) from exc
    ultralytics_logs_to_stderr()
    yolo = YOLO(str(src))
    options = {"imgsz": imgsz, "dynamic": dynamic, "nms": nms, "simplify": True, "device": "cpu"}
    if half:
        options["half"] = True  # only when asked: newer Ultralytics warns that the flag is deprecated
    try:
        with contextlib.redirect_stdout(sys.stderr):
            produced = Path(yolo.export(format="onnx", **options))
    except Exception as exc:
        raise ExportError(f"Ultralytics export of {src} failed: {exc}") from exc
    dest = Path(output) if output else produced
    if dest != produced:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(produced), dest)
    ensure_metadata(dest, names=getattr(yolo, "names", None), imgsz=imgsz, end2end=nms)
    log.info("exported %s -> %s", src, dest)
    return dest


def ultralytics_logs_to_stderr() -> None:
    """Our stdout carries results (a path, JSON); Ultralytics' own log lines go to stderr."""
    from ultralytics.utils import LOGGER

    for handler in LOGGER.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


def ensure_metadata(path: Path, *, names: dict | None, imgsz: int, end2end: bool) -> None:
    """Make sure names/stride/imgsz/task are present (older exports miss some), and record end2end."""
    import onnx

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    wanted = {
        "names": str(dict(names)) if names else meta.get("names"),
        "stride": meta.get("stride", "32"),
        "imgsz": meta.get("imgsz", str([imgsz, imgsz])),
        "task": meta.get("task", "detect"),
        "end2end": str(bool(end2end)),
        "exported_by": "vigil",
    }
    changed = False
    for key, value in wanted.items():
        if value is not None and meta.get(key) != value:
            meta[key] = value
            changed = True
    if changed:
        del m.metadata_props[:]
        for k, v in meta.items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(path))
