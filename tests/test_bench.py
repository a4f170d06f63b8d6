"""`vigil bench` runs end to end (tiny model, few frames) and writes its markdown section. No timing asserts:
numbers come from the benchmark itself, on purpose, never from unit tests."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_bench_json_and_markdown(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    md = tmp_path / "BENCH.md"
    md.write_text("# Benchmarks\n\nhand-written notes stay.\n")
    modes = "backend,detect,live,soak,engine" + (",ultralytics" if importlib.util.find_spec("ultralytics") else "")
    args = [sys.executable, "-m", "app", "bench", "--model", str(tiny_model), "--source", str(small_video),
            "--frames", "10", "--rounds", "2", "--modes", modes, "--live-seconds", "3",
            "--soak-frames", "30", "--json", "--markdown", str(md)]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert {"backend", "detect", "live", "soak"} <= out["modes"].keys()
    assert out["modes"]["detect"]["frames"] == 20 and out["modes"]["detect"]["rounds"] == 2
    assert "detect_vs_backend" in out["ratios"]
    assert out["modes"]["live"]["frames_processed"] > 0
    engine = out["modes"]["engine"]
    assert engine["backend"].startswith("onnxruntime") and engine["frames_engine"] == 30
    assert engine["frames_pipeline"] > 0 and engine["engine_ms"]["p50"] > 0
    assert engine["p99_end_to_end_vs_engine_p50"] > 0
    text = md.read_text()
    assert "hand-written notes stay." in text and "Core pipeline on CPU" in text and "Engine vs end to end" in text
    # re-running replaces the generated block instead of appending another
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert md.read_text().count("Core pipeline on CPU") == 1


def test_bench_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "app", "bench", "--model", str(tmp_path / "x.onnx")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_bench_realtime_mode_end_to_end(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    """The realtime mode runs the default config (its model and source replaced by tiny ones) live and bare,
    with a one-entry sweep, and writes its own block without touching the core one."""
    from app.bench.report import BEGIN, END

    md = tmp_path / "BENCH.md"
    md.write_text(f"# Benchmarks\n\nhand-written notes stay.\n\n{BEGIN}\ncore figures stay\n{END}\n")
    args = [sys.executable, "-m", "app", "bench", "--modes", "realtime", "--config", str(REPO / "configs/default.yaml"),
            "--model", str(tiny_model), "--source", str(small_video), "--realtime-sizes", "64",
            "--realtime-seconds", "1", "--realtime-warmup", "0.3", "--rounds", "1", "--frames", "5",
            "--sweep", "1:off", "--decode-sweep", "NONE:1", "--sweep-seconds", "1", "--sweep-rounds", "1",
            "--json", "--markdown", str(md)]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    rt = json.loads(res.stdout)["modes"]["realtime"]
    assert rt["camera_fps"] == 25.0 and rt["threads"] == 0 and rt["spin_wait"] in (True, False)
    r = rt["sizes"]["64"]
    for key in ("processed_fps", "frame_age_ms", "inference_ms_p50", "bound_ms", "within_bound", "backend_fps",
                "limit_fps", "throughput_ratio", "stages_ms_p50", "cpu_pct"):  # fmt: skip
        assert key in r, key
    assert r["frames"] > 0 and r["processed_fps"] > 0 and r["backend_fps"] > 0
    assert r["limit_fps"] <= min(rt["camera_fps"], r["backend_fps"]) + 1e-6
    assert {"queue", "preprocess", "inference", "postprocess", "ipc", "frame_age"} <= r["stages_ms_p50"].keys()
    assert rt["decode"]["avsource"]["frames"] > 0 and rt["decode"]["avsource"]["cpu_ms"] > 0
    assert [(row["threads"], row["spin_wait"]) for row in rt["sweep"]["rows"]] == [(1, False)]
    assert rt["sweep"]["rows"][0]["processed_fps"] > 0
    assert [row["file_decode"] for row in rt["sweep"]["decode_rows"]] == ["NONE x1"]
    text = md.read_text()
    assert "hand-written notes stay." in text and "core figures stay" in text
    assert "Real time on the CPU, default config" in text and "| 64 |" in text and "| NONE x1 |" in text


def test_bench_realtime_bad_sweep_is_a_clear_error(tiny_model: Path, small_video: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "app", "bench", "--modes", "realtime", "--model", str(tiny_model),
                          "--source", str(small_video), "--sweep", "two:on"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2 and "THREADS:on|off" in res.stderr


def test_bench_api_modes_write_their_own_block(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    md = tmp_path / "BENCH.md"
    from app.bench.report import BEGIN, END

    core = f"{BEGIN}\nold core figures\n{END}"
    md.write_text(f"# Benchmarks\n\n{core}\n")
    args = [sys.executable, "-m", "app", "bench", "--model", str(tiny_model), "--source", str(small_video),
            "--modes", "api,api-ws", "--api-seconds", "1", "--ws-seconds", "1",
            "--json", "--markdown", str(md)]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)["modes"]
    windows = out["api"]["windows"]
    assert set(windows) == {"no requests (before)", "1 clients", "4 clients", "16 clients",
                            "16 clients ignoring Retry-After", "no requests (after)"}  # fmt: skip
    assert windows["1 clients"]["requests"] > 0 and windows["1 clients"]["other_statuses"] == []
    assert out["api-ws"]["ws_stats"]["connections"] == 10
    text = md.read_text()
    assert core in text, "the core block is left alone"
    assert "Local inference service on CPU" in text and "WebSocket stream" in text


def test_bench_batch_and_small_modes(coco_model: Path, sample_video: Path, tmp_path: Path) -> None:
    """The regions block: batch-N vs N x batch-1 and the small-object recall, with the default model (the tiny
    one has no batch axis); figures exist and are sane, no values asserted."""
    from app.bench.report import BEGIN, END

    md = tmp_path / "BENCH.md"
    core = f"{BEGIN}\nold core figures\n{END}"
    md.write_text(f"# Benchmarks\n\n{core}\n")
    args = [sys.executable, "-m", "app", "bench", "--model", str(coco_model), "--source", str(sample_video),
            "--modes", "batch,small", "--batch-repeats", "1", "--small-frames", "12", "--threads", "1",
            "--json", "--markdown", str(md)]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)["modes"]
    assert set(out["batch"]["sizes"]) == {"1", "2", "4", "8"}
    assert all(r["batched_inputs_per_s"] > 0 and r["single_inputs_per_s"] > 0 for r in out["batch"]["sizes"].values())
    small = out["small"]
    assert small["reference_persons"] > 0 and set(small["methods"]) == {"regions", "full_frame"}
    assert all(0 <= m["recall"] <= 1 for m in small["methods"].values())
    text = md.read_text()
    assert core in text and "Regions of interest and batching" in text and "| full frame |" in text


def test_bench_scheduling_modes_write_their_own_block(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    md = tmp_path / "BENCH.md"
    from app.bench.report import BEGIN, END

    core = f"{BEGIN}\nold core figures\n{END}"
    md.write_text(f"# Benchmarks\n\n{core}\n")
    args = [sys.executable, "-m", "app", "bench", "--model", str(tiny_model), "--source", str(small_video),
            "--modes", "static,capacity", "--static-seconds", "2", "--static-idle-interval", "1",
            "--capacity-seconds", "2", "--capacity-cameras", "2", "--capacity-sweep", "2",
            "--json", "--markdown", str(md)]  # fmt: skip
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)["modes"]
    static = out["static"]
    assert static["gating_off"]["detections"] > 0 and static["gating_off"]["cpu_worker_s"] > 0
    assert {"detections_bound", "detections_within_bound", "cpu_ratio_off_vs_on", "cpu_goal_met"} <= set(static)
    cap = out["capacity"]
    assert set(cap["rates"]) == {"cam0", "cam1"} and all(r > 0 for r in cap["rates"].values())
    assert 0 < cap["min_max_ratio"] <= 1 and cap["age_bound_ms"] > 0
    assert [r["cameras"] for r in cap["sweep"]] == [2] and cap["sweep"][0]["moving"] == 1
    text = md.read_text()
    assert core in text, "the core block is left alone"
    assert "Camera scheduling" in text and "Static scene" in text and "Half the cameras static" in text


def test_bench_capacity_bad_sweep_is_a_clear_error(tiny_model: Path, small_video: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "app", "bench", "--modes", "capacity", "--model", str(tiny_model),
                          "--source", str(small_video), "--capacity-sweep", "4,x"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: --capacity-sweep"), res.stderr
