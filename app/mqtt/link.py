"""The broker connection: paho-mqtt 2.x (callback API v2), reconnecting, with a bounded outbox for QoS>0.

Why an outbox of our own rather than paho's queue: paho drops the *newest* message when its queue is
full and keeps no order guarantee between messages it retransmits after a reconnect and messages
published right after it. Here QoS>0 messages wait in a bounded deque (overflow drops the oldest and
counts it) and one sender thread hands them to paho in order, at most `window` unacknowledged at a time.
After a reconnect the sender first waits until paho has redelivered what was in flight, so subscribers
see events in order; QoS 1 may still deliver a message twice, as the protocol allows.

The sender thread exists so that `publish()` callers (the asyncio loop) never hold our lock while paho
holds its own: paho calls `on_publish` with its message lock held, and taking locks in opposite orders
from two threads would deadlock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from app.config import ConfigError, MqttConfig
from app.secret_files import SecretFileError, read_secret_file

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 20
REDELIVERY_TIMEOUT_S = 10.0  # after a reconnect, give paho this long to redeliver its in-flight messages


class MqttConfigError(ConfigError):
    """The MQTT settings cannot work: no password where one is named, a missing TLS file, ..."""


@dataclass(slots=True)
class Outgoing:
    """A QoS>0 message waiting in the outbox or in flight (published, not yet acknowledged).

    Attributes:
        topic: The MQTT topic.
        payload: The message body.
        qos: 1 or 2.
        retain: The broker keeps it as the topic's retained message.
        seq: Enqueue order, used to put unacknowledged messages back in order after a reconnect.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int


@dataclass(slots=True)
class LinkStats:
    """Counters and state of one MQTT link, reported in stats and /stats.

    Attributes:
        connected: The broker accepted the connection and it has not dropped since.
        connects: Successful connections (CONNACK accepted).
        disconnects: Connections lost after being accepted.
        published: Messages handed to paho.
        acked: QoS>0 messages the broker acknowledged.
        dropped_offline_qos0: QoS 0 messages dropped while disconnected.
        dropped_queue_full: Oldest QoS>0 messages dropped because the outbox reached `mqtt.offline_queue`.
        last_error: Why the last connection attempt failed or dropped; "" once connected.
        connected_since: Wall-clock time (s since the epoch) of the current connection, None if never.
        extra: Counters the owning service adds.
    """

    connected: bool = False
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    dropped_offline_qos0: int = 0
    dropped_queue_full: int = 0
    last_error: str = ""
    connected_since: float | None = None
    extra: dict[str, int] = field(default_factory=dict)


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from a file or the environment; never from the config file itself."""
    if cfg.password_file:
        try:
            return read_secret_file(cfg.password_file, "mqtt.password_file")
        except SecretFileError as exc:
            raise MqttConfigError(str(exc)) from exc  # the type callers catch; the text is the reader's
    if cfg.password_env:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise MqttConfigError(f"mqtt.password_env: environment variable {cfg.password_env} is not set")
        return value
    return None


def check_tls_files(cfg: MqttConfig) -> None:
    """Missing certificate files as a config error: ssl's own FileNotFoundError names no file."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(cfg.tls, key)
        if path and not Path(path).is_file():
            raise MqttConfigError(f"mqtt.tls.{key}: {path} does not exist")


def connect_error_text(exc: BaseException) -> str:
    """Why a connection attempt failed, in words.

    The certificate check's own reason ("IP address mismatch, certificate is not valid for '127.0.0.1'"), the
    socket's ("Connection refused"), else the exception's.
    """
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"TLS certificate rejected: {exc.verify_message.rstrip('.')}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_CONNACK_HINTS = {
    "Bad user name or password": "bad username or password (check mqtt.username / password_file)",
    "Not authorized": "not authorized (check mqtt.username / password_file and the broker's ACL)",
}


class MqttLink:
    """A paho client that never blocks its caller: QoS>0 messages queue in an outbox while offline.

    A sender thread keeps at most INFLIGHT_WINDOW messages unacknowledged and, after a reconnect, waits for
    paho to redeliver what was in flight before sending more. The status topic carries `online` (retained)
    and the last will `offline`.

    Args:
        cfg: The `mqtt` section: broker, credentials, TLS, backoff and the offline queue size.
        client_id: MQTT client id.
        status_topic: Topic of the retained `online`/`offline` availability message.
        on_connected: Called (on paho's network thread) after each accepted connection.
        on_message: Called with (topic, payload) for each message on `subscriptions`.
        subscriptions: Topic filters subscribed at QoS 1 on every connect.

    Raises:
        MqttConfigError: the password cannot be read, a password without a username, or a missing TLS file.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        status_topic: str,
        *,
        on_connected: Callable[[], None] | None = None,
        on_message: Callable[[str, bytes | bytearray], None] | None = None,
        subscriptions: list[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.status_topic = status_topic
        self.on_connected = on_connected
        self.on_message_cb = on_message
        self.subscriptions = list(subscriptions or [])
        self.stats = LinkStats()
        self._outbox: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}
        self._early_acks: set[int] = set()
        self._seq = 0
        self._redeliver_until: float | None = None
        self._publishing = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._refused = False  # the broker answered the last attempt with a refusing CONNACK
        self._sender: threading.Thread | None = None
        password = read_password(cfg)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, reconnect_on_failure=True
        )
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, password)
        elif password is not None:
            raise MqttConfigError("mqtt: a password is configured but no mqtt.username")
        if cfg.tls.enabled or cfg.tls.ca_file:
            check_tls_files(cfg)
            self.client.tls_set(
                ca_certs=cfg.tls.ca_file,
                certfile=cfg.tls.cert_file,
                keyfile=cfg.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            self.client.tls_insecure_set(cfg.tls.insecure)
        self.client.will_set(status_topic, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(max(1, round(cfg.reconnect_min_s)), max(1, round(cfg.reconnect_max_s)))
        self.client.max_inflight_messages_set(INFLIGHT_WINDOW)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_connect_fail = self._on_connect_fail

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (paho's loop thread) and start the sender thread; never blocks."""
        host = self.cfg.host
        # First, so that a failure the network thread logs at once reads after it.
        tls = self.cfg.tls.enabled or self.cfg.tls.ca_file
        log.info("mqtt: connecting to %s:%d%s", host, self.cfg.port, " (TLS)" if tls else "")
        try:
            socket.getaddrinfo(host, self.cfg.port)
        except socket.gaierror as exc:
            # Not fatal: DNS may come up later on an appliance that boots before the network.
            self._error(f"mqtt.host {host!r} cannot be resolved ({exc.strerror}); retrying in the background")
        self.client.connect_async(host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Flush what we can, say `offline` (retained), disconnect."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.stats.connected and self.pending():
            time.sleep(0.05)
        if self.stats.connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(Exception):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        self.client.disconnect()
        self.client.loop_stop()
        if self._sender is not None:
            self._sender.join(2.0)

    # ---- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Never blocks. QoS 0 is fire-and-forget (dropped while disconnected); QoS>0 is queued."""
        data = payload.encode() if isinstance(payload, str) else payload
        if qos == 0:
            if self.stats.connected:
                self.client.publish(topic, data, qos=0, retain=retain)
                self.stats.published += 1
            else:
                self.stats.dropped_offline_qos0 += 1
            return
        with self._wake:
            self._seq += 1
            if len(self._outbox) >= self.cfg.offline_queue:
                self._outbox.popleft()
                self.stats.dropped_queue_full += 1
            self._outbox.append(Outgoing(topic, data, qos, retain, self._seq))
            self._wake.notify()

    def pending(self) -> int:
        """QoS>0 messages not yet acknowledged: queued plus in flight."""
        with self._lock:
            return len(self._outbox) + len(self._inflight)

    def queue_depth(self) -> int:
        """QoS>0 messages queued and not yet handed to paho."""
        return len(self._outbox)

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._can_send():
                    self._wake.wait(0.5)
                    self._check_redelivery()
                if self._stopping:
                    return
                msg = self._outbox.popleft()
                self._publishing = True
            info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            with self._wake:
                self._publishing = False
                early = info.mid in self._early_acks
                self._early_acks.clear()
                if info.rc != paho.MQTT_ERR_SUCCESS and info.rc != paho.MQTT_ERR_NO_CONN:
                    self._outbox.appendleft(msg)  # e.g. paho's own queue full: try again shortly
                    self._wake.wait(0.1)
                    continue
                self.stats.published += 1
                if early:
                    self.stats.acked += 1
                else:
                    self._inflight[info.mid] = msg

    def _can_send(self) -> bool:
        return (
            self.stats.connected
            and self._redeliver_until is None
            and bool(self._outbox)
            and len(self._inflight) < INFLIGHT_WINDOW
        )

    def _check_redelivery(self) -> None:
        """Called with the lock held: end the post-reconnect wait once paho redelivered (or gave up)."""
        if self._redeliver_until is None:
            return
        if not self._inflight:
            self._redeliver_until = None
        elif time.monotonic() > self._redeliver_until:
            # paho did not redeliver: put them back in front, in order (a duplicate is QoS 1-legal).
            for msg in sorted(self._inflight.values(), key=lambda m: m.seq, reverse=True):
                self._outbox.appendleft(msg)
            self._inflight.clear()
            self._redeliver_until = None

    # ---- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused = True
            text = _CONNACK_HINTS.get(str(reason_code), str(reason_code))
            self._error(f"mqtt broker {self.cfg.host}:{self.cfg.port} refused the connection: {text}")
            return
        self.stats.connects += 1
        self.stats.connected_since = time.time()
        self.stats.last_error = ""
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        if self.on_connected is not None:
            try:
                self.on_connected()
            except Exception:
                log.exception("mqtt: on_connected hook failed")
        with self._wake:
            self.stats.connected = True
            if self._inflight:
                self._redeliver_until = time.monotonic() + REDELIVERY_TIMEOUT_S
            self._wake.notify_all()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._wake:
            was = self.stats.connected
            self.stats.connected = False
        refused, self._refused = self._refused, False
        if was:
            self.stats.disconnects += 1
            if not self._stopping:
                self._error(f"mqtt: lost the broker ({reason_code}); reconnecting with backoff")
        elif not refused and not self._stopping:
            # Dropped before any CONNACK (e.g. a plain-text client on a TLS listener): no callback but this one
            # says so. After a refusing CONNACK the refusal is the reason and stays in last_error.
            self._error(
                f"mqtt: {self.cfg.host}:{self.cfg.port} closed the connection before accepting it ({reason_code}); "
                "retrying with backoff"
            )

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho passes no reason, but calls this from inside its `except OSError:` around the attempt: the
        # exception being handled is the reason (TLS certificate, refused, unreachable).
        exc = sys.exc_info()[1]
        where = f"{self.cfg.host}:{self.cfg.port}"
        if isinstance(exc, socket.gaierror):  # start()'s words, so a name that never resolves is logged once
            self._error(f"mqtt.host {self.cfg.host!r} cannot be resolved ({exc.strerror}); retrying in the background")
        elif exc is not None:
            self._error(f"mqtt: cannot connect to {where}: {connect_error_text(exc)}; retrying with backoff")
        else:
            self._error(f"mqtt: cannot connect to {where}; retrying with backoff")

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        with self._wake:
            if self._inflight.pop(mid, None) is not None:
                self.stats.acked += 1
            elif self._publishing:
                self._early_acks.add(mid)  # acked before the sender could register it
            self._check_redelivery()
            self._wake.notify()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.on_message_cb is not None:
            try:
                self.on_message_cb(message.topic, message.payload)
            except Exception:
                log.exception("mqtt: command handler failed for %s", message.topic)

    def _error(self, msg: str) -> None:
        """Logged once per change of reason, not once per retry; kept in stats until the next connect."""
        if msg != self.stats.last_error:
            log.warning("%s", msg)
        self.stats.last_error = msg
