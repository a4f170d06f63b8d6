"""Exponential backoff with a cap and a little jitter, so many appliances don't retry in lockstep."""

from __future__ import annotations

import random


class Backoff:
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
        return self._attempts

    def delay_for(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0-based), in seconds, jitter included; no state changes."""
        base = min(self.initial_s * self.factor**attempt, self.max_s)
        if self.jitter:
            base *= 1 + self._rng.uniform(-self.jitter, self.jitter)
        return min(base, self.max_s)

    def next_delay(self) -> float:
        delay = self.delay_for(self._attempts)
        self._attempts += 1
        return delay

    def reset(self) -> None:
        self._attempts = 0
