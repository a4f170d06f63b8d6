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
