"""`vigil mqtt tail`: watch what the appliance publishes, one readable line per message.

The command line (`app.cli.mqtt`) parses the options; this module connects, prints and says why it ended.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from app.config import VigilConfig

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode


def render(topic: str, payload: bytes | bytearray, retained: bool) -> str:
    """One output line: local time (ms), topic, `(retained)`, then a summary of the payload.

    Track events and detection documents are summarised, other JSON is compacted, JPEG snapshots are shown
    by size, anything else is printed as (UTF-8, replaced) text.
    """
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    flag = " (retained)" if retained else ""
    if payload[:3] == b"\xff\xd8\xff":
        body = f"<JPEG {len(payload)} bytes>"
    else:
        text = payload.decode("utf-8", "replace")
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("type") in ("new", "update", "end", "alert"):
                o = obj.get("object", {})
                body = (f"{obj['type'].upper():<6} #{o.get('id')} {o.get('label')} conf {o.get('confidence')} "
                        f"box {o.get('box')} {obj.get('reason', '')}").rstrip()  # fmt: skip
            elif isinstance(obj, dict) and "detections" in obj:
                dets = ", ".join(f"{d['label']} {d['confidence']:.2f} #{d.get('track_id')}" for d in obj["detections"])
                body = f"seq {obj.get('seq')}: [{dets}] age {obj.get('latency_ms', {}).get('frame_age')} ms"
            else:
                body = json.dumps(obj, separators=(",", ":"))
        except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not the shape we know
            body = text
    return f"{stamp} {topic}{flag} {body}"


class TailError(Exception):
    """Why the tail ended other than as asked, phrased for the user (the CLI prints it as its `error:` line)."""


def tail(
    cfg: VigilConfig, topics: list[str], count: int | None, timeout: float | None, out: TextIO = sys.stdout
) -> int:
    """Print the messages of `topics` (default: `<base>/#`) on `cfg`'s broker to `out`, one line each.

    Returns normally once `count` messages arrived, `timeout` seconds passed or Ctrl-C came after the broker
    accepted us, with the number of messages printed.

    Raises:
        TailError: anything that ends it otherwise (bad TLS/password config, refused, unreachable, TLS
            handshake, subscription refused, connection lost, no answer within `timeout`).
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from app.mqtt.link import MqttConfigError, check_tls_files, connect_error_text, read_password

    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    base = m.base_topic or f"vigil/{cfg.device_id}"
    # No reconnecting: a tail that lost its broker says so and exits instead of waiting silently.
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True, reconnect_on_failure=False)
    try:
        if m.username is not None:
            client.username_pw_set(m.username, read_password(m))
        if m.tls.enabled or m.tls.ca_file:
            check_tls_files(m)
            client.tls_set(ca_certs=m.tls.ca_file, certfile=m.tls.cert_file, keyfile=m.tls.key_file)
            client.tls_insecure_set(m.tls.insecure)
    except MqttConfigError as exc:
        raise TailError(f"invalid config: {exc}") from exc
    except (OSError, ValueError) as exc:  # a certificate or key file ssl cannot use
        raise TailError(f"invalid config: mqtt.tls: {exc}") from exc
    seen = 0
    done = threading.Event()
    accepted = threading.Event()
    failure: list[str] = []  # the first reason it ended other than as asked
    subs = topics or [f"{base}/#"]

    def fail(msg: str) -> None:
        if not done.is_set():  # a refusal is followed by a disconnect: report the first cause only
            failure.append(msg)
            done.set()

    def on_connect(c: Client, u: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None) -> None:
        if rc.is_failure:
            fail(f"{where} refused the connection: {rc}")
            return
        accepted.set()
        for t in subs:
            try:
                c.subscribe(t, qos=1)
            except ValueError as exc:  # paho checks the filter only here; raised, it would kill its thread
                return fail(f"--topic {t!r}: {exc}")
        print(f"watching {', '.join(subs)} on {where} (Ctrl-C to stop)", file=sys.stderr)

    def on_subscribe(c: Client, u: Any, mid: int, reason_codes: list[ReasonCode], props: Properties | None) -> None:
        for rc in reason_codes:
            if rc.is_failure:  # e.g. the broker's ACL: nothing would ever arrive
                fail(f"{where} refused the subscription to {', '.join(subs)}: {rc}")

    def on_disconnect(c: Client, u: Any, flags: DisconnectFlags, rc: ReasonCode, props: Properties | None) -> None:
        if accepted.is_set():
            fail(f"lost the connection to {where} ({rc})")
        else:  # e.g. a plain-text client on a TLS listener
            fail(f"{where} closed the connection before accepting it ({rc})")

    def on_message(c: Client, u: Any, msg: MQTTMessage) -> None:
        nonlocal seen
        if done.is_set():
            return  # messages racing the disconnect after --count
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a broker may pass on topics that are not UTF-8; show them escaped
            topic = bytes(getattr(msg, "_topic", b"?")).decode("utf-8", "backslashreplace")
        print(render(topic, msg.payload, msg.retain), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    try:
        client.connect(m.host, m.port)
    except OSError as exc:  # refused, unreachable, unknown host, TLS handshake or certificate
        raise TailError(f"cannot connect to {where}: {connect_error_text(exc)}") from exc

    def network() -> None:
        # paho's own loop thread dies silently on an exception (in a callback or the protocol): run the
        # loop here so that any such failure ends the tail as an error instead of a hang or exit 0.
        try:
            client.loop_forever()
        except Exception as exc:
            fail(f"the MQTT client failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=network, name="mqtt-tail", daemon=True)
    thread.start()
    try:
        done.wait(timeout)
    except KeyboardInterrupt:
        done.set()  # the user's Ctrl-C: as asked, whether or not the broker answered
    if not done.is_set() and not accepted.is_set():
        fail(f"{where} did not accept the connection within --timeout {timeout:g} s")
    done.set()  # from here on our own disconnect is no failure
    client.disconnect()
    thread.join(5)
    if failure:
        raise TailError(failure[0])
    return seen
