"""The detector's choice between detection requests and camera frames (pure, clock-injected)."""

from __future__ import annotations

import pytest

from app.inference.scheduling import DetectorShare


def simulate(share: DetectorShare, steps: int, request_s: float, frame_s: float) -> dict[str, float]:
    """Both classes always have work; returns busy seconds per class."""
    now, busy = 0.0, {"request": 0.0, "frame": 0.0}
    for _ in range(steps):
        kind = share.next_kind(True, True, now)
        assert kind is not None
        dt = request_s if kind == "request" else frame_s
        now += dt
        share.record(kind, dt, now)
        busy[kind] += dt
    return busy


@pytest.mark.parametrize("max_share", [0.25, 0.5, 0.8])
@pytest.mark.parametrize(("request_s", "frame_s"), [(0.05, 0.05), (0.12, 0.03), (0.02, 0.09)])
def test_requests_take_at_most_their_share_while_frames_wait(max_share: float, request_s: float, frame_s: float):
    busy = simulate(DetectorShare(max_share), 2000, request_s, frame_s)
    got = busy["request"] / (busy["request"] + busy["frame"])
    # One job of either kind past the line at most: the share is reached to within one job's length.
    assert max_share - 0.06 <= got <= max_share + 0.06, got


def test_work_conserving_either_way():
    share = DetectorShare(0.1)
    share.record("request", 100.0, 1.0)  # far over its share
    assert share.next_kind(True, False, 1.0) == "request"  # no frame waits: the request runs anyway
    assert share.next_kind(False, True, 1.0) == "frame"
    assert share.next_kind(False, False, 1.0) is None
    assert share.next_kind(True, True, 1.0) == "frame"


def test_requests_go_first_when_fresh_and_the_memory_fades():
    share = DetectorShare(0.5, half_life_s=2.0)
    assert share.next_kind(True, True, 0.0) == "request"
    for i in range(20):  # a burst of requests, 0.1 s each, with no frame in between
        share.record("request", 0.1, 1.0 + 0.1 * i)
    assert share.next_kind(True, True, 3.0) == "frame"
    share.record("frame", 1.0, 59.0)
    # Thirty half-lives later the burst has faded below the newer frame time: requests go first again.
    assert share.request_share(60.0) < 0.01
    assert share.next_kind(True, True, 60.0) == "request"


def test_the_share_is_kept_from_above():
    # Judged with a request's typical cost, the requests' share stays at max_share at most (to within the decay
    # over one request: the old busy time fades while it runs), instead of crossing it by a request's worth.
    share = DetectorShare(0.5)
    now = 0.0
    for _ in range(3000):
        kind = share.next_kind(True, True, now)
        assert kind is not None
        now += 0.08 if kind == "request" else 0.02
        share.record(kind, 0.08 if kind == "request" else 0.02, now)
        if now > 10:
            assert share.request_share(now) <= 0.5 + 0.001


@pytest.mark.parametrize(("max_share", "half_life"), [(0.0, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_bad_settings_are_refused(max_share: float, half_life: float):
    with pytest.raises(ValueError):
        DetectorShare(max_share, half_life)
