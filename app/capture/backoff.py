"""Exponential backoff with a cap and a little jitter, so many appliances don't retry in lockstep."""

from __future__ import annotations

import random


class Backoff:
    """Delays that grow by ``factor`` per attempt from ``initial_s`` up to ``max_s``, until ``reset()``.

    Args:
        initial_s: First delay in seconds, > 0.
        max_s: Largest delay in seconds, >= ``initial_s``; jitter never takes a delay above it.
        factor: Growth per attempt, >= 1.
        jitter: Relative spread: each delay is multiplied by a uniform factor in ``1 ± jitter``.

    Raises:
        ValueError: The bounds above are not met.
    """

    def __init__(self, initial_s: float, max_s: float, factor: float = 2.0, jitter: float = 0.1) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("backoff needs 0 < initial_s <= max_s and factor >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self._attempts = 0
        self._rng = random.Random()

    @property
    def attempts(self) -> int:
        """Delays handed out since construction or the last ``reset()``."""
        return self._attempts

    def delay_for(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0-based), in seconds, jitter included; no state changes."""
        base = min(self.initial_s * self.factor**attempt, self.max_s)
        if self.jitter:
            base *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return min(base, self.max_s)

    def next_delay(self) -> float:
        """Count an attempt and return how long to wait before it, in seconds (jittered, capped at ``max_s``)."""
        delay = self.delay_for(self._attempts)
        self._attempts += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self._attempts = 0
