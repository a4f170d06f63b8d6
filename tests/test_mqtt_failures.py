"""Broker failures, as the user sees them: `vigil mqtt tail` ends with one `error:` line and exit 2, and the
link (`vigil run`) logs the real reason (TLS, refused, not authorized) once per change and keeps it in
stats' `mqtt.last_error`. Real mosquitto, real certificates."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, wait_until
from support.broker import Broker, Subscriber, free_port, make_tls

from app.config import VigilConfig
from app.mqtt.service import MqttService
from app.mqtt.tail import render

PASSWORD = "s3cret-pass"


@pytest.fixture
def wrong_name_broker(tmp_path: Path):
    """TLS with a certificate valid for other.example only: a client on 127.0.0.1 must refuse it."""
    (tmp_path / "wrong").mkdir()
    b = Broker(tmp_path / "wrong", tls=make_tls(tmp_path / "wrong", san="DNS:other.example")).start()
    yield b
    b.stop()


@pytest.fixture
def password_broker(tmp_path: Path):
    (tmp_path / "pw").mkdir()
    b = Broker(tmp_path / "pw", password=("vigil", PASSWORD)).start()
    yield b
    b.stop()


# ---- vigil mqtt tail ------------------------------------------------------------------------------


def tail(port: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app", "mqtt", "tail", "--config", str(REPO / "configs/default.yaml"),
           "--set", "mqtt.host=127.0.0.1", "--set", f"mqtt.port={port}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_error(res: subprocess.CompletedProcess, *reasons: str) -> str:
    """Exit 2, exactly one `error:` line naming the reason, no traceback; returns that line."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert any(r in errors[0] for r in reasons), res.stderr
    return errors[0]


def test_tail_wrong_password_exits_2_with_the_refusal(password_broker: Broker, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong-pass-123\n")
    res = tail(password_broker.port, "--set", "mqtt.username=vigil", "--set", f"mqtt.password_file={bad}",
               "--timeout", "5")  # fmt: skip
    line = assert_error(res, "Not authorized", "Bad user name or password")
    assert "refused" in line and "wrong-pass-123" not in res.stderr


def test_tail_without_username_on_a_password_broker_exits_2(password_broker: Broker) -> None:
    assert_error(tail(password_broker.port, "--timeout", "5"), "Not authorized", "Bad user name or password")


def test_tail_tls_failures_exit_2_with_the_reason(wrong_name_broker: Broker, tmp_path: Path) -> None:
    ca = wrong_name_broker.tls.ca
    res = tail(wrong_name_broker.port, "--set", f"mqtt.tls.ca_file={ca}", "--timeout", "5")
    assert_error(res, "IP address mismatch")
    (tmp_path / "other").mkdir()
    unknown_ca = make_tls(tmp_path / "other").ca
    res = tail(wrong_name_broker.port, "--set", f"mqtt.tls.ca_file={unknown_ca}", "--timeout", "5")
    assert "certificate" in assert_error(res, "TLS certificate rejected")
    # Plain text on a TLS listener: the broker drops the connection before any CONNACK.
    assert_error(tail(wrong_name_broker.port, "--timeout", "5"), "closed the connection before accepting it")


def test_tail_nothing_listening_exits_2() -> None:
    assert_error(tail(free_port(), "--timeout", "5"), "Connection refused")


def test_tail_config_it_cannot_use_exits_2(broker: Broker, tmp_path: Path) -> None:
    res = tail(broker.port, "--set", "mqtt.username=vigil", "--set", f"mqtt.password_file={tmp_path / 'none'}")
    assert_error(res, "mqtt.password_file: cannot read")
    res = tail(broker.port, "--set", f"mqtt.tls.ca_file={tmp_path / 'none.crt'}")
    assert_error(res, "mqtt.tls.ca_file")
    assert_error(tail(broker.port, "--topic", "a/#/b", "--timeout", "5"), "--topic 'a/#/b'")


def test_tail_timeout_before_the_broker_answers_exits_2() -> None:
    # A listening socket that never speaks MQTT: TCP connects, no CONNACK ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        res = tail(silent.getsockname()[1], "--timeout", "1")
    assert_error(res, "did not accept the connection within --timeout")


def test_tail_count_or_timeout_after_connecting_exits_0_and_a_lost_broker_exits_2(broker: Broker) -> None:
    pub = Subscriber(broker, "unused")
    for topic, payload in (("t/1", '{"detections": [{"x": 1}]}'), ("t/2", "hello")):  # the first: odd JSON
        pub.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    pub.close()
    res = tail(broker.port, "--topic", "t/#", "--count", "2", "--timeout", "60")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 2, res.stderr
    res = tail(broker.port, "--topic", "t/#", "--timeout", "1")
    assert res.returncode == 0 and "error" not in res.stderr, res.stderr
    cmd = [sys.executable, "-m", "app", "mqtt", "tail", "--config", str(REPO / "configs/default.yaml"),
           "--set", f"mqtt.port={broker.port}", "--topic", "t/#", "--timeout", "600"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "t/1" in proc.stdout.readline()  # connected and subscribed
        broker.kill()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_error(subprocess.CompletedProcess(cmd, proc.returncode, out, err), "lost the connection")


def test_render_survives_payloads_of_an_unexpected_shape() -> None:
    for payload in (b'{"detections": [{"x": 1}]}', b'{"detections": 3}', b'{"type": "new", "object": 1}'):
        assert payload.decode() in render("t", payload, False)


# ---- the link (vigil run) -------------------------------------------------------------------------


def service(port: int, **mqtt) -> MqttService:
    m = {"enabled": True, "host": "127.0.0.1", "port": port, "reconnect_min_s": 0.5, "reconnect_max_s": 1, **mqtt}
    cfg = VigilConfig.model_validate({"device_id": "dev", "cameras": [{"name": "cam", "source": "none.mp4"}],
                                      "mqtt": m})  # fmt: skip
    return MqttService(cfg)


def attempts_of(svc: MqttService) -> list[int]:
    """Counts connection attempts (paho's on_pre_connect, which the link leaves free)."""
    seen = [0]

    def count(client, userdata) -> None:
        seen[0] += 1

    svc.link.client.on_pre_connect = count
    return seen


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == "app.mqtt.link")


def test_link_logs_the_tls_reason_once_and_clears_it_on_connect(
    wrong_name_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.mqtt.link")
    (tmp_path / "good").mkdir()
    good_tls = make_tls(tmp_path / "good")
    # Trust both CAs, so the only thing wrong with the first broker is the name on its certificate.
    bundle = tmp_path / "bundle.crt"
    bundle.write_text(wrong_name_broker.tls.ca.read_text() + good_tls.ca.read_text())
    svc = service(wrong_name_broker.port, tls={"ca_file": str(bundle)})
    attempts = attempts_of(svc)
    svc.link.start()
    good = None
    try:
        assert wait_until(lambda: attempts[0] >= 4, 60), attempts
        assert logged(caplog, "IP address mismatch, certificate is not valid for '127.0.0.1'") == 1, caplog.text
        [(name, section)] = svc.stats_sections().items()
        assert name == "mqtt" and not section["connected"]
        assert "IP address mismatch" in section["last_error"]
        # The right certificate on the same port: connected, and the error is gone from stats.
        wrong_name_broker.kill()
        good = Broker(tmp_path / "good", port=wrong_name_broker.port, tls=good_tls).start()
        assert wait_until(lambda: svc.link.stats.connected, 60), svc.link.stats.last_error
        assert svc.stats_sections()["mqtt"]["last_error"] is None
    finally:
        svc.link.stop(timeout=0.5)
        if good is not None:
            good.stop()


def test_link_logs_a_refused_connack_once(password_broker: Broker, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    bad = tmp_path / "bad"
    bad.write_text("wrong-pass-123")
    svc = service(password_broker.port, username="vigil", password_file=str(bad))
    attempts = attempts_of(svc)
    svc.link.start()
    try:
        assert wait_until(lambda: attempts[0] >= 4, 60), attempts
        assert logged(caplog, "refused the connection") == 1, caplog.text
        last = svc.stats_sections()["mqtt"]["last_error"]
        assert "refused" in last and ("not authorized" in last or "username or password" in last), last
    finally:
        svc.link.stop(timeout=0.5)
    assert "wrong-pass-123" not in caplog.text and PASSWORD not in caplog.text


def test_link_logs_connection_refused_and_a_dropped_connection_once(
    wrong_name_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.mqtt.link")
    # Nothing listening, then plain text on a TLS listener (the broker drops it before any CONNACK).
    for port, reason in ((free_port(), "Connection refused"), (wrong_name_broker.port, "closed the connection")):
        svc = service(port)
        attempts = attempts_of(svc)
        svc.link.start()
        try:
            assert wait_until(lambda: attempts[0] >= 4, 60), attempts  # noqa: B023
            assert logged(caplog, reason) == 1, caplog.text
            assert reason in svc.stats_sections()["mqtt"]["last_error"]
        finally:
            svc.link.stop(timeout=0.5)


def test_tail_survives_a_topic_that_is_not_utf8() -> None:
    """mosquitto refuses such topics from publishers, but a broker may pass one on: a one-shot broker on a
    raw socket sends it. The tail prints it escaped and goes on (it used to print paho's traceback, lose its
    network thread and exit 0 at the timeout, or hang without one)."""
    import struct
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def one_shot_broker() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(4096)  # CONNECT
            conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
            sub = conn.recv(4096)  # SUBSCRIBE: fixed header, remaining length, packet id
            conn.sendall(b"\x90\x03" + sub[2:4] + b"\x01")  # SUBACK, QoS 1
            for topic, payload in ((b"vigil/\xff\xfe", b"one"), (b"vigil/ok", b"two")):
                body = struct.pack(">H", len(topic)) + topic + payload
                conn.sendall(bytes([0x30, len(body)]) + body)  # PUBLISH, QoS 0
            threading.Event().wait(5)

    t = threading.Thread(target=one_shot_broker, daemon=True)
    t.start()
    try:
        res = tail(port, "--count", "2", "--timeout", "20")
    finally:
        server.close()
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and "vigil/\\xff\\xfe" in lines[0] and "one" in lines[0] and "vigil/ok two" in lines[1]
