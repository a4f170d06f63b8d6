"""A multi-camera config with zones and masks, for the preview grid's tests (HTTP and Chromium)."""

from __future__ import annotations

from pathlib import Path

from app.config import VigilConfig

# Two zones in opposite corners (the page fills them lightly; a test reads the canvas there) and masks.
ZONES = [
    {"name": "left_top", "polygon": [[0.0, 0.0], [0.3, 0.0], [0.3, 0.3], [0.0, 0.3]], "labels": ["person"]},
    {"name": "right_bottom", "polygon": [[0.7, 0.7], [1.0, 0.7], [1.0, 1.0], [0.7, 1.0]]},
]
OBJECT_MASK = [[[0.0, 0.8], [0.2, 0.8], [0.2, 1.0], [0.0, 1.0]]]
MOTION_MASK = [[[0.8, 0.0], [1.0, 0.0], [1.0, 0.2], [0.8, 0.2]]]


def grid_config(model: Path, video: Path, cameras: int = 2, extra_sources: dict | None = None, **http) -> VigilConfig:
    """`cameras` cameras `cam0`, `cam1`, ... of `video` (looped, 10 fps), each with ZONES and both masks.

    Args:
        model: ONNX model path.
        video: The clip every camera plays.
        cameras: How many cameras.
        extra_sources: More cameras, name -> source, without zones (e.g. one that never delivers a frame).
        **http: `http` keys (port 0 and preview_fps 20 unless given).

    Returns:
        The validated config.
    """
    cams = [
        {"name": f"cam{i}", "source": str(video), "loop": True, "realtime": True, "fps": 10, "zones": ZONES,
         "object_mask": OBJECT_MASK, "motion": {"mask": MOTION_MASK}, "detect": {"fps": 5, "idle_interval_s": 2}}
        for i in range(cameras)
    ]  # fmt: skip
    cams += [{"name": name, "source": source} for name, source in (extra_sources or {}).items()]
    return VigilConfig.model_validate(
        {
            "cameras": cams,
            "model": {"path": str(model), "threads": 1},
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"port": 0, "preview_fps": 20, **http},
        }
    )
