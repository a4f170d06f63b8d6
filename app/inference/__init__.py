"""Preprocessing, YOLO decode, the detector and the inference worker process."""
