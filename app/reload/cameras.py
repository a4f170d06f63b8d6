"""Cameras added, removed or changed by a reload, applied to the running pipeline's rings, captures and worker.

Order matters for shared memory: a removed camera's worker is told to detach and its capture is abandoned (it
never writes again) before its ring is closed and unlinked, which the caller does last, after the services
(preview encoders) let go of it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from app.capture.loop import CaptureLoop
from app.config import CameraConfig
from app.inference.protocol import AttachRing, DetachRing, SetCameraDetect
from app.ring import FrameRing

if TYPE_CHECKING:
    from app.pipeline.live import LivePipeline


def create_ring(cam: CameraConfig, start_seq: int = 0) -> FrameRing:
    """A new ring sized for the camera (the part of adding a camera that can fail: /dev/shm full).

    Raises:
        OSError: The segment could not be created.
    """
    return FrameRing.create(cam.ring_slots, cam.max_height, cam.max_width, start_seq=start_seq)


def add_camera(pipe: LivePipeline, cam: CameraConfig, ring: FrameRing) -> None:
    """Start the camera's capture into `ring`, track it, and have the serving worker read it."""
    pipe.open_camera(cam, ring)
    pipe.tracking.add_camera(cam.name)
    pipe.supervisor.send(AttachRing(cam.name, ring.spec))
    set_detect(pipe, cam)


def set_detect(pipe: LivePipeline, cam: CameraConfig) -> None:
    """Tell the serving worker the camera's `detect` section (its fps cap, idle interval, regions)."""
    pipe.supervisor.send(SetCameraDetect(cam.name, cam.detect))


def remove_camera(pipe: LivePipeline, name: str) -> FrameRing:
    """Detach the worker, abandon the capture, end the camera's objects and drop its stats.

    Returns:
        Its ring, still mapped and linked: close and unlink it once nothing reads it any more.
    """
    pipe.supervisor.send(DetachRing(name))
    pipe.captures.pop(name).abandon()  # never writes again, even if stuck in a driver read now
    ring = pipe.rings.pop(name)
    pipe.stats.pop(name, None)
    if not pipe.detection_enabled(name):  # forget a switch-off: a camera added later under this name starts on
        pipe.set_detection(name, True)
    for event in pipe.tracking.remove_camera(name):
        pipe.fanout.event(name, event)
    return ring


def restart_camera(pipe: LivePipeline, cam: CameraConfig, new_ring: FrameRing | None) -> FrameRing | None:
    """A changed camera: a fresh capture with its new settings, into a new ring when its size changed.

    Its counters and stats go on (a new ring continues the old one's frame numbers).

    Returns:
        The replaced ring to close and unlink later, or None when the ring stays.
    """
    old = pipe.captures[cam.name]
    old.abandon()
    if new_ring is None:
        ring, lock, replaced = pipe.rings[cam.name], old.write_lock, None
    else:
        ring, lock, replaced = new_ring, threading.Lock(), pipe.rings[cam.name]
        pipe.rings[cam.name] = ring
        pipe.supervisor.send(AttachRing(cam.name, ring.spec))  # replaces the old ring in the worker
    fresh = CaptureLoop(cam, ring, old.counters, write_lock=lock, faults=pipe.cfg.debug.faults)
    pipe.captures[cam.name] = fresh
    fresh.start()
    return replaced
