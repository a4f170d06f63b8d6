"""Errors the live pipeline raises to its caller (the CLI turns them into one `error: ...` line, exit 2)."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """The pipeline cannot run: the first worker failed to start, or a service could not start (a port in use)."""
