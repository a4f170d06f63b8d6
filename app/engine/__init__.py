"""TensorRT engine build tooling.

The builder, INT8 calibration, precision checks, the agreement gate, and `vigil engine`. The runtime half (engine cache
lookup, plan files) lives in `app.backends`.
"""
