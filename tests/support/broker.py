"""A real mosquitto for tests: started on a free loopback port, killable and restartable on the same port,
with optional password file, TLS (self-signed CA made here with openssl) and persistence."""

from __future__ import annotations

import getpass
import queue
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls(directory: Path, san: str = "IP:127.0.0.1,DNS:localhost") -> TlsFiles:
    """CA + server certificate for 127.0.0.1/localhost (or the names in `san`, e.g. "DNS:other.example" for a
    certificate a client on 127.0.0.1 must refuse), made with the openssl CLI."""
    d = directory
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=vigil-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    (d / "san.ext").write_text(f"subjectAltName={san}\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key")


@dataclass
class Broker:
    workdir: Path
    port: int = field(default_factory=free_port)
    password: tuple[str, str] | None = None
    tls: TlsFiles | None = None
    persistence: bool = False
    proc: subprocess.Popen | None = None

    def _config(self) -> Path:
        # `user`: started as root, mosquitto would drop to the `mosquitto` user, which cannot read the
        # test's private temp dir; stay whoever runs the tests.
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error", f"user {getpass.getuser()}"]
        if self.password:
            pw = self.workdir / "passwd"
            pw.write_text("")
            subprocess.run(["mosquitto_passwd", "-b", str(pw), *self.password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self._config())], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def terminate(self) -> None:
        """SIGTERM: mosquitto saves its persistence database (queued messages) before exiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill()


class Subscriber:
    """A real paho subscriber collecting messages into a queue."""

    def __init__(self, broker: Broker, topic: str = "#", *, client_id: str | None = None, clean: bool = True,
                 username: str | None = None, password: str | None = None) -> None:  # fmt: skip
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.all: list[paho.MQTTMessage] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=clean)
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.tls.ca))
        self.client.reconnect_delay_set(1, 1)
        self.topic = topic
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("test subscriber could not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.all.append(msg)
        self.messages.put(msg)

    def wait_for(self, pred, timeout: float = 15.0) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if pred(msg):
                return msg
        raise AssertionError(
            f"no matching message within {timeout} s; got topics {sorted({m.topic for m in self.all})}"
        )

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        with self._lock:
            return [m for m in self.all if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
