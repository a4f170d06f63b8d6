"""The command line as a user runs it: real subprocesses, real models and files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from conftest import REPO, vigil_shm_segments
from support.field_media import (
    jpeg_with_orientation,
    make_resolution_change_ts,
    make_truncated_mp4,
    make_vfr,
    video_frames,
)
from support.onnx_models import wrong_shape_model

VIGIL = [sys.executable, "-m", "app"]


def run_vigil(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*VIGIL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ---- detect ---------------------------------------------------------------------------------------


def test_detect_image_default_model_exact_format(fall_model: Path, tmp_path: Path) -> None:
    img = tmp_path / "frame.jpg"
    cap = cv2.VideoCapture(str(REPO / "calibration/samples/bikes.mp4"))
    for _ in range(41):
        _ok, frame = cap.read()
    cap.release()
    cv2.imwrite(str(img), frame)
    res = run_vigil("detect", str(img))
    assert res.returncode == 0, res.stderr
    (obj,) = json_lines(res.stdout)
    assert set(obj) == {"frame", "file", "pts", "detections", "latency_ms"}
    assert obj["frame"] == 0 and obj["file"] == "frame.jpg" and obj["pts"] == 0.0
    assert set(obj["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    assert obj["detections"], "the sample frame has a person"
    d = obj["detections"][0]
    assert set(d) == {"class_id", "label", "confidence", "box"}
    assert d["label"] in ("person", "bicycle") and 0.25 < d["confidence"] <= 1  # the default COCO model
    x1, y1, x2, y2 = d["box"]
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 272


def test_detect_video_every_frame_in_order(tiny_model: Path, small_video: Path) -> None:
    res = run_vigil("detect", str(small_video), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    rows = json_lines(res.stdout)
    assert [r["frame"] for r in rows] == list(range(50))
    assert all(r["pts"] >= 0 for r in rows) and rows[-1]["pts"] > rows[1]["pts"]
    # the constant model puts one box in the centre of the 64x64 input: 160x120 source -> centre box
    box = rows[0]["detections"][0]["box"]
    assert box == pytest.approx([60.0, 40.0, 100.0, 80.0], abs=0.2)
    assert rows[0]["detections"][0]["label"] == "person"


def test_detect_max_frames_and_thresholds(tiny_model: Path, small_video: Path) -> None:
    res = run_vigil("detect", str(small_video), "--model", str(tiny_model), "--max-frames", "5", "--conf", "0.95")
    assert res.returncode == 0, res.stderr
    rows = json_lines(res.stdout)
    assert len(rows) == 5 and all(r["detections"] == [] for r in rows)


def test_detect_folder_skips_non_images(tiny_model: Path, tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((50, 80, 3), i * 60, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    res = run_vigil("detect", str(tmp_path), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    assert [r["frame"] for r in json_lines(res.stdout)] == [0, 1, 2]
    assert "3.jpg" in res.stderr  # the bad file is named in a warning


@pytest.mark.parametrize(
    ("make_source", "needle"),
    [
        (lambda d: d / "missing.mp4", "does not exist"),
        (lambda d: (d / "junk.mp4").write_bytes(b"\x00" * 1000) and d / "junk.mp4", "could not"),
        (lambda d: d / "missing-dir" / "x.png", "does not exist"),
    ],
)
def test_detect_bad_source_is_a_clear_error(tiny_model: Path, tmp_path: Path, make_source, needle: str) -> None:
    src = make_source(tmp_path)
    res = run_vigil("detect", str(src), "--model", str(tiny_model))
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and needle in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_detect_applies_exif_orientation(fall_model: Path, sample_video: Path, tmp_path: Path) -> None:
    """Field case exif_orientation6.jpg: a phone JPEG stored sideways with Orientation 6 was read as a
    272x640 frame and the upright person reported as `Fall`. Right: the upright frame's result, Normal
    ~0.60 at about [342, 2, 499, 215]."""
    upright = video_frames(sample_video, [125])[0]
    (tmp_path / "phone.jpg").write_bytes(jpeg_with_orientation(upright, 6))
    (tmp_path / "upright.jpg").write_bytes(jpeg_with_orientation(upright, 1))
    res = run_vigil("detect", str(tmp_path), "--model", str(fall_model))
    assert res.returncode == 0, res.stderr
    phone, up = json_lines(res.stdout)
    assert (phone["file"], up["file"]) == ("phone.jpg", "upright.jpg")
    for row in (phone, up):
        (d,) = row["detections"]
        assert d["label"] == "Normal" and d["confidence"] == pytest.approx(0.60, abs=0.02), row
        assert d["box"] == pytest.approx([342, 2, 499, 215], abs=3), row
    # The default COCO model sees the same upright scene in both files.
    phone, up = json_lines(run_vigil("detect", str(tmp_path)).stdout)
    assert phone["detections"] and [d["label"] for d in phone["detections"]] == [d["label"] for d in up["detections"]]
    for a, b in zip(phone["detections"], up["detections"]):
        assert a["box"] == pytest.approx(b["box"], abs=4) and a["confidence"] == pytest.approx(
            b["confidence"], abs=0.05
        )


def test_detect_file_name_with_an_exclamation_mark(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    """Field case `alarm!.mp4`: an existing path is a file, never a GStreamer pipeline."""
    video = tmp_path / "alarm!.mp4"
    video.write_bytes(small_video.read_bytes())
    res = run_vigil("detect", str(video), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    assert [r["frame"] for r in json_lines(res.stdout)] == list(range(50))


def test_detect_folder_results_name_their_file(tiny_model: Path, tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.full((50, 80, 3), 90, np.uint8))
    (tmp_path / "b.jpg").write_bytes((tmp_path / "b.jpg").read_bytes()[:40])  # truncated: skipped
    res = run_vigil("detect", str(tmp_path), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    rows = json_lines(res.stdout)
    assert [(r["frame"], r["file"]) for r in rows] == [(0, "a.png"), (1, "c.png")]
    assert "b.jpg" in res.stderr


def test_detect_truncated_recording_warns_with_frames_read_vs_declared(
    tiny_model: Path, sample_video: Path, tmp_path: Path
) -> None:
    """Field case truncated_half.mp4: it played part of its frames and ended with no word."""
    video, declared = make_truncated_mp4(tmp_path / "cut.mp4", video_frames(sample_video, range(0, 50, 5)))
    res = run_vigil("detect", str(video), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    n = len(json_lines(res.stdout))
    assert 0 < n < declared
    assert f"ended after {n} of its {declared} declared frames" in res.stderr


def test_detect_variable_frame_rate_and_resolution_change(tiny_model: Path, sample_video: Path, tmp_path: Path) -> None:
    frames = video_frames(sample_video, range(0, 50, 5))
    vfr = make_vfr(tmp_path / "vfr.mp4", frames, fast=3, slow=2)
    res = run_vigil("detect", str(vfr), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    assert [r["pts"] for r in json_lines(res.stdout)] == [0.0, 0.04, 0.08, 0.48, 0.88]
    ts = make_resolution_change_ts(tmp_path / "rc.ts", frames, seconds=0.4)
    res = run_vigil("detect", str(ts), "--model", str(tiny_model))
    assert res.returncode == 0, res.stderr
    assert "resolution changed from 640x272 to 640x480" in res.stderr
    boxes = [r["detections"][0]["box"] for r in json_lines(res.stdout)]  # the tiny model: one centred box
    assert len(boxes) == 20 and all(b[3] <= 272 for b in boxes[:10]) and all(b[3] > 272 for b in boxes[10:])


@pytest.mark.parametrize(
    "args",
    [
        ["detect", "calibration/samples/bikes.mp4", "--max-frames", "-1"],
        ["detect", "calibration/samples/bikes.mp4", "--imgsz", "0"],
        ["detect", "calibration/samples/bikes.mp4", "--conf", "2"],
        ["detect", "calibration/samples/bikes.mp4", "--threads", "-1"],
        ["detect", "calibration/samples/bikes.mp4", "--model", "calibration"],
        ["run", "--set", "cameras.0.fps=-5"],
        ["run", "--set", "nonsense"],
        ["check", "--set", "model.imgsz=100000"],
        ["mqtt", "tail", "--set", "mqtt.port=1", "--timeout", "1"],
        ["bench", "--modes", "nope"],
        ["run", "--config", "engines/yolov3-tiny.weights"],  # not text
        ["run", "--duration", "nan"],
        ["mqtt", "tail", "--count", "0"],
        ["detect", "srt://u:s3cret@127.0.0.1:9/x"],
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(args: list[str]) -> None:
    res = run_vigil(*args)
    assert res.returncode == 2, (args, res.stderr)
    assert "Traceback" not in res.stderr and "error: " in res.stderr.splitlines()[-1], res.stderr
    assert "s3cret" not in res.stderr


def test_classes_by_label_or_id(fall_model: Path, sample_video: Path, tmp_path: Path) -> None:
    from app.inference.detector import resolve_classes
    from app.inference.model_info import ModelShapeError

    names = {0: "person", 1: "bicycle", 2: "car"}
    assert resolve_classes(["Person", "car", 1, "2", "person"], names) == (0, 2, 1)
    assert resolve_classes(None, names) is None and resolve_classes([7], {}) == (7,)
    with pytest.raises(ModelShapeError, match=r"model.classes: none of 'persn', 7 is a class of the model \(0: person"):
        resolve_classes(["persn", 7], names)
    assert resolve_classes(["person", "dog"], names) == (0,), "a label the model lacks is ignored with a warning"
    img = tmp_path / "frame.jpg"
    cv2.imwrite(str(img), video_frames(sample_video, [125])[0])
    only_fall = json_lines(run_vigil("detect", str(img), "--model", str(fall_model), "--classes", "fall").stdout)[0][
        "detections"
    ]
    both = json_lines(run_vigil("detect", str(img), "--model", str(fall_model), "--classes", "Fall,0").stdout)[0][
        "detections"
    ]
    assert only_fall == [] and [d["label"] for d in both] == ["Normal"]
    res = run_vigil("detect", str(img), "--model", str(fall_model), "--classes", "persn")
    assert res.returncode == 2 and "error: model.classes: none of 'persn' is a class of the model" in res.stderr


def test_an_unexpected_failure_is_still_one_error_line(monkeypatch, capsys) -> None:
    """The last line of defence in main(): whatever a command raises ends as `error: ...`, exit 2."""
    import app.cli.entry

    def boom(args) -> int:
        raise RuntimeError("disk on fire at rtsp://admin:hunter2@cam/")

    parser = app.cli.entry.build_parser()
    monkeypatch.setattr(app.cli.entry, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check"].set_defaults(func=boom)
    assert app.cli.main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: check: disk on fire") and "hunter2" not in err and "Traceback" not in err


def test_a_usage_error_is_one_error_line_and_exit_2(monkeypatch, capsys) -> None:
    """Commands raise UsageError; main() alone prints it as `error: <message>` and exits 2."""
    import app.cli.entry
    from app.cli.common import UsageError

    def refuse(args) -> int:
        raise UsageError("no frames could be read from nowhere.mp4")

    parser = app.cli.entry.build_parser()
    monkeypatch.setattr(app.cli.entry, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check"].set_defaults(func=refuse)
    assert app.cli.main(["check"]) == 2
    assert capsys.readouterr().err == "error: no frames could be read from nowhere.mp4\n"


def test_load_config_args_names_the_bad_key(monkeypatch, tmp_path: Path) -> None:
    import argparse

    from app.cli.common import UsageError, add_config_args, load_config_args

    monkeypatch.chdir(tmp_path)  # with no --config, configs/default.yaml of the working directory is the config
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("cameras:\n  - name: porch\n    source: cam.mp4\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    cfg = load_config_args(parser.parse_args(["--set", "model.conf=0.5"]))
    assert cfg.cameras[0].name == "porch" and cfg.model.conf == 0.5
    with pytest.raises(UsageError, match=r"^invalid config: configs/default\.yaml: model\.bogus: unknown key$"):
        load_config_args(parser.parse_args(["--set", "model.bogus=1"]))


def test_detect_truncated_video(tiny_model: Path, small_video: Path, tmp_path: Path) -> None:
    data = small_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    res = run_vigil("detect", str(cut), "--model", str(tiny_model))
    # A truncated MP4 may lose its index (clear error) or decode partly (some frames): never a traceback.
    assert "Traceback" not in res.stderr
    if res.returncode == 0:
        assert 0 < len(json_lines(res.stdout)) <= 50
    else:
        assert res.returncode == 2 and res.stderr.startswith("error: ")


def test_detect_wrong_model_shape(tmp_path: Path, small_video: Path) -> None:
    model = wrong_shape_model(tmp_path / "cls.onnx")
    res = run_vigil("detect", str(small_video), "--model", str(model))
    assert res.returncode == 2
    assert "has shape [1, 10]" in res.stderr and "Traceback" not in res.stderr


# ---- run ------------------------------------------------------------------------------------------


def run_args(model: Path, source: Path, *extra: str) -> list[str]:
    return [
        "run", "--config", str(REPO / "configs/default.yaml"),
        "--set", f"model.path={model}", "--set", f"cameras.0.source={source}",
        "--set", "output.status_interval_s=1", "--set", "http.port=0", *extra,
    ]  # fmt: skip


def test_run_file_to_end_prints_json_and_cleans_up(tiny_model: Path, small_video: Path) -> None:
    res = run_vigil(*run_args(tiny_model, small_video, "--set", "cameras.0.loop=false", "--set",
                              "cameras.0.realtime=false"), timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json_lines(res.stdout)
    assert rows, res.stderr
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    r = rows[-1]
    assert r["camera"] == "street" and r["captured_at"].endswith("Z")
    assert {"preprocess", "inference", "postprocess", "total", "queue", "frame_age"} <= set(r["latency_ms"])
    assert r["latency_ms"]["frame_age"] >= r["latency_ms"]["inference"]
    # every frame is either processed or counted as dropped
    assert seqs[-1] == len(rows) + sum(x["dropped_before"] for x in rows)
    assert "all sources finished" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_signal_exits_cleanly(tiny_model: Path, small_video: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*VIGIL, *run_args(tiny_model, small_video)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()  # a result means capture, ring and worker are all up
        assert json.loads(first)["camera"] == "street"
        parent = psutil.Process(proc.pid)
        children = parent.children(recursive=True)
        assert children, "the inference worker is a child process"
        assert vigil_shm_segments(proc.pid)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"leaked child processes: {alive}"
    assert not vigil_shm_segments(proc.pid), "shared memory leaked"


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its `SigCgt` mask in /proc): Python has none by default."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


# Runs the command after it with SIGINT at its default action, as a foreground terminal job has it: a test suite
# started in the background (`... &`) passes SIGINT on ignored, and Python keeps ignoring it until the pipeline
# takes it over. (exec keeps a default disposition; a preexec_fn is not safe with the suite's threads.)
WITH_DEFAULT_SIGINT = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stopped_while_it_starts_exits_0_and_leaves_nothing(
    tiny_model: Path, small_video: Path, sig: signal.Signals
) -> None:
    """`systemctl stop` right after a start: the signal comes while the commands load, the config is read and the
    labels checked (about 1-2 s), before the pipeline takes the signals over. Found by a new user: exit 130 for
    SIGINT, killed by SIGTERM (-15). Now a clean stop like a later one."""
    proc = subprocess.Popen([*WITH_DEFAULT_SIGINT, *VIGIL, *run_args(tiny_model, small_video)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(sig)  # as soon as the handler is in place: the commands are still loading (~0.5 s)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "worker" not in err, "stopped before any worker started (else the pipeline's own handlers did it)"
    assert not vigil_shm_segments(proc.pid), "shared memory leaked"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_to_the_whole_group_while_the_worker_loads_is_clean_and_does_not_wait_for_it(
    tiny_model: Path, small_video: Path, sig: signal.Signals
) -> None:
    """systemd's stop signals the whole control group, a terminal's Ctrl-C the whole process group: the worker
    gets it too, while it still imports or warms up. Found by a breaker: exit 2 "worker failed to start" (the
    worker killed mid-import, or a KeyboardInterrupt traceback from it), or the stop waiting out the whole model
    load (`worker.ready_timeout_s`, longer than systemd's stop timeout). Here the warm-up never ends on its own:
    only a stop that does not wait for it returns."""
    argv = [*VIGIL, *run_args(tiny_model, small_video, "--set", "model.warmup_runs=100000000",
                              "--set", "worker.ready_timeout_s=3000")]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    children: list[psutil.Process] = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while not children and proc.poll() is None and time.monotonic() < deadline:
            children = parent.children(recursive=True)
            time.sleep(0.005)
        assert children, "the worker was spawned"
        os.killpg(proc.pid, sig)  # the worker is importing or loading its model now
        _out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"leaked child processes: {alive}"
    assert not vigil_shm_segments(proc.pid), "shared memory leaked"


def test_a_bench_stopped_by_sigterm_stops_too(tiny_model: Path, small_video: Path) -> None:
    """The pipeline takes SIGTERM over while a bench runs it: the bench must stop (143), not report a cut-short
    run as done and go on to its next mode (found by a breaker: exit 0 after printing the results)."""
    argv = [*VIGIL, "bench", "--model", str(tiny_model), "--source", str(small_video), "--modes", "live,detect",
            "--live-seconds", "600", "--frames", "20"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while not parent.children(recursive=True) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and not out.strip(), (out, err)
    assert not vigil_shm_segments(proc.pid), "shared memory leaked"


def test_a_signal_while_the_pipeline_shuts_down_still_stops_the_bench(small_video: Path) -> None:
    """A bench's window ended (`request_stop`), and SIGTERM comes while the worker stops: the pipeline's handler
    takes it, and it must still reach the summary, or the bench goes on to its next mode (found by a breaker)."""
    from app.config import VigilConfig
    from app.pipeline.live import LivePipeline

    cfg = VigilConfig.model_validate({"cameras": [{"name": "cam", "source": str(small_video)}]})
    pipe = LivePipeline(cfg, [])
    pipe.request_stop("duration 3 s reached")
    pipe._on_stop_signal(signal.SIGTERM)
    pipe._on_stop_signal(signal.SIGINT)
    assert pipe._stop_signal == signal.SIGTERM, "the first signal counts"


def test_a_signal_stop_is_the_commands_exit_status_and_main_gives_the_handler_back() -> None:
    """`run` stopped by a signal is a clean stop (0); any other command reports the signal (130, 143). `main`
    called in-process (tests, tools) puts the caller's SIGTERM handler back, also from a thread."""
    import threading

    import app.cli

    assert app.cli.command_of(["--log-level", "debug", "run", "--config", "x"]) == "run"
    assert app.cli.command_of(["drift", "baseline", "--camera", "run"]) == "drift"
    assert app.cli.stop_status("run", signal.SIGTERM) == 0
    assert app.cli.stop_status("detect", signal.SIGTERM) == 143 and app.cli.stop_status("bench", signal.SIGINT) == 130
    before = signal.getsignal(signal.SIGTERM)
    assert app.cli.main(["check", "--config", "/nonexistent.yaml"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(app.cli.main(["check", "--config", "/nonexistent.yaml"])))
    thread.start()
    thread.join(60)
    assert codes == [2], "no 'signal only works in main thread' from a thread"


def test_run_print_config_and_invalid_config(tmp_path: Path) -> None:
    res = run_vigil("run", "--config", str(REPO / "configs/default.yaml"), "--set", "model.conf=0.5", "--print-config")
    assert res.returncode == 0 and "conf: 0.5" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [{name: a, source: x.mp4, fps: -1}]\n")
    res = run_vigil("run", "--config", str(bad))
    assert res.returncode == 2
    assert "cameras.0.fps" in res.stderr and "Traceback" not in res.stderr


def test_run_wrong_model_shape_is_a_clear_error(tmp_path: Path, small_video: Path) -> None:
    model = wrong_shape_model(tmp_path / "cls.onnx")
    proc = subprocess.Popen([*VIGIL, *run_args(model, small_video)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "has shape [1, 10]" in err and "Traceback" not in err
    assert not vigil_shm_segments(proc.pid)


def test_run_missing_source_keeps_retrying(tiny_model: Path, tmp_path: Path) -> None:
    missing = tmp_path / "later.mp4"
    proc = subprocess.Popen(
        [*VIGIL, *run_args(tiny_model, missing, "--set", "cameras.0.reconnect.initial_s=0.1",
                           "--set", "cameras.0.reconnect.max_s=0.2")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)
        assert proc.poll() is None, "a missing source must not end the service"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("profile", "labels"),
    [("default", {"person", "bicycle"}), ("fall", {"Normal"})],
)
def test_profiles_run_on_the_sample_video(profile: str, labels: set[str]) -> None:
    """`make run`'s job (default: COCO at 416, street labels) and the elder-care profile, on the sample video."""
    res = run_vigil(
        "run", "--config", str(REPO / f"configs/{profile}.yaml"), "--set", "mqtt.enabled=false",
        "--set", "http.port=0", "--set", "output.status_interval_s=1", "--duration", "8", timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json_lines(res.stdout)
    seen = {d["label"] for r in rows for d in r["detections"]}
    assert rows and labels <= seen, seen
    if profile == "default":
        assert seen <= {"person", "bicycle", "car", "motorcycle", "bus", "truck", "cat", "dog"}
        assert "| model yolov3-tiny-coco 416x416 onnxruntime" in res.stderr


def test_no_torch_or_ultralytics_in_runtime(tiny_model: Path, small_video: Path) -> None:
    argv = ["detect", str(small_video), "--model", str(tiny_model), "--max-frames", "2"]
    code = (
        f"import sys; import app.cli; app.cli.main({argv!r});"
        "bad=[m for m in ('torch','ultralytics') if m in sys.modules]; print('LOADED', bad, file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "LOADED []" in res.stderr, res.stderr


# ---- engine ensure (vigil-engine.service) ---------------------------------------------------------


def test_engine_ensure_is_a_no_op_without_tensorrt_unless_tensorrt_is_required(tiny_model: Path) -> None:
    """On a CPU box the service's pre-start build step succeeds and says ONNX Runtime will serve; a config
    that insists on TensorRT fails there, before the service starts, with the reason."""
    model = f"model.path={tiny_model}"
    res = run_vigil("engine", "ensure", "--set", model)
    assert res.returncode == 0 and "ONNX Runtime will serve" in res.stdout, res.stderr
    res = run_vigil("engine", "ensure", "--set", model, "--set", "model.backend=onnxruntime")
    assert res.returncode == 0 and "nothing to build" in res.stdout
    res = run_vigil("engine", "ensure", "--set", model, "--set", "model.backend=tensorrt")
    assert res.returncode == 2 and "model.backend tensorrt, but tensorrt is not installed" in res.stderr
    res = run_vigil("engine", "ensure", "--set", "model.bogus=1")
    assert res.returncode == 2 and "model.bogus" in res.stderr


def test_engine_build_refuses_a_bad_max_batch() -> None:
    res = run_vigil("engine", "build", "--max-batch", "0")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "error: --max-batch must be 1..64, not 0"
