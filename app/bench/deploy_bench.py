"""Deployment benchmark.

The live pipeline on the sample video while the default model and a byte-identical copy of it (in a temporary models
directory) are deployed alternately, blue-green and validated: the longest result gap around each handover against
2x the median result interval, out-of-order results, and the time to reject a corrupt model file.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from app.bench.common import bench_camera, run_to_end
from app.bench.recorders import ResultTimes, SwitchTimes
from app.config import ModelConfig, VigilConfig

SETTLE_S = 3.0  # results between deployments, so each handover's gap is measured on its own


def bench_deploy(model: ModelConfig, source: str, deployments: int) -> dict:
    """Deploy the model and a copy of it alternately `deployments` times on `source`, then a corrupt file.

    Returns:
        Deployments done, results, median interval and the 2x bound (ms), the longest gap around each handover
        (ms, from the results; and as the deployment measured it), intervals over the bound, out-of-order
        results, each deployment's duration (s), and the time to reject the corrupt model (s).

    Raises:
        RuntimeError: A deployment of the good model was rejected, or the corrupt one was accepted.
    """
    from app.deploy.errors import DeployRejected
    from app.pipeline.live import LivePipeline

    with tempfile.TemporaryDirectory(prefix="vigil-deploy-bench-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        src = Path(model.path)
        names = [f"{src.stem}.onnx", f"{src.stem}-copy.onnx"]
        for name in names:
            shutil.copyfile(src, models / name)
        (models / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(1 << 16))
        cfg = VigilConfig.model_validate(
            {
                "device_id": "bench",
                "cameras": [bench_camera("bench", source)],
                "model": {**model.model_dump(), "path": str(models / names[0]),
                          "deploy": {"models_dir": str(models)}},
                "output": {"json_lines": False, "status_interval_s": 0},
                "state_dir": str(Path(tmp) / "state"),
            }
        )  # fmt: skip
        sink, switches = ResultTimes(), SwitchTimes()
        pipe = LivePipeline(cfg, [sink, switches])
        outcome: dict = {"answers": [], "durations": []}

        def call(coro_fn: Callable[[], Coroutine[Any, Any, dict]]) -> dict:
            assert pipe._loop is not None
            return asyncio.run_coroutine_threadsafe(coro_fn(), pipe._loop).result(600)

        def driver() -> None:
            try:
                while pipe._loop is None or len(sink.t) < 20:
                    time.sleep(0.1)
                for i in range(deployments):
                    t0 = time.monotonic()
                    target = names[(i + 1) % 2]
                    outcome["answers"].append(call(lambda: pipe.deploy_model(target)))  # noqa: B023 (called at once)
                    outcome["durations"].append(round(time.monotonic() - t0, 2))
                    time.sleep(SETTLE_S)
                t0 = time.monotonic()
                try:
                    call(lambda: pipe.deploy_model("corrupt.onnx"))
                    outcome["error"] = "the corrupt model was accepted"
                except DeployRejected as exc:
                    outcome["reject_s"] = round(time.monotonic() - t0, 2)
                    outcome["reject_reason"] = exc.reason[:200]
                time.sleep(1.0)
            except Exception as exc:
                outcome["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                if pipe._loop is not None:
                    pipe._loop.call_soon_threadsafe(pipe.request_stop, "deploy bench done")

        thread = threading.Thread(target=driver, name="deploy-bench", daemon=True)
        thread.start()
        summary = run_to_end(pipe)
        thread.join(10)
    if "error" in outcome:
        raise RuntimeError(f"deploy bench: {outcome['error']}")
    g = sink.gaps_around(switches.times, 2.0)
    per_switch = g["per_switch_ms"]
    return {
        "seconds": round(summary.duration_s, 1),
        "deployments": len(outcome["answers"]),
        "results": len(sink.t),
        "median_interval_ms": g["median_interval_ms"],
        "bound_ms": g["bound_ms"],
        "max_gap_per_deployment_ms": per_switch,
        "handover_gap_ms": [a["handover_gap_ms"] for a in outcome["answers"]],
        "deployments_over_bound": sum(1 for v in per_switch if v is not None and v > g["bound_ms"]),
        "gaps_over_bound": g["gaps_over_bound"],
        "out_of_order_results": g["out_of_order_results"],
        "deployment_s": outcome["durations"],
        "corrupt_reject_s": outcome["reject_s"],
        "corrupt_reason": outcome["reject_reason"],
        "restarts": summary.worker_restarts,
    }
