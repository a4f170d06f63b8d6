"""The DeepStack answer shape, and a client that reads it the way DeepStack's public clients do."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from app.web.deepstack import (
    DEFAULT_MIN_CONFIDENCE,
    MinConfidenceError,
    deepstack_error,
    deepstack_prediction,
    deepstack_success,
    parse_min_confidence,
)
from app.web.image_upload import UploadError, read_image_upload

DETECTIONS = [
    {"label": "person", "confidence": 0.9123, "box": [10.7, 20.2, 110.9, 220.5]},
    {"label": "dog", "confidence": 0.45, "box": [0.0, 0.0, 639.0, 479.9]},
]


def test_success_has_exactly_deepstacks_fields_and_types() -> None:
    answer = json.loads(json.dumps(deepstack_success(DETECTIONS, 12.3456)))
    assert set(answer) == {"success", "predictions", "duration"}
    assert answer["success"] is True
    assert answer["duration"] == pytest.approx(12.346)
    assert isinstance(answer["duration"], float)
    first, second = answer["predictions"]
    assert set(first) == {"label", "confidence", "x_min", "y_min", "x_max", "y_max"}
    assert first == {"label": "person", "confidence": 0.9123, "x_min": 10, "y_min": 20, "x_max": 110, "y_max": 220}
    assert second == {"label": "dog", "confidence": 0.45, "x_min": 0, "y_min": 0, "x_max": 639, "y_max": 479}
    for p in answer["predictions"]:
        # Typed clients (DeepStack's C# sample: int corners, float confidence) need JSON integers.
        assert all(type(p[k]) is int for k in ("x_min", "y_min", "x_max", "y_max"))
        assert type(p["confidence"]) is float and 0.0 <= p["confidence"] <= 1.0


def test_success_with_no_detections() -> None:
    assert deepstack_success([], 0) == {"success": True, "predictions": [], "duration": 0.0}


def test_prediction_from_numpy_values() -> None:
    """Detections straight from the decoder may hold numpy scalars; the answer must still be JSON."""
    d = {"label": "car", "confidence": np.float32(0.5), "box": np.array([1.5, 2.5, 3.5, 4.5], np.float32)}
    p = deepstack_prediction(d)
    assert json.loads(json.dumps(p)) == {"label": "car", "confidence": 0.5, "x_min": 1, "y_min": 2, "x_max": 3,
                                         "y_max": 4}  # fmt: skip


def test_error_shape() -> None:
    answer = json.loads(json.dumps(deepstack_error("the body is not a JPEG, PNG, WebP or BMP image")))
    assert answer == {"success": False, "error": "the body is not a JPEG, PNG, WebP or BMP image", "duration": 0.0}


@pytest.mark.parametrize(("value", "expected"), [
    (None, DEFAULT_MIN_CONFIDENCE), ("", DEFAULT_MIN_CONFIDENCE), ("  ", DEFAULT_MIN_CONFIDENCE),
    ("0.3", 0.3), (" 0.55 ", 0.55), ("0", 0.0), ("1", 1.0), ("1.0", 1.0), (0.45, 0.45), (1, 1.0), ("4e-1", 0.4),
])  # fmt: skip
def test_min_confidence_parsed(value: Any, expected: float) -> None:
    assert parse_min_confidence(value) == expected


def test_min_confidence_default_is_deepstacks() -> None:
    assert DEFAULT_MIN_CONFIDENCE == 0.4


@pytest.mark.parametrize("value", ["abc", "0.5.1", "nan", "inf", "-inf", "-0.1", "1.01", "45", "0,5", True, -1, 2.0])
def test_min_confidence_garbage_is_refused(value: Any) -> None:
    with pytest.raises(MinConfidenceError):
        parse_min_confidence(value)


@given(st.floats(0.0, 1.0))
def test_min_confidence_in_range_round_trips(x: float) -> None:
    assert parse_min_confidence(repr(x)) == x


@given(st.text(max_size=30))
def test_min_confidence_any_text_parses_in_range_or_is_refused(text: str) -> None:
    try:
        conf = parse_min_confidence(text)
    except MinConfidenceError:
        return
    assert math.isfinite(conf) and 0.0 <= conf <= 1.0


# ---- a client as DeepStack's public clients are written -------------------------------------------


class ClientError(Exception):
    """What deepstack-python raises: any status other than 200."""


def client_predictions(status: int, body: dict) -> list[dict]:
    """The client library's reading (robmarkcole/deepstack-python ``process_image`` + ``detect``).

    Any status but 200 is an error; on 200 the predictions are taken as they are, ``success`` unread.
    """
    if status != 200:
        raise ClientError(f"Error from Deepstack request, status code: {status}")
    return body["predictions"]


def home_assistant_objects(predictions: list[dict], width: int, height: int) -> list[dict]:
    """Home Assistant's deepstack_object reading: boxes relative to the image size, confidence in percent."""
    objects = []
    for p in predictions:
        box = {
            "x_min": round(p["x_min"] / width, 3), "y_min": round(p["y_min"] / height, 3),
            "x_max": round(p["x_max"] / width, 3), "y_max": round(p["y_max"] / height, 3),
            "width": round((p["x_max"] - p["x_min"]) / width, 3),
            "height": round((p["y_max"] - p["y_min"]) / height, 3),
        }  # fmt: skip
        objects.append({"name": p["label"], "confidence": round(p["confidence"] * 100, 3), "bounding_box": box})
    return objects


def test_answer_read_as_the_client_library_and_home_assistant_do() -> None:
    body = json.loads(json.dumps(deepstack_success(DETECTIONS, 5.0)))
    objects = home_assistant_objects(client_predictions(200, body), 640, 480)
    assert [o["name"] for o in objects] == ["person", "dog"]
    assert objects[0]["confidence"] == pytest.approx(91.23)
    assert objects[1]["bounding_box"] == {"x_min": 0.0, "y_min": 0.0, "x_max": 0.998, "y_max": 0.998,
                                          "width": 0.998, "height": 0.998}  # fmt: skip
    with pytest.raises(ClientError, match="400"):
        client_predictions(400, deepstack_error("bad image"))


async def _deepstack_handler(request: web.Request) -> web.Response:
    """The pieces as the DeepStack route combines them, with a stand-in detector: one box, the whole image."""
    try:
        up = await read_image_upload(request, max_body_bytes=1 << 20, max_pixels=10_000_000, allow_raw=False)
        conf = parse_min_confidence(up.form.get("min_confidence"))
    except UploadError as exc:
        return web.json_response(deepstack_error(exc.reason), status=exc.status)
    except MinConfidenceError as exc:
        return web.json_response(deepstack_error(str(exc)), status=400)
    found = [{"label": "person", "confidence": 0.8, "box": [0.0, 0.0, up.width - 0.5, up.height - 0.5]}]
    return web.json_response(deepstack_success([d for d in found if d["confidence"] >= conf], 1.5))


@pytest.fixture(scope="module")
def deepstack_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/vision/detection", _deepstack_handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder["runner"], holder["port"] = runner, runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(60)
    yield f"http://127.0.0.1:{holder['port']}/v1/vision/detection"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    t.join(60)


def deepstack_post(url: str, image: bytes, **fields: Any) -> tuple[int, dict]:
    """Post as deepstack-python does: multipart field ``image`` (no part type), plus form fields."""

    async def go() -> tuple[int, dict]:
        form = aiohttp.FormData()
        for k, v in fields.items():
            form.add_field(k, str(v))
        form.add_field("image", image, filename="image", content_type="application/octet-stream")
        async with aiohttp.ClientSession() as s, s.post(url, data=form) as r:
            return r.status, await r.json()

    return asyncio.run(go())


def test_client_round_trip_over_http(deepstack_url: str) -> None:
    ok, buf = cv2.imencode(".jpg", np.full((480, 640, 3), 127, np.uint8))
    assert ok
    status, body = deepstack_post(deepstack_url, buf.tobytes(), api_key="", min_confidence=0.45)
    objects = home_assistant_objects(client_predictions(status, body), 640, 480)
    assert body["success"] is True and isinstance(body["duration"], float)
    assert objects == [{"name": "person", "confidence": 80.0, "bounding_box": {
        "x_min": 0.0, "y_min": 0.0, "x_max": 0.998, "y_max": 0.998, "width": 0.998, "height": 0.998}}]  # fmt: skip
    # min_confidence above the detection's filters it out, as DeepStack does.
    status, body = deepstack_post(deepstack_url, buf.tobytes(), min_confidence="0.9")
    assert client_predictions(status, body) == []


def test_client_sees_errors_as_4xx_with_success_false(deepstack_url: str) -> None:
    status, body = deepstack_post(deepstack_url, b"not an image")
    assert status == 400 and body["success"] is False and "error" in body
    with pytest.raises(ClientError):
        client_predictions(status, body)
    _, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    status, body = deepstack_post(deepstack_url, buf.tobytes(), min_confidence="high")
    assert status == 400 and body["success"] is False and "min_confidence" in body["error"]
