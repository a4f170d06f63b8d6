"""The shared preview encoder's own logic: sizes, keyframe gating, overflow, overlay, real VP8 output."""

from __future__ import annotations

import asyncio

import av
import numpy as np

from app.web.encoder import EncodedFrame, PacketQueue, Vp8Encoder, draw_boxes, preview_size


def _frame(key: bool, seq: int = 1) -> EncodedFrame:
    return EncodedFrame(b"x", key, seq * 3600, seq, 0.0, 0, 64, 48, 1.0)


def test_preview_size_is_even_and_never_upscaled() -> None:
    assert preview_size(640, 272, 640) == (640, 272)
    assert preview_size(1920, 1080, 640) == (640, 360)
    assert preview_size(160, 120, 640) == (160, 120)
    w, h = preview_size(1001, 777, 333)
    assert w % 2 == 0 and h % 2 == 0


def test_queue_starts_at_a_keyframe_and_skips_to_the_next_one_after_overflow() -> None:
    async def scenario() -> None:
        q = PacketQueue(maxsize=3)
        assert not q.put(_frame(False, 1)), "a new viewer cannot start on a P-frame"
        assert q.put(_frame(True, 2)) and q.put(_frame(False, 3)) and q.put(_frame(False, 4))
        assert not q.put(_frame(False, 5)), "full: drop everything queued, wait for a keyframe"
        assert q.overflows == 1 and q.need_keyframe
        assert not q.put(_frame(False, 6))
        assert q.put(_frame(True, 7))
        got = await q.get()
        assert got is not None and got.seq == 7
        q.close()
        assert await q.get() is None

    asyncio.run(scenario())


def test_vp8_output_decodes_and_forced_keyframes_are_keyframes() -> None:
    enc = Vp8Encoder(bitrate_kbps=500, keyframe_frames=100)
    dec = av.CodecContext.create("libvpx", "r")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    keys = []
    for i in range(6):
        data, key = enc.encode(np.roll(base, i * 4, axis=1), pts=i * 3600, keyframe=(i == 4))
        keys.append(key)
        frames = dec.decode(av.Packet(data))
        assert frames and (frames[0].width, frames[0].height) == (128, 96)
    assert keys[0] and keys[4] and not keys[1], "first frame and forced frame are keyframes only"


def test_server_side_boxes_are_drawn_in_place() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    draw_boxes(img, [{"label": "Fall", "confidence": 0.9, "box_norm": [0.1, 0.2, 0.5, 0.8]}])
    assert img[20:81, 20].any(), "left edge of the box"
    assert not img[50, 60:90].any(), "the inside stays untouched"


def test_boxes_are_coloured_by_class_id_not_by_label() -> None:
    """Any model's labels (COCO, the fall model's, one's own) get distinct colours by id; the page's
    classColor in overlay.js computes the same golden-angle hues."""
    from app.colors import class_color_bgr, class_color_rgb

    colours = [class_color_rgb(i) for i in range(80)]
    assert len(set(colours)) == 80 and colours[0] == (242, 61, 61) and colours[1] == (61, 114, 242)
    img = np.zeros((100, 200, 3), np.uint8)
    draw_boxes(img, [{"class_id": 2, "label": "car", "confidence": 0.9, "box_norm": [0.1, 0.2, 0.5, 0.8]}])
    assert tuple(int(v) for v in img[50, 20]) == class_color_bgr(2)
