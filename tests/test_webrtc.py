"""The preview over real WebRTC: an aiortc client through the real HTTP endpoint, loopback only."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
from support.web_harness import Served, web_config
from support.webrtc_client import Viewer

from app.config import DetectConfig, MotionConfig

U32 = 2**32


def run(coro):
    return asyncio.run(coro)


def test_viewer_gets_sized_video_and_detections_matched_to_frames(tiny_model: Path, small_video: Path) -> None:
    # 160x120 source, 128-px preview; preview fps above the camera's so every captured frame is encoded, and
    # every frame detected (the default fps cap of 5 gave 9 results in the 2 s of 40 frames on a loaded box).
    cfg = web_config(tiny_model, small_video, preview_width=128, preview_fps=40)
    cfg.cameras[0] = cfg.cameras[0].model_copy(update={"detect": DetectConfig(fps=None),
                                                       "motion": MotionConfig(enabled=False)})  # fmt: skip
    with Served(cfg) as s:

        async def scenario():
            v = Viewer()
            assert await v.connect(s.url) == 200
            frames = await v.frames(40)
            await asyncio.sleep(0.5)  # the last announcements and results
            await v.close()
            return v, frames

        v, frames = run(scenario())
    assert all((f.width, f.height) == (128, 96) for f in frames)
    announced = {m["pts"]: m for m in v.of_type("frame")}
    r0 = frames[0].pts  # RTP timestamps are the capture clock, rebased to this viewer's first frame
    seqs = [announced[(f.pts - r0) % U32]["seq"] for f in frames if (f.pts - r0) % U32 in announced]
    assert len(seqs) >= 0.9 * len(frames), "decoded frames map to announced capture sequence numbers"
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    detections = v.of_type("detections")
    assert len(detections) >= 10
    in_span = [d["seq"] for d in detections if seqs[0] <= d["seq"] <= seqs[-1]]
    matched = [q for q in in_span if q in set(seqs)]
    assert in_span and len(matched) >= 0.8 * len(in_span), "detections name frames the viewer received"
    d = detections[-1]
    assert d["boxes"] and {"label", "confidence", "box_norm"} <= d["boxes"][0].keys()
    assert all(0.0 <= c <= 1.0 for c in d["boxes"][0]["box_norm"])


def test_viewer_limit_and_release(tiny_model: Path, small_video: Path) -> None:
    with Served(web_config(tiny_model, small_video, max_viewers=1)) as s:

        async def scenario():
            a, b = Viewer(), Viewer()
            assert await a.connect(s.url) == 200
            await a.frames(2)
            assert await b.connect(s.url) == 503, "beyond max_viewers"
            await b.close()
            await a.close()
            for _ in range(100):
                if len(s.web.viewers) == 0:
                    break
                await asyncio.sleep(0.05)
            c = Viewer()
            assert await c.connect(s.url) == 200, "a closed viewer gives its slot back"
            await c.frames(2)
            await c.close()

        run(scenario())
        assert s.web.viewers.rejected_full == 1


def test_fifty_connect_disconnect_cycles_release_everything(tiny_model: Path, small_video: Path) -> None:
    me = psutil.Process(os.getpid())
    with Served(web_config(tiny_model, small_video, preview_width=128)) as s:
        server_loop = s.pipe._loop

        def server_tasks() -> int:
            fut = asyncio.run_coroutine_threadsafe(_count_tasks(), server_loop)
            return fut.result(5)

        def quiet_tasks() -> int:
            """The server's task count once it has stopped changing for 1 s: a closing peer connection
            winds its transports down for a moment after the viewer is gone."""
            last, since, deadline = server_tasks(), time.monotonic(), time.monotonic() + 15
            while time.monotonic() < deadline and time.monotonic() - since < 1.0:
                time.sleep(0.1)
                n = server_tasks()
                if n != last:
                    last, since = n, time.monotonic()
            return last

        async def cycle(n: int) -> None:
            for _ in range(n):
                v = Viewer()
                assert await v.connect(s.url) == 200
                await v.frames(1)
                await v.close()

        async def settle() -> None:
            for _ in range(200):
                if len(s.web.viewers) == 0 and all(e.subscribers == 0 for e in s.web.encoders.values()):
                    return
                await asyncio.sleep(0.05)

        run(cycle(5))  # warm-up: first-use allocations, thread pools
        run(settle())
        base = (quiet_tasks(), me.num_threads(), me.num_fds(), me.memory_info().rss)
        run(cycle(50))
        run(settle())
        after = (quiet_tasks(), me.num_threads(), me.num_fds(), me.memory_info().rss)
        assert len(s.web.viewers) == 0 and all(e.subscribers == 0 for e in s.web.encoders.values())
        assert s.web.viewers.sessions == 55
    assert after[0] <= base[0] + 2, f"server tasks {base[0]} -> {after[0]}"
    assert after[1] <= base[1] + 4, f"threads {base[1]} -> {after[1]}"
    assert after[2] <= base[2] + 8, f"fds {base[2]} -> {after[2]}"
    assert after[3] - base[3] < 64 * 2**20, f"RSS grew {(after[3] - base[3]) / 2**20:.0f} MB over 50 viewers"


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


def test_viewer_stays_connected_through_a_worker_recycle(tiny_model: Path, small_video: Path) -> None:
    cfg = web_config(tiny_model, small_video, preview_width=128)
    cfg.watchdog.recycle_every_h = 2 / 3600
    with Served(cfg) as s:

        async def scenario():
            v = Viewer()
            assert await v.connect(s.url) == 200
            await v.frames(5)
            for _ in range(200):  # until the blue-green switch has happened
                if s.pipe.worker_recycles >= 1:
                    break
                await asyncio.sleep(0.05)
            before = len(v.of_type("detections"))
            frames = await v.frames(20)  # video keeps flowing on the same connection
            await asyncio.sleep(0.5)
            state = v.pc.connectionState
            await v.close()
            return v, frames, before, state

        v, frames, before, state = run(scenario())
        assert s.pipe.worker_recycles >= 1 and s.pipe.worker_restarts == 0
    assert state == "connected" and len(frames) == 20
    assert len(v.of_type("detections")) > before, "results from the new worker reach the same viewer"
    assert any(m.get("event") == "recycle" for m in v.of_type("system")), "the viewer is told about it"
