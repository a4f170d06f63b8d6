"""Prometheus metrics: stage histograms observed per result, everything else read at scrape time.

Counters and gauges are read from the pipeline's stats document when scraped, so a scrape costs nothing
on the frame path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.pipeline.records import ResultRecord

# Seconds. Stages on CPU run 1-400 ms; on a GPU engine 1-20 ms: both ends need resolution.
STAGE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.016, 0.025, 0.033, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5)


class _PipelineCollector(Collector):
    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        doc = self._stats()
        counters = {
            "frames_captured": ("vigil_frames_captured", "frames read from the camera"),
            "frames_processed": ("vigil_frames_processed", "frames the detector processed"),
            "frames_dropped": ("vigil_frames_dropped", "frames skipped to stay on the freshest frame"),
            "frames_skipped": ("vigil_frames_skipped", "frames not detected on: no motion and nothing due"),
            "frames_corrupt": ("vigil_frames_corrupt", "unreadable frames skipped"),
            "reconnects": ("vigil_camera_reconnects", "camera reconnects"),
        }
        families = {k: CounterMetricFamily(name, doc_, labels=["camera"]) for k, (name, doc_) in counters.items()}
        connected = GaugeMetricFamily("vigil_camera_connected", "1 while the camera delivers", labels=["camera"])
        motion = CounterMetricFamily("vigil_motion_frames", "frames in which the motion detector saw motion",
                                     labels=["camera"])  # fmt: skip
        lighting = CounterMetricFamily("vigil_motion_lighting_changes", "camera-level lighting changes",
                                       labels=["camera"])  # fmt: skip
        for cam, c in doc.get("cameras", {}).items():
            for key, fam in families.items():
                fam.add_metric([cam], float(c.get(key) or 0))
            connected.add_metric([cam], 1.0 if c.get("connected") else 0.0)
            m = c.get("motion") or {}
            if m.get("enabled"):
                motion.add_metric([cam], float(m.get("motion_frames") or 0))
                lighting.add_metric([cam], float(m.get("lighting_changes") or 0))
        yield from families.values()
        yield connected
        yield motion
        yield lighting
        worker = doc.get("worker") or {}
        yield CounterMetricFamily("vigil_worker_restarts", "worker restarts", value=worker.get("restarts", 0))
        yield CounterMetricFamily("vigil_worker_recycles", "blue-green recycles", value=worker.get("recycles", 0))
        rss = GaugeMetricFamily("vigil_process_rss_bytes", "resident memory", labels=["process"])
        if worker.get("rss_mb") is not None:
            rss.add_metric(["worker"], worker["rss_mb"] * 2**20)
        if doc.get("main_rss_mb") is not None:
            rss.add_metric(["main"], doc["main_rss_mb"] * 2**20)
        yield rss
        gpu = (worker.get("health") or {}).get("gpu_mb")
        if gpu is not None:
            yield GaugeMetricFamily("vigil_worker_gpu_bytes", "GPU memory of the worker", value=gpu * 2**20)
        mqtt = doc.get("mqtt")
        if mqtt is not None:
            yield GaugeMetricFamily("vigil_mqtt_connected", "1 while connected", value=float(mqtt["connected"]))
            yield GaugeMetricFamily("vigil_mqtt_queue_depth", "messages awaiting the broker", value=mqtt["queue_depth"])
            yield CounterMetricFamily("vigil_mqtt_connects", "broker sessions", value=mqtt["connects"])
            yield CounterMetricFamily("vigil_mqtt_events", "object events published", value=mqtt["events"])
        webrtc = doc.get("webrtc")
        if webrtc is not None:
            yield GaugeMetricFamily("vigil_webrtc_viewers", "connected preview viewers", value=webrtc["viewers"])
            yield CounterMetricFamily("vigil_webrtc_sessions", "preview sessions opened", value=webrtc["sessions"])
            yield CounterMetricFamily(
                "vigil_webrtc_rejected", "offers refused (viewer limit)", value=webrtc["rejected_full"]
            )
            yield CounterMetricFamily("vigil_preview_frames_encoded", "preview frames encoded", value=webrtc["encoded"])
        ws = doc.get("ws")
        if ws is not None:
            yield GaugeMetricFamily("vigil_ws_clients", "WebSocket stream clients", value=ws["clients"])
            yield CounterMetricFamily("vigil_ws_messages_sent", "WebSocket stream messages sent", value=ws["sent"])
            yield CounterMetricFamily(
                "vigil_ws_messages_dropped", "WebSocket stream messages dropped (client too slow)", value=ws["dropped"]
            )
            yield CounterMetricFamily(
                "vigil_ws_rejected", "WebSocket stream clients refused (client limit)", value=ws["rejected_full"]
            )
        yield from _api_metrics(doc.get("api"))
        yield from _budget_metrics(doc.get("budget"))
        yield from _webhook_metrics(doc.get("webhooks"))
        yield from _drift_metrics(doc.get("drift"))


def _drift_metrics(drift: dict | None) -> Iterable[Metric]:
    """Per camera and drift metric: its z against the baseline (once compared) and 1 while it is in alert."""
    if not drift:
        return
    z = GaugeMetricFamily(
        "vigil_drift_z", "prediction drift: standard deviations from the baseline", labels=["camera", "metric"]
    )  # fmt: skip
    alert = GaugeMetricFamily("vigil_drift_alert", "1 while a drift metric is in alert", labels=["camera", "metric"])
    for cam, c in drift.items():
        for name, m in (c.get("metrics") or {}).items():
            if m.get("z") is not None:
                z.add_metric([cam, name], float(m["z"]))
            alert.add_metric([cam, name], 1.0 if m.get("alert") else 0.0)
    yield from (z, alert)


def _budget_metrics(budget: dict | None) -> Iterable[Metric]:
    """Latency budget per camera and layer (`total` and `error_rate` included): alert state, p99, target; error rate."""
    if budget is None:
        return
    exceeded = GaugeMetricFamily(
        "vigil_budget_exceeded", "1 while a layer's p99 (or the error rate) is over budget", labels=["camera", "layer"]
    )  # fmt: skip
    p99 = GaugeMetricFamily(
        "vigil_budget_p99_seconds", "p99 of a layer over budget.window_s", labels=["camera", "layer"]
    )
    target = GaugeMetricFamily("vigil_budget_target_seconds", "a layer's p99 target", labels=["camera", "layer"])
    rate = GaugeMetricFamily("vigil_error_rate", "failed and corrupt frames / frames over budget.window_s",
                             labels=["camera"])  # fmt: skip
    for cam, b in budget.items():
        layers = {**(b.get("layers") or {}), **({"total": b["total"]} if b.get("total") else {})}
        for layer, fig in layers.items():
            exceeded.add_metric([cam, layer], 1.0 if fig.get("state") == "exceeded" else 0.0)
            if fig.get("p99") is not None:
                p99.add_metric([cam, layer], fig["p99"] / 1e3)
            if fig.get("target_ms") is not None:
                target.add_metric([cam, layer], fig["target_ms"] / 1e3)
        err = b.get("error_rate")
        if err:
            exceeded.add_metric([cam, "error_rate"], 1.0 if err.get("state") == "exceeded" else 0.0)
            rate.add_metric([cam], float(err.get("rate") or 0.0))
    yield from (exceeded, p99, target, rate)


def _webhook_metrics(hooks: dict | None) -> Iterable[Metric]:
    """Per webhook (its redacted URL): events by outcome, queue depth, breaker state (0 closed, 1 half-open, 2 open)."""
    if not hooks:
        return
    events = CounterMetricFamily("vigil_webhook_events", "webhook events by outcome", labels=["webhook", "outcome"])
    queue = GaugeMetricFamily("vigil_webhook_queue_depth", "events waiting per webhook", labels=["webhook"])
    breaker = GaugeMetricFamily(
        "vigil_webhook_breaker_state", "circuit breaker: 0 closed, 1 half-open, 2 open", labels=["webhook"]
    )  # fmt: skip
    states = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
    for url, h in hooks.items():
        for outcome in ("delivered", "retried", "failed", "rejected", "dropped"):
            events.add_metric([url, outcome], float(h.get(outcome, 0)))
        queue.add_metric([url], float(h.get("queue_depth", 0)))
        breaker.add_metric([url], states.get(h.get("breaker", "closed"), 0.0))
    yield from (events, queue, breaker)


def _api_metrics(api: dict | None) -> Iterable[Metric]:
    """Detection requests: outcomes, queue, and the detector's busy share per class of work (requests, cameras)."""
    if api is None:
        return
    outcomes = CounterMetricFamily("vigil_api_requests", "detection requests by outcome", labels=["outcome"])
    for key in ("served", "expired", "rejected_full", "cancelled", "failed", "late"):
        outcomes.add_metric([key], float(api.get(key, 0)))
    yield outcomes
    yield GaugeMetricFamily("vigil_api_queue_depth", "detection requests waiting", value=api["queue_depth"])
    share = GaugeMetricFamily(
        "vigil_detector_share", "share of the detector's busy time, last 30 s", labels=["class"]
    )  # fmt: skip
    for key, value in api["detector_share"].items():
        share.add_metric([key], value)
    yield share


class Metrics:
    """One registry per server (no process-global state): tests can run several side by side.

    Args:
        stats: Returns the pipeline's stats document; called on every scrape.
    """

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        self.stage = Histogram(
            "vigil_stage_seconds", "per-frame stage duration", ["camera", "stage"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.frame_age = Histogram(
            "vigil_frame_age_seconds", "capture to result, end to end", ["camera"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.encode = Histogram(
            "vigil_preview_encode_seconds", "one preview frame: scale + encode (shared by all viewers)",
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.request = Histogram(
            "vigil_api_request_seconds", "a served detection request, arrival to answer", ["endpoint"],
            buckets=STAGE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_PipelineCollector(stats))

    def observe(self, record: ResultRecord) -> None:
        """Add one frame's stage durations and frame age (ms in, seconds observed) to the histograms."""
        cam = record.camera
        t = record.result.timings
        self.stage.labels(cam, "preprocess").observe(t.preprocess_ms / 1e3)
        self.stage.labels(cam, "inference").observe(t.inference_ms / 1e3)
        self.stage.labels(cam, "postprocess").observe(t.postprocess_ms / 1e3)
        self.frame_age.labels(cam).observe(record.frame_age_ms / 1e3)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, for ``GET /metrics``."""
        return generate_latest(self.registry)
