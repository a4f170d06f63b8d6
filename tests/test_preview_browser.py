"""The preview page in real headless Chromium (Debian's chromium + chromium-driver, no downloads)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from support.web_harness import Served, web_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs the Debian packages chromium and chromium-driver (make test installs them)"
)

TOKEN = "browser-token-0123456789abcdef"


def chromium(user_data: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={user_data}",
        # WebRTC over loopback only: Chromium leaves loopback out of ICE and hides host addresses
        # behind mDNS names unless told otherwise.
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
        "--autoplay-policy=no-user-gesture-required", "--window-size=1000,700",
    ):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def test_page_plays_video_and_draws_boxes(tiny_model: Path, small_video: Path, tmp_path: Path, artifacts: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    cfg = web_config(tiny_model, small_video, require_token=True, token_file=str(tmp_path / "token"))
    with Served(cfg) as s:
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(f"{s.url}/?token={TOKEN}")
            deadline = time.monotonic() + 180  # a wait, not a bound: a loaded box connects slowly
            state: dict = {}
            while time.monotonic() < deadline:
                state = driver.execute_script(
                    "const v = document.getElementById('video');"
                    "return {w: v.videoWidth, t: v.currentTime, boxes: window.vigil.boxesDrawn,"
                    " matched: window.vigil.framesMatched, det: window.vigil.detections, state: window.vigil.state};"
                )
                if state["w"] > 0 and state["t"] > 1.0 and state["boxes"] > 5:
                    break
                time.sleep(0.25)
            t1 = state["t"]
            time.sleep(1.0)
            t2 = driver.execute_script("return document.getElementById('video').currentTime")
            driver.save_screenshot(str(artifacts / "preview-chromium.png"))
            logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        finally:
            driver.quit()
    assert state.get("state") == "connected", (state, logs)
    assert state["w"] == 160, "the video element has the preview's size"
    assert t2 > t1, "currentTime advances: the video plays"
    assert state["det"] > 5 and state["boxes"] > 5, "detections arrive and boxes are drawn on the overlay"
    assert state["matched"] > 0, "video frames are matched to capture sequence numbers (rtpTimestamp)"


def test_page_draws_the_latency_budget_bar_and_chart(
    tiny_model: Path, small_video: Path, tmp_path: Path, artifacts: Path
) -> None:
    from app.config import BudgetConfig

    (tmp_path / "token").write_text(TOKEN)
    cfg = web_config(tiny_model, small_video, require_token=True, token_file=str(tmp_path / "token"))
    # A 1 ms total target: exceeded after learning and a whole window, so the marker turns red.
    cfg = cfg.model_copy(update={"budget": BudgetConfig(window_s=2, total_ms=1)})
    with Served(cfg) as s:
        driver = chromium(tmp_path / "profile")
        try:
            driver.get(f"{s.url}/?token={TOKEN}")
            deadline = time.monotonic() + 180  # a wait, not a bound
            seen: dict = {}
            while time.monotonic() < deadline:
                seen = driver.execute_script(
                    "const b = window.vigil.budget;"
                    "return {bars: b.bars, segments: b.segments, points: b.chartPoints, exceeded: b.exceeded,"
                    " error: b.error, red: document.querySelectorAll('#budget .budget-marker.over').length,"
                    " canvas: document.querySelectorAll('#budget canvas.budget-chart').length};"
                )
                if seen["red"] and seen["points"] >= 2:
                    break
                time.sleep(0.25)
            driver.save_screenshot(str(artifacts / "preview-budget-chromium.png"))
        finally:
            driver.quit()
    assert seen["error"] is None, seen
    assert seen["bars"] > 0 and seen["segments"] > 0, "the stacked bar of the layers' p99 is drawn"
    assert seen["canvas"] == 1 and seen["points"] >= 2, "the frame age / fps chart has points"
    assert seen["exceeded"] == ["cam"] and seen["red"] == 1, "over budget: the total marker is red"
