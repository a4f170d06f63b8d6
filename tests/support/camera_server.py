"""A network camera for tests: Motion-JPEG over HTTP (multipart/x-mixed-replace, as many IP cameras
serve it) on a free loopback port, from the frames of a real video. It can go away and come back
(`outage()`/`restore()`): streams are cut and new connections refused, like a camera that lost power."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import cv2

BOUNDARY = "vigilframe"


def _frames(video: Path, limit: int = 100) -> list[bytes]:
    cap = cv2.VideoCapture(str(video))
    out: list[bytes] = []
    while len(out) < limit:
        ok, image = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", image)[1].tobytes())
    cap.release()
    return out


class MjpegCamera:
    def __init__(self, video: Path, fps: float = 25.0) -> None:
        self.jpegs = _frames(video)
        self.fps = fps
        self.available = threading.Event()
        self.available.set()
        self.frames_sent = 0
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if not camera.available.is_set():
                    self.close_connection = True
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                i = 0
                try:
                    while camera.available.is_set() and not camera._closed.is_set():
                        jpeg = camera.jpegs[i % len(camera.jpegs)]
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                            + jpeg
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        camera.frames_sent += 1
                        i += 1
                        time.sleep(1.0 / camera.fps)
                except OSError:
                    pass
                self.close_connection = True

        self._closed = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, name="mjpeg-camera", daemon=True)

    def start(self) -> MjpegCamera:
        self._thread.start()
        return self

    def outage(self) -> None:
        self.available.clear()

    def restore(self) -> None:
        self.available.set()

    def close(self) -> None:
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()
