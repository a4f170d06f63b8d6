"""`vigil mqtt tail`: watch what the appliance publishes, one readable line per message."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from datetime import datetime

from app.config import VigilConfig


def render(topic: str, payload: bytes, retained: bool) -> str:
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
        except ValueError:
            body = text
    return f"{stamp} {topic}{flag} {body}"


def tail(cfg: VigilConfig, topics: list[str], count: int | None, timeout: float | None, out=sys.stdout) -> int:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from app.mqtt.link import read_password

    m = cfg.mqtt
    base = m.base_topic or f"vigil/{cfg.device_id}"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)
    if m.username is not None:
        client.username_pw_set(m.username, read_password(m))
    if m.tls.enabled or m.tls.ca_file:
        client.tls_set(ca_certs=m.tls.ca_file, certfile=m.tls.cert_file, keyfile=m.tls.key_file)
        client.tls_insecure_set(m.tls.insecure)
    seen = 0
    done = threading.Event()
    subs = topics or [f"{base}/#"]

    def on_connect(c, u, flags, rc, props) -> None:
        if rc.is_failure:
            print(f"error: broker refused the connection: {rc}", file=sys.stderr)
            done.set()
            return
        for t in subs:
            c.subscribe(t, qos=1)

    def on_message(c, u, msg) -> None:
        nonlocal seen
        if done.is_set():
            return  # messages racing the disconnect after --count
        print(render(msg.topic, msg.payload, msg.retain), file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(m.host, m.port)
    except OSError as exc:
        print(f"error: cannot connect to {m.host}:{m.port}: {exc}", file=sys.stderr)
        return 2
    client.loop_start()
    print(f"watching {', '.join(subs)} on {m.host}:{m.port} (Ctrl-C to stop)", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait(timeout)
    client.disconnect()
    client.loop_stop()
    return 0


def add_cli(subparsers: argparse._SubParsersAction, load) -> None:
    p = subparsers.add_parser("mqtt", help="MQTT tools")
    sub = p.add_subparsers(dest="mqtt_command", required=True, metavar="ACTION")
    t = sub.add_parser("tail", help="subscribe to the appliance's topics and print them readably")
    t.add_argument("--config", "-c", default=None)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--topic", action="append", default=[], help="topic filter (default: <base>/#)")
    t.add_argument("--count", type=int, default=None, help="exit after N messages")
    t.add_argument("--timeout", type=float, default=None, help="exit after S seconds")

    def run(args: argparse.Namespace) -> int:
        cfg = load(args)
        if isinstance(cfg, int):
            return cfg
        return tail(cfg, args.topic, args.count, args.timeout)

    t.set_defaults(func=run)
