"""Webhooks: the breaker and signature as units, delivery against a real local aiohttp receiver.

The receiver is a real aiohttp server on a loopback port; the outage test stops it and starts it again on the
same port. The service is driven by calling `on_event` with real `ObjectEvent`s (fast and exact), and once
through a real `LivePipeline` (tiny model: one centred person -> a `new` event).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from app.config import VigilConfig, WebhookConfig
from app.tracking.objects import ObjectEvent
from app.webhooks.breaker import CircuitBreaker
from app.webhooks.service import ObjectLabels, WebhookConfigError, WebhookService, matches
from app.webhooks.signing import SIGNATURE_HEADER, sign, verify

SECRET = "s3cret-key"


# ---- breaker and signing (pure) ---------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failures_to_open=3, open_s=10.0, clock=clock)
    assert b.state == "closed" and b.allow() and b.wait_s() == 0
    b.record_failure()
    b.record_failure()
    b.record_success()  # a success resets the consecutive count
    b.record_failure()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open" and not b.allow() and b.wait_s() == pytest.approx(10.0)
    clock.now += 4
    assert b.state == "open" and b.wait_s() == pytest.approx(6.0) and not b.allow()
    clock.now += 6
    assert b.state == "half_open" and b.wait_s() == 0
    assert b.allow()  # the one probe
    assert not b.allow()  # no second one while it is out
    b.record_failure()  # a failed probe reopens at once (no count to reach)
    assert b.state == "open" and b.wait_s() == pytest.approx(10.0) and b.opens == 2
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "closed"  # counting starts from zero again


def test_breaker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0.0)


def test_signature_is_github_style_hmac_sha256_of_the_body() -> None:
    body = b'{"type":"new","camera":"cam"}'
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == expected
    assert verify(SECRET, body, expected)
    assert not verify(SECRET, body + b" ", expected)
    assert not verify("other", body, expected)
    assert not verify(SECRET, body, None)
    assert SIGNATURE_HEADER == "X-Vigil-Signature"


def test_secret_file_errors_name_the_key(tmp_path: Path) -> None:
    missing = cfg_with([{"url": "http://127.0.0.1:9/h", "secret_file": str(tmp_path / "nope")}])
    with pytest.raises(WebhookConfigError, match=r"webhooks\.0\.secret_file: cannot read"):
        WebhookService(missing)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    hooks = [{"url": "http://127.0.0.1:9/a"}, {"url": "http://127.0.0.1:9/b", "secret_file": str(empty)}]
    with pytest.raises(WebhookConfigError, match=r"webhooks\.1\.secret_file: .* is empty"):
        WebhookService(cfg_with(hooks))


def test_cli_adds_the_service_only_when_webhooks_are_configured() -> None:
    from app.cli.run import _services

    base = {"http": {"enabled": False}}
    assert not any(isinstance(s, WebhookService) for s in _services(cfg_with([], **base)))
    assert any(isinstance(s, WebhookService) for s in _services(cfg_with([{"url": "http://h/x"}], **base)))


# ---- a real receiver ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A real aiohttp server on a fixed loopback port; records every request it answers 2xx."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
        self.statuses: list[int] = []  # answered in turn before 200 (for retry tests)
        self.requests = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "hook", userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.statuses:
            return web.Response(status=self.statuses.pop(0))
        self.received.setdefault(request.path.strip("/"), []).append((body, dict(request.headers)))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()  # reuse_address: same port again

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def bodies(self, path: str = "hook") -> list[dict]:
        return [json.loads(b) for b, _ in self.received.get(path, [])]


def cfg_with(webhooks: list[dict], **extra) -> VigilConfig:
    return VigilConfig.model_validate(
        {"cameras": [{"name": "cam", "source": "x.mp4"}, {"name": "yard", "source": "y.mp4"}],
         "webhooks": webhooks, **extra}
    )  # fmt: skip


def event(n: int, type_: str = "new", label: str = "person") -> ObjectEvent:
    obj = {"id": n, "label": label, "class_id": 0, "confidence": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}
    return ObjectEvent(type_, obj)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll `cond` on the loop until it holds or `timeout` passes (generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.01)
    return False


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def stats_of(svc: WebhookService) -> dict:
    [(key, section)] = svc.stats_sections().items()
    assert key == "webhooks"
    (entry,) = section.values()
    return entry


# ---- delivery -----------------------------------------------------------------------------------


def test_outage_queues_in_order_opens_the_breaker_and_recovers(tmp_path: Path, caplog) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    rx = Receiver()
    url = rx.url(userinfo="alice:hunter2@") + "?token=tok123"
    cfg = cfg_with([{
        "url": url, "secret_file": str(secret_file), "events": ["new", "end"], "failures_to_open": 2,
        "open_s": 0.5, "retry_initial_s": 0.02, "retry_max_s": 0.1, "max_attempts": 1000, "timeout_s": 5,
    }])  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="app.webhooks")

    async def main() -> None:
        svc = WebhookService(cfg)
        await rx.start()
        await svc.start(None)  # type: ignore[arg-type]  # the service never uses the pipeline
        try:
            for n in range(1, 4):
                svc.on_event("cam", event(n), None)
            assert await until(lambda: stats_of(svc)["delivered"] == 3)
            await rx.stop()
            for n in range(4, 11):  # during the outage
                svc.on_event("cam", event(n, "end" if n % 2 else "new"), None)
            assert await until(lambda: stats_of(svc)["breaker"] == "open")
            opened = stats_of(svc)
            assert opened["delivered"] == 3 and opened["queue_depth"] == 7 and opened["last_error"]
            await asyncio.sleep(1.2)  # a few probe periods pass while the receiver is down
            assert stats_of(svc)["queue_depth"] == 7
            await rx.start()  # same port
            assert await until(lambda: stats_of(svc)["delivered"] == 10)
            after = stats_of(svc)
            assert after["breaker"] == "closed" and after["queue_depth"] == 0
            assert after["retried"] >= 1 and after["failed"] == 0 and after["dropped"] == 0
            assert after["last_error"] is None
            # Open, not per event: during >= 1.2 s of outage only a few probes went out, not 7 x retries.
            assert after["retried"] < 20
        finally:
            await svc.stop()
            await rx.stop()

    run(main)
    ids = [b["object"]["id"] for b in rx.bodies()]
    assert ids == list(range(1, 11))  # every event, once, in order, the outage ones after it
    for body, headers in rx.received["hook"]:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Vigil-Event"] == json.loads(body)["type"]
    payload = rx.bodies()[0]
    assert payload["camera"] == "cam" and payload["type"] == "new" and payload["object"]["label"] == "person"
    assert len({h["X-Vigil-Delivery"] for _, h in rx.received["hook"]}) == 10
    # Credentials never shown: not in the stats key, not in any log line.
    key = next(iter(WebhookService(cfg).stats_sections()["webhooks"]))
    assert "hunter2" not in key and "tok123" not in key and "***" in key
    text = caplog.text
    assert "breaker open" in text and "breaker closed" in text
    assert "hunter2" not in text and "tok123" not in text and "alice" not in text


def test_filters_by_event_type_label_and_camera() -> None:
    rx = Receiver()
    cfg = cfg_with([
        {"url": rx.url("all"), "events": ["new", "update", "end", "alert"]},
        {"url": rx.url("default")},  # new, end, alert
        {"url": rx.url("cars"), "labels": ["car"]},
        {"url": rx.url("yard"), "cameras": ["yard"], "events": ["alert"]},
    ])  # fmt: skip
    sent = [("cam", event(1, "new")), ("cam", event(2, "update")), ("yard", event(3, "new", "car")),
            ("yard", event(4, "alert")), ("cam", event(5, "alert", "car")), ("cam", event(6, "end"))]  # fmt: skip

    async def main() -> None:
        svc = WebhookService(cfg)
        await rx.start()
        await svc.start(None)  # type: ignore[arg-type]
        try:
            for cam, ev in sent:
                svc.on_event(cam, ev, None)
            assert await until(lambda: sum(len(v) for v in rx.received.values()) == 6 + 5 + 2 + 1)
        finally:
            await svc.stop()
            await rx.stop()

    run(main)
    ids = {p: [b["object"]["id"] for b in rx.bodies(p)] for p in ("all", "default", "cars", "yard")}
    assert ids == {"all": [1, 2, 3, 4, 5, 6], "default": [1, 3, 4, 5, 6], "cars": [3, 5], "yard": [4]}
    # One serialisation per event: the webhooks got the very same bytes.
    assert rx.received["all"][2][0] == rx.received["cars"][0][0]
    hook = cfg.webhooks[3]
    assert matches(hook, "yard", event(9, "alert")) and not matches(hook, "cam", event(9, "alert"))


def test_the_label_filter_judges_an_object_by_the_label_it_was_announced_with() -> None:
    # The tracker is class-agnostic: object 7 is announced as a car and ends as a person (seen in the field:
    # a `labels: [person]` webhook got `end`s for objects whose `new` it never had).
    labels = ObjectLabels()
    people = WebhookConfig.model_validate({"url": "http://127.0.0.1:9/", "labels": ["person"],
                                           "events": ["new", "update", "end"]})  # fmt: skip
    sent = [ev for ev in (event(7, "new", "car"), event(7, "update", "person"), event(7, "end", "person"),
                          event(8, "new", "person"), event(8, "update", "car"), event(8, "end", "car"))
            if matches(people, "cam", ev, labels.label_for("cam", ev))]  # fmt: skip
    assert [(e.obj["id"], e.type) for e in sent] == [(8, "new"), (8, "update"), (8, "end")]
    assert not labels._announced, "ended objects are forgotten"


def test_full_queue_drops_the_oldest_and_counts() -> None:
    rx = Receiver()
    cfg = cfg_with([{"url": rx.url(), "queue_size": 3}])

    async def main() -> None:
        svc = WebhookService(cfg)
        for n in range(1, 8):  # before start: nothing is sending yet, so the queue fills
            svc.on_event("cam", event(n), None)
        assert stats_of(svc)["dropped"] == 4 and stats_of(svc)["queue_depth"] == 3
        await rx.start()
        await svc.start(None)  # type: ignore[arg-type]
        try:
            assert await until(lambda: stats_of(svc)["delivered"] == 3)
        finally:
            await svc.stop()
            await rx.stop()

    run(main)
    assert [b["object"]["id"] for b in rx.bodies()] == [5, 6, 7]


def test_retries_permanent_refusals_and_giving_up_are_counted() -> None:
    rx = Receiver()
    cfg = cfg_with([{"url": rx.url(), "retry_initial_s": 0.01, "retry_max_s": 0.02, "max_attempts": 3,
                     "failures_to_open": 100}])  # fmt: skip

    async def main() -> None:
        svc = WebhookService(cfg)
        await rx.start()
        await svc.start(None)  # type: ignore[arg-type]
        try:
            rx.statuses = [503, 429]  # two retryable failures, then 204
            svc.on_event("cam", event(1), None)
            assert await until(lambda: stats_of(svc)["delivered"] == 1)
            assert stats_of(svc)["retried"] == 2 and stats_of(svc)["failed"] == 0
            rx.statuses = [404]  # permanent: not retried
            svc.on_event("cam", event(2), None)
            assert await until(lambda: stats_of(svc)["failed"] == 1)
            s = stats_of(svc)
            assert s["rejected"] == 1 and s["retried"] == 2 and s["last_error"] == "HTTP 404"
            assert s["breaker"] == "closed"  # the receiver answered
            rx.statuses = [500, 302, 500]  # max_attempts failures: given up
            svc.on_event("cam", event(3), None)
            assert await until(lambda: stats_of(svc)["failed"] == 2)
            s = stats_of(svc)
            assert s["retried"] == 4 and s["rejected"] == 1 and s["delivered"] == 1
            svc.on_event("cam", event(4), None)  # the next one goes through
            assert await until(lambda: stats_of(svc)["delivered"] == 2)
        finally:
            await svc.stop()
            await rx.stop()

    run(main)
    assert [b["object"]["id"] for b in rx.bodies()] == [1, 4]
    assert rx.requests == 3 + 1 + 3 + 1


def test_stop_drops_and_counts_what_a_dead_receiver_left_queued() -> None:
    cfg = cfg_with([{"url": f"http://127.0.0.1:{free_port()}/hook", "failures_to_open": 1, "open_s": 60}])

    async def main() -> None:
        svc = WebhookService(cfg, stop_grace_s=600.0)
        await svc.start(None)  # type: ignore[arg-type]
        for n in range(1, 5):
            svc.on_event("cam", event(n), None)
        assert await until(lambda: stats_of(svc)["breaker"] == "open")
        await asyncio.wait_for(svc.stop(), 60)  # an open breaker gets no grace (else this would wait 600 s)
        s = stats_of(svc)
        assert s["dropped"] == 4 and s["queue_depth"] == 0 and s["delivered"] == 0
        await svc.stop()  # idempotent

    run(main)


def test_stop_lets_a_live_receiver_drain_the_queue_first() -> None:
    rx = Receiver()
    cfg = cfg_with([{"url": rx.url()}])

    async def main() -> None:
        svc = WebhookService(cfg, stop_grace_s=60.0)
        await rx.start()
        await svc.start(None)  # type: ignore[arg-type]
        for n in range(1, 6):
            svc.on_event("cam", event(n), None)
        await svc.stop()  # right away: the grace lets the five go out
        s = stats_of(svc)
        assert s["delivered"] == 5 and s["dropped"] == 0 and s["queue_depth"] == 0
        await rx.stop()

    run(main)
    assert [b["object"]["id"] for b in rx.bodies()] == [1, 2, 3, 4, 5]


# ---- through a live pipeline --------------------------------------------------------------------


def test_live_pipeline_posts_signed_new_events(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    from conftest import run_driven, wait_until

    from app.pipeline.live import LivePipeline

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    rx = Receiver()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook-receiver", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(rx.start(), loop).result(30)
    cfg = VigilConfig.model_validate({
        "cameras": [{"name": "cam", "source": str(small_video), "loop": True, "realtime": True, "fps": 20}],
        "model": {"path": str(tiny_model), "threads": 1},
        "output": {"json_lines": False, "status_interval_s": 0},
        "http": {"enabled": False},
        "webhooks": [{"url": rx.url(userinfo="bob:pw@"), "secret_file": str(secret_file)}],
    })  # fmt: skip
    svc = WebhookService(cfg)
    pipe = LivePipeline(cfg, [svc])
    stats: list[dict] = []

    def driver() -> None:
        assert wait_until(lambda: rx.received.get("hook"), 60), "no webhook arrived"
        stats.append(pipe.stats_document())

    try:
        run_driven(pipe, driver)
    finally:
        asyncio.run_coroutine_threadsafe(rx.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    body, headers = rx.received["hook"][0]
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["type"] == "new" and payload["camera"] == "cam" and payload["object"]["label"] == "person"
    assert payload["captured_at"] and "frame_age" in payload["latency_ms"]
    section = stats[0]["webhooks"]
    (key,) = section
    assert "pw@" not in key and section[key]["delivered"] >= 1


def test_webhook_figures_are_in_metrics() -> None:
    from app.web.metrics import Metrics

    hook = {"delivered": 7, "retried": 2, "failed": 1, "rejected": 0, "dropped": 3, "queue_depth": 4,
            "breaker": "open", "last_error": "HTTP 503"}  # fmt: skip
    text = Metrics(lambda: {"cameras": {}, "webhooks": {"http://***@hooks.local/x": hook}}).render().decode()
    assert 'vigil_webhook_events_total{outcome="delivered",webhook="http://***@hooks.local/x"} 7.0' in text
    assert 'vigil_webhook_events_total{outcome="dropped",webhook="http://***@hooks.local/x"} 3.0' in text
    assert 'vigil_webhook_queue_depth{webhook="http://***@hooks.local/x"} 4.0' in text
    assert 'vigil_webhook_breaker_state{webhook="http://***@hooks.local/x"} 2.0' in text
