"""`POST /api/detect` and DeepStack's `POST /v1/vision/detection` against a live pipeline, with real HTTP clients."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support.field_media import video_frames
from support.web_harness import Served, web_config
from test_http_api import TOKEN, http


def multipart(fields: dict[str, str], image: bytes | None, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    boundary = "vigil-test-boundary-7d1f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    if image is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="snap.jpg"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + image
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str, token: str | None = None):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, headers_, raw = http(url, "POST", body, headers)
    return status, headers_, json.loads(raw) if raw else None


def vigil_detect(path: Path, model: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "app", "detect", str(path), "--model", str(model)],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    return json.loads(out.stdout.splitlines()[0])["detections"]


@pytest.fixture(scope="module")
def coco_served(coco_model: Path, sample_video: Path):
    cfg = web_config(coco_model, sample_video)
    with Served(cfg) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        yield s


@pytest.fixture(scope="module")
def street_jpeg(sample_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "street.jpg"
    cv2.imwrite(str(path), video_frames(sample_video, [40])[0])
    return path


@pytest.fixture(scope="module")
def rotated_jpeg(street_jpeg: Path) -> Path:
    """The same picture stored sideways with EXIF Orientation 6 (what a phone writes)."""
    path = street_jpeg.with_name("rotated.jpg")
    img = Image.open(street_jpeg).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("which", ["street_jpeg", "rotated_jpeg"])
def test_boxes_equal_vigil_detect_on_the_same_file(coco_served: Served, coco_model: Path, which: str, request) -> None:
    path: Path = request.getfixturevalue(which)
    want = vigil_detect(path, coco_model)
    assert want, "the picture must show objects"
    status, _, body = post(f"{coco_served.url}/api/detect", path.read_bytes(), "image/jpeg")
    assert status == 200, body
    assert body["detections"] == want
    h, w = cv2.imread(str(path)).shape[:2]  # imread applies the EXIF orientation too
    assert (body["width"], body["height"]) == (w, h)
    assert body["model"]["name"] == coco_model.stem and body["model"]["backend"] == "onnxruntime"
    assert set(body["latency_ms"]) == {"queue", "preprocess", "inference", "postprocess", "total"}
    # The same file as a multipart upload gives the same answer.
    data, ctype = multipart({}, path.read_bytes())
    status, _, body2 = post(f"{coco_served.url}/api/detect", data, ctype)
    assert status == 200 and body2["detections"] == want


def test_query_options_narrow_the_answer(coco_served: Served, street_jpeg: Path) -> None:
    url = f"{coco_served.url}/api/detect"
    _, _, everything = post(url, street_jpeg.read_bytes(), "image/jpeg")
    status, _, people = post(url + "?classes=person&conf=0.4&max_det=2", street_jpeg.read_bytes(), "image/jpeg")
    assert status == 200
    assert people["detections"] == [d for d in everything["detections"] if d["label"] == "person"
                                     and d["confidence"] > 0.4][:2]  # fmt: skip
    status, _, by_id = post(url + "?classes=0&conf=0.4&max_det=2", street_jpeg.read_bytes(), "image/jpeg")
    assert by_id["detections"] == people["detections"]


@pytest.mark.parametrize(
    "query",
    ["conf=2", "conf=abc", "iou=-1", "max_det=0", "max_det=x", "classes=unicorn", "classes=,", "timeout_ms=0",
     "timeout_ms=99999999", "conf=nan", "classes=%C2%B2", "max_det=%C2%B2"],
)  # fmt: skip
def test_bad_options_are_400_and_never_reach_the_worker(coco_served: Served, street_jpeg: Path, query: str) -> None:
    before = coco_served.pipe.requests.stats()
    status, _, body = post(f"{coco_served.url}/api/detect?{query}", street_jpeg.read_bytes(), "image/jpeg")
    assert status == 400 and body["status"] == 400 and body["error"], body
    after = coco_served.pipe.requests.stats()
    assert after["served"] == before["served"] and after["rejected_full"] == before["rejected_full"]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"", "image/jpeg", 400),
        (b"not an image at all", "image/jpeg", 400),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", 400),
        (b"hello", "text/plain", 415),
        (b"{}", "application/json", 415),
    ],
)
def test_bad_bodies_are_4xx_json(coco_served: Served, body: bytes, ctype: str, status: int) -> None:
    got, _, answer = post(f"{coco_served.url}/api/detect", body, ctype)
    assert got == status and answer["error"], answer


def test_truncated_image_is_400(coco_served: Served, street_jpeg: Path) -> None:
    data = street_jpeg.read_bytes()
    status, _, body = post(f"{coco_served.url}/api/detect", data[: len(data) // 2], "image/jpeg")
    assert status == 400, body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=2048),
    ctype=st.sampled_from(["image/jpeg", "image/png", "image/webp", "image/bmp", "multipart/form-data",
                           "multipart/form-data; boundary=x", "application/octet-stream", "", "image/*"]),
    query=st.dictionaries(st.sampled_from(["conf", "iou", "classes", "max_det", "timeout_ms"]),
                          st.text(max_size=12), max_size=3),
    headers=st.dictionaries(st.sampled_from(["Content-Encoding", "Authorization", "Accept", "X-Forwarded-For"]),
                            st.sampled_from(["gzip", "deflate", "br", "identity", "x-bogus", "Bearer x", "", "*/*"]),
                            max_size=2),
)  # fmt: skip
def test_fuzzed_requests_never_5xx(coco_served: Served, body: bytes, ctype: str, query: dict, headers: dict) -> None:
    qs = urllib.parse.urlencode(query)
    for path in ("/api/detect", "/v1/vision/detection"):
        status, _, raw = http(f"{coco_served.url}{path}?{qs}", "POST", body, {"Content-Type": ctype, **headers})
        assert 400 <= status < 500, (status, raw[:200])


def test_deepstack_endpoint_speaks_as_deepstack(coco_served: Served, street_jpeg: Path) -> None:
    data, ctype = multipart({"min_confidence": "0.5"}, street_jpeg.read_bytes())
    status, _, body = post(f"{coco_served.url}/v1/vision/detection", data, ctype)
    assert status == 200 and body["success"] is True
    assert isinstance(body["duration"], (int, float))
    # What a DeepStack client does with the answer (deepstack-python: label, confidence and the four corners).
    for p in body["predictions"]:
        assert set(p) >= {"label", "confidence", "x_min", "y_min", "x_max", "y_max"}
        assert all(isinstance(p[k], int) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0.5 <= p["confidence"] <= 1
    want = vigil_detect(street_jpeg, coco_served.cfg.model.path and Path(coco_served.cfg.model.path))
    assert sorted(p["label"] for p in body["predictions"]) == sorted(d["label"] for d in want if d["confidence"] > 0.5)
    # Bad input: DeepStack's error shape with a 4xx.
    data, ctype = multipart({"min_confidence": "0.5"}, None)
    status, _, body = post(f"{coco_served.url}/v1/vision/detection", data, ctype)
    assert 400 <= status < 500 and body["success"] is False and body["error"]


def test_stats_report_the_requests(coco_served: Served, street_jpeg: Path) -> None:
    post(f"{coco_served.url}/api/detect", street_jpeg.read_bytes(), "image/jpeg")
    status, _, raw = http(f"{coco_served.url}/api/stats")
    assert status == 200
    api = json.loads(raw)["api"]
    assert api["served"] >= 1 and api["latency_ms"]["p50"] is not None
    assert set(api["detector_share"]) == {"requests", "cameras"}


def test_token_is_required_when_configured(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    png = cv2.imencode(".png", np.full((60, 80, 3), 90, np.uint8))[1].tobytes()
    with Served(web_config(tiny_model, small_video, require_token=True, token_file=str(token_file))) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        for path in ("/api/detect", "/v1/vision/detection"):
            data, ctype = multipart({}, png, "image/png")
            status, headers, _ = post(f"{s.url}{path}", data, ctype)
            assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
            status, _, body = post(f"{s.url}{path}", data, ctype, token=TOKEN)
            assert status == 200, body
        # DeepStack clients send their key as the form field api_key (deepstack-python does): accepted there only.
        data, ctype = multipart({"api_key": TOKEN, "min_confidence": "0.1"}, png, "image/png")
        status, _, body = post(f"{s.url}/v1/vision/detection", data, ctype)
        assert status == 200 and body["success"] is True, body
        status, _, body = post(f"{s.url}/api/detect", data, ctype)
        assert status == 401
        data, ctype = multipart({"api_key": "wrong-" + TOKEN}, png, "image/png")
        status, headers, body = post(f"{s.url}/v1/vision/detection", data, ctype)
        assert status == 401 and body["success"] is False and body["error"], body
        assert "Bearer" in headers["WWW-Authenticate"]
        assert s.pipe.requests.stats()["served"] == 3, "refused requests never reached the worker"


def test_full_queue_is_503_and_deadline_is_504(slow_model: Path, small_video: Path) -> None:
    cfg = web_config(slow_model, small_video)
    cfg.api.queue_size = 1
    png = cv2.imencode(".png", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
    with Served(cfg) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        results: list[tuple] = []

        def client() -> None:
            results.append(post(f"{s.url}/api/detect?timeout_ms=30000", png, "image/png"))

        threads = [threading.Thread(target=client) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(r[0] for r in results)
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        assert all(int(r[1]["Retry-After"]) >= 1 for r in results if r[0] == 503)
        status, _, body = post(f"{s.url}/api/detect?timeout_ms=1", png, "image/png")
        assert status == 504 and "deadline" in body["error"]


def test_a_client_that_disconnects_cancels_its_request(slow_model: Path, small_video: Path) -> None:
    png = cv2.imencode(".png", np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
    cfg = web_config(slow_model, small_video)
    cfg.api.queue_size = 20  # room for all five: the one cancelled must be queued, not refused
    with Served(cfg) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        host, port = urllib.parse.urlsplit(s.url).hostname, urllib.parse.urlsplit(s.url).port
        # Keep the worker busy with requests, then send one more and hang up before its answer.
        busy = [threading.Thread(target=post, args=(f"{s.url}/api/detect", png, "image/png")) for _ in range(4)]
        for t in busy:
            t.start()
        with socket.create_connection((host, port)) as sock:
            sock.sendall(
                f"POST /api/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(png)}\r\n\r\n"
                .encode() + png
            )  # fmt: skip
            assert wait_until(
                lambda: s.pipe.requests.stats()["queue_depth"] + s.pipe.requests.stats()["in_flight"] >= 3
            )
        assert wait_until(lambda: s.pipe.requests.stats()["cancelled"] >= 1, 60), s.pipe.requests.stats()
        for t in busy:
            t.join(120)


def test_an_image_over_the_pixel_limit_is_413_before_decoding(tiny_model: Path, small_video: Path) -> None:
    cfg = web_config(tiny_model, small_video)
    cfg.api.max_pixels = 100 * 100
    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, "PNG")
    with Served(cfg) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        status, _, body = post(f"{s.url}/api/detect", buf.getvalue(), "image/png")
        assert status == 413 and "pixels" in body["error"], body


def raw_request(url: str, data: bytes, wait_s: float = 30.0) -> bytes:
    """Send raw bytes to the server and return what it answers (until it closes or `wait_s` passes)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"Content-Length" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except TimeoutError:
            pass
        return out


def test_hostile_http_gets_4xx_without_an_error_log(coco_served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = coco_served.url
    # A chunked body with a bad chunk size, and a deflate body that does not inflate: aiohttp's own 400s.
    bad_chunk = b"POST /api/detect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    assert raw_request(url, bad_chunk).startswith(b"HTTP/1.") and b" 400 " in raw_request(url, bad_chunk)[:20]
    junk = b"garbage-not-deflate" * 10
    deflate = (b"POST /api/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Encoding: deflate\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(junk)) + junk  # fmt: skip
    assert b" 400 " in raw_request(url, deflate)[:20]
    # Undecodable bytes in the Authorization header: compared, not crashed on (no token needed here: 200).
    status_line = raw_request(url, b"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                                   b"Connection: close\r\n\r\n")[:20]  # fmt: skip
    assert b" 200 " in status_line
    # More parts than an image and its fields need.
    data, ctype = multipart({f"f{i}": "x" for i in range(40)}, None)
    status, _, body = post(f"{url}/api/detect", data, ctype)
    assert status == 400 and "parts" in body["error"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_a_non_utf8_token_is_401_not_500(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with Served(web_config(tiny_model, small_video, require_token=True, token_file=str(token_file))) as s:
        for raw in (b"Bearer \xff\xfe", b"Bearer caf\xe9"):
            answer = raw_request(s.url, b"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: " + raw +
                                 b"\r\nConnection: close\r\n\r\n")  # fmt: skip
            assert b" 401 " in answer[:20], answer[:200]


def test_a_slow_upload_gets_504_at_its_deadline(tiny_model: Path, small_video: Path) -> None:
    with Served(web_config(tiny_model, small_video)) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 120)
        # 1000 bytes announced, 10 sent, then nothing: the upload must not outlive the request's deadline.
        head = (b"POST /api/detect?timeout_ms=300 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n\x89PNG\r\n\x1a\n\x00\x00")  # fmt: skip
        answer = raw_request(s.url, head)
        assert b" 504 " in answer[:20] and b"deadline" in answer, answer[:300]
        assert s.web.detect_api.stats()["upload_timeouts"] == 1
