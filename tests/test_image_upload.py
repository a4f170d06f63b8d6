"""read_image_upload behind a real aiohttp server on loopback, posted to by a real aiohttp client."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.capture.sources import decode_image, open_source
from app.web.image_upload import UploadError, read_image_upload, webp_canvas_size

APP_MAX_BODY = 64 * 1024  # the app-wide client_max_size (http.max_body_bytes default)
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 50_000_000


async def _handler(request: web.Request) -> web.Response:
    q = request.query
    try:
        up = await read_image_upload(
            request,
            max_body_bytes=int(q.get("max_body", MAX_BODY)),
            max_pixels=int(q.get("max_pixels", MAX_PIXELS)),
            allow_raw=q.get("raw", "1") == "1",
        )
    except UploadError as exc:
        return web.json_response({"error": exc.reason, "status": exc.status}, status=exc.status)
    return web.json_response({
        "width": up.width, "height": up.height, "shape": list(up.image.shape), "dtype": str(up.image.dtype),
        "content_type": up.content_type, "nbytes": up.nbytes, "form": up.form,
        "md5": hashlib.md5(up.image.tobytes()).hexdigest(),
    })  # fmt: skip


@dataclass
class Server:
    url: str
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The handler on a free loopback port, in an app whose client_max_size is the small app-wide one."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application(client_max_size=APP_MAX_BODY)
        app.router.add_post("/upload", _handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(60)
    yield Server(f"http://127.0.0.1:{holder['port']}/upload", loop)
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    t.join(60)


def post(url: str, *, data: Any = None, headers: dict[str, str] | None = None, **query: Any) -> tuple[int, dict]:
    """POST and return (status, JSON body)."""

    async def go() -> tuple[int, dict]:
        params = {k: str(v) for k, v in query.items()}
        async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers, params=params) as r:
            text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:  # aiohttp's own protocol-level 400 (an undecodable Content-Encoding) is text
            return r.status, {"text": text}

    return asyncio.run(go())


def form(image: bytes | None, content_type: str | None = "image/jpeg", **fields: str) -> aiohttp.FormData:
    f = aiohttp.FormData()
    for k, v in fields.items():
        f.add_field(k, v)
    if image is not None:
        f.add_field("image", image, filename="snap.jpg", content_type=content_type)
    return f


def picture(w: int = 96, h: int = 64) -> np.ndarray:
    """A BGR test picture with structure (so every format round-trips to distinct pixels)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 2
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 3
    cv2.rectangle(img, (10, 10), (40, 30), (0, 0, 255), -1)
    return img


def encoded(ext: str, img: np.ndarray | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, picture() if img is None else img)
    assert ok
    return buf.tobytes()


def md5_of(data: bytes) -> str:
    img = decode_image(data)
    assert img is not None
    return hashlib.md5(img.tobytes()).hexdigest()


def png_claiming(width: int, height: int) -> bytes:
    """A whole PNG (IHDR, one small IDAT, IEND) whose header claims ``width`` x ``height``.

    The IDAT holds one compressed row of zeros: the shape of a decompression bomb, whose rows of zeros
    compress to almost nothing.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---- accepted images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "ctype"),
    [(".jpg", "image/jpeg"), (".png", "image/png"), (".webp", "image/webp"), (".bmp", "image/bmp"),
     (".bmp", "image/x-ms-bmp")],
)  # fmt: skip
def test_raw_body_of_each_type_decodes_like_vigil_detect(server: Server, ext: str, ctype: str) -> None:
    data = encoded(ext)
    status, body = post(server.url, data=data, headers={"Content-Type": ctype})
    assert status == 200, body
    assert (body["width"], body["height"], body["shape"], body["dtype"]) == (96, 64, [64, 96, 3], "uint8")
    assert body["content_type"] == ctype and body["nbytes"] == len(data) and body["form"] == {}
    assert body["md5"] == md5_of(data)  # the same pixels as decode_image, the decoder `vigil detect` uses


def test_body_over_the_app_wide_client_max_size_is_read(server: Server) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (400, 400, 3), np.uint8)
    data = encoded(".png", noise)
    assert len(data) > 4 * APP_MAX_BODY
    status, body = post(server.url, data=data, headers={"Content-Type": "image/png"})
    assert status == 200, body
    status, body = post(server.url, data=form(data, "image/png"))
    assert status == 200, body
    assert body["md5"] == md5_of(data)


def test_exif_rotated_jpeg_is_rotated(server: Server) -> None:
    im = Image.fromarray(cv2.cvtColor(picture(96, 64), cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    data = buf.getvalue()
    status, body = post(server.url, data=data, headers={"Content-Type": "image/jpeg"})
    assert status == 200, body
    assert (body["width"], body["height"], body["shape"]) == (64, 96, [96, 64, 3])
    assert body["md5"] == md5_of(data)


def test_multipart_image_with_form_fields(server: Server) -> None:
    data = encoded(".jpg")
    status, body = post(server.url, data=form(data, min_confidence="0.55", api_key=""))
    assert status == 200, body
    assert body["form"] == {"min_confidence": "0.55", "api_key": ""}
    assert body["content_type"] == "image/jpeg" and body["md5"] == md5_of(data)


def test_multipart_part_without_a_specific_type_is_recognised_by_its_bytes(server: Server) -> None:
    """DeepStack clients (python requests with files={"image": bytes}) send no type or a generic one."""
    data = encoded(".png")
    status, body = post(server.url, data=form(data, "application/octet-stream"))
    assert status == 200, body
    assert body["md5"] == md5_of(data)


def test_multipart_only_route_refuses_a_raw_body(server: Server) -> None:
    status, body = post(server.url, data=encoded(".jpg"), headers={"Content-Type": "image/jpeg"}, raw=0)
    assert status == 415 and "multipart" in body["error"]
    assert post(server.url, data=form(encoded(".jpg")), raw=0)[0] == 200


# ---- refused ---------------------------------------------------------------------------------------


def test_no_body_or_empty_body_is_400(server: Server) -> None:
    status, body = post(server.url, headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "no body" in body["error"]
    status, body = post(server.url, data=b"", headers={"Content-Type": "image/png"})
    assert status == 400
    status, body = post(server.url, data=form(b""))
    assert status == 400 and "empty" in body["error"]


@pytest.mark.parametrize(
    "ctype", ["image/gif", "image/tiff", "text/plain", "application/json", "application/octet-stream"]
)
def test_unsupported_content_type_is_415(server: Server, ctype: str) -> None:
    status, body = post(server.url, data=encoded(".jpg"), headers={"Content-Type": ctype})
    assert status == 415 and ctype in body["error"]


def test_multipart_part_of_an_unsupported_image_type_is_415(server: Server) -> None:
    assert post(server.url, data=form(encoded(".jpg"), "image/gif"))[0] == 415


def test_body_over_the_limit_is_413(server: Server) -> None:
    data = encoded(".png", np.random.default_rng(2).integers(0, 256, (200, 200, 3), np.uint8))
    status, body = post(server.url, data=data, headers={"Content-Type": "image/png"}, max_body=len(data) - 1)
    assert status == 413 and "limit" in body["error"]
    assert post(server.url, data=data, headers={"Content-Type": "image/png"}, max_body=len(data))[0] == 200
    # The multipart body as a whole (fields included) counts.
    assert post(server.url, data=form(data, "image/png"), max_body=len(data))[0] == 413


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    """Without Content-Length the limit is applied while reading."""
    data = encoded(".png", np.random.default_rng(3).integers(0, 256, (200, 200, 3), np.uint8))

    async def chunks() -> Any:
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    async def go() -> int:
        headers, params = {"Content-Type": "image/png"}, {"max_body": str(len(data) // 2)}
        async with aiohttp.ClientSession() as s, s.post(server.url, data=chunks(), headers=headers, params=params) as r:
            return r.status

    assert asyncio.run(go()) == 413


@pytest.mark.parametrize(
    "data",
    [b"hello, this is text", b"\x00" * 100, b"GIF89a" + b"\x00" * 40, b"BM" + b"\x00" * 10, b"\x89PNG\r\n\x1a\n"],
    ids=["text", "zeros", "gif", "short-bmp", "png-signature-only"],
)
def test_not_an_image_is_400(server: Server, data: bytes) -> None:
    status, body = post(server.url, data=data, headers={"Content-Type": "image/png"})
    assert status == 400, body


def test_image_of_another_type_than_declared_is_400(server: Server) -> None:
    status, body = post(server.url, data=encoded(".png"), headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "declared image/jpeg" in body["error"]
    assert post(server.url, data=form(encoded(".webp"), "image/jpeg"))[0] == 400


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_truncated_image_is_400(server: Server, ext: str) -> None:
    data = encoded(ext)
    ctype = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}[ext]
    status, body = post(server.url, data=data[: len(data) * 2 // 3], headers={"Content-Type": ctype})
    assert status == 400 and "truncated" in body["error"], body


def test_header_claiming_too_many_pixels_is_413_before_decoding(server: Server) -> None:
    """100000 x 100000 (10 gigapixels, 30 GB decoded): refused from the header; the body is 70 bytes."""
    data = png_claiming(100_000, 100_000)
    status, body = post(server.url, data=data, headers={"Content-Type": "image/png"})
    assert status == 413 and "(the limit is 50000000)" in body["error"], body
    # Below Pillow's own bomb limit, the configured one: the header's size is in the answer.
    status, body = post(server.url, data=png_claiming(10_000, 10_000), headers={"Content-Type": "image/png"})
    assert status == 413 and "10000x10000" in body["error"], body
    # Pillow's own bomb error (past 2 x its MAX_IMAGE_PIXELS) is a 413 too, even with a huge max_pixels.
    status, body = post(server.url, data=data, headers={"Content-Type": "image/png"}, max_pixels=10**12)
    assert status == 413, body


def webp_claiming(width: int, height: int) -> bytes:
    """A WebP with only a VP8X chunk whose canvas is ``width`` x ``height`` (then garbage instead of frames)."""
    vp8x = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x + b"\x00" * 64
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_webp_canvas_over_max_pixels_is_413_before_pillow_allocates_it(server: Server) -> None:
    """Pillow's WebP reader allocates the canvas on open, checking only its own limit (~179 MP): 160 MP here."""
    data = webp_claiming(16_000, 10_000)
    status, body = post(server.url, data=data, headers={"Content-Type": "image/webp"})
    assert status == 413 and "16000x10000" in body["error"], body


@pytest.mark.parametrize("quality", [80, 101], ids=["lossy-VP8", "lossless-VP8L"])
def test_webp_canvas_size_of_real_files(quality: int) -> None:
    ok, buf = cv2.imencode(".webp", picture(96, 64), [cv2.IMWRITE_WEBP_QUALITY, quality])
    assert ok
    assert webp_canvas_size(buf.tobytes()) == (96, 64)
    assert webp_canvas_size(webp_claiming(300, 200)) == (300, 200)
    assert webp_canvas_size(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is None


def test_max_pixels_is_the_configured_limit(server: Server) -> None:
    data = encoded(".jpg")  # 96 x 64 = 6144 pixels
    assert post(server.url, data=data, headers={"Content-Type": "image/jpeg"}, max_pixels=6143)[0] == 413
    assert post(server.url, data=data, headers={"Content-Type": "image/jpeg"}, max_pixels=6144)[0] == 200


@pytest.mark.parametrize(("w", "h"), [(0, 10), (10, 0), (0, 0)])
def test_zero_size_image_is_400(server: Server, w: int, h: int) -> None:
    status, body = post(server.url, data=png_claiming(w, h), headers={"Content-Type": "image/png"})
    assert status == 400, body


def test_multipart_without_the_image_field_is_400(server: Server) -> None:
    f = aiohttp.FormData()
    f.add_field("min_confidence", "0.5")
    f.add_field("picture", encoded(".jpg"), filename="a.jpg", content_type="image/jpeg")
    status, body = post(server.url, data=f)
    assert status == 400 and "'image'" in body["error"]


def test_multipart_with_the_image_field_twice_is_400(server: Server) -> None:
    f = form(encoded(".jpg"))
    f.add_field("image", encoded(".jpg"), filename="b.jpg", content_type="image/jpeg")
    assert post(server.url, data=f)[0] == 400


@pytest.mark.parametrize(
    "body",
    [b"garbage without boundary", b"--XX\r\nContent-Disposition: form-data; name=image\r\n\r\nabc",
     b"--XX\r\n\r\n--XX--\r\n", b"--XX--\r\n"],
)  # fmt: skip
def test_malformed_multipart_is_400(server: Server, body: bytes) -> None:
    status, answer = post(server.url, data=body, headers={"Content-Type": "multipart/form-data; boundary=XX"})
    assert status == 400, answer
    status, answer = post(server.url, data=body, headers={"Content-Type": "multipart/form-data"})
    assert status == 400, answer


# ---- fuzzing: nothing a client sends gives a 5xx ----------------------------------------------------

_CTYPES = st.one_of(
    st.sampled_from(["image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif",
                     "multipart/form-data", "multipart/form-data; boundary=XX", "multipart/form-data; boundary=",
                     "text/plain", "", "image/png; charset=utf-8"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)  # fmt: skip


def _prefixed(data: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=400).map(lambda tail: data[: len(data) // 2] + tail)


_BODIES = st.one_of(
    st.binary(max_size=2000),
    _prefixed(encoded(".jpg")),
    _prefixed(encoded(".png")),
    _prefixed(encoded(".webp")),
    _prefixed(encoded(".bmp")),
    st.builds(lambda w, h: png_claiming(w, h), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.builds(lambda a, b: a + b,
              st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF\x00\x00\x00\x00WEBP"]),
              st.binary(max_size=500)),
)  # fmt: skip

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(body=_BODIES, ctype=_CTYPES)
def test_fuzzed_raw_bodies_and_content_types_never_give_5xx(server: Server, body: bytes, ctype: str) -> None:
    status, answer = post(server.url, data=body, headers={"Content-Type": ctype}, max_pixels=10_000_000)
    assert status in (200, 400, 413, 415), (status, answer)


_FILE_PART = st.fixed_dictionaries({
    "name": st.sampled_from(["image", "other", ""]),
    "data": _BODIES,
    "ctype": st.sampled_from(["image/jpeg", "image/png", "image/gif", "application/octet-stream", "text/plain"]),
    "filename": st.sampled_from(["x.jpg", "", "a\"b.png"]),
})  # fmt: skip
_TEXT_PART = st.fixed_dictionaries({
    "name": st.sampled_from(["min_confidence", "api_key", "image", ""]),
    "data": st.one_of(st.text(max_size=50), st.text(max_size=5000)),
})  # fmt: skip


@_FUZZ
@given(parts=st.lists(st.one_of(_FILE_PART, _TEXT_PART), max_size=4))
def test_fuzzed_multipart_bodies_never_give_5xx(server: Server, parts: list[dict]) -> None:
    f = aiohttp.FormData()
    for p in parts:
        if "filename" in p:
            f.add_field(p["name"], p["data"], content_type=p["ctype"], filename=p["filename"])
        else:
            f.add_field(p["name"], p["data"])
    if not parts:
        f.add_field("x", "y")
    status, answer = post(server.url, data=f, max_pixels=10_000_000)
    assert status in (200, 400, 413, 415), (status, answer)


@_FUZZ
@given(raw=st.binary(max_size=600), boundary=st.sampled_from(["XX", "", "a b", "--", "x" * 80]))
def test_fuzzed_raw_multipart_bytes_never_give_5xx(server: Server, raw: bytes, boundary: str) -> None:
    body = f"--{boundary}\r\n".encode() + raw
    status, answer = post(
        server.url, data=body, headers={"Content-Type": f'multipart/form-data; boundary="{boundary}"'}
    )
    assert status in (200, 400, 413, 415), (status, answer)


@_FUZZ
@given(
    body=_BODIES,
    ctype=st.sampled_from(["image/jpeg", "image/png", "multipart/form-data; boundary=XX"]),
    encoding=st.sampled_from(["gzip", "deflate", "br", "identity", "x-unknown", "gzip, deflate"]),
)
def test_fuzzed_content_encoding_never_gives_5xx(server: Server, body: bytes, ctype: str, encoding: str) -> None:
    headers = {"Content-Type": ctype, "Content-Encoding": encoding}
    status, answer = post(server.url, data=body, headers=headers)
    assert status in (200, 400, 413, 415), (status, answer)


def test_gzip_body_is_limited_by_its_decoded_size(server: Server) -> None:
    """A gzip-encoded body counts by what it decodes to: a small gzip bomb is still a 413."""
    bomb = gzip.compress(b"\x89PNG\r\n\x1a\n" + b"\x00" * (4 * MAX_BODY))
    assert len(bomb) < MAX_BODY // 50
    headers = {"Content-Type": "image/png", "Content-Encoding": "gzip"}
    assert post(server.url, data=bomb, headers=headers)[0] == 413
    data = encoded(".png")
    status, body = post(server.url, data=gzip.compress(data), headers=headers)
    assert status == 200 and body["md5"] == md5_of(data)


def test_pixels_equal_vigil_detects_source_on_the_same_file(server: Server, tmp_path: Path) -> None:
    """`vigil detect FILE` reads through open_source: the upload must give it the very same pixels."""
    im = Image.fromarray(cv2.cvtColor(picture(96, 64), cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90 degrees counter-clockwise to display
    path = tmp_path / "rotated.jpg"
    im.save(path, "JPEG", exif=exif.tobytes(), quality=90)
    source = open_source(str(path))
    source.open()
    frame = source.read()
    source.close()
    assert frame is not None
    status, body = post(server.url, data=form(path.read_bytes()))
    assert status == 200, body
    assert body["shape"] == list(frame.image.shape) == [96, 64, 3]
    assert body["md5"] == hashlib.md5(frame.image.tobytes()).hexdigest()
