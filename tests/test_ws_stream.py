"""The live WebSocket stream `GET /api/ws` against a live pipeline, with real aiohttp WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.cameras import every_frame
from support.web_harness import Served, web_config

from app.config import VigilConfig
from app.pipeline.live import LivePipeline
from app.pipeline.records import ResultRecord, SystemEvent
from app.pipeline.service import ServiceBase

TOKEN = "test-token-0123456789abcdef"
# The MQTT payloads' fields (app/pipeline/payloads.py), which the stream's `data` carries unchanged.
RESULT_FIELDS = {"schema", "device_id", "camera", "seq", "frame", "captured_at", "width", "height", "detections",
                 "latency_ms", "published_at", "model", "motion", "regions"}  # fmt: skip
EVENT_FIELDS = {"schema", "device_id", "camera", "type", "object", "captured_at", "latency_ms", "published_at"}
SYSTEM_FIELDS = {"schema", "device_id", "event", "type", "reason", "at", "published_at"}


class Recorder(ServiceBase):
    """Every result's seq per camera, in the order the pipeline delivered them (the stream's ground truth)."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)

    def on_result(self, record: ResultRecord) -> None:
        self.seqs[record.camera].append(record.result.frame.seq)


class RecordedServed(Served):
    """`Served` with a `Recorder` service beside the web service."""

    def __init__(self, cfg: VigilConfig) -> None:
        super().__init__(cfg)
        self.recorder = Recorder()
        self.pipe = LivePipeline(cfg, [self.web, self.recorder])

    def call(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the pipeline's loop (where every hook and control call belongs)."""
        loop = self.pipe._loop
        assert loop is not None
        loop.call_soon_threadsafe(fn, *args)


def stream_config(
    model: Path, video: Path, api: dict, cameras: tuple[str, ...] = ("cam",), fps: float = 20, **http
) -> VigilConfig:
    doc = web_config(model, video, **http).model_dump()
    # every frame detected: the stream tests count on results at the camera's rate (a client backing up, ordering)
    doc["cameras"] = [every_frame({**doc["cameras"][0], "name": name, "fps": fps}) for name in cameras]
    doc["api"] = {**doc["api"], **api}
    doc["tracking"]["event_update_interval_s"] = 0.5  # periodic `update` events keep events flowing
    return VigilConfig.model_validate(doc)


@pytest.fixture(scope="module")
def stream(tiny_model: Path, small_video: Path):
    # A long heartbeat: the slow-client test's client reads nothing (no pongs) for a while on purpose.
    api = {"max_ws_clients": 4, "ws_queue": 16, "ws_heartbeat_s": 120}
    with RecordedServed(stream_config(tiny_model, small_video, api, cameras=("cam", "yard"))) as s:
        yield s


@pytest.fixture(scope="module")
def guarded(tiny_model: Path, small_video: Path, tmp_path_factory: pytest.TempPathFactory):
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = stream_config(tiny_model, small_video, {"ws_heartbeat_s": 2.0}, require_token=True,
                        token_file=str(token_file))  # fmt: skip
    with RecordedServed(cfg) as s:
        yield s


# ---- helpers ----------------------------------------------------------------------------------


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, f"expected a text message, got {msg.type}: {msg.data!r}"
    return json.loads(msg.data)


async def collect(ws: aiohttp.ClientWebSocketResponse, done: Callable[[list[dict]], bool], timeout: float = 60):
    """Messages until `done(messages)` holds (each message must come within `timeout`)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"condition not met; got {[m['type'] for m in got][-20:]}"
        got.append(await receive_json(ws, timeout))
    return got


async def handshake(session: aiohttp.ClientSession, url: str, headers: dict | None = None, params=None):
    """A WebSocket upgrade request by hand, to read the status and body of a refused handshake."""
    key = base64.b64encode(os.urandom(16)).decode()
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key}
    async with session.get(url, headers={**hdrs, **(headers or {})}, params=params) as r:
        return r.status, r.headers, b"" if r.status == 101 else await r.read()


async def ws_stats(session: aiohttp.ClientSession, s: Served, headers: dict | None = None) -> dict:
    async with session.get(f"{s.url}/api/stats", headers=headers or {}) as r:
        return (await r.json())["ws"]


async def wait_for(cond: Callable[[], object], timeout: float = 60, period: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(period)


async def no_clients(session: aiohttp.ClientSession, s: Served, headers: dict | None = None) -> None:
    """Wait until earlier tests' clients are gone (the server removes them once their close is through)."""

    async def empty() -> bool:
        return (await ws_stats(session, s, headers))["clients"] == 0

    await wait_for(empty)


def small_receive_buffer(addr_info) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that stops reading backs up the server soon."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def results(messages: list[dict], camera: str | None = None) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "result" and camera in (None, m["data"]["camera"])]


# ---- tests ------------------------------------------------------------------------------------


def test_results_carry_the_mqtt_payload_fields(stream: RecordedServed) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{stream.url}/api/ws") as ws:
            got = await collect(ws, lambda m: len(results(m, "cam")) >= 3 and len(results(m, "yard")) >= 3)
        assert {m["type"] for m in got} <= {"result", "event"}
        for r in results(got):
            assert set(r) == RESULT_FIELDS, set(r) ^ RESULT_FIELDS
            assert r["device_id"] == "vigil" and r["schema"] == 1 and r["width"] > 0
            assert {"inference", "queue", "frame_age"} <= set(r["latency_ms"])
        det = results(got, "cam")[-1]["detections"][0]
        assert det["label"] == "person" and det["track_id"] is not None
        assert len(det["box"]) == 4 and all(0 <= v <= 1 for v in det["box_normalized"])
        for cam in ("cam", "yard"):
            seqs = [r["seq"] for r in results(got, cam)]
            assert seqs == sorted(set(seqs)), "in order, each once"

    asyncio.run(main())


def test_object_events_have_the_mqtt_event_fields(stream: RecordedServed) -> None:
    """Detection off ends the person (`end`, no frame); on again, it is announced anew (`new`) after min_hits."""

    async def main() -> None:
        url = f"{stream.url}/api/ws?types=events&camera=cam"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            stream.call(stream.pipe.set_detection, "cam", False)
            got = await collect(ws, lambda m: any(e["data"]["type"] == "end" for e in m))
            end = next(m["data"] for m in got if m["data"]["type"] == "end")
            stream.call(stream.pipe.set_detection, "cam", True)
            got = await collect(ws, lambda m: any(e["data"]["type"] == "new" for e in m))
            new = next(m["data"] for m in got if m["data"]["type"] == "new")
        assert {m["type"] for m in got} == {"event"}
        assert set(end) >= EVENT_FIELDS and end["camera"] == "cam" and end["reason"]
        assert end["captured_at"] is None and end["latency_ms"] == {}, "no frame caused it"
        assert set(new) == EVENT_FIELDS, set(new) ^ EVENT_FIELDS
        assert new["object"]["label"] == "person" and new["captured_at"] and "inference" in new["latency_ms"]

    asyncio.run(main())


def test_camera_filter(stream: RecordedServed) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{stream.url}/api/ws?camera=yard") as ws:
                got = await collect(ws, lambda m: len(m) >= 20)
            assert {m["data"]["camera"] for m in got} == {"yard"}
            for query in ("camera=cam,yard", "camera=cam&camera=yard", "camera=%20yard%20,cam"):
                async with session.ws_connect(f"{stream.url}/api/ws?{query}&types=results") as ws:
                    got = await collect(ws, lambda m: results(m, "cam") != [] and results(m, "yard") != [])
                assert {m["type"] for m in got} == {"result"}, query

    asyncio.run(main())


def test_types_filter_and_system_events(stream: RecordedServed) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{stream.url}/api/ws?types=results") as ws:
                got = await collect(ws, lambda m: len(m) >= 20)
                assert {m["type"] for m in got} == {"result"}
            async with session.ws_connect(f"{stream.url}/api/ws?types=events&camera=yard") as ws:
                got = await collect(ws, lambda m: len(m) >= 2)
                assert {m["type"] for m in got} == {"event"} and {m["data"]["camera"] for m in got} == {"yard"}
            async with (
                session.ws_connect(f"{stream.url}/api/ws?types=system&camera=yard") as yard,
                session.ws_connect(f"{stream.url}/api/ws?types=system,results") as both,
            ):
                await wait_for(lambda: len(stream.web.stream) == 2)
                # As the supervisor reports them: one about a camera, one worker-wide (no camera).
                stream.call(stream.web.on_system_event, SystemEvent("capture_restart", "test: cam", camera="cam"))
                stream.call(stream.web.on_system_event, SystemEvent("backend", "test: worker-wide"))
                [msg] = await collect(yard, lambda m: len(m) == 1)
                assert msg["type"] == "system" and set(msg["data"]) == SYSTEM_FIELDS, "worker-wide: no camera"
                assert msg["data"]["type"] == "backend" and msg["data"]["reason"] == "test: worker-wide"
                got = await collect(both, lambda m: sum(x["type"] == "system" for x in m) == 2 and results(m) != [])
                system = [m["data"] for m in got if m["type"] == "system"]
                assert [(e["type"], e.get("camera")) for e in system] == [("capture_restart", "cam"), ("backend", None)]
                assert {m["type"] for m in got} == {"result", "system"}

    asyncio.run(main())


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ("camera=nowhere", 404, "unknown camera 'nowhere'"),
        ("camera=cam,nowhere", 404, "unknown camera"),
        ("types=results,videos", 400, "unknown type 'videos'"),
        ("types=", 400, "types is empty"),
        ("types=%00%ff", 400, "unknown type"),
    ],
)
def test_bad_filters_are_json_4xx(stream: RecordedServed, query: str, status: int, needle: str) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            code, headers, body = await handshake(session, f"{stream.url}/api/ws?{query}")
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await session.ws_connect(f"{stream.url}/api/ws?{query}")
        assert code == status and exc.value.status == status
        assert headers["Content-Type"].startswith("application/json")
        err = json.loads(body)
        assert err["status"] == status and needle in err["error"], err

    asyncio.run(main())


def expected_status(cameras: list[str], types: str | None) -> int:
    """What the filters in the README make of these query values: 404, 400 or 101 (upgraded)."""
    names = [v.strip() for c in cameras for v in c.split(",") if v.strip()]
    if any(n not in ("cam", "yard") for n in names):
        return 404
    if types is not None:
        kinds = [v.strip() for v in types.split(",") if v.strip()]
        if not kinds or any(k not in ("results", "events", "system") for k in kinds):
            return 400
    return 101


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cameras=st.lists(st.sampled_from(["cam", "yard", " yard", "cam,", ",", ""]) | st.text(max_size=8), max_size=3),
    types=st.none() | st.sampled_from(["results", "events,system", " system ", ",,"]) | st.text(max_size=12),
)
def test_fuzzed_filters_get_json_4xx(stream: RecordedServed, cameras: list[str], types: str | None) -> None:
    expected = expected_status(cameras, types)
    assume(expected != 101)  # accepted clients would count against the client limit of later examples
    params = [("camera", c) for c in cameras] + ([("types", types)] if types is not None else [])

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            code, headers, body = await handshake(session, f"{stream.url}/api/ws", params=params)
        assert code == expected, (params, body)
        assert headers["Content-Type"].startswith("application/json") and json.loads(body)["status"] == code

    asyncio.run(main())


def test_plain_get_is_told_to_upgrade(stream: RecordedServed) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{stream.url}/api/ws") as r:
            assert r.status == 426 and r.headers["Upgrade"] == "websocket"
            assert "WebSocket" in (await r.json())["error"]

    asyncio.run(main())


def test_client_limit(stream: RecordedServed) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await no_clients(session, stream)
            rejected = (await ws_stats(session, stream))["rejected_full"]
            clients = [await session.ws_connect(f"{stream.url}/api/ws?types=system") for _ in range(4)]
            code, headers, body = await handshake(session, f"{stream.url}/api/ws")
            assert code == 503 and int(headers["Retry-After"]) > 0
            assert "api.max_ws_clients=4" in json.loads(body)["error"]
            stats = await ws_stats(session, stream)
            assert stats["clients"] == 4 and stats["rejected_full"] == rejected + 1
            await clients.pop().close()
            await wait_for(lambda: len(stream.web.stream) == 3)
            async with session.ws_connect(f"{stream.url}/api/ws?types=results") as ws:
                assert (await receive_json(ws))["type"] == "result", "a freed place is usable again"
            for ws in clients:
                await ws.close()

    asyncio.run(main())


def test_slow_client_drops_oldest_while_others_get_everything(stream: RecordedServed) -> None:
    """A client that stops reading loses its oldest messages (and is told); a reader beside it loses nothing."""

    async def main() -> None:
        connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer, force_close=True)
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession(connector=connector) as slow_session:
            await no_clients(session, stream)
            slow = await slow_session.ws_connect(f"{stream.url}/api/ws")
            fast = await session.ws_connect(f"{stream.url}/api/ws?camera=cam&types=results")
            fast_got: list[dict] = []

            async def read_fast() -> None:
                async for msg in fast:
                    fast_got.append(json.loads(msg.data))

            reader = asyncio.create_task(read_fast())
            processed_before = stream.pipe.stats["cam"].processed
            # The slow client reads nothing: its socket, then its queue fill, then the oldest go.
            await wait_for(lambda: stream.web.stream.stats()["dropped"] > 50, timeout=120)
            assert stream.pipe.stats["cam"].processed > processed_before + 50, "the pipeline kept going"
            stats = await ws_stats(session, stream)
            assert stats["clients"] == 2 and stats["queued"] <= 2 * 16, "at most api.ws_queue per client"
            async with session.get(f"{stream.url}/metrics") as r:
                text = await r.text()
            assert "vigil_ws_clients 2.0" in text and "vigil_ws_messages_sent_total" in text
            dropped_line = next(ln for ln in text.splitlines() if ln.startswith("vigil_ws_messages_dropped_total"))
            assert float(dropped_line.split()[1]) > 50

            # Now it reads: what was buffered, then the notice of what was dropped, then live messages.
            got = await collect(slow, lambda m: any(x["type"] == "dropped" for x in m) and m[-1]["type"] == "result")
            notices = [m for m in got if m["type"] == "dropped"]
            assert notices[0]["count"] > 0 and set(notices[0]) == {"type", "count"}
            for cam in ("cam", "yard"):
                seqs = [r["seq"] for r in results(got, cam)]
                assert seqs == sorted(set(seqs)), "what gets through stays in order"
            await slow.close()

            # The reader got every result of its camera, in order, while the slow one was dropping.
            await wait_for(lambda: len(fast_got) >= 100, timeout=120)
            await fast.close()
            await reader
            assert all(m["type"] == "result" for m in fast_got), "no drops for the reader"
            seqs = [m["data"]["seq"] for m in fast_got]
            truth = [s for s in stream.recorder.seqs["cam"] if seqs[0] <= s <= seqs[-1]]
            assert seqs == truth

    asyncio.run(main())


def test_token_is_required_when_configured(guarded: RecordedServed) -> None:
    async def main() -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong-token-value"}):
                code, hdrs, body = await handshake(session, f"{guarded.url}/api/ws", headers)
                assert code == 401 and hdrs["WWW-Authenticate"].startswith("Bearer")
                assert json.loads(body)["status"] == 401
            code, _, _ = await handshake(session, f"{guarded.url}/api/ws?token=wrong-token-value")
            assert code == 401
            # A browser cannot set headers on a WebSocket: the token goes in the query, as for the page.
            async with session.ws_connect(f"{guarded.url}/api/ws?types=results&token={TOKEN}") as ws:
                assert (await receive_json(ws))["type"] == "result"
            async with session.ws_connect(f"{guarded.url}/api/ws?types=results", headers=auth) as ws:
                assert (await receive_json(ws))["type"] == "result"

    asyncio.run(main())


def test_vanished_clients_are_removed(guarded: RecordedServed) -> None:
    """A client that stops answering pings goes after a heartbeat or two; one that drops its TCP connection, at once."""

    async def main() -> None:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        hub = guarded.web.stream
        async with aiohttp.ClientSession(headers=auth) as session:
            await no_clients(session, guarded, auth)
            alive = await session.ws_connect(f"{guarded.url}/api/ws?types=results")
            silent = await session.ws_connect(f"{guarded.url}/api/ws?types=results", autoping=False)
            await wait_for(lambda: len(hub) == 2)
            # The live client reads (and so answers pings) while the silent one says nothing.
            reading = asyncio.create_task(collect(alive, lambda m: len(hub) < 2))
            await wait_for(lambda: len(hub) == 1, timeout=60)
            await reading
            assert not alive.closed and (await receive_json(alive))["type"] == "result", "the live one stays"
            await silent.close()

            broken = await session.ws_connect(f"{guarded.url}/api/ws")
            await wait_for(lambda: len(hub) == 2)
            transport = broken._response.connection.transport  # type: ignore[union-attr]
            transport.abort()  # gone without a close frame
            await wait_for(lambda: len(hub) == 1)
            await alive.close()
            await wait_for(lambda: len(hub) == 0)

    asyncio.run(main())


def test_stop_closes_clients_going_away(tiny_model: Path, small_video: Path) -> None:
    """Stop closes every client with 1001; one whose socket is backed up is cut off after a grace period."""

    async def main() -> None:
        connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer, force_close=True)
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession(connector=connector) as stuck_session:
            s = RecordedServed(stream_config(tiny_model, small_video, {"ws_queue": 4}, fps=60))
            s.__enter__()
            reader = await session.ws_connect(f"{s.url}/api/ws")

            async def read_until_closed() -> int | None:
                async for _ in reader:
                    pass
                return reader.close_code

            reading = asyncio.create_task(read_until_closed())
            stuck = await stuck_session.ws_connect(f"{s.url}/api/ws")  # never reads
            await wait_for(lambda: s.web.stream.stats()["dropped"] > 0, timeout=120)
            await asyncio.to_thread(s.__exit__, None, None, None)  # Served checks the pipeline stopped in 30 s
            assert await asyncio.wait_for(reading, 30) == aiohttp.WSCloseCode.GOING_AWAY
            assert len(s.web.stream) == 0
            await stuck.close()

    asyncio.run(main())
