"""Reading an uploaded image from an HTTP request: every bad-input rule of detection on request, before any decode.

`read_image_upload` takes the image from a raw body (``Content-Type: image/jpeg`` ...) or from a
``multipart/form-data`` field (DeepStack's form), checks it in order of cost (size of the body, the type the
bytes really are, the pixel count from the header alone, truncation) and only then decodes it with the one
still-image decoder (`app.capture.sources.decode_image`), off the event loop. Every refusal is an
`UploadError` with a 4xx status and a reason for the client; nothing a client sends raises anything else.

The body is read from ``request.content`` (or the multipart reader's ``read_chunk``) chunk by chunk against
``max_body_bytes``, so the application-wide ``client_max_size`` (``http.max_body_bytes``, which only
``request.read()``/``post()``/``json()`` and a part's ``read()`` enforce) does not apply to these routes and
need not be raised for them.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BodyPartReader
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from PIL import Image

from app.capture.sources import decode_image, is_truncated_image

CHUNK_BYTES = 64 * 1024
"""Bytes read from the socket at a time."""

MAX_FORM_FIELD_BYTES = 4096
MAX_PARTS = 16  # the image and a few fields (DeepStack sends image, api_key, min_confidence)
"""Longest text field (``min_confidence`` and the like) accepted next to the image in a multipart body."""

# Declared content type -> the format the bytes must be. image/jpg is not registered but common in the wild.
RAW_IMAGE_TYPES: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
}
MULTIPART = "multipart/form-data"
_SUPPORTED = "JPEG, PNG, WebP or BMP"


class UploadError(Exception):
    """A request whose image cannot be accepted; answer ``status`` with ``reason``.

    Attributes:
        status: 400 (no, broken or mislabelled image), 413 (body or pixel count over the limit) or 415
            (content type not accepted).
        reason: What was wrong, for the client.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UploadedImage:
    """An accepted, decoded upload.

    Attributes:
        image: HxWx3 uint8 BGR, EXIF orientation applied (the pixels `vigil detect` sees for the same file).
        width: Pixels across, after EXIF rotation.
        height: Pixels down, after EXIF rotation.
        content_type: The type declared for the image (the body's, or the multipart part's; may be generic
            such as ``application/octet-stream`` for a part, whose bytes were then recognised).
        nbytes: Size of the encoded image in bytes.
        form: Text fields sent next to the image in a multipart body (e.g. DeepStack's ``min_confidence``);
            empty for a raw body.
    """

    image: np.ndarray = field(repr=False)
    width: int
    height: int
    content_type: str
    nbytes: int
    form: dict[str, str] = field(default_factory=dict)


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of an accepted image from its magic bytes, or None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    return None


async def read_image_upload(
    request: web.Request,
    *,
    field: str = "image",
    max_body_bytes: int,
    max_pixels: int,
    allow_raw: bool = True,
    authorize: Callable[[Mapping[str, str]], None] | None = None,
    decode_gate: asyncio.Semaphore | None = None,
) -> UploadedImage:
    """Read, check and decode the image a client posted.

    Args:
        request: The request; its body is consumed.
        field: The multipart field holding the image.
        max_body_bytes: Largest body accepted (the whole multipart body, fields included), in bytes.
        max_pixels: Largest width x height accepted, read from the image header before decoding.
        allow_raw: Whether a raw image body is accepted; False where only multipart is part of the API.
        authorize: Called with the form fields once the body is read and before anything is checked or
            decoded (DeepStack clients send their key as the form field `api_key`); it raises UploadError (401)
            to refuse the request.
        decode_gate: Held while checking and decoding, to bound how many images are decoded at once (a 146 KB
            PNG can decode to 150 MB).

    Returns:
        The decoded image and the form fields sent with it.

    Raises:
        UploadError: 400 for no body, an empty or missing image, bytes that are no accepted image or not the
            type declared, zero-size or truncated images and malformed multipart bodies; 413 for a body over
            ``max_body_bytes`` or an image over ``max_pixels``; 415 for a content type not accepted; what
            ``authorize`` raises.
    """
    if not request.body_exists or request.content_length == 0:
        raise UploadError(400, f"the request has no body: send a {_SUPPORTED} image")
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise UploadError(413, f"the body is {request.content_length} bytes, over the limit of {max_body_bytes}")
    ctype = request.content_type
    form: dict[str, str] = {}
    if ctype == MULTIPART:
        data, declared, form = await _read_multipart(request, field, max_body_bytes)
        expected = RAW_IMAGE_TYPES.get(declared)
        # An image type we do not take is refused; any other label (none, octet-stream, a client's guess from
        # a file name) says nothing about the format: the bytes decide.
        if expected is None and declared.startswith("image/"):
            raise UploadError(415, f"field {field!r} is {declared}: send {_SUPPORTED}")
    elif ctype in RAW_IMAGE_TYPES:
        if not allow_raw:
            raise UploadError(415, f"send the image as {MULTIPART} with field {field!r}")
        data = await _read_limited(request.content, max_body_bytes)
        declared, expected = ctype, RAW_IMAGE_TYPES[ctype]
    else:
        accepted = f"{MULTIPART} with field {field!r}"
        if allow_raw:
            accepted += " or a raw body of type " + ", ".join(sorted(RAW_IMAGE_TYPES))
        raise UploadError(415, f"content type {ctype or 'none'} is not accepted: send {accepted}")
    if authorize is not None:
        authorize(form)
    if not data:
        raise UploadError(400, "the image is empty (0 bytes)")
    if decode_gate is None:
        return await _check_and_decode(data, declared, expected, max_pixels, form)
    async with decode_gate:
        return await _check_and_decode(data, declared, expected, max_pixels, form)


async def _read_limited(stream: StreamReader | BodyPartReader, limit: int, already: int = 0) -> bytes:
    """All of a body (or a multipart part), refusing it with 413 as soon as ``already`` + its size passes ``limit``."""
    buf = bytearray()
    while True:
        try:
            if isinstance(stream, BodyPartReader):
                chunk = await stream.read_chunk(CHUNK_BYTES)
            else:
                chunk = await stream.read(CHUNK_BYTES)
        except (RequestPayloadError, HttpProcessingError) as exc:
            # aiohttp decodes Content-Encoding (gzip, deflate, br) while reading: a body that does not
            # decode, or a broken chunked encoding, is the client's error.
            raise UploadError(400, f"the body could not be read ({_first_line(exc)})") from None
        if not chunk:
            return bytes(buf)
        buf += chunk
        if already + len(buf) > limit:
            raise UploadError(413, f"the body is over the limit of {limit} bytes")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:2])[:200] or type(exc).__name__


async def _read_multipart(request: web.Request, field: str, limit: int) -> tuple[bytes, str, dict[str, str]]:
    """The image part's bytes and declared type, and the text fields, of a multipart body."""
    image: bytes | None = None
    declared = ""
    form: dict[str, str] = {}
    total = 0
    try:
        # request.multipart() reads through read_chunk here, which client_max_size does not limit.
        reader = await request.multipart()
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS:  # each part costs a parse on the event loop: hundreds of thousands stall it
                raise UploadError(400, f"the multipart body has more than {MAX_PARTS} parts")
            if not isinstance(part, BodyPartReader):
                raise UploadError(400, "nested multipart bodies are not accepted")
            name, filename = part.name, part.filename
            if name == field:
                if image is not None:
                    raise UploadError(400, f"field {field!r} is given more than once")
                image = await _read_limited(part, limit, total)
                total += len(image)
                declared = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                continue
            value = await _read_limited(part, limit, total)
            total += len(value)
            if name is None or filename is not None:
                continue  # unnamed parts and other files: read past, not kept
            if len(value) > MAX_FORM_FIELD_BYTES:
                raise UploadError(400, f"form field {name!r} is over {MAX_FORM_FIELD_BYTES} bytes")
            try:
                form[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(400, f"form field {name!r} is not UTF-8 text") from None
    except UploadError:
        raise
    except web.HTTPRequestEntityTooLarge:  # a part's headers over aiohttp's own limits
        raise UploadError(413, "a multipart part's headers are too large") from None
    except (ValueError, LookupError, AssertionError, RuntimeError, HttpProcessingError, RequestPayloadError) as exc:
        # What aiohttp's multipart reader raises for a missing or wrong boundary, bad part headers or a body
        # that ends early: the client's malformed request, not our error.
        raise UploadError(400, f"malformed multipart body: {_first_line(exc)}") from None
    if image is None:
        raise UploadError(400, f"the multipart body has no field {field!r} holding the image")
    return image, declared, form


async def _check_and_decode(
    data: bytes, declared: str, expected: str | None, max_pixels: int, form: dict[str, str]
) -> UploadedImage:
    """Run `_check_and_decode_sync` off the event loop.

    Even the checks walk the file in Python (JPEG segments, PNG chunks: a crafted 18 MB file of millions of
    empty segments took 10 s on the loop, stalling every camera and the systemd pings); decoding a 50 MP
    image takes longer still.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, _check_and_decode_sync, data, declared, expected, max_pixels, form)


def _check_and_decode_sync(
    data: bytes, declared: str, expected: str | None, max_pixels: int, form: dict[str, str]
) -> UploadedImage:
    """Refuse by the cheap checks (type, header size, truncation), then decode (in a worker thread)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(400, f"the body is not a {_SUPPORTED} image")
    if expected is not None and fmt != expected:
        raise UploadError(400, f"the body is declared {declared} but is a {fmt} image")
    if fmt == "WEBP":
        # Pillow's WebP reader allocates the whole canvas when it opens the file, checking only its own
        # bomb limit: the size is read from the container here first, so max_pixels comes before any memory.
        size = webp_canvas_size(data)
        if size is None:
            raise UploadError(400, "the WEBP image header is not valid")
        _check_size(*size, max_pixels)
    _check_size(*_header_size(data, fmt, max_pixels), max_pixels)
    if is_truncated_image(data):
        raise UploadError(400, f"the {fmt} image is truncated (it ends before its end marker)")
    image = decode_image(data)
    if image is None:
        raise UploadError(400, f"the {fmt} image could not be decoded")
    h, w = image.shape[:2]
    return UploadedImage(image=image, width=w, height=h, content_type=declared, nbytes=len(data), form=form)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UploadError(400, f"the image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise UploadError(413, f"the image has {width}x{height} pixels, over the limit of {max_pixels}")


def webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a WebP file's first chunk (Google's WebP container and bitstream specs), or None.

    The first chunk is ``VP8X`` (extended: 24-bit canvas width and height, minus one), ``VP8L`` (lossless:
    signature byte 0x2F, then 14-bit width and height, minus one) or ``VP8 `` (lossy: a 3-byte frame tag, the
    start code 9D 01 2A, then 14-bit width and height).
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def _header_size(data: bytes, fmt: str, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` as the header states them, before EXIF rotation; nothing is decoded.

    Pillow's ``Image.open`` is lazy: it parses the header only. Its own decompression-bomb guard (a warning
    past ``Image.MAX_IMAGE_PIXELS``, an error past twice that) is a second, fixed limit: the error is a 413
    like ours (so ``max_pixels`` above about 179 MP has no effect), and the warning is noise because the
    caller applies ``max_pixels`` itself.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                return im.size
    except Image.DecompressionBombError:
        # Pillow refuses past twice its MAX_IMAGE_PIXELS (about 179 MP) whatever max_pixels says.
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = min(max_pixels, pillow_limit)
        raise UploadError(413, f"the image header claims over {pillow_limit} pixels (the limit is {limit})") from None
    except Exception as exc:  # any parser error on untrusted bytes means a broken header
        if is_truncated_image(data):  # Pillow's WebP reader needs the whole file even for the header
            raise UploadError(400, f"the {fmt} image is truncated (it ends before its end marker)") from None
        raise UploadError(400, f"the {fmt} image header is not valid ({type(exc).__name__})") from None
