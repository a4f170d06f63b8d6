"""Shared-memory frame ring with latest-frame semantics.

One writer (a camera's capture thread) and any number of readers in other processes (inference workers,
later the preview encoder). Readers always take the newest complete frame; older frames are simply
overwritten, which is how latency stays bounded when the detector is slower than the camera.

Layout of the block (all offsets 64-byte aligned):
    global header: magic, version, slots, max_h, max_w, channels, latest_seq
    per slot: header (generation, seq, index, captured_mono_ns, height, width, written_mono_ns, motion, motion box
              count, pts, captured_wall; then up to MAX_MOTION_BOXES int32 xyxy motion boxes at byte 128)
              followed by max_h * max_w * channels pixel bytes (frames stored compactly, h*w*c)

Torn reads are prevented with a per-slot seqlock: the writer makes the generation odd, writes, then makes
it even; a reader remembers the generation it saw and re-checks it after using the pixels. Fields are
aligned 8-byte numpy stores, which are single instructions on x86-64 and AArch64; x86's TSO keeps them
in program order. AArch64 may reorder plain stores, so on Jetson a reader could in theory see the new
generation before the pixels: the generation check after the read still catches a slot being rewritten,
which is the case that matters in practice (a writer lapping a slow reader).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import cast

import numpy as np

from app.types import FrameMeta

log = logging.getLogger(__name__)

MAGIC = 0x5649474C52494E47  # "VIGLRING"
LAYOUT_VERSION = 3  # 2: written_mono_ns (header 128 bytes); 3: motion flag and boxes (header 384 bytes)
ALIGN = 64
GLOBAL_FIELDS = 8  # int64: magic, version, slots, max_h, max_w, channels, latest_seq, reserved
SLOT_INT_FIELDS = 9  # generation, seq, index, captured_mono_ns, height, width, written_mono_ns, motion, n_boxes
SLOT_FLOAT_FIELDS = 2  # pts, captured_wall
MAX_MOTION_BOXES = 16  # more motion boxes than this are merged by the motion detector before the write
MOTION_BOXES_OFFSET = 2 * ALIGN  # int32 (MAX_MOTION_BOXES, 4) xyxy pixels
SLOT_HEADER = 6 * ALIGN  # 88 bytes of fields + 256 bytes of boxes, padded to keep the pixels 64-byte aligned
_MOTION_NONE, _MOTION_STILL, _MOTION_MOVING = -1, 0, 1
_LATEST = 6
READ_RETRIES = 4


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True, slots=True)
class RingSpec:
    """Everything a reader needs to attach; picklable for spawned workers.

    Attributes:
        name: Shared-memory segment name (the file under /dev/shm).
        slots: Number of frame slots; a frame is overwritten ``slots`` frames after it was written.
        max_height: Largest frame height in pixels a slot holds.
        max_width: Largest frame width in pixels a slot holds.
        channels: Bytes per pixel (3 for BGR).
    """

    name: str
    slots: int
    max_height: int
    max_width: int
    channels: int = 3

    @property
    def slot_pixels(self) -> int:
        """Pixel bytes per slot: ``max_height * max_width * channels``."""
        return self.max_height * self.max_width * self.channels

    @property
    def slot_stride(self) -> int:
        """Bytes from one slot's header to the next: the 384-byte header plus the pixels, 64-byte aligned."""
        return SLOT_HEADER + _align(self.slot_pixels)

    @property
    def nbytes(self) -> int:
        """Size in bytes of the whole shared-memory block (global header plus all slots)."""
        return ALIGN + self.slots * self.slot_stride


class RingGoneError(FileNotFoundError):
    """The ring's shared memory no longer exists (its owner exited)."""


class FrameView:
    """A zero-copy view of one slot; valid only while the writer has not rewritten the slot.

    Attributes:
        meta: The frame's sequence number, source index, pts (s), capture times (monotonic ns, wall s) and size.
        image: ``(H, W, C)`` uint8 (BGR for cameras), read-only and backed by the shared memory: the writer
            may overwrite it at any time, so check ``is_valid()`` after using it or take ``copy()``.
    """

    __slots__ = ("_generation", "_ring", "_slot", "image", "meta")

    def __init__(self, ring: FrameRing, slot: int, generation: int, meta: FrameMeta, image: np.ndarray) -> None:
        self._ring = ring
        self._slot = slot
        self._generation = generation
        self.meta = meta
        self.image = image

    def is_valid(self) -> bool:
        """Whether the slot still holds this frame (the writer has not started rewriting it since the read)."""
        return int(self._ring._slot_ints[self._slot][0]) == self._generation

    def copy(self) -> np.ndarray | None:
        """Copy the pixels out of shared memory.

        Returns:
            An owned ``(H, W, C)`` uint8 copy, or None if the writer rewrote the slot during the copy (the copy
            may be torn, so it is discarded).
        """
        out = self.image.copy()
        return out if self.is_valid() else None


class FrameRing:
    """One camera's ring of frame slots in shared memory: a single writer, any number of readers.

    Build one with ``create`` (the owner, in the capture process) or ``attach`` (a reader, from a ``RingSpec``
    sent to another process). Also a context manager: leaving it closes and, for the owner, unlinks.

    Args:
        spec: Geometry and name of the block.
        buf: The mapped block, at least ``spec.nbytes`` long.
        owner: True for the creator, which alone unlinks the segment.
        closer: What ``close()`` closes after releasing ``buf``: the ``SharedMemory`` (owner) or the ``mmap``.
    """

    def __init__(
        self, spec: RingSpec, buf: memoryview, owner: bool, closer: shared_memory.SharedMemory | mmap.mmap
    ) -> None:
        self._spec = spec
        self._buf = buf
        self._owner = owner
        self._closer = closer
        self._closed = False
        self._header = np.ndarray((GLOBAL_FIELDS,), np.int64, buffer=buf, offset=0)
        self._slot_ints: list[np.ndarray] = []
        self._slot_floats: list[np.ndarray] = []
        self._slot_pixels: list[np.ndarray] = []
        self._slot_boxes: list[np.ndarray] = []
        for i in range(spec.slots):
            base = ALIGN + i * spec.slot_stride
            self._slot_ints.append(np.ndarray((SLOT_INT_FIELDS,), np.int64, buffer=buf, offset=base))
            self._slot_floats.append(
                np.ndarray((SLOT_FLOAT_FIELDS,), np.float64, buffer=buf, offset=base + 8 * SLOT_INT_FIELDS)
            )
            self._slot_boxes.append(
                np.ndarray((MAX_MOTION_BOXES, 4), np.int32, buffer=buf, offset=base + MOTION_BOXES_OFFSET)
            )
            self._slot_pixels.append(np.ndarray((spec.slot_pixels,), np.uint8, buffer=buf, offset=base + SLOT_HEADER))
        self._seq = int(self._header[_LATEST])

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, slots: int, max_height: int, max_width: int, channels: int = 3, prefix: str = "vigil", start_seq: int = 0
    ) -> FrameRing:
        """Create a new zeroed ring in shared memory, owned by this process.

        Args:
            slots: Number of frame slots, at least 2 (one being written while a reader holds another).
            max_height: Largest frame height in pixels that ``write`` accepts.
            max_width: Largest frame width in pixels that ``write`` accepts.
            channels: Bytes per pixel (3 for BGR).
            prefix: Start of the segment name, which continues ``-<pid>-<random hex>``.
            start_seq: The first frame gets ``start_seq + 1``: a ring replacing another continues its numbering,
                so answers about the old ring's frames read as older than the new ring's.

        Returns:
            The owning ring; ``spec`` is what readers in other processes pass to ``attach``.

        Raises:
            ValueError: ``slots`` is below 2.
            OSError: The segment could not be created (for example /dev/shm is full).
        """
        if slots < 2:
            raise ValueError("a frame ring needs at least 2 slots")
        name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        spec = RingSpec(name, slots, max_height, max_width, channels)
        # The owner stays registered with multiprocessing's resource tracker on purpose: if this process
        # is SIGKILLed, the tracker unlinks the segment so /dev/shm does not fill up across restarts.
        shm = shared_memory.SharedMemory(name=name, create=True, size=spec.nbytes)
        ring = cls(spec, cast(memoryview, shm.buf), owner=True, closer=shm)
        ring._header[:] = [MAGIC, LAYOUT_VERSION, slots, max_height, max_width, channels, start_seq, 0]
        ring._seq = start_seq
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> FrameRing:
        """Map an existing ring, created by another process, for reading.

        Args:
            spec: The owner's ``ring.spec``.

        Returns:
            A non-owning ring; closing it leaves the segment in place.

        Raises:
            RingGoneError: The segment no longer exists (its owner exited and it was unlinked).
            ValueError: The segment is smaller than ``spec`` says or is not a ring of this layout version.
        """
        # Not SharedMemory(name=...): before Python 3.13 it registers the segment with the resource
        # tracker that spawned children share with their parent, and the child's unregister (or exit)
        # would unlink the parent's segment or drop its crash protection (CPython issue 82300).
        path = f"/dev/shm/{spec.name}"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RingGoneError(f"frame ring {spec.name} does not exist (its owner has exited)") from None
        try:
            size = os.fstat(fd).st_size
            if size < spec.nbytes:
                raise ValueError(f"frame ring {spec.name} is {size} bytes, expected {spec.nbytes}")
            mm = mmap.mmap(fd, spec.nbytes)
        finally:
            os.close(fd)
        ring = cls(spec, memoryview(mm), owner=False, closer=mm)
        if int(ring._header[0]) != MAGIC or int(ring._header[1]) != LAYOUT_VERSION:
            ring.close()
            raise ValueError(f"{spec.name} is not a vigil frame ring of layout {LAYOUT_VERSION}")
        return ring

    # ---- properties ---------------------------------------------------------------------------

    @property
    def spec(self) -> RingSpec:
        """What a reader needs to ``attach`` to this ring."""
        return self._spec

    @property
    def name(self) -> str:
        """Shared-memory segment name."""
        return self._spec.name

    @property
    def latest_seq(self) -> int:
        """Sequence number of the newest complete frame, read from shared memory; 0 before the first write."""
        return int(self._header[_LATEST])

    # ---- writer -------------------------------------------------------------------------------

    def write(
        self,
        image: np.ndarray,
        *,
        index: int,
        pts: float,
        captured_mono_ns: int,
        captured_wall: float,
        motion: bool | None = None,
        motion_boxes: Sequence[Sequence[int]] = (),
    ) -> FrameMeta:
        """Copy a frame into the next slot and publish it as the latest (seqlock: generation odd, write, even).

        Args:
            image: ``(H, W, C)`` uint8 (BGR for cameras) with ``C == spec.channels``, ``H <= max_height`` and
                ``W <= max_width``; smaller frames are stored compactly.
            index: Frame index within the source (restarts when a file loops).
            pts: Presentation time in the source, in seconds.
            captured_mono_ns: ``time.monotonic_ns()`` when the frame was read.
            captured_wall: ``time.time()`` at the same instant, in seconds.
            motion: The camera's motion detector's verdict on this frame; None when motion detection is off.
            motion_boxes: Where it saw motion, xyxy frame pixels; at most ``MAX_MOTION_BOXES`` (more are an error).

        Returns:
            The stored frame's metadata; its ``seq`` is the previous one plus 1, its ``written_mono_ns`` the
            ``time.monotonic_ns()`` once the pixels were copied (the end of the `capture` latency layer).

        Raises:
            ValueError: ``image`` is not 3-D uint8, has the wrong channel count or is larger than the slots, or
                there are more than ``MAX_MOTION_BOXES`` motion boxes.
        """
        s = self._spec
        if len(motion_boxes) > MAX_MOTION_BOXES:
            raise ValueError(f"{len(motion_boxes)} motion boxes; a ring slot holds {MAX_MOTION_BOXES}")
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(f"frame must be HxWxC uint8, got shape {image.shape} dtype {image.dtype}")
        h, w, c = image.shape
        if c != s.channels or h > s.max_height or w > s.max_width:
            raise ValueError(
                f"frame of shape {image.shape} does not fit ring slots of {s.max_height}x{s.max_width}x{s.channels}"
            )
        seq = self._seq + 1
        slot = seq % s.slots
        ints, floats = self._slot_ints[slot], self._slot_floats[slot]
        gen = int(ints[0])
        ints[0] = gen + 1  # odd: being written
        np.copyto(self._slot_pixels[slot][: h * w * c].reshape(h, w, c), image)
        written_ns = time.monotonic_ns()
        boxes = tuple(tuple(int(v) for v in b) for b in motion_boxes)
        if boxes:
            self._slot_boxes[slot][: len(boxes)] = boxes
        flag = _MOTION_NONE if motion is None else _MOTION_MOVING if motion else _MOTION_STILL
        ints[1:] = (seq, index, captured_mono_ns, h, w, written_ns, flag, len(boxes))
        floats[:] = (pts, captured_wall)
        ints[0] = gen + 2  # even: complete
        self._header[_LATEST] = seq
        self._seq = seq
        return FrameMeta(seq, index, pts, captured_mono_ns, captured_wall, h, w, written_ns, motion, boxes)  # type: ignore[arg-type]

    def _meta(self, slot: int) -> FrameMeta:
        """The header of a slot as a FrameMeta (the caller checks the generation around it)."""
        sseq, index, mono, h, w, written, flag, n = (int(v) for v in self._slot_ints[slot][1:])
        pts, wall = (float(v) for v in self._slot_floats[slot])
        n = min(max(n, 0), MAX_MOTION_BOXES)
        boxes = tuple(tuple(b) for b in self._slot_boxes[slot][:n].tolist())
        motion = None if flag == _MOTION_NONE else flag == _MOTION_MOVING
        return FrameMeta(sseq, index, pts, mono, wall, h, w, written, motion, boxes)

    # ---- readers ------------------------------------------------------------------------------

    def read_latest(self, after_seq: int = 0) -> FrameView | None:
        """Take the newest complete frame, as a zero-copy view.

        Frames between ``after_seq`` and the newest are skipped: readers only ever want the latest.

        Args:
            after_seq: The last seq this reader handled; only a newer frame is returned.

        Returns:
            A view of the newest frame with ``seq > after_seq``, or None if there is none yet, or if the writer
            kept rewriting the slot through ``READ_RETRIES`` attempts.
        """
        s = self._spec
        for _ in range(READ_RETRIES):
            seq = int(self._header[_LATEST])
            if seq <= after_seq:
                return None
            slot = seq % s.slots
            ints = self._slot_ints[slot]
            gen = int(ints[0])
            if gen & 1:
                continue  # the writer lapped us and is rewriting this slot: look again
            meta = self._meta(slot)
            if meta.seq != seq or int(ints[0]) != gen:
                continue
            image = self._slot_pixels[slot][: meta.height * meta.width * s.channels].reshape(
                meta.height, meta.width, s.channels
            )
            image.flags.writeable = False
            return FrameView(self, slot, gen, meta, image)
        return None

    def read_seq(self, seq: int) -> FrameView | None:
        """Look up one frame by sequence number, as a zero-copy view.

        Args:
            seq: The frame's sequence number (from its ``FrameMeta``).

        Returns:
            The frame, or None if ``seq`` is not positive, or the ring no longer holds it (it is overwritten
            ``slots`` frames later), or its slot is being rewritten.
        """
        if seq <= 0:
            return None
        s = self._spec
        slot = seq % s.slots
        ints = self._slot_ints[slot]
        gen = int(ints[0])
        if gen & 1 or int(ints[1]) != seq:
            return None
        meta = self._meta(slot)
        image = self._slot_pixels[slot][: meta.height * meta.width * s.channels].reshape(
            meta.height, meta.width, s.channels
        )
        image.flags.writeable = False
        view = FrameView(self, slot, gen, meta, image)
        return view if view.is_valid() else None

    # ---- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the block from this process; idempotent. The segment itself stays until ``unlink``.

        Views still held keep the mapping alive until they are dropped.
        """
        if self._closed:
            return
        self._closed = True
        self._header = self._slot_ints = self._slot_floats = self._slot_pixels = self._slot_boxes = None  # type: ignore[assignment]
        try:
            self._buf.release()
            self._closer.close()
        except BufferError:
            # A FrameView someone still holds pins the mapping; it is released when that view goes.
            log.debug("frame ring %s closed with views alive", self._spec.name)

    def unlink(self) -> None:
        """Remove the segment from /dev/shm (owner only; a no-op for readers and when already gone)."""
        if not self._owner or not isinstance(self._closer, shared_memory.SharedMemory):
            return
        with contextlib.suppress(FileNotFoundError):
            self._closer.unlink()  # SharedMemory.unlink also drops the resource-tracker registration

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.unlink()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
