"""Blue-green model deployment with real worker processes, real ONNX models, real HTTP, MQTT and the CLI.

Models are generated into a temporary models directory: the serving one answers one 'person' box at the centre;
`good` moves it by a pixel (agrees), `disagree` puts it in a corner (same labels, F1 0), `nan` answers a NaN
score, `corrupt` is random bytes and `wrong` has a classifier's [1, 10] output.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import Collect, run_driven, wait_until
from support.broker import Broker, Subscriber
from support.onnx_models import dense_constant_model, wrong_shape_model
from support.web_harness import Served
from test_http_api import http

from app.cli import main as vigil_main
from app.config import VigilConfig
from app.deploy.errors import DeployRejected, ModelPathError
from app.deploy.paths import confine_model_path
from app.deploy.state import ActiveModelStore, ModelEntry, startup_model
from app.mqtt.service import MqttService
from app.pipeline.live import LivePipeline

TOKEN = "deploy-token-0123456789abcdef"


@pytest.fixture(scope="module")
def deploy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("deploy-models")
    dense_constant_model(d / "serving.onnx", np.array([[32, 32, 16, 16, 0.9, 0.05]]))
    dense_constant_model(d / "good.onnx", np.array([[33, 32, 16, 16, 0.9, 0.05]]))
    dense_constant_model(d / "disagree.onnx", np.array([[8, 8, 6, 6, 0.9, 0.05]]))
    dense_constant_model(d / "nan.onnx", np.array([[32, 32, 16, 16, np.nan, 0.05]]))
    (d / "corrupt.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    wrong_shape_model(d / "wrong.onnx")
    (d / "sub").mkdir()
    return d


def deploy_config(models: Path, video: Path, state: Path, **extra) -> VigilConfig:
    data: dict = {
        "cameras": [{"name": "cam", "source": str(video), "loop": True, "realtime": True, "fps": 20}],
        "model": {"path": str(models / "serving.onnx"), "threads": 1, "warmup_runs": 1,
                  "deploy": {"models_dir": str(models), "canary_frames": 2}},
        "output": {"json_lines": False, "status_interval_s": 0},
        "state_dir": str(state),
        "http": {"port": 0},
    }  # fmt: skip
    for key, value in extra.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return VigilConfig.model_validate(data)


def post(url: str, path: str, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, data = http(f"{url}{path}", "POST", raw, headers)
    return status, json.loads(data)


def get(url: str, path: str) -> dict:
    status, _, data = http(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, data
    return json.loads(data)


def test_paths_are_confined_to_the_models_directory(deploy_models: Path, tmp_path: Path) -> None:
    assert confine_model_path("good.onnx", deploy_models) == (deploy_models / "good.onnx").resolve()
    assert confine_model_path(str(deploy_models / "good.onnx"), deploy_models).name == "good.onnx"
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    (deploy_models / "link.onnx").unlink(missing_ok=True)
    (deploy_models / "link.onnx").symlink_to(outside)
    for bad, why in [("../outside.onnx", "outside"), (str(outside), "outside"), ("link.onnx", "outside"),
                     ("missing.onnx", "no such file"), ("sub", "not a file"), ("", "non-empty")]:  # fmt: skip
        with pytest.raises(ModelPathError, match=why):
            confine_model_path(bad, deploy_models)


def test_deploy_validate_reject_and_roll_back_over_http(deploy_models: Path, small_video: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = deploy_config(
        deploy_models, small_video, tmp_path / "state",
        http={"require_token": True, "token_file": str(token_file)},
        debug={"faults": {"standby_load_delay_s": 1.0}},
    )  # fmt: skip
    served = Served(cfg)
    collect = Collect()
    served.pipe.fanout.services.append(collect)
    with served as s:
        url = s.url
        assert wait_until(lambda: len(collect.records) > 5, 60), "results flow"
        status = get(url, "/api/model")
        assert status["current"]["name"] == "serving" and status["previous"] == []
        assert get(url, "/api/stats")["model"]["name"] == "serving"

        # The token is needed whenever the API wants one.
        assert post(url, "/api/model", {"path": "good.onnx"}, token=None)[0] == 401
        # Bad bodies and paths: 400, nothing started.
        assert post(url, "/api/model", b"{nope")[0] == 400
        assert post(url, "/api/model", {"path": 3})[0] == 400
        assert post(url, "/api/model", {"path": "good.onnx", "precision": "fp8"})[0] == 400
        code, body = post(url, "/api/model", {"path": "../serving.onnx"})
        assert code == 400 and "outside the models directory" in body["error"]
        assert post(url, "/api/model/rollback", {})[0] == 422, "nothing to roll back to yet"

        # Load failures and validation failures: 422 with the reason, the serving model untouched.
        code, body = post(url, "/api/model", {"path": "corrupt.onnx"})
        assert code == 422 and body["error"], body
        code, body = post(url, "/api/model", {"path": "wrong.onnx"})
        assert code == 422 and "[1, 10]" in body["error"], body
        code, body = post(url, "/api/model", {"path": "disagree.onnx"})
        assert code == 422 and "agreement" in body["error"], body
        assert body["validation"]["agreement"]["f1"] < 0.5 and body["validation"]["canary"]["ok"] is True
        n = len(collect.records)
        assert wait_until(lambda: len(collect.records) > n + 3, 30), "the old model kept serving"
        assert {r["model"]["name"] for r in collect.records} == {"serving"}
        assert get(url, "/api/model")["last_deployment"]["outcome"] == "rejected"

        # A deployment in progress answers a second one with 409.
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(zip(("code", "body"), post(url, "/api/model",
                                                                                  {"path": "good.onnx"}))))  # fmt: skip
        t.start()
        assert wait_until(lambda: get(url, "/api/model")["busy"], 20)
        assert post(url, "/api/model", {"path": "good.onnx"})[0] == 409
        t.join(90)
        assert first["code"] == 200, first
        answer = first["body"]
        assert answer["model"]["name"] == "good" and answer["validation"]["agreement"]["f1"] == 1.0
        assert answer["validation"]["canary"]["frames"] >= 1

        # From the switch on, results name the new model; frames stay in order, none repeated.
        n = len(collect.records)
        assert wait_until(lambda: len(collect.records) > n + 3, 30)
        names = [r["model"]["name"] for r in collect.records]
        switch = names.index("good")
        assert set(names[:switch]) == {"serving"} and set(names[switch:]) == {"good"}
        seqs = [r["seq"] for r in collect.records]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert len(collect.records[-1]["model"]["sha256"]) == 12
        assert get(url, "/api/stats")["model"]["name"] == "good"
        assert s.pipe.cfg.model.path == str((deploy_models / "good.onnx").resolve())

        # Rollback returns to the model the deployment replaced.
        code, body = post(url, "/api/model/rollback", {})
        assert code == 200 and body["model"]["name"] == "serving" and body["rollback"], body
        assert get(url, "/api/model")["previous"] == []
    state = json.loads((tmp_path / "state" / "model" / "active.json").read_text())
    assert Path(state["current"]["path"]).name == "serving.onnx"


def _call(pipe: LivePipeline, coro_fn, timeout: float = 120.0):
    assert wait_until(lambda: pipe.worker_info is not None and pipe._loop is not None, 60)
    return asyncio.run_coroutine_threadsafe(coro_fn(), pipe._loop).result(timeout)


def test_the_deployed_model_survives_a_restart_unless_the_config_was_edited(
    deploy_models: Path, small_video: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cfg = deploy_config(deploy_models, small_video, state)
    first = LivePipeline(cfg)
    seen: dict = {}

    def deploy_then_fail_to_roll_forward() -> None:
        seen["answer"] = _call(first, lambda: first.deploy_model("good.onnx"))
        with pytest.raises(DeployRejected, match=r"\w"):
            _call(first, lambda: first.deploy_model("corrupt.onnx"))

    run_driven(first, deploy_then_fail_to_roll_forward)
    assert seen["answer"]["model"]["name"] == "good"
    stored = ActiveModelStore(state).load()
    assert stored is not None and Path(stored.current.path).name == "good.onnx"
    assert stored.replaced_config_path == str(deploy_models / "serving.onnx")
    assert [Path(p.path).name for p in stored.previous] == ["serving.onnx"]

    # Same config, same state dir: the deployed model serves again.
    again = LivePipeline(deploy_config(deploy_models, small_video, state))
    run_driven(again, lambda: seen.update(again=_call(again, lambda: asyncio.sleep(0, again.worker_info))))
    assert seen["again"].model.name == "good"

    # The operator edited model.path: the config wins, and the stored state is left as it was.
    edited = deploy_config(deploy_models, small_video, state)
    edited.model.path = str(deploy_models / "disagree.onnx")
    third = LivePipeline(edited)
    run_driven(third, lambda: seen.update(third=_call(third, lambda: asyncio.sleep(0, third.worker_info))))
    assert seen["third"].model.name == "disagree"


def test_a_stored_model_whose_file_is_gone_falls_back_to_the_config(deploy_models: Path, tmp_path: Path) -> None:
    store = ActiveModelStore(tmp_path)
    cfg = deploy_config(deploy_models, deploy_models / "x.mp4", tmp_path)
    gone = ModelEntry(str(tmp_path / "gone.onnx"), "fp16", "ab" * 32, "gone")
    store.deployed(gone, ModelEntry(cfg.model.path, "fp16"), cfg.model.path)
    model, why = startup_model(cfg.model, store)
    assert model.path == cfg.model.path and "gone" in why
    kept = ModelEntry(str(deploy_models / "good.onnx"), "fp32")
    store.deployed(kept, gone, "ignored: the first deployment's config path is kept")
    model, why = startup_model(cfg.model, store)
    assert model.path == kept.path and model.precision == "fp32" and "deployed" in why


def test_mqtt_model_set_and_rollback_publish_the_outcome(
    deploy_models: Path, small_video: Path, tmp_path: Path, broker: Broker
) -> None:
    base = "vigil/dev"
    mqtt = {"enabled": True, "port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1}
    cfg = deploy_config(deploy_models, small_video, tmp_path / "state", device_id="dev", mqtt=mqtt)
    sub = Subscriber(broker, f"{base}/#")
    pipe = LivePipeline(cfg, [MqttService(cfg)])

    def system(event: str) -> dict:
        msg = sub.wait_for(lambda m: m.topic == f"{base}/cam/system" and json.loads(m.payload)["event"] == event, 90)
        return json.loads(msg.payload)

    def driver() -> None:
        assert wait_until(lambda: bool(sub.on(f"{base}/model")), 60), "the serving model is announced"
        assert json.loads(sub.on(f"{base}/model")[-1].payload)["name"] == "serving"
        sub.client.publish(f"{base}/model/set", "../serving.onnx", qos=1)
        rejected = system("model_rejected")
        assert "outside the models directory" in rejected["reason"] and rejected["status"] == 400
        sub.client.publish(f"{base}/model/set", "good.onnx", qos=1)
        deployed = system("model_deployed")
        assert deployed["model"]["name"] == "good" and deployed["validation"]["canary"]["ok"]
        assert wait_until(lambda: json.loads(sub.on(f"{base}/model")[-1].payload)["name"] == "good", 10)
        detections = f"{base}/cam/detections"
        assert wait_until(lambda: json.loads(sub.on(detections)[-1].payload)["model"]["name"] == "good", 20)
        sub.client.publish(f"{base}/model/rollback", "", qos=1)
        assert wait_until(lambda: json.loads(sub.on(f"{base}/model")[-1].payload)["name"] == "serving", 90)

    try:
        run_driven(pipe, driver)
    finally:
        sub.close()


def test_cli_deploys_and_reports_a_rejection(
    deploy_models: Path, small_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Served(deploy_config(deploy_models, small_video, tmp_path / "state")) as s:
        assert wait_until(lambda: s.pipe.worker_info is not None, 60)
        assert vigil_main(["model", "status", "--url", s.url]) == 0
        assert json.loads(capsys.readouterr().out)["current"]["name"] == "serving"
        assert vigil_main(["model", "deploy", "wrong.onnx", "--url", s.url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "[1, 10]" in err[0]
        assert vigil_main(["model", "deploy", "nan.onnx", "--url", s.url]) == 2
        assert "non-finite" in capsys.readouterr().err, "a model whose outputs hold NaN fails the canary frames"
        assert vigil_main(["model", "deploy", "good.onnx", "--url", s.url]) == 0
        assert json.loads(capsys.readouterr().out)["model"]["name"] == "good"
        assert vigil_main(["model", "rollback", "--url", s.url]) == 0
        assert vigil_main(["model", "rollback", "--url", s.url]) == 2
        assert "nothing to roll back to" in capsys.readouterr().err
