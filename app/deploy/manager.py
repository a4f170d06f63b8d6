"""The deployment manager: one blue-green model deployment or rollback at a time, validated before traffic.

    deploy(path) -> confine the path -> the supervisor starts a standby with the new model (load failure: 422)
        -> validate the ready standby: canary frames (the newest `model.deploy.canary_frames` of every camera)
           must give finite outputs that decode; with the serving model's labels, agreement F1 with the serving
           model's detections of the same frames >= `model.deploy.min_agreement_f1`
        -> handover at a result boundary (as a recycle) -> `cfg.model` points at it -> state file -> event

Every outcome is a system event (`model_deployed` / `model_rejected`) for every surface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import numpy as np

from app.config import ModelConfig, VigilConfig
from app.deploy.canary import newest_frames
from app.deploy.errors import DeployBusy, DeployError, DeployRejected, InvalidDeployRequest
from app.deploy.paths import confine_model_path
from app.deploy.state import ActiveModelStore, ModelEntry, startup_model
from app.engine.agreement import agreement
from app.inference.protocol import DetectOptions, ModelIdentity, SetThresholds, WorkerReady
from app.pipeline.records import SystemEvent
from app.pipeline.requests import DetectOutcome, RequestRejected
from app.ring import FrameRing
from app.supervisor.workers import StandbyProbe, StandbyRejected, SupervisorBusy, WorkerSupervisor
from app.types import Detections

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
CANARY_TIMEOUT_S = 30.0  # per canary frame on the standby, and per reference detection on the serving worker

Detect = Callable[[np.ndarray, DetectOptions, float], Awaitable[DetectOutcome]]


class DeploymentManager:
    """Deploys models blue-green through the worker supervisor and keeps the active one in the state dir.

    Args:
        cfg: The whole config; `cfg.model` is replaced by the deployed model's section after a handover.
        supervisor: Runs the standby, the validation and the handover.
        rings: Camera name -> frame ring (canary frames).
        detect: The detection request path of the serving worker (reference detections).
        emit: Publishes a system event to the log and every service.
    """

    def __init__(
        self,
        cfg: VigilConfig,
        supervisor: WorkerSupervisor,
        rings: Mapping[str, FrameRing],
        detect: Detect,
        emit: Callable[[SystemEvent], None],
    ) -> None:
        self.cfg = cfg
        self.supervisor = supervisor
        self.rings = rings
        self.detect = detect
        self.emit = emit
        self.store = ActiveModelStore(cfg.state_dir)
        self.config_model_path = cfg.model.path
        self.last_deployment: dict | None = None
        self._active = False

    def startup(self) -> None:
        """Before the first worker: use the stored active model while the config's model.path is unchanged."""
        self.cfg.model, why = startup_model(self.cfg.model, self.store)
        log.info("%s", why)

    @property
    def busy(self) -> bool:
        """A deployment or rollback is in progress."""
        return self._active

    def status(self) -> dict:
        """`GET /api/model`: the serving model, the previous ones (newest last) and the last deployment's outcome."""
        state = self.store.load()
        return {
            "current": self._current(),
            "previous": [p.as_dict() for p in state.previous] if state is not None else [],
            "last_deployment": self.last_deployment,
            "busy": self._active or self.supervisor.busy,
        }

    async def deploy(self, path: object, precision: object = None) -> dict:
        """Deploy a model from the models directory, validated before it takes traffic.

        Args:
            path: Relative to `model.deploy.models_dir`, or absolute inside it.
            precision: `fp32`, `fp16` or `int8` (TensorRT engine precision); None keeps `model.precision`.

        Returns:
            `{"model", "validation", "handover_gap_ms"}`.

        Raises:
            InvalidDeployRequest: A bad path (outside the directory, missing, a directory) or precision (400).
            DeployBusy: Another deployment, a recycle or a worker replacement is in progress (409).
            DeployRejected: The model failed to load or validation (422); the serving model is untouched.
        """
        try:
            if precision is not None and precision not in PRECISIONS:
                raise InvalidDeployRequest(f"precision must be one of {', '.join(PRECISIONS)}")
            resolved = confine_model_path(path, self.cfg.model.deploy.models_dir)  # type: ignore[arg-type]
        except DeployError as exc:
            self._rejected(str(path), exc)
            raise
        update = {"path": str(resolved), "precision": precision or self.cfg.model.precision}
        return await self._run(self.cfg.model.model_copy(update=update), rollback=False)

    async def deploy_config(self, model: ModelConfig) -> dict | None:
        """Deploy a reloaded config's `model` section the same validated way (the operator's own file: not confined).

        The section becomes the config's model: a later restart starts with it, and its path is the one a stored
        deployment replaces from now on. Never raises for a rejection: the outcome is the `model_deployed` or
        `model_rejected` event (and `last_deployment`); returns the answer, or None when it was rejected.
        """
        self.config_model_path = model.path
        try:
            return await self._run(model, rollback=False)
        except DeployError as exc:
            log.error("config reload: the new model was not deployed, the serving one stays: %s", exc)
            return None

    async def rollback(self) -> dict:
        """Return to the previous model the same way (validated, blue-green).

        Raises:
            DeployBusy: Something else is in progress (409).
            DeployRejected: Nothing to roll back to, or the previous model failed (422).
        """
        state = self.store.load()
        if state is None or not state.previous:
            exc = DeployRejected("nothing to roll back to (no previous model deployed)")
            self._rejected("", exc)
            raise exc
        target = state.previous[-1]
        if not Path(target.path).is_file():
            exc = DeployRejected(f"the previous model {target.path} is gone")
            self._rejected(target.path, exc)
            raise exc
        model = self.cfg.model.model_copy(update={"path": target.path, "precision": target.precision})
        return await self._run(model, rollback=True)

    # ---- the deployment ----------------------------------------------------------------------

    async def _run(self, model: ModelConfig, rollback: bool) -> dict:
        if self._active:
            exc: DeployError = DeployBusy("a model deployment is in progress")
            self._rejected(model.path, exc)
            raise exc
        self._active = True
        validation: dict = {}
        replaced = self._entry(self.cfg.model, self.supervisor.info)
        started = time.monotonic()
        try:
            if self.supervisor.busy:
                raise SupervisorBusy("a worker recycle or replacement is in progress")
            # Canary frames and the serving model's answers to them come first, while nothing else loads: the
            # reference detections take the serving worker's time (within api.max_share) well before the handover.
            frames = newest_frames(self.rings, self.cfg.model.deploy.canary_frames)
            reference = await self._reference(frames)
            outcome = await self.supervisor.deploy(
                model,
                lambda probe: self._validate(probe, frames, reference, validation),
                lambda _ready: self._commit(model),
            )
        except SupervisorBusy as busy:
            exc = DeployBusy(str(busy))
            self._rejected(model.path, exc)
            raise exc from busy
        except StandbyRejected as rejected:
            exc = DeployRejected(rejected.reason, {**validation, **rejected.validation})
            self._rejected(model.path, exc)
            raise exc from rejected
        finally:
            self._active = False
        identity = outcome.ready.model
        new = self._entry(model, outcome.ready)
        try:
            self.store.deployed(new, replaced, self.config_model_path, rollback=rollback)
        except OSError as err:
            log.error("the deployed model could not be kept in %s (%s): a restart uses the config's", self.store.path,
                      err)  # fmt: skip
        answer = {
            "model": self._identity_dict(identity, model.path),
            "validation": validation,
            "handover_gap_ms": outcome.gap_ms,
            "rollback": rollback,
            "duration_s": round(time.monotonic() - started, 2),
        }
        self.last_deployment = {"outcome": "deployed", "at": time.time(), **answer}
        kind = "rolled back to" if rollback else "deployed"
        self.emit(SystemEvent("model_deployed", f"{kind} {Path(model.path).name}", details=answer))
        return answer

    def _commit(self, model: ModelConfig) -> None:
        """The new worker serves: restarts and recycles from now on start it too.

        Thresholds changed while it loaded (MQTT `confidence/set`) are carried over to it and to the config.
        """
        conf, iou = self.cfg.model.conf, self.cfg.model.iou
        self.cfg.model = model.model_copy(update={"conf": conf, "iou": iou})
        if (conf, iou) != (model.conf, model.iou):
            self.supervisor.send(SetThresholds(conf, iou))

    async def _reference(self, frames: list[tuple[str, np.ndarray]]) -> tuple[dict[int, str], list[Detections]] | None:
        """The serving model's labels and detections of the canary frames; None when agreement is off or no frames.

        Raises:
            StandbyRejected: The detection requests were refused (queue full, deadline).
        """
        serving = self.supervisor.info
        if self.cfg.model.deploy.min_agreement_f1 <= 0 or not frames or serving is None:
            return None
        try:
            detections = [
                (await self.detect(image, DetectOptions(), CANARY_TIMEOUT_S)).detections for _, image in frames
            ]
        except RequestRejected as exc:
            raise StandbyRejected(f"the serving model's reference detections failed: {exc}") from exc
        return dict(serving.names), detections

    async def _validate(
        self,
        probe: StandbyProbe,
        frames: list[tuple[str, np.ndarray]],
        reference: tuple[dict[int, str], list[Detections]] | None,
        validation: dict,
    ) -> None:
        """Canary frames on the standby, then agreement with the serving model; fills `validation` as it goes.

        Raises:
            StandbyRejected: A canary frame failed, or the agreement is under `model.deploy.min_agreement_f1`.
        """
        dcfg = self.cfg.model.deploy
        validation["load"] = {"ok": True, "model": self._identity_dict(probe.ready.model, "")}
        validation["canary"] = {"frames": len(frames), "cameras": sorted({cam for cam, _ in frames})}
        answers = await probe.canary([image for _, image in frames], CANARY_TIMEOUT_S)
        for (cam, _), answer in zip(frames, answers):
            if answer.error:
                validation["canary"]["ok"] = False
                raise StandbyRejected(f"canary frame of camera {cam} failed: {answer.error}", validation)
        validation["canary"]["ok"] = True
        candidate = [a.detections if a.detections is not None else Detections.empty() for a in answers]
        validation["canary"]["detections"] = sum(len(d) for d in candidate)
        if dcfg.min_agreement_f1 <= 0:
            validation["agreement"] = {"skipped": "model.deploy.min_agreement_f1 is 0"}
            return
        if not frames or reference is None:
            validation["agreement"] = {"skipped": "no camera frame yet"}
            return
        names, reference_detections = reference
        if names != probe.ready.names:
            validation["agreement"] = {"skipped": "the class names differ from the serving model's"}
            return
        score = agreement(reference_detections, candidate)
        validation["agreement"] = {**score.as_dict(), "min_f1": dcfg.min_agreement_f1}
        if score.f1 < dcfg.min_agreement_f1:
            raise StandbyRejected(
                f"agreement with the serving model F1 {score.f1:.3f} < model.deploy.min_agreement_f1 "
                f"{dcfg.min_agreement_f1:g} on {len(frames)} canary frames", validation,
            )  # fmt: skip

    def _rejected(self, path: str, exc: DeployError) -> None:
        details = {"model": {"path": path}, "reason": exc.reason, "validation": exc.validation,
                   "status": exc.status}  # fmt: skip
        self.last_deployment = {"outcome": "rejected", "at": time.time(), **details}
        self.emit(SystemEvent("model_rejected", f"{Path(path).name or 'model'}: {exc.reason}", details=details))

    # ---- naming models -----------------------------------------------------------------------

    def _current(self) -> dict | None:
        info = self.supervisor.info
        if info is None:
            return None
        return {**self._identity_dict(info.model, self.cfg.model.path), "config_precision": self.cfg.model.precision}

    @staticmethod
    def _identity_dict(identity: ModelIdentity | None, path: str) -> dict:
        if identity is None:
            return {"path": path}
        return {**identity.as_dict(), "sha256_full": identity.sha256, "path": identity.path or path}

    @staticmethod
    def _entry(model: ModelConfig, ready: WorkerReady | None) -> ModelEntry:
        identity = ready.model if ready is not None else None
        return ModelEntry(model.path, model.precision, identity.sha256 if identity else "",
                          Path(model.path).stem, time.time())  # fmt: skip
