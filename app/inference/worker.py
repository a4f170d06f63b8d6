"""The inference worker process and the parent's handle on it.

A `spawn`ed process that owns the backend (one runtime/CUDA context per process), takes the newest frame of each
camera's ring zero-copy, and answers over its own pipe.

Per-worker pipes, never a shared queue: a worker killed mid-read cannot leave a lock held that starves
its replacement (Frigate's long-lived detector bug). Two workers can run at once (blue-green recycling):
each has its own pipe and reads the rings without taking anything from the other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.config import DetectConfig, FaultsConfig, ModelConfig
from app.inference.camera_schedule import CameraDecision, CameraScheduler
from app.inference.protocol import (
    AttachRing,
    BackendChanged,
    BackendState,
    CanaryAnswer,
    CanaryRequest,
    CancelDetect,
    DetachRing,
    DetectAnswer,
    DetectNotRun,
    DetectRequest,
    ModelIdentity,
    SetCameraDetect,
    SetDetection,
    SetThresholds,
    StartServing,
    StopWorker,
    TrackHint,
    WorkerFailed,
    WorkerFrameError,
    WorkerReady,
)
from app.inference.regions import full_frame, plan_regions
from app.inference.scheduling import DetectorShare
from app.inference.shared_image import SharedImageGone, mapped_image
from app.ring import FrameRing, FrameView, RingSpec
from app.types import FrameMeta, FrameResult, StageTimings

if TYPE_CHECKING:
    from app.inference.batch import FrameJob
    from app.inference.detector import Detector
    from app.inference.faults import FaultInjector

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 50  # then the worker gives up so the supervisor can replace it


class WorkerStartError(RuntimeError):
    """A worker failed to load its model, exited, or was not ready in time during start."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a spawned worker needs (picklable): its model, the rings to read and its start-up options.

    Attributes:
        worker_id: Id used in logs and in every message the worker sends.
        model: The model and backend configuration.
        rings: (camera name, shared-memory ring) pairs, scheduled by `CameraScheduler`.
        log_level: Python logging level name for the worker process.
        idle_sleep_s: Poll period when no camera is due, s (a control message ends the wait at once).
        disabled_cameras: Cameras whose detection starts switched off.
        faults: Fault injection for tests and drills.
        standby: After warm-up, wait for StartServing before taking frames (blue-green replacement).
        env: Environment variables set in the worker before the backend loads.
        request_max_share: Share of detector time detection requests may take while camera frames wait
            (`api.max_share`).
        detect: (camera name, its `cameras[].detect`) pairs: the scheduling of each camera's frames.
    """

    worker_id: int
    model: ModelConfig
    rings: tuple[tuple[str, RingSpec], ...]  # (camera name, ring)
    log_level: str = "info"
    idle_sleep_s: float = 0.002  # poll period when nothing is due; << any inference time, few wake-ups
    disabled_cameras: tuple[str, ...] = ()  # detection switched off (e.g. by an MQTT command)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    standby: bool = False  # after warm-up, wait for StartServing (blue-green replacement)
    env: dict[str, str] = field(default_factory=dict)
    request_max_share: float = 0.5
    detect: tuple[tuple[str, DetectConfig], ...] = ()


# Blocked in a worker from its spawn until its own handlers are in place (see `worker_main`).
STARTUP_BLOCKED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def worker_main(spec: WorkerSpec, conn: Connection, heartbeat: ctypes.c_double | None = None) -> None:
    """Entry point of the worker process."""
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker{spec.worker_id} %(name)s: %(message)s",
    )
    # Ctrl-C reaches the whole process group; the parent decides when we stop. SIGHUP (a terminal hangup, or a
    # reload sent to the group) means "reload the config" to the parent, never "exit" to a worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The parent started us with these blocked (`WorkerHandle.start`), so a stop sent to the whole group while we
    # were still importing waited for the handlers above instead of killing us mid-start.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STARTUP_BLOCKED_SIGNALS)
    os.environ.update(spec.env)
    try:
        _serve(spec, conn, stop, heartbeat)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # parent went away: nothing left to answer to
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def _serve(spec: WorkerSpec, conn: Connection, stop: threading.Event, heartbeat: ctypes.c_double | None = None) -> None:
    from app.inference.detector import Detector  # heavy imports after spawn, inside the child
    from app.inference.faults import FaultInjector

    faults = FaultInjector(spec.faults)
    # The file's hash is read beside the load (a thread: hashlib releases the GIL), not after it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool:
        digest = pool.submit(file_sha256, spec.model.path)
        try:
            detector = Detector.from_config(spec.model)
            detector.backend = faults.wrap_backend(detector.backend, spec.model, spec.model.warmup_runs)
            warm_ms = detector.warmup(spec.model.warmup_runs)
            rings = [(cam, FrameRing.attach(rs)) for cam, rs in spec.rings]
            sha256 = digest.result()
        except Exception as exc:
            log.error("worker failed to start: %s", exc)
            conn.send(WorkerFailed(spec.worker_id, f"{type(exc).__name__}: {exc}"))
            return
    conn.send(
        WorkerReady(
            worker_id=spec.worker_id,
            backend=detector.backend_state(),
            names=detector.names,
            imgsz=detector.info.input_hw,
            warmup_ms=warm_ms,
            pid=os.getpid(),
            model=model_identity(spec.model, detector, sha256),
        )
    )
    if spec.standby and not _wait_as_standby(spec, conn, detector):
        return
    try:
        _ServingLoop(spec, conn, detector, rings, faults, heartbeat).run(stop)
    finally:
        for _, ring in rings:
            ring.close()
        detector.close()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Raises:
        OSError: The file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def model_identity(cfg: ModelConfig, detector: Detector, sha256: str) -> ModelIdentity:
    """Name (file stem), SHA-256, precision and backend of a loaded model.

    The precision is the engine's for TensorRT, else the model's input dtype (`fp32`, `fp16`).
    """
    backend = detector.backend.name
    precision: str
    if backend == "tensorrt":
        precision = cfg.precision
    else:
        dtype = np.dtype(detector.info.input_dtype)
        precision = f"fp{dtype.itemsize * 8}" if dtype.kind == "f" else dtype.name
    return ModelIdentity(Path(cfg.path).stem, sha256, precision, backend, str(cfg.path))


def _wait_as_standby(spec: WorkerSpec, conn: Connection, detector: Detector) -> bool:
    """Loaded and warm, but idle until told; answers canary frames meanwhile (deployment validation).

    Two workers inferring camera frames at once would slow both and open the very gap in results that a
    blue-green switch exists to avoid; canary frames are few and run before the switch.

    Returns:
        True on StartServing, False on StopWorker.
    """
    while True:
        msg = conn.recv()
        if isinstance(msg, StartServing):
            return True
        if isinstance(msg, StopWorker):
            return False
        if isinstance(msg, CanaryRequest):
            conn.send(run_canary(detector, msg, spec.worker_id))
        elif isinstance(msg, SetThresholds):
            detector.set_thresholds(msg.conf, msg.iou)


def run_canary(detector: Detector, req: CanaryRequest, worker_id: int) -> CanaryAnswer:
    """Run one canary frame: every raw output must be finite and decode; the answer carries the detections."""
    try:
        with mapped_image(req.image) as image:
            tensor, geometry, _ = detector.prepare(image)
        outputs, _ = detector.infer(tensor)
        for i, out in enumerate(outputs):
            arr = np.asarray(out)
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                return CanaryAnswer(req.request_id, worker_id, None,
                                    f"output {i} has {bad} non-finite values (NaN/inf) of {arr.size}")  # fmt: skip
        det, _ = detector.decode(outputs, geometry)
    except SharedImageGone:
        return CanaryAnswer(req.request_id, worker_id, None, "canary image gone")
    except Exception as exc:
        return CanaryAnswer(req.request_id, worker_id, None, f"{type(exc).__name__}: {exc}")
    return CanaryAnswer(req.request_id, worker_id, det)


def round_size(backend: BackendState, max_batch: int) -> int:
    """How many cameras' frames one round takes: `model.max_batch` on a GPU, 1 on the CPU.

    Every frame of a round waits for the whole round before its result goes out. On a GPU one batch of N costs
    little more than one frame, so rounds of N multiply the throughput; on the CPU a batch costs about what its
    frames cost one by one (the batch bench), so a round of N would only add N-1 inferences to the
    frame age of its first frames and send results in bursts.

    Args:
        backend: What serves the frames now (a failover to the CPU changes it).
        max_batch: `model.max_batch`.
    """
    gpu = "tensorrt" in backend.name or any("CUDA" in p or "Tensorrt" in p for p in backend.providers)
    return max_batch if gpu else 1


class _ServingLoop:
    """What a serving worker keeps between rounds.

    Where each ring was read up to, the cameras' schedule (`CameraScheduler`: fps caps, motion gating, hints,
    fair shares), the frames skipped per camera since its last result, the cameras switched off, the run of
    consecutive errors, the backend state last reported, and the detection requests waiting (in arrival order)
    with the share of detector time they have had.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        conn: Connection,
        detector: Detector,
        rings: list[tuple[str, FrameRing]],
        faults: FaultInjector,
        heartbeat: ctypes.c_double | None = None,
    ) -> None:
        self.spec = spec
        self.conn = conn
        self.detector = detector
        self.rings = rings
        self.faults = faults
        self.heartbeat = heartbeat
        self.last_seq = {cam: 0 for cam, _ in rings}
        self.skipped = {cam: 0 for cam, _ in rings}
        detect = dict(spec.detect)
        self.schedule = CameraScheduler({cam: detect.get(cam, DetectConfig()) for cam, _ in rings})
        self.disabled: set[str] = set(spec.disabled_cameras)
        self.errors = 0
        self.backend_state = detector.backend_state()
        self.requests: dict[int, DetectRequest] = {}  # insertion order = arrival order
        self.share = DetectorShare(spec.request_max_share)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set or the parent sends StopWorker.

        Control messages go before any work; then a detection request or a round of due camera frames, as
        `DetectorShare` decides. With nothing to do it waits on the pipe for `idle_sleep_s` (a message wakes it
        at once; a new frame is seen at the next look).
        """
        while not stop.is_set():
            if self.conn.poll():
                if not self._apply_control(self.conn.recv()):
                    return
                continue
            self._drop_expired()
            now = time.monotonic()
            jobs = self._due_jobs(now)
            kind = self.share.next_kind(bool(self.requests), bool(jobs), now)
            t0 = time.monotonic()
            if kind == "request":
                self._serve_request(self.requests.pop(next(iter(self.requests))))
            elif jobs:
                self._detect(jobs, now)
            else:
                self.conn.poll(self.spec.idle_sleep_s)
                continue
            now = time.monotonic()
            self.share.record(kind or "frame", now - t0, now)

    def _apply_control(self, msg: object) -> bool:
        """Apply one message from the parent; False when it asks the worker to stop."""
        if isinstance(msg, StopWorker):
            log.info("stopping: %s", msg.reason)
            return False
        if isinstance(msg, TrackHint):
            self.schedule.set_hint(msg)
        elif isinstance(msg, SetThresholds):
            self.detector.set_thresholds(msg.conf, msg.iou)
        elif isinstance(msg, SetDetection):
            (self.disabled.discard if msg.enabled else self.disabled.add)(msg.camera)
        elif isinstance(msg, SetCameraDetect):
            self.schedule.set_detect(msg.camera, msg.detect)
        elif isinstance(msg, DetectRequest):
            self.requests[msg.request_id] = msg
        elif isinstance(msg, CancelDetect) and self.requests.pop(msg.request_id, None) is not None:
            self.conn.send(DetectNotRun(msg.request_id, self.spec.worker_id, "cancelled"))
        elif isinstance(msg, (AttachRing, DetachRing)):
            self._change_rings(msg)
        return True

    def _change_rings(self, msg: AttachRing | DetachRing) -> None:
        """A camera added, removed or given a new ring by a config reload.

        A new ring of a known camera keeps its schedule (fps grid, share); a camera added with no SetCameraDetect
        yet is scheduled with the default `detect` until its own arrives.
        """
        for cam, ring in [r for r in self.rings if r[0] == msg.camera]:
            self.rings.remove((cam, ring))
            ring.close()
        self.last_seq.pop(msg.camera, None)
        self.skipped.pop(msg.camera, None)
        if isinstance(msg, DetachRing):
            self.schedule.remove(msg.camera)
            return
        try:
            self.rings.append((msg.camera, FrameRing.attach(msg.ring)))
        except (OSError, ValueError) as exc:  # removed again before we got here: nothing to read
            log.warning("camera %s: cannot attach its ring: %s", msg.camera, exc)
            self.schedule.remove(msg.camera)
            return
        self.last_seq[msg.camera] = 0
        self.skipped[msg.camera] = 0
        self.schedule.add(msg.camera)

    def _drop_expired(self) -> None:
        """Answer `expired` for every waiting request whose deadline has passed: those are never run."""
        if not self.requests:
            return
        now_ns = time.monotonic_ns()
        for rid in [rid for rid, r in self.requests.items() if r.deadline_mono_ns <= now_ns]:
            del self.requests[rid]
            self.conn.send(DetectNotRun(rid, self.spec.worker_id, "expired"))

    def _serve_request(self, req: DetectRequest) -> None:
        """Detect on a request's image with its own decode options; answer DetectAnswer or DetectNotRun."""
        picked_ns = time.monotonic_ns()
        detector, wid = self.detector, self.spec.worker_id
        opts = req.options
        p = detector.params
        params = replace(
            p,
            conf=p.conf if opts.conf is None else opts.conf,
            iou=p.iou if opts.iou is None else opts.iou,
            classes=p.classes if opts.classes is None else opts.classes,
            max_det=p.max_det if opts.max_det is None else opts.max_det,
        )
        try:
            with mapped_image(req.image) as image:
                tensor, geometry, pre_ms = detector.prepare(image)
            outputs, inf_ms = detector.infer(tensor)
            det, post_ms = detector.decode(outputs, geometry, params)
        except SharedImageGone:
            self.conn.send(DetectNotRun(req.request_id, wid, "gone"))
            return
        except Exception as exc:
            # Not counted towards MAX_CONSECUTIVE_ERRORS: camera frames judge the backend's health.
            self.conn.send(DetectNotRun(req.request_id, wid, "error", f"{type(exc).__name__}: {exc}"))
            return
        if self.heartbeat is not None:
            self.heartbeat.value = time.monotonic()
        self.conn.send(DetectAnswer(req.request_id, wid, det, StageTimings(pre_ms, inf_ms, post_ms), picked_ns))

    def _due_jobs(self, now: float) -> list[FrameJob]:
        """This round's frames: the due cameras' newest frames, fairly chosen, up to `model.max_batch`.

        Frames with no reason to be looked at are passed over here (counted as skipped); frames of a camera
        waiting for its fps interval stay unseen.
        """
        due: dict[str, tuple[FrameView, CameraDecision]] = {}
        for cam, ring in self.rings:
            if cam in self.disabled:
                continue
            view = ring.read_latest(self.last_seq[cam])
            if view is None:
                continue
            decision = self.schedule.decide(cam, view.meta, now)
            if decision.verdict == "due":
                due[cam] = (view, decision)
            elif decision.verdict == "skip":
                # Every frame since the last one looked at: the worker saw none of them worth a look either
                # (a fresh worker does not know what came before: it counts this frame only).
                last = self.last_seq[cam]
                self.skipped[cam] += view.meta.seq - last if last else 1
                self.last_seq[cam] = view.meta.seq
        picked = self.schedule.choose(due, round_size(self.backend_state, self.spec.model.max_batch))
        return [self._job(cam, *due[cam]) for cam in picked]

    def _job(self, cam: str, view: FrameView, decision: CameraDecision) -> FrameJob:
        """Where to look in a picked frame (`plan_regions`)."""
        from app.inference.batch import FrameJob  # with the detector: imported in the worker process only

        meta = view.meta
        wh = (meta.width, meta.height)
        if decision.whole_frame:
            regions = full_frame(*wh)
        else:
            regions = plan_regions(wh, decision.motion_boxes, decision.track_boxes, self.detector.info.input_hw,
                                   self.schedule.detect_config(cam).regions)  # fmt: skip
        return FrameJob(cam, view, regions)

    def _detect(self, jobs: list[FrameJob], picked: float) -> None:
        """Detect on a round of frames (one batch where the model allows) and send a FrameResult per frame.

        Each frame passes the fault hooks first (a frame failed on purpose is reported, not run); a frame
        overwritten while it was read gets no result (the newer one is taken next time).

        Args:
            jobs: The frames picked this round.
            picked: When they were picked (monotonic s): their cameras' fps intervals count from there.

        Raises:
            SystemExit: After MAX_CONSECUTIVE_ERRORS failed frames in a row (exit code 3), so the supervisor
                replaces the worker.
        """
        from app.inference.batch import detect_frames

        picked_ns = time.monotonic_ns()
        faults = self.faults
        run: list[FrameJob] = []
        delays: dict[int, tuple[float, float, float]] = {}
        for job in jobs:
            try:
                faults.before_frame()
            except Exception as exc:
                self.schedule.detected(job.camera, picked)
                self._frame_failed(job, f"{type(exc).__name__}: {exc}")
                continue
            # Slowed stages are slept here, before the batch, and added to this frame's stage times.
            pre, inf, post = (faults.stage_delay_ms(s) for s in ("preprocess", "inference", "postprocess"))
            delays[id(job)] = (pre, inf, post)
            run.append(job)
        outcomes = detect_frames(self.detector, run, self.spec.model.max_batch) if run else []
        if (now_state := self.detector.backend_state()) != self.backend_state:
            self.backend_state = now_state
            self.conn.send(BackendChanged(self.spec.worker_id, now_state))
        for outcome in outcomes:
            job = outcome.job
            if outcome.error == "overwritten":
                continue  # take the newer frame instead
            if outcome.detections is None:
                self.schedule.detected(job.camera, picked)
                self._frame_failed(job, outcome.error or "no detections")
                continue
            self.errors = 0
            self.schedule.detected(job.camera, picked)
            meta = _frame_meta(job)
            self.last_seq[job.camera] = meta.seq
            if self.heartbeat is not None:
                self.heartbeat.value = time.monotonic()  # last successful inference, read by the supervisor
            t, (d_pre, d_inf, d_post) = outcome.timings, delays[id(job)]
            self.conn.send(
                FrameResult(
                    camera=job.camera,
                    frame=meta,
                    detections=outcome.detections,
                    timings=StageTimings(t.preprocess_ms + d_pre, t.inference_ms + d_inf, t.postprocess_ms + d_post),
                    picked_mono_ns=picked_ns,
                    done_mono_ns=time.monotonic_ns(),
                    worker_id=self.spec.worker_id,
                    regions=job.regions,
                    skipped=self.skipped.get(job.camera, 0),
                )
            )
            self.skipped[job.camera] = 0
            faults.after_frame()

    def _frame_failed(self, job: FrameJob, error: str) -> None:
        """Report a failed frame (it is not retried) and give up after too many in a row.

        Raises:
            SystemExit: The MAX_CONSECUTIVE_ERRORS-th failure in a row (exit code 3).
        """
        self.errors += 1
        seq = _frame_meta(job).seq
        self.last_seq[job.camera] = seq
        self.conn.send(WorkerFrameError(self.spec.worker_id, job.camera, seq, error))
        if self.errors >= MAX_CONSECUTIVE_ERRORS:
            log.error("%d consecutive inference errors; exiting for a restart", self.errors)
            raise SystemExit(3)


def _frame_meta(job: FrameJob) -> FrameMeta:
    """The ring metadata of a camera frame's job (the serving loop builds its jobs from ring views only)."""
    view = job.view
    if not isinstance(view, FrameView):
        raise TypeError(f"camera job of {job.camera} does not hold a ring frame")
    return view.meta


class WorkerHandle:
    """The parent's side of one worker: start, wait for ready, stop politely, then firmly."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("spawn")  # never fork: a forked CUDA/ORT runtime is undefined behaviour
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # A lock-free shared double: the worker writes it, the supervisor reads it; killing the worker at
        # any moment cannot leave anything held (unlike a Value with a lock, or a shared queue).
        self.heartbeat = ctx.RawValue("d", 0.0)
        self.process = ctx.Process(
            target=worker_main,
            args=(spec, child_conn, self.heartbeat),
            name=f"vigil-worker-{spec.worker_id}",
            daemon=True,
        )
        self.started_mono = 0.0
        self._child_conn = child_conn
        self.ready: WorkerReady | None = None

    @property
    def worker_id(self) -> int:
        """The id from the worker's spec."""
        return self.spec.worker_id

    def start(self) -> None:
        """Spawn the worker process; follow with `wait_ready`.

        The child inherits these signals blocked until `worker_main` has its handlers (a signal to the whole
        process group, as systemd's stop or a terminal's Ctrl-C, would otherwise kill it while it imports); here
        they are blocked for the spawn only, and a signal that came meanwhile is delivered right after.
        """
        self.started_mono = time.monotonic()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_BLOCKED_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self._child_conn.close()  # keep only the child's copy, so its death shows up as EOF here

    def wait_ready(self, timeout: float) -> WorkerReady:
        """Wait up to `timeout` s for the worker's WorkerReady.

        Raises:
            WorkerStartError: the worker reported WorkerFailed, exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.1):
                try:
                    msg = self.conn.recv()
                except EOFError:
                    self.process.join(1.0)  # the pipe closes a moment before the process is gone
                    break
                if isinstance(msg, WorkerReady):
                    self.ready = msg
                    return msg
                if isinstance(msg, WorkerFailed):
                    self.process.join(5)
                    raise WorkerStartError(msg.error)
            elif not self.process.is_alive():
                break
        if self.process.is_alive():
            raise WorkerStartError(f"worker {self.worker_id} not ready after {timeout:.0f} s")
        raise WorkerStartError(f"worker {self.worker_id} exited with code {self.process.exitcode} during start")

    def alive(self) -> bool:
        """True while the worker process runs."""
        return self.process.is_alive()

    @property
    def last_inference_mono(self) -> float:
        """`time.monotonic()` (s) of the worker's last successful inference; 0.0 before the first."""
        return float(self.heartbeat.value)

    def send(self, msg: object) -> bool:
        """Send a protocol message to the worker; False when the pipe is closed (the worker is gone)."""
        try:
            self.conn.send(msg)
            return True
        except (BrokenPipeError, OSError):
            return False

    def stop(self, timeout: float = 5.0, reason: str = "shutdown") -> int | None:
        """Ask, wait, then terminate, then kill. Returns the exit code."""
        if self.process.is_alive():
            self.send(StopWorker(reason))
            self.process.join(timeout)
        if self.process.is_alive():
            log.warning("worker %d did not stop in %.1f s; terminating", self.worker_id, timeout)
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        with contextlib.suppress(OSError):
            self.conn.close()
        return self.process.exitcode
