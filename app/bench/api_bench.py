"""Detection-on-request benchmark: concurrent HTTP clients posting images while a live camera runs.

One `vigil run`-like pipeline (one camera, the web service on a free loopback port) serves; the clients run in
a separate process (their own event loop, so they do not take the pipeline's), for 1, 4 and 16 concurrent
clients in turn, with windows without requests before and after as the camera's own rate. Reports requests/s,
p50/p99 latency of served requests, the share of 503/504 and any other status, and the camera's processed fps
against its rate without requests, with the issue's goals checked. Clients wait `Retry-After` on a 503 as
they are told; one more window repeats the largest burst with clients that ignore it (50 ms), to show
what a flood of refusals costs.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from app.bench.common import bench_camera, percentiles, read_frames
from app.bench.recorders import RssSampler, SampleRecorder
from app.config import ModelConfig, VigilConfig
from app.stop_signal import raise_stop

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline
    from app.pipeline.service import Service
    from app.web.server import WebService

WARMUP_S = 3.0


def _client_process(
    url: str, images: list[bytes], clients: int, seconds: float, impatient: bool, conn: Connection
) -> None:
    """Entry of the client process: `clients` concurrent posters for `seconds`; sends [(status, ms), ...].

    On 503 a client waits `Retry-After`, or only 50 ms when `impatient` (a client that ignores the hint).
    """
    import aiohttp

    async def main() -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        end = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def poster(k: int) -> None:
                i = k
                while time.monotonic() < end:
                    body = images[i % len(images)]
                    i += 1
                    t0 = time.perf_counter()
                    retry_after = 0.0
                    try:
                        async with session.post(url, data=body, headers={"Content-Type": "image/jpeg"}) as r:
                            await r.read()
                            status = r.status
                            retry_after = float(r.headers.get("Retry-After", 0) or 0)
                    except aiohttp.ClientError:
                        status = 0  # connection-level failure: counted as "other"
                    out.append((status, (time.perf_counter() - t0) * 1e3))
                    if status == 503:
                        # A well-behaved client waits as told (capped by the window); a 50 ms floor for
                        # impatient ones is what `impatient` measures.
                        await asyncio.sleep(0.05 if impatient else min(retry_after, max(0.0, end - time.monotonic())))

            await asyncio.gather(*(poster(k) for k in range(clients)))
        return out

    conn.send(asyncio.run(main()))
    conn.close()


def _in_client_process(target: Callable[..., None], args: tuple, seconds: float) -> Any:
    """Run `target(*args, conn)` in a spawned process (its own event loop, off the pipeline's) and return what it sends.

    None when it sent nothing within `seconds` + 120 s; the process is killed if it does not exit.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    try:
        return parent.recv() if parent.poll(seconds + 120) else None
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def _served_pipeline(
    model: ModelConfig, source: str, extra: list[Service]
) -> tuple[VigilConfig, WebService, LivePipeline]:
    """One looped real-time camera `bench` with the web service on a free loopback port, plus `extra` services."""
    from app.pipeline.live import LivePipeline
    from app.web.server import WebService

    cfg = VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": [bench_camera("bench", source)],
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"port": 0},
        }
    )
    web = WebService(cfg)
    return cfg, web, LivePipeline(cfg, [web, *extra])


def _stopped_by_signal(run: asyncio.Task) -> None:
    """The pipeline's run ended by SIGINT/SIGTERM (it takes them over): the bench stops too.

    Raises:
        KeyboardInterrupt, Stopped: It did (`app.stop_signal.raise_stop`).
    """
    if run.done() and not run.cancelled() and run.exception() is None:
        summary = run.result()
        if summary.stop_signal is not None:
            raise_stop(summary.stop_signal)


async def _start(pipe: LivePipeline, web: WebService) -> asyncio.Task:
    """Start the pipeline; return its task once the worker serves, the server listens and WARMUP_S passed."""
    run = asyncio.create_task(pipe.run())
    while pipe.worker_info is None or not web.url:
        if run.done():
            await run
        await asyncio.sleep(0.1)
    await asyncio.sleep(WARMUP_S)
    return run


def _window(samples: list[tuple[int, float]], seconds: float) -> dict:
    statuses = [s for s, _ in samples]
    served = [ms for s, ms in samples if s == 200]
    n = max(1, len(samples))
    return {
        "requests": len(samples),
        "served_per_s": round(len(served) / seconds, 2),
        "latency_ms": percentiles(served) if served else None,
        "share_503": round(statuses.count(503) / n, 3),
        "share_504": round(statuses.count(504) / n, 3),
        "other_statuses": sorted({s for s in statuses if s not in (200, 503, 504)}),
    }


def bench_api(model: ModelConfig, source: str, seconds: float, client_counts: tuple[int, ...] = (1, 4, 16)) -> dict:
    """Run the request benchmark; windows of `seconds` s per client count. Returns the figures and goal checks."""
    frames = read_frames(source, 60)
    images = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames[::12]]
    samples = SampleRecorder()
    cfg, web, pipe = _served_pipeline(model, source, [samples])
    result: dict = {"seconds_per_window": seconds, "queue_size": cfg.api.queue_size, "max_share": cfg.api.max_share,
                    "image": f"{frames[0].shape[1]}x{frames[0].shape[0]} JPEG", "windows": {}}  # fmt: skip

    async def drive() -> None:
        run = await _start(pipe, web)
        loop = asyncio.get_running_loop()
        url = web.url.rstrip("/") + "/api/detect"
        camera = pipe.stats["bench"]

        async def window(name: str, clients: int, impatient: bool = False) -> None:
            _stopped_by_signal(run)
            before, t0 = camera.processed, time.monotonic()
            n0 = len(samples.inference_ms)
            if clients:
                args = (url, images, clients, seconds, impatient)
                got = await loop.run_in_executor(None, _in_client_process, _client_process, args, seconds) or []
            else:
                got = []
                await asyncio.sleep(seconds)
            wall = time.monotonic() - t0
            entry = _window(got, wall) if clients else {}
            entry["camera_fps"] = round((camera.processed - before) / wall, 2)
            entry["camera_inference_ms_p50"] = round(statistics.median(samples.inference_ms[n0:] or [0.0]), 2)
            result["windows"][name] = entry

        await window("no requests (before)", 0)
        for c in client_counts:
            await window(f"{c} clients", c)
        # The same largest burst from clients that ignore Retry-After: what a flood of cheap 503s costs.
        await window(f"{client_counts[-1]} clients ignoring Retry-After", client_counts[-1], impatient=True)
        await window("no requests (after)", 0)
        result["api_stats"] = pipe.requests.stats()
        pipe.request_stop("bench done")
        await run
        _stopped_by_signal(run)

    asyncio.run(drive())
    w = result["windows"]
    base = statistics.mean([w["no requests (before)"]["camera_fps"], w["no requests (after)"]["camera_fps"]])
    inference = float(np.median(samples.inference_ms)) if samples.inference_ms else 0.0
    bound = (cfg.api.queue_size + 1) * inference + 50
    result["camera_fps_without_requests"] = round(base, 2)
    result["median_inference_ms"] = round(inference, 2)
    result["p99_bound_ms"] = round(bound, 1)
    goals = {}
    for name in [f"{c} clients" for c in client_counts] + [f"{client_counts[-1]} clients ignoring Retry-After"]:
        e = w[name]
        e["camera_rate_ratio"] = round(e["camera_fps"] / base, 3) if base else None
        goals[name] = {
            "no_other_5xx": not any(s >= 500 and s not in (503, 504) for s in e["other_statuses"]),
            "p99_within_bound": e["latency_ms"] is not None and e["latency_ms"]["p99"] <= bound,
            "camera_keeps_share": e["camera_rate_ratio"] is not None
            and e["camera_rate_ratio"] >= 1 - cfg.api.max_share,
        }
    result["goals"] = goals
    return result


def _ws_client_process(url: str, readers: int, seconds: float, conn: Connection) -> None:
    """`readers` WebSocket clients that read everything plus one that never reads, for `seconds`.

    Sends `{"received": [per reader], "dropped_notices": [per reader]}`.
    """
    import socket
    import urllib.parse

    import aiohttp

    async def main() -> dict:
        received = [0] * readers
        notices = [0] * readers
        end = time.monotonic() + seconds
        parts = urllib.parse.urlsplit(url)
        # The non-reader: a raw socket with a small receive buffer that completes the handshake, then sleeps.
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((parts.hostname, parts.port))
        stuck.sendall(
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode()
        )  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def reader(k: int) -> None:
                async with session.ws_connect(url, autoping=True) as ws:
                    while time.monotonic() < end:
                        try:
                            msg = await ws.receive(timeout=max(0.1, end - time.monotonic()))
                        except asyncio.TimeoutError:
                            break
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        received[k] += 1
                        if msg.data.startswith('{"type":"dropped"'):
                            notices[k] += 1

            await asyncio.gather(*(reader(k) for k in range(readers)))
        stuck.close()
        return {"received": received, "dropped_notices": notices}

    conn.send(asyncio.run(main()))
    conn.close()


def bench_ws(model: ModelConfig, source: str, seconds: float, readers: int = 9) -> dict:
    """The live pipeline's processed fps with `readers` + 1 stuck WebSocket clients vs none; main RSS; drops."""
    rss = RssSampler(1.0)
    _, web, pipe = _served_pipeline(model, source, [rss])
    out: dict = {"seconds_per_window": seconds, "clients": readers + 1, "never_reading": 1}

    async def drive() -> None:
        run = await _start(pipe, web)
        loop = asyncio.get_running_loop()
        camera = pipe.stats["bench"]
        url = web.url.replace("http", "ws", 1).rstrip("/") + "/api/ws"

        async def window(clients: bool) -> dict:
            _stopped_by_signal(run)
            before, t0, rss0 = camera.processed, time.monotonic(), len(rss.rss_mb["main"])
            got: dict = {}
            if clients:
                args = (url, readers, seconds)
                got = await loop.run_in_executor(None, _in_client_process, _ws_client_process, args, seconds) or {}
            else:
                await asyncio.sleep(seconds)
            wall = time.monotonic() - t0
            main = rss.rss_mb["main"][rss0:]
            return {"processed_fps": round((camera.processed - before) / wall, 2), **got,
                    "main_rss_mb": [round(main[0], 1), round(main[-1], 1)] if main else None}  # fmt: skip

        out["no clients (before)"] = await window(False)
        out["with clients"] = await window(True)
        out["no clients (after)"] = await window(False)
        out["ws_stats"] = web.stream.stats()
        pipe.request_stop("bench done")
        await run
        _stopped_by_signal(run)

    asyncio.run(drive())
    base = statistics.mean([out["no clients (before)"]["processed_fps"], out["no clients (after)"]["processed_fps"]])
    ratio = out["with clients"]["processed_fps"] / base if base else 0.0
    out["processed_fps_vs_no_clients"] = round(ratio, 4)
    out["goals"] = {
        "fps_within_2pct": ratio >= 0.98,
        "slow_client_dropped": out["ws_stats"]["dropped"] > 0,
    }
    return out
