"""Blue-green model deployment with real worker processes, real ONNX models, real HTTP, MQTT and the CLI.

Models are generated into a temporary models directory: the serving one answers one 'person' box at the centre;
`good` moves it by a pixel (agrees), `disagree` puts it in a corner (same labels, F1 0), `corrupt` is random
bytes and `wrong` has a classifier's [1, 10] output.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import Collect, run_driven, wait_until
from support.onnx_models import dense_constant_model, wrong_shape_model
from support.web_harness import Served
from test_http_api import http

from app.config import VigilConfig
from app.deploy.errors import DeployRejected, ModelPathError
from app.deploy.paths import confine_model_path
from app.deploy.state import ActiveModelStore
from app.pipeline.live import LivePipeline

TOKEN = "deploy-token-0123456789abcdef"


@pytest.fixture(scope="module")
def deploy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("deploy-models")
    dense_constant_model(d / "serving.onnx", np.array([[32, 32, 16, 16, 0.9, 0.05]]))
    dense_constant_model(d / "good.onnx", np.array([[33, 32, 16, 16, 0.9, 0.05]]))
    dense_constant_model(d / "disagree.onnx", np.array([[8, 8, 6, 6, 0.9, 0.05]]))
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
        section = data.setdefault(key, {})
        section.update(value) if isinstance(section, dict) else data.__setitem__(key, value)
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
