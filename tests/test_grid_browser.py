"""The multi-camera preview page in real headless Chromium: the grid, overlays, the large view, the events panel.

The grid, zones, masks, regions and the large view run against a real Vigil server and pipeline (two cameras
of a small clip, the tiny model). The events panel is written against the event store's JSON contract
(`GET /api/events`, `GET /api/events/<id>/snapshot.jpg`): a small real aiohttp server serves the page's own
files, that contract and real JPEGs, and pushes an object event over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiohttp import web
from support.grid_config import grid_config
from support.web_harness import Served
from test_preview_browser import CHROMIUM, DRIVER, chromium

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs the Debian packages chromium and chromium-driver (make test installs them)"
)

TOKEN = "grid-browser-token-0123456789abcdef"

# Per tile: the image, what the overlay drew, and the alpha of the canvas at a point of a zone, of the
# object mask and of nothing (0..1 of the frame).
TILES_JS = """
const out = {};
for (const tile of document.querySelectorAll('#grid .tile')) {
  const name = tile.dataset.camera, img = tile.querySelector('img'), c = tile.querySelector('canvas');
  const alpha = (x, y) => !c.width ? -1
    : c.getContext('2d').getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data[3];
  const result = window.vigil.resultFor(name, Number(tile.dataset.seq || 0));
  out[name] = {...window.vigil.grid.tiles[name], natural: img.naturalWidth, visible: !tile.closest('[hidden]'),
               resultRegions: result ? result.regions.length : null,
               badge: !tile.querySelector('.badge').hidden,
               zoneAlpha: alpha(0.15, 0.15), maskAlpha: alpha(0.1, 0.9),
               motionClass: tile.classList.contains('motion')};
}
return {tiles: out, view: window.vigil.grid.view, ws: window.vigil.grid.ws, results: window.vigil.grid.results,
        events: window.vigil.events};
"""

VIDEO_JS = """
const v = document.getElementById('video');
return {w: v.videoWidth, t: v.currentTime, boxes: window.vigil.boxesDrawn, state: window.vigil.state,
        camera: window.vigil.largeCamera, zones: window.vigil.largeZonesDrawn, view: window.vigil.grid.view,
        largeHidden: document.getElementById('large').hidden, gridHidden: document.getElementById('grid').hidden};
"""


def poll(driver, script: str, cond: Callable[[dict], bool], timeout: float) -> dict:
    """Run `script` until `cond` holds on its result or `timeout` s passed; the last result either way."""
    deadline = time.monotonic() + timeout
    while True:
        seen = driver.execute_script(script)
        if cond(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.25)


def test_grid_shows_every_camera_with_zones_regions_and_opens_the_large_view(
    tiny_model: Path, small_video: Path, tmp_path: Path, artifacts: Path
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    cfg = grid_config(tiny_model, small_video, cameras=2, require_token=True, token_file=str(tmp_path / "token"))
    with Served(cfg) as s:
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(f"{s.url}/?token={TOKEN}")
            grid = poll(driver, TILES_JS, lambda g: len(g["tiles"]) == 2 and all(
                t["natural"] > 0 and t["zones"] == 2 and t["boxesDrawn"] > 0 and t["loaded"] >= 2
                for t in g["tiles"].values()), timeout=90)  # fmt: skip
            driver.save_screenshot(str(artifacts / "grid-chromium.png"))
            before = {n: t["regionsDrawn"] for n, t in grid["tiles"].items()}

            # Regions are drawn as the results report them (the worker may report none: then nothing to draw);
            # the events-panel test below checks the drawing with results of known regions and motion.
            driver.find_element("id", "show-regions").click()
            with_regions = poll(driver, TILES_JS, lambda g: all(
                t["regions"] == t["resultRegions"] and t["resultRegions"] is not None for t in g["tiles"].values()),
                timeout=30)  # fmt: skip
            driver.find_element("id", "show-regions").click()
            without = poll(driver, TILES_JS, lambda g: all(t["regions"] == 0 for t in g["tiles"].values()), 30)

            driver.find_element("css selector", '#grid .tile[data-camera="cam1"]').click()
            large = poll(driver, VIDEO_JS, lambda v: v["w"] > 0 and v["t"] > 1.0 and v["boxes"] > 3, timeout=60)
            t2 = poll(driver, VIDEO_JS, lambda v: v["t"] > large["t"], timeout=10)["t"]
            driver.save_screenshot(str(artifacts / "grid-large-chromium.png"))
            driver.find_element("id", "back").click()
            back = poll(driver, TILES_JS, lambda g: g["view"] == "grid" and all(
                t["loaded"] > grid["tiles"][n]["loaded"] + 1 for n, t in g["tiles"].items()), timeout=30)  # fmt: skip
            viewers = poll(driver, "return fetch('/api/cameras', {headers: window.vigil.headers}).then(r => r.json())",
                           lambda d: all(c["viewers"] == 0 for c in d["cameras"]), timeout=30)  # fmt: skip
            logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        finally:
            driver.quit()
    for name, t in grid["tiles"].items():
        assert t["visible"] and t["natural"] == 160, f"{name}: the tile shows a loaded frame of the camera"
        assert t["zones"] == 2 and t["masks"] == 2, f"{name}: both zones and both masks drawn"
        assert t["zoneAlpha"] > 0 and t["maskAlpha"] > 0, f"{name}: the zone and the object mask are filled"
        assert t["boxesDrawn"] > 0, f"{name}: the result's boxes are drawn over the tile"
        assert before[name] == 0, "regions are off by default"
    assert grid["ws"] == "open" and grid["results"] > 0, "results arrive over the WebSocket stream"
    assert grid["events"]["error"] is None, "the events panel copes with this server (404: 'no events')"
    for t in with_regions["tiles"].values():
        assert t["regions"] == t["resultRegions"], ("the checkbox draws the result's regions", logs)
    assert all(t["regions"] == 0 for t in without["tiles"].values()), "unchecked: no regions"
    assert large["camera"] == "cam1" and large["state"] == "connected", (large, logs)
    assert large["gridHidden"] and not large["largeHidden"] and large["view"] == "large"
    assert large["w"] == 160 and t2 > large["t"], "the large view's WebRTC video plays"
    assert large["zones"] > 0, "the large view draws the zones too"
    assert back["view"] == "grid", "back to the grid: its tiles refresh again"
    assert all(c["viewers"] == 0 for c in viewers["cameras"]), "leaving the large view closes its WebRTC viewer"


# ---- the events panel against the events contract --------------------------------------------------------


def jpeg(w: int, h: int, colour: tuple[int, int, int]) -> bytes:
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = colour
    cv2.rectangle(image, (w // 4, h // 4), (3 * w // 4, 3 * h // 4), (255, 255, 255), 2)
    return cv2.imencode(".jpg", image)[1].tobytes()


def event_entry(i: int, camera: str, label: str, zones: list[str], snapshot: bool, ended: bool) -> dict:
    """One entry of `GET /api/events`, as the event store's contract has it."""
    eid = f"{camera}-{i}"
    return {
        "id": eid, "camera": camera, "label": label, "track_id": i,
        "start_time": "2026-01-02T03:04:05.000Z", "end_time": "2026-01-02T03:04:17.000Z" if ended else None,
        "top_score": 0.91, "score": 0.8, "current_zones": zones, "entered_zones": zones, "stationary": False,
        "box": [10, 20, 60, 100], "box_normalized": [0.06, 0.17, 0.38, 0.83], "has_snapshot": snapshot,
        "snapshot_url": f"/api/events/{eid}/snapshot.jpg" if snapshot else None,
        "last_event": "end" if ended else "new",
    }  # fmt: skip


class ContractServer:
    """The page's files plus the API contract it reads, on a real aiohttp server in a thread.

    `events` None answers 404 (a server without the events API); `push("event", ...)` sends one object event to
    the page's WebSocket (`push`, results too). Requests must carry the token (header or ?token=), as on Vigil.
    """

    def __init__(self) -> None:
        self.events: list[dict] | None = None
        self.requests: list[str] = []
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="contract-server", daemon=True)
        self.url = ""

    def __enter__(self) -> ContractServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def push(self, kind: str, data: dict) -> None:
        """Send `{"type": kind, "data": data}` to every connected page, as Vigil's stream does."""

        async def push() -> None:
            for ws in list(self._sockets):
                await ws.send_str(json.dumps({"type": kind, "data": data}))

        asyncio.run_coroutine_threadsafe(push(), self._loop).result(10)

    async def _start(self) -> None:
        static = resources.files("app.web") / "static"
        app = web.Application(middlewares=[self._auth])

        async def index(request: web.Request) -> web.Response:
            return web.Response(text=(static / "index.html").read_text(), content_type="text/html")

        async def latest(request: web.Request) -> web.Response:
            return web.Response(
                body=jpeg(160, 120, (40, 80, 40)), content_type="image/jpeg", headers={"X-Frame-Seq": "1"}
            )

        async def budget(request: web.Request) -> web.Response:
            return web.json_response({"cameras": {}, "history": {}})

        app.router.add_get("/", index)
        app.router.add_static("/static/", str(static))
        app.router.add_get("/api/cameras", self._cameras)
        app.router.add_get("/api/cameras/{name}/latest.jpg", latest)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/events/{id}/snapshot.jpg", self._snapshot)
        app.router.add_get("/api/ws", self._ws)
        app.router.add_get("/api/budget", budget)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        self.requests.append(request.path_qs)
        if request.path.startswith("/api/") and TOKEN not in (
            request.headers.get("Authorization", "").removeprefix("Bearer "), request.query.get("token")
        ):  # fmt: skip
            return web.json_response({"error": "a valid token is required", "status": 401}, status=401)
        return await handler(request)

    async def _cameras(self, request: web.Request) -> web.Response:
        cams = [{"name": n, "viewers": 0, "zones": [], "object_mask": [], "motion_mask": [], "motion_enabled": True,
                 "detect": {"fps": 5, "idle_interval_s": 10, "regions": True}} for n in ("front", "back")]  # fmt: skip
        return web.json_response({"cameras": cams, "max_viewers": 4, "preview_fps": 15, "grid_fps": 1})

    async def _events(self, request: web.Request) -> web.Response:
        if self.events is None:
            return web.json_response({"error": "Not Found", "status": 404}, status=404)
        limit = int(request.query.get("limit", "50"))
        return web.json_response({"events": self.events[:limit]})

    async def _snapshot(self, request: web.Request) -> web.Response:
        if not any(e["id"] == request.match_info["id"] and e["has_snapshot"] for e in self.events or []):
            return web.json_response({"error": "no snapshot", "status": 404}, status=404)
        return web.Response(body=jpeg(320, 240, (30, 30, 160)), content_type="image/jpeg")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            self._sockets.discard(ws)
        return ws


PANEL_JS = """
const e = window.vigil.events, items = [...document.querySelectorAll('#event-list li.event')];
return {...e, empty: !document.getElementById('events-empty').hidden,
        emptyText: document.getElementById('events-empty').textContent, ws: window.vigil.grid.ws,
        wsEvents: window.vigil.grid.events,
        items: items.map(li => ({id: li.dataset.id, text: li.textContent,
                                 thumb: (li.querySelector('img.thumb') || {}).naturalWidth || 0,
                                 zones: [...li.querySelectorAll('.zone')].map(z => z.textContent)})),
        viewer: !document.getElementById('snapshot-view').hidden,
        large: document.getElementById('snapshot-large').naturalWidth};
"""


def test_grid_follows_a_live_reload_without_a_page_reload(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    """A reload that removes a camera, adds one and redraws a zone reaches an open page through the stream's
    `config_reloaded` event: the tiles follow (config order), the new zone is drawn, the new camera's frames
    load, and the large view of the removed camera falls back to the grid."""
    from test_reload import ConfigFile, reload

    cfg = grid_config(tiny_model, small_video, cameras=2)
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    with Served(cfg) as s:
        file = ConfigFile(tmp_path / "vigil.yaml", data)
        s.pipe.reloader.source = file.source()
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(s.url + "/")
            poll(driver, TILES_JS, lambda g: len(g["tiles"]) == 2 and all(
                t["loaded"] >= 1 and t["zones"] == 2 for t in g["tiles"].values()), timeout=90)  # fmt: skip
            driver.find_element("css selector", '#grid .tile[data-camera="cam1"]').click()
            large = poll(driver, VIDEO_JS, lambda v: v["view"] == "large" and v["camera"] == "cam1", timeout=30)
            assert large["view"] == "large", large
            data["cameras"][0]["zones"] = data["cameras"][0]["zones"][:1]
            del data["cameras"][1]
            data["cameras"].append({"name": "cam9", "source": str(small_video), "loop": True, "fps": 10})
            file.write()
            answer = reload(s.pipe)
            assert answer["status"] == "applied", answer
            after = poll(driver, TILES_JS, lambda g: g["view"] == "grid" and sorted(g["tiles"]) == ["cam0", "cam9"]
                         and g["tiles"]["cam0"]["zones"] == 1 and g["tiles"]["cam9"]["loaded"] >= 1, 60)  # fmt: skip
            order = driver.execute_script(
                "return [...document.querySelectorAll('#grid .tile')].map(t => t.dataset.camera)"
                " .concat([window.vigil.grid.syncs, document.getElementById('grid').dataset.count])"
            )
        finally:
            driver.quit()
    assert after["view"] == "grid" and sorted(after["tiles"]) == ["cam0", "cam9"], after
    assert after["tiles"]["cam0"]["zones"] == 1 and after["tiles"]["cam9"]["natural"] > 0, after
    assert order[:2] == ["cam0", "cam9"] and order[2] >= 1 and order[3] == "2", order


def test_events_panel_lists_the_contract_live_with_thumbnails_and_opens_a_snapshot(
    tmp_path: Path, artifacts: Path
) -> None:
    with ContractServer() as server:
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(f"{server.url}/?token={TOKEN}")
            missing = poll(driver, PANEL_JS, lambda p: p["available"] is False and p["ws"] == "open", timeout=30)
            server.events = [
                event_entry(2, "back", "car", [], snapshot=False, ended=False),
                event_entry(1, "front", "person", ["driveway", "porch"], snapshot=True, ended=True),
            ]
            server.push("event", {"type": "new", "camera": "back", "object": {"label": "car"}})
            listed = poll(driver, PANEL_JS, lambda p: len(p["items"]) == 2 and p["thumbsLoaded"] >= 1, timeout=30)
            driver.save_screenshot(str(artifacts / "events-panel-chromium.png"))
            driver.find_element("css selector", '#event-list li[data-id="front-1"]').click()
            opened = poll(driver, PANEL_JS, lambda p: p["viewer"] and p["large"] > 0, timeout=15)
            driver.find_element("id", "snapshot-view").click()
            closed = poll(driver, PANEL_JS, lambda p: not p["viewer"], timeout=10)
        finally:
            driver.quit()
    assert missing["empty"] and missing["emptyText"] == "no events" and missing["items"] == [], missing
    assert missing["error"] is None
    assert listed["wsEvents"] >= 1 and listed["available"] is True and listed["error"] is None
    assert [i["id"] for i in listed["items"]] == ["back-2", "front-1"], "newest first, as served"
    assert not listed["empty"]
    back, front = listed["items"]
    assert "car" in back["text"] and "back" in back["text"] and "ongoing" in back["text"] and back["thumb"] == 0
    assert "no snapshot" in back["text"]
    assert (
        "person" in front["text"] and "front" in front["text"] and "12 s" in front["text"] and "0.91" in front["text"]
    )
    assert front["zones"] == ["driveway", "porch"] and front["thumb"] == 320, "the snapshot thumbnail loaded"
    assert opened["opened"] == "front-1" and opened["large"] == 320, "a click shows the snapshot large"
    assert closed["opened"] is None
    assert any(r.startswith("/api/events?limit=30") for r in server.requests)
    assert any(r.startswith("/api/events/front-1/snapshot.jpg?token=") for r in server.requests)


# One result of camera `front` for the frame its latest.jpg serves (seq 1): a box, motion and two regions.
FRONT_RESULT = {
    "camera": "front", "seq": 1, "width": 160, "height": 120, "motion": True,
    "regions": [[0, 0, 80, 60], [80, 60, 160, 120]],
    "detections": [{"label": "person", "class_id": 0, "confidence": 0.9, "box": [40, 30, 80, 110],
                    "box_normalized": [0.25, 0.25, 0.5, 0.9167]}],
}  # fmt: skip


def test_grid_draws_regions_and_motion_of_the_results_when_asked(tmp_path: Path, artifacts: Path) -> None:
    with ContractServer() as server:
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(f"{server.url}/?token={TOKEN}")
            poll(driver, TILES_JS, lambda g: g["ws"] == "open" and g["tiles"].get("front", {}).get("natural"), 30)
            server.push("result", FRONT_RESULT)
            off = poll(driver, TILES_JS, lambda g: g["tiles"]["front"]["boxes"] == 1, timeout=15)["tiles"]["front"]
            driver.find_element("id", "show-regions").click()
            on = poll(driver, TILES_JS, lambda g: g["tiles"]["front"]["regions"] == 2, timeout=15)["tiles"]
            driver.save_screenshot(str(artifacts / "grid-regions-chromium.png"))
            driver.find_element("id", "show-regions").click()
            again = poll(driver, TILES_JS, lambda g: g["tiles"]["front"]["regions"] == 0, timeout=15)["tiles"]
        finally:
            driver.quit()
    assert off["boxes"] == 1 and off["regions"] == 0 and off["motion"] is True
    assert not off["motionClass"] and not off["badge"], "motion is shown only with the option on"
    assert on["front"]["regions"] == 2 and on["front"]["motionClass"] and on["front"]["badge"], on
    assert on["back"]["regions"] == 0 and not on["back"]["motionClass"], "no result for back: nothing drawn"
    assert again["front"]["regions"] == 0 and not again["front"]["motionClass"] and not again["front"]["badge"]
