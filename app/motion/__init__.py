"""Per-camera motion detection: a cheap frame-differencing gate that runs in the capture thread."""

from app.motion.detector import MotionDetector, MotionResult

__all__ = ["MotionDetector", "MotionResult"]
