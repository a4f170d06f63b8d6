"""A live pipeline with the HTTP/WebRTC service, served from a background thread for the tests."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from app.config import VigilConfig
from app.pipeline.live import LivePipeline
from app.web.server import WebService


def web_config(model: Path, video: Path, **http) -> VigilConfig:
    return VigilConfig.model_validate(
        {
            "cameras": [{"name": "cam", "source": str(video), "loop": True, "realtime": True, "fps": 20}],
            "model": {"path": str(model), "threads": 1},
            "output": {"json_lines": False, "status_interval_s": 0},
            "http": {"port": 0, "preview_fps": 20, **http},
        }
    )


class Served:
    """`with Served(cfg) as s:` -> s.url, s.web, s.pipe; stops the pipeline (and checks it stopped) on exit."""

    def __init__(self, cfg: VigilConfig) -> None:
        self.cfg = cfg
        self.web = WebService(cfg)
        self.pipe = LivePipeline(cfg, [self.web])
        self._thread = threading.Thread(target=self._run, name="served-pipeline", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.summary = None

    def _run(self) -> None:
        async def main() -> None:
            task = asyncio.create_task(self.pipe.run())
            while not self.web.url and not task.done():
                await asyncio.sleep(0.01)
            self._ready.set()
            self.summary = await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by __enter__/__exit__
            self.error = exc
        finally:
            self._ready.set()

    @property
    def url(self) -> str:
        return self.web.url.rstrip("/")

    def __enter__(self) -> Served:
        self._thread.start()
        self._ready.wait(60)
        if self.error is not None:
            raise self.error
        assert self.web.url, "the HTTP service did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self.pipe._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.pipe.request_stop, "test done")
        self._thread.join(30)
        assert not self._thread.is_alive(), "the pipeline did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error
