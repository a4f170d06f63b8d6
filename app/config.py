"""Configuration: YAML validated by pydantic. Every error names the dotted key and the problem."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.polygons import check_polygon

log = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = "engines/yolov3-tiny-coco.onnx"  # Darknet YOLOv3-tiny, COCO (vigil assets fetch)
DEFAULT_SAMPLE_VIDEO = "calibration/samples/bikes.mp4"


class ConfigError(ValueError):
    """A config problem, already phrased for a person: `key: problem`."""


def _topic_safe_name(v: str) -> str:
    """Names that become MQTT topic levels and metric labels."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", v):
        raise ValueError("must be 1-64 characters of letters, digits, '_' or '-'")
    return v


TopicName = Annotated[str, AfterValidator(_topic_safe_name)]
# [[x, y], ...], 0..1 of the frame, at least 3 points, not self-intersecting (app.polygons.check_polygon)
PolygonConfig = Annotated[list[list[float]], AfterValidator(check_polygon)]


class _Strict(BaseModel):
    # inf/NaN are never a setting: an infinite fps weight starves other cameras, an infinite interval overflows.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ReconnectConfig(_Strict):
    """Capture reconnect backoff (`cameras[].reconnect`): exponential from `initial_s` up to `max_s`, s."""

    initial_s: float = Field(0.5, gt=0, description="first retry delay")
    max_s: float = Field(30.0, gt=0, description="cap of the exponential backoff")
    factor: float = Field(2.0, ge=1.0)


LatencyLayer = Literal["capture", "queue", "preprocess", "inference", "postprocess", "ipc", "publish"]
LATENCY_LAYERS: tuple[LatencyLayer, ...] = ("capture", "queue", "preprocess", "inference", "postprocess", "ipc",
                                            "publish")  # fmt: skip


class BudgetOverride(_Strict):
    """`cameras[].budget`: any key of the top-level `budget` section, for this camera only (layers merge by key)."""

    enabled: bool | None = None
    total_ms: float | None = Field(None, gt=0)
    layers_ms: dict[LatencyLayer, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    window_s: float | None = Field(None, gt=0)
    alert_factor: float | None = Field(None, ge=1)
    max_error_rate: float | None = Field(None, ge=0, le=1)


class MotionConfig(_Strict):
    """`cameras[].motion`: the cheap per-frame motion detector that gates and aims the detector (README "Motion")."""

    enabled: bool = Field(True, description="detect motion; off: every frame is a candidate for detection")
    mask: list[PolygonConfig] = Field(
        default_factory=list, description="polygons (0..1 of the frame) where motion is ignored (trees, timestamps)"
    )
    frame_height: int = Field(160, ge=32, le=1080, description="motion runs on a greyscale copy this many px high")
    threshold: int = Field(25, ge=1, le=255, description="grey-level change (0..255) that counts as a changed pixel")
    contour_area: int = Field(10, ge=1, description="changed areas smaller than this (px of the small copy) are noise")
    frame_alpha: float = Field(0.02, gt=0, lt=1, description="background learning rate per frame (running average)")
    lightning_threshold: float = Field(
        0.8, gt=0, le=1, description="more than this fraction of the frame changing at once is a lighting change "
        "(IR switch, clouds): the background is re-learnt instead of reporting motion everywhere",
    )  # fmt: skip
    improve_contrast: bool = Field(True, description="normalise the small copy's contrast (dark and flat scenes)")


def _not_empty(items: list[str] | None) -> list[str] | None:
    if items is not None and not items:
        raise ValueError("an empty list matches nothing (leave the key out to match any)")
    return items


# A list that narrows what matches (zone labels, alert zones): None = any, and an empty list is a mistake.
NarrowingList = Annotated[list[str] | None, AfterValidator(_not_empty)]


class DetectConfig(_Strict):
    """`cameras[].detect`: how often the detector looks at this camera, and where (README "Scheduling")."""

    fps: float | None = Field(
        5.0, gt=0, le=100, description="most detections per second (at most 100); null: as often as the detector "
        "can (no motion gating of the rate, only of whether to look)",
    )  # fmt: skip
    idle_interval_s: float = Field(
        10.0, gt=0, description="with no motion and no moving tracked object, still detect this often, s"
    )
    regions: bool = Field(True, description="detect on crops around motion and tracked objects, not the whole frame")


class ZoneConfig(_Strict):
    """One `cameras[].zones[]` entry: an area of the frame whose occupants are counted and reported."""

    name: TopicName = Field(..., description="unique per camera; a topic level in MQTT")
    polygon: PolygonConfig = Field(..., description="[[x, y], ...] 0..1 of the frame; an object is inside when "
                                   "its bottom-centre point is")  # fmt: skip
    labels: NarrowingList = Field(None, description="only objects of these labels enter it; None = all")
    inertia: int = Field(3, ge=1, le=100, description="consecutive frames inside before an object counts as in it")
    loitering_time_s: float | None = Field(
        None, gt=0, description="an object in the zone this long raises a `loitering` update"
    )


class ObjectFilterConfig(_Strict):
    """One `cameras[].filters.<label>` entry: which boxes of that label are kept (areas are fractions of the frame)."""

    min_area: float = Field(0.0, ge=0, le=1, description="drop boxes smaller than this fraction of the frame")
    max_area: float = Field(1.0, ge=0, le=1, description="drop boxes larger than this fraction of the frame")
    min_score: float = Field(0.0, ge=0, le=1, description="drop boxes scored below this")
    threshold: float = Field(
        0.0, ge=0, le=1, description="a tracked object is real (announced) only once the median of its recent "
        "scores reaches this",
    )  # fmt: skip
    min_ratio: float = Field(0.0, ge=0, description="drop boxes with width/height below this")
    max_ratio: float | None = Field(None, gt=0, description="drop boxes with width/height above this")
    mask: list[PolygonConfig] = Field(
        default_factory=list, description="drop boxes of this label whose bottom-centre is inside one of these"
    )

    @model_validator(mode="after")
    def _ranges(self) -> ObjectFilterConfig:
        if self.min_area > self.max_area:
            raise ValueError(f"min_area {self.min_area} is above max_area {self.max_area}")
        if self.max_ratio is not None and self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio {self.min_ratio} is above max_ratio {self.max_ratio}")
        return self


class CameraConfig(_Strict):
    """One camera (`cameras[]`): its name, source (URL, device or file) and capture options."""

    name: TopicName = Field(..., description="unique camera name, used in topics and stats")
    source: str | int = Field(
        ...,
        description="V4L2 index or /dev/videoN, rtsp:// or http(s):// URL, video file, image file or "
        "folder, or a GStreamer pipeline ('elem ! elem ! appsink'); an existing path is always a file or folder",
    )
    loop: bool = Field(False, description="restart a video file at its end")
    realtime: bool = Field(True, description="pace a video file at its native fps")
    fps: float | None = Field(None, gt=0, description="pace at this fps instead of the file's own")
    max_width: int = Field(1920, gt=0, description="frame ring slot width; larger frames are downscaled")
    max_height: int = Field(1080, gt=0)
    ring_slots: int = Field(4, ge=2, le=64)
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    budget: BudgetOverride | None = Field(None, description="this camera's own `budget` keys")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    zones: list[ZoneConfig] = Field(default_factory=list)
    filters: dict[str, ObjectFilterConfig] = Field(
        default_factory=dict, description="per label (as the model names it): boxes kept"
    )
    object_mask: list[PolygonConfig] = Field(
        default_factory=list, description="polygons (0..1) where no object is reported (bottom-centre inside)"
    )

    @model_validator(mode="after")
    def _unique_zone_names(self) -> CameraConfig:
        seen: set[str] = set()
        for i, zone in enumerate(self.zones):
            if zone.name in seen:
                raise ValueError(f"zones.{i}.name: zone {zone.name!r} is defined twice")
            seen.add(zone.name)
        return self


class TensorRTConfig(_Strict):
    """The `model.tensorrt` section: CUDA device, DLA core and the TensorRT backend's options."""

    device: int = Field(0, ge=0, description="CUDA device index")
    dla_core: int | None = Field(None, ge=0, description="Jetson DLA core the engine was built for (None: GPU)")
    gpu_preprocess: bool = Field(
        True, description="letterbox/normalise on the GPU (one uint8 upload per frame) instead of on the CPU"
    )
    zero_copy: Literal["auto", "on", "off"] = Field(
        "auto", description="mapped host memory instead of copies; auto = on integrated GPUs (Jetson)"
    )
    failover_after: int = Field(
        3, ge=1, description="consecutive TensorRT failures before ONNX Runtime serves the same model"
    )
    retry_s: float = Field(300.0, gt=0, description="after a failover, how long until TensorRT is tried again")


class DeployConfig(_Strict):
    """`model.deploy`: blue-green deployment (`POST /api/model`, MQTT `<base>/model/set`, `vigil model deploy`)."""

    models_dir: str = Field("engines", description="models may be deployed from this folder (and below) only")
    min_agreement_f1: float = Field(
        0.5, ge=0, le=1, description="canary agreement with the serving model (same labels) at least this; 0 = off"
    )
    canary_frames: int = Field(3, ge=1, le=64, description="newest frames of every camera the candidate must pass")


class ModelConfig(_Strict):
    """The `model` section: model file, backend, precision, thresholds and runtime options."""

    path: str = Field(DEFAULT_MODEL_PATH, description="ONNX model (or engine, with the TensorRT backend)")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        "auto", description="auto: a validated cached TensorRT engine when TensorRT and a GPU are present, else ORT"
    )
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="TensorRT engine precision")
    engine_dir: str = Field("engines", description="TensorRT engine cache (engines + manifests)")
    conf: float = Field(0.25, ge=0.0, le=1.0, description="confidence threshold")
    iou: float = Field(0.7, ge=0.0, le=1.0, description="NMS IoU threshold")
    imgsz: int | None = Field(
        None,
        gt=0,
        description="input size of a dynamic model (rounded up to the model's stride); default: from the model",
    )
    layout: Literal["auto", "dense", "end2end", "yolov5"] = Field(
        "auto",
        description="output layout of the model's head. auto: from its metadata, output shape and a test "
        "inference at load; set it only for a [1, N, 6] model that `vigil check` says cannot be told apart "
        "(end2end: x1,y1,x2,y2,score,class rows; yolov5: cx,cy,w,h,objectness,class scores)",
    )
    max_det: int = Field(300, gt=0)
    classes: list[int | str] | None = Field(
        None, description="keep only these classes: label names (as the model names them) or class ids"
    )
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores")
    spin_wait: bool = Field(
        True,
        description="let ONNX Runtime threads busy-wait between ops (ORT's default; measured ~3-5% faster "
        "on 2 cores; turn off to leave idle CPU to other services)",
    )
    warmup_runs: int = Field(2, ge=0)
    max_batch: int = Field(
        4, ge=1, le=64, description="frames/regions run as one batch at most (dynamic batch axis; TensorRT "
        "engines are built with an optimisation profile over 1..max_batch)",
    )  # fmt: skip
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)


class OutputConfig(_Strict):
    """The `output` section: JSON lines of results, to stdout or a file."""

    json_lines: bool = Field(True, description="print one JSON object per result")
    json_path: str | None = Field(None, description="write JSON lines here instead of stdout")
    status_interval_s: float = Field(5.0, ge=0, description="one-line status on stderr; 0 = off")


class WorkerConfig(_Strict):
    """The `worker` section: inference worker start and stop limits, s."""

    ready_timeout_s: float = Field(120.0, gt=0, description="model load + warm-up limit")
    stop_timeout_s: float = Field(5.0, gt=0, description="grace before a stopping worker is killed")
    restart_backoff_s: float = Field(1.0, gt=0)
    restart_backoff_max_s: float = Field(30.0, gt=0)


class MqttTlsConfig(_Strict):
    """The `mqtt.tls` section: CA, client certificate and key files, and hostname checking."""

    enabled: bool = Field(False, description="use TLS (also implied by ca_file)")
    ca_file: str | None = Field(None, description="CA bundle that signed the broker's certificate")
    cert_file: str | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="client private key (mutual TLS)")
    insecure: bool = Field(False, description="skip hostname verification (self-signed lab brokers only)")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class AlertRule(_Strict):
    """One `tracking.alerts[]` rule: an object of `label` at or above `min_confidence` raises an alert."""

    label: str = Field(..., description="class label that raises the alert, e.g. Fall")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    min_duration_s: float = Field(1.0, ge=0.0, description="seen continuously at least this long")
    zones: NarrowingList = Field(None, description="only while the object is in one of these zones; None = anywhere")


class MqttConfig(_Strict):
    """The `mqtt` section: broker, credentials, TLS, topics, QoS and the offline queue."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, description="default: vigil-<device_id>")
    base_topic: str | None = Field(None, description="default: vigil/<device_id>")
    username: str | None = None
    password_file: str | None = Field(None, description="file holding the password (never logged)")
    password_env: str | None = Field(None, description="environment variable holding the password")
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    qos_events: Literal[0, 1, 2] = 1
    offline_queue: int = Field(10000, ge=1, description="QoS>0 events kept while the broker is away")
    detections: bool = Field(True, description="publish <base>/<camera>/detections per processed frame")
    detections_max_rate_hz: float = Field(10.0, gt=0, description="detections messages per camera per second")
    detections_only_when_detected: bool = False
    stats_interval_s: float = Field(10.0, gt=0)
    discovery: bool = Field(True, description="Home Assistant MQTT discovery")
    discovery_prefix: str = "homeassistant"

    @model_validator(mode="after")
    def _password_one_source(self) -> MqttConfig:
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        return self


class TrackingConfig(_Strict):
    """Tracking and the object lifecycle (new / update / end / alert events), for every camera."""

    tracker: Literal["iou", "bytetrack"] = Field(
        "iou", description="iou (built in) or bytetrack (needs the `tracking` extra); see README for the measurement"
    )
    min_hits: int = Field(2, ge=1, description="detections before an object is announced ('new')")
    track_lost_s: float = Field(2.0, gt=0, description="an object unseen this long ends")
    event_update_interval_s: float = Field(5.0, gt=0, description="at most one 'update' per object this often")
    alerts: list[AlertRule] = Field(default_factory=list)
    snapshot: bool = Field(True, description="retained JPEG of the latest event frame with boxes")
    stationary_after_s: float = Field(
        10.0, gt=0, description="an object that has not moved this long is stationary (no longer keeps its "
        "camera detecting at detect.fps)",
    )  # fmt: skip
    stationary_interval_s: float = Field(
        10.0, gt=0, description="stationary objects are re-checked by the detector this often, s"
    )
    stationary_iou: float = Field(
        0.7, gt=0, le=1, description="an object has not moved while the IoU of its box with where its still "
        "stretch began stays at or above this (detector jitter stays above; walking drops below)",
    )  # fmt: skip


# Keys that lived under `mqtt:` before tracking became a pipeline stage; accepted there for one release.
MOVED_TO_TRACKING = ("tracker", "min_hits", "track_lost_s", "event_update_interval_s", "alerts", "snapshot")


class IceServer(_Strict):
    """One `http.ice_servers[]` entry: STUN/TURN URLs and TURN credentials."""

    urls: list[str] = Field(..., min_length=1, description="stun:/turn: URLs")
    username: str | None = None
    credential_file: str | None = Field(None, description="file holding the TURN credential (never logged)")


class HttpConfig(_Strict):
    """The `http` section: bind address, token, TLS, WebRTC preview and its encoder settings."""

    enabled: bool = Field(True, description="serve the preview page, the HTTP API and /metrics")
    host: str = Field("127.0.0.1", description="bind address; anything but loopback requires a token")
    port: int = Field(8080, ge=0, le=65535, description="0 = any free port (tests)")
    token_file: str | None = Field(None, description="file holding the API token (never logged)")
    token_env: str | None = Field(None, description="environment variable holding the API token")
    state_dir: str | None = Field(
        None, description="where a generated token is kept (0600); default: the top-level state_dir"
    )
    require_token: bool | None = Field(None, description="default: only when bound to a non-loopback address")
    health_requires_token: bool = Field(False, description="protect /health too")
    health_max_result_age_s: float = Field(10.0, gt=0, description="/health is 503 beyond this result age")
    max_body_bytes: int = Field(65536, ge=1024, description="request bodies above this get 413")
    max_viewers: int = Field(4, ge=0, description="WebRTC viewers at once; more get 503")
    preview_width: int = Field(640, ge=64, le=3840, description="preview video width (height keeps the aspect)")
    preview_fps: float = Field(15.0, gt=0, le=60, description="preview frames per second at most")
    preview_bitrate_kbps: int = Field(1200, ge=100, le=20000)
    preview_keyframe_s: float = Field(2.0, gt=0, description="keyframe interval of the shared encoder")
    preview_nice: int = Field(10, ge=0, le=19, description="encoder thread niceness above the main process")
    server_side_boxes: bool = Field(False, description="draw boxes into the video (for clients without the page)")
    grid_fps: float = Field(
        1.0, gt=0, le=10, description="the preview page's camera grid reloads each tile's newest frame (JPEG) this "
        "often per second",
    )  # fmt: skip
    tls_cert_file: str | None = Field(None, description="serve HTTPS with this certificate")
    tls_key_file: str | None = None
    ice_servers: list[IceServer] = Field(default_factory=list, description="STUN/TURN; none = host candidates")
    ice_addresses: list[str] | None = Field(
        None, description="local addresses offered as ICE candidates; default: loopback for a loopback bind"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class WatchdogConfig(_Strict):
    """The `watchdog` section: stall detection, the restart budget and the recycle policy."""

    stall_timeout_s: float = Field(30.0, gt=0, description="no result while frames wait -> restart the worker")
    max_restarts: int = Field(5, ge=0, description="worker restarts allowed within restart_window_s")
    restart_window_s: float = Field(600.0, gt=0, description="beyond max_restarts in this window: exit 3")
    notify_max_result_age_s: float = Field(
        10.0, gt=0, description="systemd WATCHDOG=1 pings only while the last result is this recent"
    )
    max_rss_mb: float = Field(0.0, ge=0, description="recycle the worker above this RSS (0 = off)")
    max_rss_growth_mb_per_hour: float = Field(
        0.0, ge=0, description="recycle when the worker's RSS grows faster than this (0 = off)"
    )
    rss_warmup_s: float = Field(60.0, ge=0, description="growth is measured only after this warm-up")
    rss_window_s: float = Field(600.0, gt=0, description="sliding window of the growth estimate")
    recycle_every_h: float = Field(0.0, ge=0, description="recycle a healthy worker this often (0 = never)")
    capture_timeout_s: float = Field(10.0, gt=0, description="no frame this long -> reopen the source")


class FaultsConfig(_Strict):
    """Fault injection to exercise the watchdog. Never turn on in production."""

    leak_mb_per_frame: float = Field(0.0, ge=0, description="the worker keeps this much more memory per frame")
    stall_after_frames: int = Field(0, ge=0, description="the worker hangs after this many frames (0 = never)")
    stall_s: float = Field(0.0, ge=0, description="for this long")
    crash_after_frames: int = Field(0, ge=0, description="the worker dies after this many frames (0 = never)")
    capture_hang_after_frames: int = Field(0, ge=0, description="a capture read blocks after this many frames")
    capture_hang_s: float = Field(0.0, ge=0, description="for this long (like a stuck camera driver)")
    backend_fail_after_frames: int = Field(
        0, ge=0, description="the backend raises after this many frames, so the failover to ONNX Runtime runs"
    )
    backend_retry_s: float = Field(300.0, gt=0, description="when the failover retries the failing backend")
    standby_load_delay_s: float = Field(
        0.0, ge=0, description="a blue-green standby takes this much longer to load (like a big TensorRT engine)"
    )
    slow_stage: Literal["preprocess", "inference", "postprocess"] | None = Field(
        None, description="this worker stage takes slow_stage_ms longer per frame (latency budget drills)"
    )
    slow_stage_ms: float = Field(0.0, ge=0, le=60_000, description="added to slow_stage per frame, ms")
    slow_after_frames: int = Field(0, ge=0, description="frames the worker takes before slow_stage starts")
    slow_frames: int = Field(0, ge=0, description="frames slow_stage stays slow (0 = forever)")
    fail_every_frames: int = Field(
        0, ge=0, description="every Nth frame fails (WorkerFrameError; 0 = never; 1 = every frame, which makes "
        "the worker give up after 50 in a row)"
    )  # fmt: skip
    fail_after_frames: int = Field(0, ge=0, description="frames the worker takes before failing frames start")
    fail_frames: int = Field(0, ge=0, description="frames over which every fail_every_frames-th fails (0 = forever)")


class DebugConfig(_Strict):
    """The `debug` section: fault injection for tests and drills."""

    faults: FaultsConfig = Field(default_factory=FaultsConfig)


class ApiConfig(_Strict):
    """The `api` section: detection on request (`/api/detect`, DeepStack's endpoint) and the WebSocket stream."""

    queue_size: int = Field(8, ge=1, le=1024, description="detection requests waiting at most; more get 503")
    default_timeout_ms: int = Field(2000, ge=1, le=600_000, description="deadline of a request without timeout_ms")
    max_timeout_ms: int = Field(30_000, ge=1, le=600_000, description="timeout_ms above this is a 400")
    max_share: float = Field(
        0.5, gt=0, le=1, description="requests go before camera frames up to this share of detector time"
    )
    max_pixels: int = Field(50_000_000, ge=1, description="images over this many pixels get 413 (read from the header)")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="image bodies above this get 413")
    max_ws_clients: int = Field(16, ge=0, description="WebSocket stream clients at once; more get 503")
    ws_queue: int = Field(256, ge=1, description="messages queued per WebSocket client; the oldest go first")
    ws_heartbeat_s: float = Field(
        20.0, gt=0, description="WebSocket ping period; no pong within half of it closes the client"
    )


WebhookEventType = Literal["new", "update", "end", "alert"]


def _default_webhook_events() -> list[WebhookEventType]:
    return ["new", "end", "alert"]


class WebhookConfig(_Strict):
    """One `webhooks[]` entry: where matching object events are POSTed as JSON, and how delivery behaves."""

    url: str = Field(..., description="http:// or https:// receiver (credentials in it are redacted in logs)")
    events: list[WebhookEventType] = Field(
        default_factory=_default_webhook_events, min_length=1, description="object event types sent"
    )
    labels: NarrowingList = Field(None, description="only objects of these labels; None = all")
    cameras: NarrowingList = Field(None, description="only events of these cameras; None = all")
    timeout_s: float = Field(5.0, gt=0, le=120, description="per delivery attempt")
    secret_file: str | None = Field(None, description="HMAC-SHA256 key for X-Vigil-Signature (never logged)")
    queue_size: int = Field(1000, ge=1, description="events waiting per webhook; the oldest are dropped when full")
    retry_initial_s: float = Field(0.5, gt=0, description="first retry delay, doubling per attempt")
    retry_max_s: float = Field(30.0, gt=0, description="cap of the retry delay")
    max_attempts: int = Field(
        10, ge=1, description="attempts per event before it is given up (counted); 10 = about 2 min of retries"
    )
    failures_to_open: int = Field(5, ge=1, description="consecutive failures that open the circuit breaker")
    open_s: float = Field(30.0, gt=0, description="an open breaker lets one probe through after this long")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url(v)!r} is not an http:// or https:// URL")
        return v


class BudgetConfig(_Strict):
    """The `budget` section: per-layer latency targets watched at p99, and the error-rate limit (README "Budget")."""

    enabled: bool = Field(True, description="watch the budget and raise latency_budget_* / error_rate_* events")
    total_ms: float | None = Field(
        None, gt=0, description="capture -> published result, p99 target, ms; default: derived (README)"
    )
    layers_ms: dict[LatencyLayer, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="per-layer p99 targets, ms; a layer left out is derived (README)"
    )
    window_s: float = Field(30.0, gt=0, description="p99 and error rate over this sliding window, s")
    alert_factor: float = Field(2.0, ge=1, description="alert when a p99 stays above this multiple of its target")
    max_error_rate: float = Field(
        0.001, ge=0, le=1, description="(inference errors + corrupt frames) / processed frames above this alerts"
    )

    def merged(self, override: BudgetOverride | None) -> BudgetConfig:
        """This section with a camera's `budget` keys on top (its `layers_ms` merged key by key)."""
        if override is None:
            return self
        fields = override.model_dump(exclude_unset=True, exclude_none=True)
        layers = {**self.layers_ms, **fields.pop("layers_ms", {})}
        return self.model_copy(update={**fields, "layers_ms": layers})


class DriftConfig(_Strict):
    """`monitoring.drift`: a per-camera baseline of the predictions and alerts when they move away from it."""

    enabled: bool = Field(True, description="learn a baseline and raise prediction_drift events")
    baseline_s: float = Field(600.0, gt=0, description="baseline learned over this long after start, s")
    window_s: float = Field(300.0, gt=0, description="current distribution over this sliding window, s")
    threshold_sigma: float = Field(2.0, gt=0, description="alert beyond this many baseline standard deviations")
    baseline_windows: int = Field(
        10, ge=3, le=1000, description="sub-windows the baseline is split into to estimate each metric's variation"
    )
    recover_ratio: float = Field(
        0.75, gt=0, lt=1, description="hysteresis: recovered once |z| is back under this fraction of threshold_sigma"
    )
    min_frames: int = Field(50, ge=1, description="frames the sliding window needs before it is compared")
    min_detections: int = Field(
        20, ge=1, description="detections the window needs before the confidence and class metrics are compared"
    )
    min_class_share: float = Field(
        0.02, gt=0, le=1, description="a label is watched when its share reaches this in the baseline or the window"
    )


class MonitoringConfig(_Strict):
    """The `monitoring` section: prediction drift (the latency budget is the top-level `budget`)."""

    drift: DriftConfig = Field(default_factory=DriftConfig)


class EventsConfig(_Strict):
    """The `events` section: the recent tracked-object events kept for `GET /api/events` and the page's list."""

    max_events: int = Field(500, ge=1, le=100_000, description="events kept in memory; the oldest go first")
    snapshots: bool = Field(True, description="keep a JPEG of each event's best frame, with its box")
    snapshot_max_width: int = Field(640, ge=64, le=3840, description="snapshots are scaled down to this width")
    snapshot_quality: int = Field(80, ge=10, le=100, description="JPEG quality of the snapshots")
    snapshot_max_mb: float = Field(
        64.0, ge=1, le=4096, description="snapshot bytes kept at most, MiB; beyond it the oldest entries lose "
        "their snapshot (the entries stay)",
    )  # fmt: skip


class VigilConfig(_Strict):
    """The whole config file (`configs/*.yaml`); every section has defaults, unknown keys are errors."""

    device_id: TopicName = Field("vigil", description="appliance id, used in topics")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    state_dir: str = Field(
        default_factory=lambda: os.environ.get("STATE_DIRECTORY", ".vigil-state"),
        description="state kept across restarts (active model, drift baselines, a generated token); under "
        "systemd, the unit's StateDirectory",
    )
    cameras: list[CameraConfig] = Field(..., min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    events: EventsConfig = Field(default_factory=EventsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @model_validator(mode="before")
    @classmethod
    def _tracking_keys_under_mqtt(cls, data: Any) -> Any:
        """Moves the deprecated `mqtt.<key>` spellings of the tracking keys to `tracking.<key>`, with a warning.

        Raises:
            ValueError: Both spellings of a key are given, with different values.
        """
        if not isinstance(data, dict) or not isinstance(data.get("mqtt"), dict):
            return data
        moved = [key for key in MOVED_TO_TRACKING if key in data["mqtt"]]
        tracking = data.get("tracking") or {}
        if not moved or not isinstance(tracking, dict):
            return data  # nothing to move, or a malformed `tracking` that its own validation reports
        data, mqtt, tracking = dict(data), dict(data["mqtt"]), dict(tracking)  # the caller's dicts stay as they were
        for key in moved:
            value = mqtt.pop(key)
            if key in tracking and tracking[key] != value:
                raise ValueError(f"mqtt.{key} and tracking.{key} are both set, to different values; "
                                 f"mqtt.{key} is deprecated: keep tracking.{key} only")  # fmt: skip
            tracking.setdefault(key, value)
            message = f"mqtt.{key} is deprecated: use tracking.{key}"
            log.warning("config: %s", message)
            warnings.warn(message, DeprecationWarning, stacklevel=2)
        data["mqtt"], data["tracking"] = mqtt, tracking
        return data

    @model_validator(mode="after")
    def _http_state_dir(self) -> VigilConfig:
        if self.http.state_dir is None:
            self.http.state_dir = self.state_dir
        return self

    @model_validator(mode="after")
    def _unique_camera_names(self) -> VigilConfig:
        seen: set[str] = set()
        for j, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(f"cameras.{j}.name: camera name {cam.name!r} is used twice")
            seen.add(cam.name)
        for i, hook in enumerate(self.webhooks):
            unknown = sorted(set(hook.cameras or ()) - seen)
            if unknown:
                raise ValueError(f"webhooks.{i}.cameras: {', '.join(unknown)} is not a configured camera")
        zones = {zone.name for cam in self.cameras for zone in cam.zones}
        for i, rule in enumerate(self.tracking.alerts):
            unknown = sorted(set(rule.zones or ()) - zones)
            if unknown:
                raise ValueError(f"tracking.alerts.{i}.zones: {', '.join(unknown)} is not a zone of any camera")
        return self


# ---------------------------------------------------------------------------------------------------


def format_validation_error(err: ValidationError) -> str:
    """One line per pydantic error, `<dotted.key>: <message>`, with friendlier words for unknown and missing keys."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "model_type":  # pydantic names its class ("...instance of DetectConfig"): say it in YAML
            got = "nothing" if e.get("input") is None else type(e.get("input")).__name__
            msg = f"should be a mapping of keys (key: value lines), got {got}"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            # A section-level check names the key below its section ("zones.1.name: ..."): join it to the
            # location so every line reads `<full dotted key>: <message>`.
            inner = _INNER_KEY.match(msg)
            if inner:
                key = f"{key}.{inner['key']}" if key else inner["key"]
                msg = inner["msg"]
        lines.append(f"{key or '<top level>'}: {msg}")
    return "; ".join(lines)


_INNER_KEY = re.compile(r"(?P<key>[A-Za-z_][\w]*(?:\.\w+)*): (?P<msg>.+)", re.DOTALL)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (['a','b','0','c'], yaml-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set `value` at `path` (keys and list indices) in the raw config `data`, in place.

    Missing mappings and lists are created on the way; index `len(list)` appends.

    Raises:
        ConfigError: an index into a non-list, an index past the end, or a key under a scalar.
    """
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"--set {where}: {'.'.join(path[:i])} is a list; use an index")
            idx = int(part)
            if idx > len(node):
                raise ConfigError(f"--set {where}: index out of range (list has {len(node)} items)")
            if idx == len(node):  # append, so `--set cameras.1.name=x` can add a camera
                node.append(value if last else {})
            if last:
                node[idx] = value
            else:
                if node[idx] is None:
                    node[idx] = {}
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = [] if path[i + 1].isdigit() else {}
                node = node[part]
        else:
            raise ConfigError(f"--set {where}: {'.'.join(path[:i])} is a scalar, not a mapping")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> VigilConfig:
    """Load and validate a YAML config, after applying `--set key.path=value` overrides.

    Args:
        path: The YAML file; None for the defaults.
        overrides: `key.path=value` strings, applied in order.

    Raises:
        ConfigError: the file cannot be read or parsed, an override is bad, or validation failed.
    """
    data: Any = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not a UTF-8 text file (byte {exc.start}); a config is YAML text") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    for item in overrides or []:
        keys, value = parse_override(item)
        apply_override(data, keys, value)
    try:
        return VigilConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{format_validation_error(exc)}") from None


_SECRET_KEY = re.compile(r"password|token|credential|secret", re.IGNORECASE)


# From a URL's scheme to the last '@' of its whitespace-delimited token: the user-info part. FFmpeg splits
# at the last '@' of the authority; a password with an unescaped '/', '?' or '#' ends the authority early
# for FFmpeg but must not leak either, so the mask reaches the last '@' before white space.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s]*@")
# Credentials passed as parameters: URL queries (`?user=admin&password=...`), path parameters as some
# cameras take them (`/user=admin_password=x_channel=1`) and GStreamer's rtspsrc properties (`user-pw=`):
# any key that names a user, password, token, key, signature or auth, after a separator.
_SECRET_PARAM = re.compile(
    r"(?P<key>(?:^|(?<=[?&;\s_/]))[A-Za-z-]*(?:user|pass|pwd|token|key|sig|auth|secret|login|credential|cred)"
    r"[A-Za-z-]*=)(?P<value>[^&#\s_]*)",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """Mask credentials in every URL of `text`: the user-info part and credential parameters.

    Everything from the scheme to the *last* '@' before white space is masked, because FFmpeg splits the
    authority at its last '@' (`rtsp://viewer:Sup3r@Secret@host/` is a working URL with the password
    `Sup3r@Secret`) and a password may hold unescaped '/', '?' or '#'. Parameters whose key names a user,
    password, token, key, signature or auth (`user=`, `password=`, `pwd=`, `access_token=`, `api_key=`,
    `sig=`, rtspsrc's `user-pw=`, in any case, after '?', '&', ';', '_', '/' or white space) keep their key
    and lose their value. The one redactor for camera sources in logs, errors, stats, `/api/config` and
    `--print-config`; it masks too much rather than too little.
    """
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SECRET_PARAM.sub(lambda m: m.group("key") + ("***" if m.group("value") else ""), text)


def redact(data: Any, *, secret_keys: bool = True) -> Any:
    """Config as data with URL credentials masked (`redact_url`) in every string.

    With `secret_keys`, the values of secret-looking keys (password, token, credential, secret) replaced by
    `<redacted>`.
    """
    if isinstance(data, dict):
        return {
            k: ("<redacted>" if secret_keys and _SECRET_KEY.search(k) and v not in (None, "")
                and not isinstance(v, (bool, dict))
                else redact(v, secret_keys=secret_keys))
            for k, v in data.items()
        }  # fmt: skip
    if isinstance(data, list):
        return [redact(v, secret_keys=secret_keys) for v in data]
    if isinstance(data, str):
        return redact_url(data)
    return data


def dump_config(cfg: VigilConfig) -> str:
    """The effective config as YAML with URL credentials masked (it ends up in terminals and bug reports).

    Secret file paths and variable names stay visible, they are not secrets.
    """
    return yaml.safe_dump(redact(cfg.model_dump(mode="json"), secret_keys=False), sort_keys=False)
