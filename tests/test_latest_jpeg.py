"""`GET /api/cameras/{name}/latest.jpg` (the grid's tiles) and the camera geometry of `GET /api/cameras`,
against a live pipeline with a real HTTP client."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.grid_config import MOTION_MASK, OBJECT_MASK, ZONES, grid_config
from support.web_harness import Served
from test_http_api import http

from app.web.latest_api import MAX_WIDTH, MIN_WIDTH, output_size

TOKEN = "grid-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Nothing listens on port 9 (discard) on loopback: this camera reconnects forever and never has a frame.
DEAD_SOURCE = "rtsp://127.0.0.1:9/none"


@pytest.fixture(scope="module")
def served(tiny_model: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN)
    cfg = grid_config(tiny_model, small_video, cameras=2, extra_sources={"dead": DEAD_SOURCE},
                      require_token=True, token_file=str(token_file), grid_fps=2)  # fmt: skip
    with Served(cfg) as s:
        yield s


def latest(served: Served, camera: str, query: str = "", headers: dict | None = None):
    return http(f"{served.url}/api/cameras/{camera}/latest.jpg{query}", headers=AUTH if headers is None else headers)


def wait_for_frame(served: Served, camera: str) -> None:
    from conftest import wait_until

    assert wait_until(lambda: latest(served, camera)[0] == 200, timeout=60, period=0.2), latest(served, camera)


def decode(body: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "a decodable JPEG"
    return image


def test_latest_jpeg_is_the_newest_frame_scaled_to_the_width_asked(served: Served) -> None:
    wait_for_frame(served, "cam0")
    status, headers, body = latest(served, "cam0")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "no-store"
    assert int(headers["X-Frame-Seq"]) > 0 and float(headers["X-Captured-At"]) > 0
    assert decode(body).shape == (120, 160, 3), "no width: the frame's own size"
    for query, shape in (("?width=80", (60, 80, 3)), ("?width=10", (48, 64, 3)), ("?width=99999", (120, 160, 3))):
        status, headers, body = latest(served, "cam0", query)
        assert status == 200, (query, body)
        assert decode(body).shape == shape, f"{query}: clamped to {MIN_WIDTH}..{MAX_WIDTH}, never wider than the frame"
    wait_for_frame(served, "cam1")
    assert decode(latest(served, "cam1", "?width=64")[2]).shape == (48, 64, 3)


def test_latest_jpeg_errors_are_json_4xx_or_503(served: Served) -> None:
    status, _, body = latest(served, "nope")
    assert status == 404 and "unknown camera 'nope'" in json.loads(body)["error"]
    for bad in ("abc", "", "1.5", "%00"):
        status, _, body = latest(served, "cam0", f"?width={bad}")
        assert status == 400 and "width must be an integer" in json.loads(body)["error"], (bad, body)
    status, headers, body = latest(served, "cam0", headers={})
    assert status == 401 and "token" in json.loads(body)["error"] and "WWW-Authenticate" in headers
    status, _, _ = latest(served, "cam0", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, headers, body = latest(served, "dead")
    assert status == 503 and headers["Retry-After"] == "1" and "no frame yet" in json.loads(body)["error"]
    assert http(f"{served.url}/api/cameras/cam0/latest.jpg?token={TOKEN}")[0] == 200, "?token= works too (<img>)"


def test_cameras_list_the_geometry_the_page_draws_and_no_source(served: Served) -> None:
    status, _, body = http(f"{served.url}/api/cameras", headers=AUTH)
    doc = json.loads(body)
    assert status == 200 and doc["grid_fps"] == 2 and [c["name"] for c in doc["cameras"]] == ["cam0", "cam1", "dead"]
    cam0 = doc["cameras"][0]
    assert cam0["zones"] == [{"name": z["name"], "polygon": z["polygon"], "labels": z.get("labels")} for z in ZONES]
    assert cam0["object_mask"] == OBJECT_MASK and cam0["motion_mask"] == MOTION_MASK and cam0["motion_enabled"]
    assert cam0["detect"] == {"fps": 5.0, "idle_interval_s": 2.0, "regions": True}
    assert doc["cameras"][2]["zones"] == [] and doc["cameras"][2]["object_mask"] == []
    assert (
        "source" not in cam0
        and "rtsp://" not in body.decode()
        and str(served.cfg.cameras[0].source) not in body.decode()
    )


def test_output_size_keeps_the_aspect_and_never_upscales() -> None:
    assert output_size(1920, 1080, 640) == (640, 360)
    assert output_size(160, 120, 640) == (160, 120)
    assert output_size(1920, 1080, None) == (1920, 1080)
    assert output_size(3840, 2160, None) == (1920, 1080)
