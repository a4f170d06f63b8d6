"""Ordered delivery to one webhook receiver: a bounded queue, one sender task, retries and a circuit breaker.

Events are sent one at a time in the order they were queued, so a receiver sees a camera's `new` before its
`end`. A failed attempt is retried after `retry_initial_s`, doubling up to `retry_max_s`, for at most
`max_attempts` attempts; then the event is given up (`failed`). `failures_to_open` consecutive failures open
the breaker: the sender then waits for its probe time instead of trying event by event, and events queue
meanwhile (the oldest dropped and counted when `queue_size` is reached), so a dead receiver costs one probe
per `open_s` whatever the event rate. Attempts only count when a request goes out: waiting for the breaker
uses none.

Outcome of one attempt: 2xx is delivered. 408, 429, 5xx, 3xx (redirects are not followed), timeouts and
connection errors are failures that are retried and count towards the breaker. Any other 4xx is permanent
(the receiver is up and refuses this request: retrying the same bytes cannot help), so the event is given up
at once (`failed` and `rejected`) and the breaker counts it as the receiver answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from app.config import WebhookConfig, redact_url
from app.webhooks.breaker import CircuitBreaker
from app.webhooks.signing import SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One serialised event waiting for its receiver.

    Attributes:
        body: The exact JSON bytes POSTed (and signed); shared by every webhook it matched.
        event_type: `new`, `update`, `end` or `alert` (the `X-Vigil-Event` header).
        delivery_id: Random hex id, the same on every attempt (`X-Vigil-Delivery`): a receiver can drop the
            duplicate a timed-out attempt that did arrive causes.
    """

    body: bytes
    event_type: str
    delivery_id: str


@dataclass(slots=True)
class DeliveryCounters:
    """Counts since start.

    Attributes:
        delivered: Events the receiver accepted (2xx).
        retried: Attempts after an event's first one.
        failed: Events given up: `max_attempts` failed attempts, or a permanent 4xx.
        rejected: Of `failed`, those refused with a permanent 4xx.
        dropped: Events never sent: the oldest dropped from a full queue, or still queued at stop.
    """

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    rejected: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    permanent: bool
    error: str  # "HTTP 503", "timeout", "ClientConnectorError: ..." (redacted); "" when ok


class WebhookSender:
    """The queue and sender task of one webhook.

    Args:
        hook: The webhook's config (url, timeouts, retry, breaker and queue keys).
        secret: HMAC key for `X-Vigil-Signature`; None sends no signature.
        clock: Monotonic seconds for the breaker (tests may drive it).
    """

    def __init__(
        self, hook: WebhookConfig, secret: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.hook = hook
        self.name = redact_url(hook.url)  # the only form of the URL that logs and stats ever show
        self._secret = secret
        self.breaker = CircuitBreaker(hook.failures_to_open, hook.open_s, clock)
        self.counters = DeliveryCounters()
        self.last_error = ""
        self._queue: deque[QueuedEvent] = deque()
        self._current: QueuedEvent | None = None  # out of the queue, being sent
        self._wake = asyncio.Event()  # something was queued
        self._idle = asyncio.Event()  # nothing queued, nothing being sent
        self._idle.set()
        self._full_logged = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        """Events waiting or being sent."""
        return len(self._queue) + (self._current is not None)

    def enqueue(self, body: bytes, event_type: str) -> None:
        """Queue one event (never blocks); a full queue drops its oldest waiting event and counts it."""
        if len(self._queue) >= self.hook.queue_size:
            self._queue.popleft()
            self.counters.dropped += 1
            if not self._full_logged:  # once per full spell, not once per event
                self._full_logged = True
                log.warning("webhook %s: queue full (%d), dropping the oldest events", self.name, self.hook.queue_size)
        self._queue.append(QueuedEvent(body, event_type, uuid.uuid4().hex))
        self._idle.clear()
        self._wake.set()

    def start(self, session: aiohttp.ClientSession) -> None:
        """Start the sender task on the running loop, posting through `session`."""
        self._session = session
        self._task = asyncio.create_task(self._run(), name=f"webhook {self.name}")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop the sender (idempotent); what is still queued afterwards is counted as dropped.

        Args:
            grace_s: Seconds to let the queue drain first, when the breaker is closed (an open one would
                not send before the grace ends).
        """
        task, self._task = self._task, None
        if task is not None:
            if grace_s > 0 and self.breaker.state == "closed":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), grace_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.queue_depth
        if left:
            self.counters.dropped += left
            log.warning("webhook %s: %d undelivered event(s) dropped at stop", self.name, left)
        self._queue.clear()
        self._current = None
        self._idle.set()

    def stats(self) -> dict:
        """Counters, queue depth, breaker state and the last failure (None when the last attempt succeeded)."""
        c = self.counters
        return {
            "delivered": c.delivered, "retried": c.retried, "failed": c.failed, "rejected": c.rejected,
            "dropped": c.dropped, "queue_depth": self.queue_depth, "breaker": self.breaker.state,
            "last_error": self.last_error or None,
        }  # fmt: skip

    # ---- the sender task ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._full_logged = False
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._current = self._queue.popleft()
            await self._deliver(self._current)
            self._current = None

    async def _deliver(self, item: QueuedEvent) -> None:
        """Send one event until delivered, given up or cancelled."""
        attempts = 0
        while True:
            wait = self.breaker.wait_s()
            if wait > 0 or not self.breaker.allow():
                await asyncio.sleep(max(wait, 0.001))  # open: nothing goes out before the probe time
                continue
            before = self.breaker.state
            attempts += 1
            if attempts > 1:
                self.counters.retried += 1
            outcome = await self._attempt(item)
            if outcome.ok or outcome.permanent:
                self.breaker.record_success()  # the receiver answered
                if before != "closed":
                    log.info("webhook %s: receiver answers again, breaker closed", self.name)
                self.last_error = outcome.error
                if outcome.ok:
                    self.counters.delivered += 1
                else:
                    self.counters.failed += 1
                    self.counters.rejected += 1
                    log.warning("webhook %s: %s event refused (%s), not retried", self.name, item.event_type,
                                outcome.error)  # fmt: skip
                return
            self.last_error = outcome.error
            self.breaker.record_failure()
            if self.breaker.state == "open" and before == "closed":
                log.warning("webhook %s: %s; breaker open, next try in %g s", self.name, outcome.error,
                            self.hook.open_s)  # fmt: skip
            else:
                log.debug("webhook %s: attempt %d failed: %s", self.name, attempts, outcome.error)
            if attempts >= self.hook.max_attempts:
                self.counters.failed += 1
                log.warning("webhook %s: %s event given up after %d attempts (%s)", self.name, item.event_type,
                            attempts, outcome.error)  # fmt: skip
                return
            await asyncio.sleep(min(self.hook.retry_initial_s * 2 ** (attempts - 1), self.hook.retry_max_s))

    async def _attempt(self, item: QueuedEvent) -> _Outcome:
        """POST the event once; never raises (but cancellation)."""
        assert self._session is not None  # set by start() before the task runs
        headers = {
            "Content-Type": "application/json", "X-Vigil-Event": item.event_type,
            "X-Vigil-Delivery": item.delivery_id,
        }  # fmt: skip
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, item.body)
        try:
            async with self._session.post(
                self.hook.url, data=item.body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.hook.timeout_s),
            ) as resp:  # fmt: skip
                status = resp.status
        except asyncio.TimeoutError:
            return _Outcome(False, False, f"timeout after {self.hook.timeout_s:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: a URL aiohttp cannot use
            return _Outcome(False, False, redact_url(f"{type(exc).__name__}: {exc}"))
        if 200 <= status < 300:
            return _Outcome(True, False, "")
        permanent = 400 <= status < 500 and status not in _RETRYABLE_4XX
        return _Outcome(False, permanent, f"HTTP {status}")
