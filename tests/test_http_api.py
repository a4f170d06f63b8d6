"""HTTP API against a live pipeline: health, stats, metrics, config, auth and hostile input."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.web_harness import Served, web_config

from app.config import redact
from app.web.auth import resolve_token

TOKEN = "test-token-0123456789abcdef"


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post_offer(url: str, payload, content_type: str = "application/json", token: str | None = None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return http(f"{url}/api/webrtc/offer", "POST", body, headers)


@pytest.fixture(scope="module")
def served(tiny_model: Path, small_video: Path):
    with Served(web_config(tiny_model, small_video)) as s:
        yield s


@pytest.fixture(scope="module")
def guarded(tiny_model: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = web_config(tiny_model, small_video, require_token=True, token_file=str(token_file))
    with Served(cfg) as s:
        yield s


def test_health_stats_and_metrics(served: Served) -> None:
    from conftest import wait_until

    assert wait_until(lambda: http(f"{served.url}/health")[0] == 200, timeout=20)
    status, _, body = http(f"{served.url}/health")
    health = json.loads(body)
    assert health["status"] == "ok" and health["cameras_connected"] == {"cam": True}
    status, headers, body = http(f"{served.url}/api/stats")
    stats = json.loads(body)
    assert status == 200 and stats["schema"] == 1 and stats["cameras"]["cam"]["frames_processed"] > 0
    assert stats["webrtc"]["viewers"] == 0 and "inference_ms" in stats["cameras"]["cam"]
    status, headers, body = http(f"{served.url}/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for needle in (
        'vigil_frames_processed_total{camera="cam"}', 'vigil_frames_dropped_total{camera="cam"}',
        'vigil_stage_seconds_bucket{camera="cam",le="0.001",stage="inference"}',
        'vigil_frame_age_seconds_count{camera="cam"}', 'vigil_process_rss_bytes{process="worker"}',
        "vigil_worker_restarts_total", "vigil_webrtc_viewers", "vigil_preview_encode_seconds_count",
    ):  # fmt: skip
        assert needle in text, needle


def test_health_is_503_with_a_reason_when_results_stop(tiny_model: Path, tmp_path: Path) -> None:
    from conftest import make_video, wait_until

    video = make_video(tmp_path / "short.mp4", frames=10)
    cfg = web_config(tiny_model, video, health_max_result_age_s=1.0)
    cfg.cameras[0].loop = False  # the file ends: no more results
    with Served(cfg) as s:
        assert wait_until(lambda: http(f"{s.url}/health")[0] == 503, timeout=20)
        body = json.loads(http(f"{s.url}/health")[2])
        assert body["status"] in ("unhealthy", "starting") and body["reason"]


def test_config_is_redacted(served: Served) -> None:
    status, _, body = http(f"{served.url}/api/config")
    cfg = json.loads(body)
    assert status == 200 and cfg["cameras"][0]["name"] == "cam" and cfg["http"]["port"] == 0
    data = {
        "mqtt": {"password_file": "/etc/vigil/pw", "username": "u"},
        "cameras": [{"source": "rtsp://admin:hunter2@10.0.0.5/stream"}],
        "http": {"token_env": "VIGIL_TOKEN"},
    }
    red = redact(data)
    assert red["mqtt"] == {"password_file": "<redacted>", "username": "u"}
    assert red["cameras"][0]["source"] == "rtsp://***@10.0.0.5/stream"
    assert red["http"]["token_env"] == "<redacted>"


@pytest.mark.parametrize(
    ("payload", "content_type", "status"),
    [
        ({"type": "offer", "sdp": "v=0\r\n"}, "text/plain", 415),
        (b"{not json", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        ([1, 2, 3], "application/json", 400),
        ({"type": "answer", "sdp": "v=0\r\n"}, "application/json", 400),
        ({"type": "offer"}, "application/json", 400),
        ({"type": "offer", "sdp": 42}, "application/json", 400),
        ({"type": "offer", "sdp": "hello"}, "application/json", 400),
        ({"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9\r\n"}, "application/json", 400),
        ({"type": "offer", "sdp": "v=0\r\n", "camera": "nope"}, "application/json", 404),
        ({"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 10000}, "application/json", 413),
    ],
)
def test_bad_offers_get_json_4xx(served: Served, payload, content_type: str, status: int) -> None:
    got, headers, body = post_offer(served.url, payload, content_type)
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] and b"Traceback" not in body


def test_unknown_routes_and_methods_are_json(served: Served) -> None:
    status, _, body = http(f"{served.url}/nope")
    assert status == 404 and json.loads(body)["status"] == 404
    status, headers, body = http(f"{served.url}/api/webrtc/offer")
    assert status == 405 and "POST" in headers["Allow"]


def test_offer_without_video_is_refused(served: Served) -> None:
    import asyncio

    from aiortc import RTCPeerConnection

    async def offer_sdp() -> str:
        pc = RTCPeerConnection()
        pc.createDataChannel("detections")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    status, _, body = post_offer(served.url, {"type": "offer", "sdp": asyncio.run(offer_sdp())})
    assert status == 400 and "video" in json.loads(body)["error"]


_sdp_lines = st.sampled_from([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=video 9 UDP/TLS/RTP/SAVPF 96", "m=application 9",
    "a=rtpmap:96 VP8/90000", "a=recvonly", "a=setup:actpass", "a=ice-ufrag:abcd", "a=ice-pwd:" + "x" * 22,
    "a=fingerprint:sha-256 00:11", "a=mid:0", "c=IN IP4 0.0.0.0", "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
    "a=group:BUNDLE 0", "m=audio 0 RTP/AVP 0", "a=rtcp-mux", "a=sctp-port:5000",
])  # fmt: skip
_sdp = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(_sdp_lines, st.text(max_size=40)), max_size=30).map(lambda ls: "v=0\r\n" + "\r\n".join(ls)),
)


def _offer_json(sdp: str, kind: str, cam: str) -> bytes:
    return json.dumps({"type": kind, "sdp": sdp, "camera": cam}).encode()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)
_body = st.one_of(
    st.binary(max_size=200),
    st.builds(_offer_json, _sdp, st.sampled_from(["offer", "answer", "", "pranswer"]), st.sampled_from(["cam", "x"])),
    _json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_body)
def test_fuzzed_offers_never_500(served: Served, body: bytes) -> None:
    status, _, resp = post_offer(served.url, body)
    assert status < 500 or status == 503, (status, resp)
    assert b"Traceback" not in resp


def test_token_required_when_configured(guarded: Served) -> None:
    url = guarded.url
    status, headers, body = http(f"{url}/api/stats")
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"] and json.loads(body)["error"]
    assert http(f"{url}/api/stats", headers={"Authorization": "Bearer wrong-token-value"})[0] == 401
    assert http(f"{url}/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert http(f"{url}/?token={TOKEN}")[0] == 200, "the page takes the token as a query parameter"
    assert http(f"{url}/")[0] == 401
    assert http(f"{url}/metrics")[0] == 401
    assert post_offer(url, {"type": "offer", "sdp": "v=0\r\n"})[0] == 401, "auth before parsing"
    assert http(f"{url}/health")[0] in (200, 503), "/health stays open by default"
    assert http(f"{url}/static/app.js")[0] == 200, "static assets hold no data"


def test_token_is_generated_once_with_0600(tmp_path: Path) -> None:
    from app.config import HttpConfig

    cfg = HttpConfig(host="0.0.0.0", state_dir=str(tmp_path / "state"))
    first = resolve_token(cfg)
    path = tmp_path / "state" / "http-token"
    assert first.generated and first.token and len(first.token) >= 24
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = resolve_token(cfg)
    assert again.token == first.token and not again.generated
    assert resolve_token(HttpConfig(host="127.0.0.1")).token is None, "loopback needs no token by default"
    os.environ["VIGIL_TEST_TOKEN"] = TOKEN
    try:
        assert resolve_token(HttpConfig(host="0.0.0.0", token_env="VIGIL_TEST_TOKEN")).token == TOKEN
    finally:
        del os.environ["VIGIL_TEST_TOKEN"]


def test_health_can_require_the_token(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    (tmp_path / "t").write_text(TOKEN)
    cfg = web_config(tiny_model, small_video, require_token=True, token_file=str(tmp_path / "t"),
                     health_requires_token=True)  # fmt: skip
    with Served(cfg) as s:
        assert http(f"{s.url}/health")[0] == 401


def test_https_with_configured_certificate(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    import ssl

    from support.broker import make_tls

    tls = make_tls(tmp_path)
    cfg = web_config(tiny_model, small_video, tls_cert_file=str(tls.cert), tls_key_file=str(tls.key))
    with Served(cfg) as s:
        assert s.url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(tls.ca))
        with urllib.request.urlopen(f"{s.url}/api/cameras", context=ctx, timeout=15) as r:
            assert r.status == 200 and json.loads(r.read())["cameras"][0]["name"] == "cam"


def test_bad_http_config_is_named(tmp_path: Path) -> None:
    import pydantic

    from app.config import HttpConfig
    from app.web.auth import TokenError

    with pytest.raises(pydantic.ValidationError, match="tls_cert_file and tls_key_file go together"):
        HttpConfig(tls_cert_file="/x.pem")
    with pytest.raises(TokenError, match=r"http\.token_file"):
        resolve_token(HttpConfig(token_file=str(tmp_path / "missing")))
