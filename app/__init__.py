"""Vigil: real-time object detection for camera appliances."""

__version__ = "0.1.0"
