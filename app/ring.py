"""Shared-memory frame ring with latest-frame semantics.

One writer (a camera's capture thread) and any number of readers in other processes (inference workers,
later the preview encoder). Readers always take the newest complete frame; older frames are simply
overwritten, which is how latency stays bounded when the detector is slower than the camera.

Layout of the block (all offsets 64-byte aligned):
    global header: magic, version, slots, max_h, max_w, channels, latest_seq
    per slot: header (generation, seq, index, captured_mono_ns, height, width, pts, captured_wall)
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
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from app.types import FrameMeta

log = logging.getLogger(__name__)

MAGIC = 0x5649474C52494E47  # "VIGLRING"
LAYOUT_VERSION = 1
ALIGN = 64
GLOBAL_FIELDS = 8  # int64: magic, version, slots, max_h, max_w, channels, latest_seq, reserved
SLOT_INT_FIELDS = 6  # generation, seq, index, captured_mono_ns, height, width
SLOT_FLOAT_FIELDS = 2  # pts, captured_wall
SLOT_HEADER = ALIGN  # 8 * 8 bytes
_LATEST = 6
READ_RETRIES = 4


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True, slots=True)
class RingSpec:
    """Everything a reader needs to attach; picklable for spawned workers."""

    name: str
    slots: int
    max_height: int
    max_width: int
    channels: int = 3

    @property
    def slot_pixels(self) -> int:
        return self.max_height * self.max_width * self.channels

    @property
    def slot_stride(self) -> int:
        return SLOT_HEADER + _align(self.slot_pixels)

    @property
    def nbytes(self) -> int:
        return ALIGN + self.slots * self.slot_stride


class RingGoneError(FileNotFoundError):
    """The ring's shared memory no longer exists (its owner exited)."""


class FrameView:
    """A zero-copy view of one slot; valid only while the writer has not rewritten the slot."""

    __slots__ = ("_generation", "_ring", "_slot", "image", "meta")

    def __init__(self, ring: FrameRing, slot: int, generation: int, meta: FrameMeta, image: np.ndarray) -> None:
        self._ring = ring
        self._slot = slot
        self._generation = generation
        self.meta = meta
        self.image = image

    def is_valid(self) -> bool:
        return int(self._ring._slot_ints[self._slot][0]) == self._generation

    def copy(self) -> np.ndarray | None:
        out = self.image.copy()
        return out if self.is_valid() else None


class FrameRing:
    def __init__(self, spec: RingSpec, buf: memoryview, owner: bool, closer) -> None:
        self._spec = spec
        self._buf = buf
        self._owner = owner
        self._closer = closer
        self._closed = False
        self._header = np.ndarray((GLOBAL_FIELDS,), np.int64, buffer=buf, offset=0)
        self._slot_ints: list[np.ndarray] = []
        self._slot_floats: list[np.ndarray] = []
        self._slot_pixels: list[np.ndarray] = []
        for i in range(spec.slots):
            base = ALIGN + i * spec.slot_stride
            self._slot_ints.append(np.ndarray((SLOT_INT_FIELDS,), np.int64, buffer=buf, offset=base))
            self._slot_floats.append(
                np.ndarray((SLOT_FLOAT_FIELDS,), np.float64, buffer=buf, offset=base + 8 * SLOT_INT_FIELDS)
            )
            self._slot_pixels.append(np.ndarray((spec.slot_pixels,), np.uint8, buffer=buf, offset=base + SLOT_HEADER))
        self._seq = int(self._header[_LATEST])

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, slots: int, max_height: int, max_width: int, channels: int = 3, prefix: str = "vigil") -> FrameRing:
        if slots < 2:
            raise ValueError("a frame ring needs at least 2 slots")
        name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        spec = RingSpec(name, slots, max_height, max_width, channels)
        # The owner stays registered with multiprocessing's resource tracker on purpose: if this process
        # is SIGKILLed, the tracker unlinks the segment so /dev/shm does not fill up across restarts.
        shm = shared_memory.SharedMemory(name=name, create=True, size=spec.nbytes)
        ring = cls(spec, shm.buf, owner=True, closer=shm)
        ring._header[:] = [MAGIC, LAYOUT_VERSION, slots, max_height, max_width, channels, 0, 0]
        return ring

    @classmethod
    def attach(cls, spec: RingSpec) -> FrameRing:
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
        return self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def latest_seq(self) -> int:
        return int(self._header[_LATEST])

    # ---- writer -------------------------------------------------------------------------------

    def write(
        self, image: np.ndarray, *, index: int, pts: float, captured_mono_ns: int, captured_wall: float
    ) -> FrameMeta:
        s = self._spec
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
        ints[1:] = (seq, index, captured_mono_ns, h, w)
        floats[:] = (pts, captured_wall)
        ints[0] = gen + 2  # even: complete
        self._header[_LATEST] = seq
        self._seq = seq
        return FrameMeta(seq, index, pts, captured_mono_ns, captured_wall, h, w)

    # ---- readers ------------------------------------------------------------------------------

    def read_latest(self, after_seq: int = 0) -> FrameView | None:
        """The newest complete frame with seq > after_seq, as a zero-copy view; None if there is none."""
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
            sseq, index, mono, h, w = (int(v) for v in ints[1:])
            pts, wall = (float(v) for v in self._slot_floats[slot])
            if sseq != seq or int(ints[0]) != gen:
                continue
            image = self._slot_pixels[slot][: h * w * s.channels].reshape(h, w, s.channels)
            image.flags.writeable = False
            return FrameView(self, slot, gen, FrameMeta(sseq, index, pts, mono, wall, h, w), image)
        return None

    def read_seq(self, seq: int) -> FrameView | None:
        """Frame `seq` if the ring still holds it (it is overwritten `slots` frames later)."""
        if seq <= 0:
            return None
        s = self._spec
        slot = seq % s.slots
        ints = self._slot_ints[slot]
        gen = int(ints[0])
        if gen & 1 or int(ints[1]) != seq:
            return None
        _, index, mono, h, w = (int(v) for v in ints[1:])
        pts, wall = (float(v) for v in self._slot_floats[slot])
        image = self._slot_pixels[slot][: h * w * s.channels].reshape(h, w, s.channels)
        image.flags.writeable = False
        view = FrameView(self, slot, gen, FrameMeta(seq, index, pts, mono, wall, h, w), image)
        return view if view.is_valid() else None

    # ---- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._header = self._slot_ints = self._slot_floats = self._slot_pixels = None  # type: ignore[assignment]
        try:
            self._buf.release()
            self._closer.close()
        except BufferError:
            # A FrameView someone still holds pins the mapping; it is released when that view goes.
            log.debug("frame ring %s closed with views alive", self._spec.name)

    def unlink(self) -> None:
        if not self._owner:
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
