"""Letterbox + BGR->RGB + /255 + NCHW, matching Ultralytics' LetterBox(auto=False, center=True) exactly.

Parity matters more than elegance here: a one-pixel difference in padding moves every box, so the
rounding rules below are Ultralytics' own (`round(d - 0.1)` / `round(d + 0.1)`, per-axis gains from the
rounded resized size).

A leaf module (numpy and OpenCV only): the backends letterbox with it too (host fallback, GPU kernel
parameters), and they must not depend on `app.inference`, which sits above them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class LetterboxGeometry:
    """How an original frame maps into the model input; used to map boxes back."""

    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]
    resized_wh: tuple[int, int]
    top: int
    left: int

    @classmethod
    def compute(cls, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> LetterboxGeometry:
        """Scale (aspect kept, never cropped) and centre a `src_hw` frame in a `dst_hw` input.

        Both sizes are (height, width) pixels.
        """
        h, w = src_hw
        r = min(dst_hw[0] / h, dst_hw[1] / w)
        new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
        dw, dh = (dst_hw[1] - new_w) / 2, (dst_hw[0] - new_h) / 2
        return cls(src_hw, dst_hw, (new_w, new_h), round(dh - 0.1), round(dw - 0.1))

    def boxes_to_source(self, xyxy: np.ndarray) -> np.ndarray:
        """Map (N,4) xyxy boxes from model-input pixels to source pixels, clipped, in place."""
        gain_x = self.resized_wh[0] / self.src_hw[1]
        gain_y = self.resized_wh[1] / self.src_hw[0]
        xyxy[:, [0, 2]] -= self.left
        xyxy[:, [1, 3]] -= self.top
        xyxy[:, [0, 2]] /= gain_x
        xyxy[:, [1, 3]] /= gain_y
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, self.src_hw[1])
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, self.src_hw[0])
        return xyxy


def check_frame(image: np.ndarray) -> None:
    """Check that `image` is an `(H, W, 3)` uint8 BGR frame.

    Raises:
        ValueError: another shape or dtype.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got shape {image.shape} {image.dtype}")


class Preprocessor:
    """Turns BGR uint8 frames into the model's input tensor.

    Keeps one padded canvas per source size, so steady-state work per frame is a resize into the canvas
    and one vectorised blob conversion (no per-frame allocation of the 640x640 canvas).
    """

    def __init__(self, input_hw: tuple[int, int], dtype: np.typing.DTypeLike = np.float32) -> None:
        self.input_hw = input_hw
        self.dtype = np.dtype(dtype)
        self._geometry: LetterboxGeometry | None = None
        self._canvas = np.full((input_hw[0], input_hw[1], 3), PAD_VALUE, np.uint8)

    def geometry_for(self, src_hw: tuple[int, int]) -> LetterboxGeometry:
        """The geometry for a `src_hw` (height, width) frame, cached while the frame size stays the same."""
        g = self._geometry
        if g is None or g.src_hw != src_hw:
            g = LetterboxGeometry.compute(src_hw, self.input_hw)
            self._geometry = g
            self._canvas.fill(PAD_VALUE)  # padding region changes with the geometry
        return g

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxGeometry]:
        """BGR uint8 HxWx3 -> padded BGR uint8 canvas (a view of an internal buffer)."""
        check_frame(image)
        g = self.geometry_for((image.shape[0], image.shape[1]))
        nw, nh = g.resized_wh
        roi = self._canvas[g.top : g.top + nh, g.left : g.left + nw]
        if (image.shape[1], image.shape[0]) == (nw, nh):
            roi[...] = image
        else:
            roi[...] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return self._canvas, g

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxGeometry]:
        """BGR uint8 frame -> (1,3,H,W) RGB tensor in [0,1] of the model's dtype, and the geometry."""
        canvas, g = self.letterbox(image)
        blob = cv2.dnn.blobFromImage(canvas, scalefactor=1.0 / 255.0, swapRB=True, crop=False)
        if blob.dtype != self.dtype:
            blob = blob.astype(self.dtype)
        return blob, g
