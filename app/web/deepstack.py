"""The DeepStack / CodeProject.AI object detection API's answer shape, for ``POST /v1/vision/detection``.

What the shape is, and where it was checked (public sources, read for this module):

- DeepStack's server (github.com/johnolafenwa/DeepStack, ``server/response/response.go`` and
  ``server/server.go``): a detection answer is ``success`` (bool), ``predictions`` (a list) and ``duration``
  (a float; the server declares it but never fills it in, so DeepStack itself always sent 0 and no unit is
  defined: we send milliseconds). Each prediction is ``confidence`` (a float from 0 to 1), ``label`` (the
  class name) and ``x_min``, ``y_min``, ``x_max``, ``y_max`` (ints, pixels of the posted image; the Python
  side truncates the box corners with ``int()``). A failure is ``success: false``, ``error`` (a message) and
  ``duration``, sent with the HTTP status the worker chose (400 for an image it cannot read, 500 otherwise):
  the worker's internal ``code`` becomes the HTTP status and is not in the body. The request is multipart
  with the image in field ``image`` and an optional form field ``min_confidence`` that defaults to 0.40 in
  the server (its documentation, github.com/johnolafenwa/deepstack-docs ``object-detection/index.rst``,
  says 0.45; we follow the server and the issue: 0.4).
- The client library Home Assistant's ``deepstack_object`` integration uses (github.com/robmarkcole/
  deepstack-python, ``deepstack/core.py``; the integration is robmarkcole/HASS-Deepstack-object,
  ``custom_components/deepstack_object/image_processing.py``) posts the image as multipart field ``image``
  with form fields ``api_key`` and ``min_confidence``; any status but 200 is an error to it (it raises and
  logs the status), and on 200 it returns ``response["predictions"]`` without looking at ``success``. The
  integration then reads each prediction's ``label``, ``confidence`` (multiplied by 100 for a percentage)
  and the four corners, which it divides by the image size that Pillow reports for the bytes it sent.
  That size is before EXIF rotation, so for an EXIF-rotated JPEG its relative boxes differ from ours,
  which are in the rotated image's pixels like `vigil detect`'s; cameras' snapshots carry no rotation.

CodeProject.AI Server, DeepStack's successor, keeps these fields on the same route and adds its own
(``code``, ``message``, ``count``, timings such as ``processMs``/``inferenceMs``, module names): that list is
from a third-party client's model of its answer, not from CodeProject's documentation, which was not
available to check. Clients written for DeepStack read only the fields above, so only those are sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_MIN_CONFIDENCE = 0.4
"""DeepStack's server default for ``min_confidence``."""


class MinConfidenceError(ValueError):
    """``min_confidence`` is not a number from 0 to 1 (answer 400)."""


def deepstack_prediction(detection: Mapping[str, Any]) -> dict[str, Any]:
    """One detection in DeepStack's form.

    Args:
        detection: A detection as `vigil detect` and ``/api/detect`` write it: ``label`` (str),
            ``confidence`` (0..1) and ``box`` ``[x1, y1, x2, y2]`` in pixels of the image.

    Returns:
        ``{"label", "confidence", "x_min", "y_min", "x_max", "y_max"}`` with the corners as ints (truncated
        toward zero like DeepStack's ``int()``; boxes from the decoder are already clipped to the image).
    """
    x1, y1, x2, y2 = (int(v) for v in detection["box"])
    return {
        "label": str(detection["label"]),
        "confidence": float(detection["confidence"]),
        "x_min": x1,
        "y_min": y1,
        "x_max": x2,
        "y_max": y2,
    }


def deepstack_success(detections: Sequence[Mapping[str, Any]], duration_ms: float) -> dict[str, Any]:
    """A successful detection answer.

    Args:
        detections: Detections as `deepstack_prediction` takes them, in the order to send.
        duration_ms: Time the request took, in milliseconds.

    Returns:
        ``{"success": True, "predictions": [...], "duration": duration_ms}``.
    """
    return {
        "success": True,
        "predictions": [deepstack_prediction(d) for d in detections],
        "duration": round(float(duration_ms), 3),
    }


def deepstack_error(reason: str, duration_ms: float = 0.0) -> dict[str, Any]:
    """A failed request's answer, sent with a 4xx (or the documented 503/504) status.

    Args:
        reason: What was wrong, for the client.
        duration_ms: Time spent before failing, in milliseconds (DeepStack always sent 0).

    Returns:
        ``{"success": False, "error": reason, "duration": duration_ms}``.
    """
    return {"success": False, "error": reason, "duration": round(float(duration_ms), 3)}


def parse_min_confidence(value: str | float | None) -> float:
    """DeepStack's ``min_confidence`` from a form field or query value.

    Args:
        value: The value as sent; None or an empty string (DeepStack's test for "not given") means the
            default.

    Returns:
        The threshold, 0..1; `DEFAULT_MIN_CONFIDENCE` when not given.

    Raises:
        MinConfidenceError: Not a number, not finite, or outside 0..1 (answer 400).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_MIN_CONFIDENCE
    if isinstance(value, bool):
        raise MinConfidenceError("min_confidence must be a number from 0 to 1")
    try:
        conf = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise MinConfidenceError(f"min_confidence must be a number from 0 to 1, not {str(value)[:40]!r}") from None
    if not math.isfinite(conf) or not 0.0 <= conf <= 1.0:
        raise MinConfidenceError(f"min_confidence must be from 0 to 1, not {conf:g}")
    return conf
