"""One image in its own shared-memory segment: how a detection request's pixels reach the worker.

The parent owns the segment (created, written once, unlinked when the request ends); the worker maps it
read-only for the request's preprocessing and unmaps it at once. Segments are named `vigil-<pid>-img-<hex>`
(the owner's pid first, as for frame rings) so a leak is attributable, and the owner stays registered with
multiprocessing's resource tracker: if the parent is SIGKILLed, the tracker unlinks what it left.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import cast

import numpy as np


class SharedImageGone(FileNotFoundError):
    """The segment no longer exists: its request ended (answered elsewhere, expired or cancelled)."""


@dataclass(frozen=True, slots=True)
class SharedImageSpec:
    """What a reader needs to map the image: segment name and `(height, width)` in pixels (3 channels, uint8)."""

    name: str
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        """Bytes of the HxWx3 uint8 image."""
        return self.height * self.width * 3


class SharedImage:
    """An owned segment holding one HxWx3 uint8 BGR image.

    Args:
        image: The pixels, copied in once.

    Raises:
        ValueError: `image` is not HxWx3 uint8 or has no pixels.
        OSError: The segment could not be created (/dev/shm full).
    """

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        h, w = int(image.shape[0]), int(image.shape[1])
        self.spec = SharedImageSpec(f"vigil-{os.getpid()}-img-{secrets.token_hex(6)}", h, w)
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(
            name=self.spec.name, create=True, size=self.spec.nbytes
        )
        dst = np.ndarray((h, w, 3), np.uint8, buffer=cast(memoryview, self._shm.buf))
        dst[:] = image
        del dst  # no export of the buffer may outlive close()

    def close(self) -> None:
        """Unmap and unlink (idempotent); a worker that mapped it keeps its mapping until it lets go."""
        shm, self._shm = self._shm, None
        if shm is not None:
            shm.close()
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()


@contextlib.contextmanager
def mapped_image(spec: SharedImageSpec) -> Iterator[np.ndarray]:
    """Map the image read-only for the duration of the block: an HxWx3 uint8 view, valid only inside it.

    Not `SharedMemory(name=...)`: before Python 3.13 that registers the segment with the resource tracker
    the spawned worker shares with its parent, whose unregister would drop the parent's crash protection
    (CPython issue 82300; the frame ring does the same).

    Raises:
        SharedImageGone: The segment no longer exists.
        ValueError: It is smaller than `spec` says.
    """
    try:
        fd = os.open(f"/dev/shm/{spec.name}", os.O_RDONLY)
    except FileNotFoundError:
        raise SharedImageGone(f"shared image {spec.name} is gone") from None
    try:
        if os.fstat(fd).st_size < spec.nbytes:
            raise ValueError(f"shared image {spec.name} is smaller than {spec.height}x{spec.width}x3")
        mm = mmap.mmap(fd, spec.nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        view = np.frombuffer(mm, np.uint8, spec.nbytes).reshape(spec.height, spec.width, 3)
        yield view
        del view
    finally:
        with contextlib.suppress(BufferError):
            mm.close()  # BufferError: the caller kept a view; the mapping then ends with that view
