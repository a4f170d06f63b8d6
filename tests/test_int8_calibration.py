"""INT8 explicit quantization on CPU: frame extraction records, which nodes stay float, a real Q/DQ model
from ONNX Runtime's static quantization, and the accuracy gate's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_video
from onnx import TensorProto, helper, numpy_helper

from app.engine.calibrate import (
    Progress,
    extract_frames,
    head_feeders,
    head_nodes,
    load_frames,
    quantizable_modules,
    quantize,
    search_float_modules,
)
from app.engine.cpu_features import (
    NOT_X86,
    X86_NO_VNNI,
    X86_VNNI,
    cpu_int8_isa,
    cpuinfo_flags,
    has_vnni,
    host_cpu_int8_isa,
    needs_reduce_range,
)

# Real /proc/cpuinfo feature lists. AMD EPYC 7502P (Zen 2 "Rome", family 23 model 49): AVX2, no VNNI.
EPYC_ROME_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni "
    "pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm "
    "extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb "
    "bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep "
    "bmi2 cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 cqm_llc cqm_occup_llc "
    "cqm_mbm_total cqm_mbm_local clzero irperf xsaveerptr rdpru wbnoinvd amd_ppin arat npt lbrv svm_lock nrip_save "
    "tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic v_vmsave_vmload vgif v_spec_ctrl "
    "umip rdpid overflow_recov succor smca sev sev_es"
)
# AMD EPYC Zen 4 ("Genoa", a KVM guest: the box the INT8 numbers in docs/BENCHMARKS.md come from): avx512_vnni.
EPYC_ZEN4_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave "
    "avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext "
    "vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma "
    "clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr "
    "arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm"
)
# AWS Graviton2 (Neoverse N1), aarch64
GRAVITON2_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
)


def _yolo_like(path: Path, imgsz: int = 64) -> Path:
    """Backbone /model.0/ (Conv+SiLU), head /model.1/ (box Conv, DFL Conv, Sigmoid, Concat) -> [1, 6, N]."""
    rng = np.random.default_rng(0)

    def w(name, shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    inits = [w("w0", (8, 3, 3, 3)), w("b0", (8,)), w("wb", (4, 8, 1, 1)), w("wd", (4, 4, 1, 1)), w("wc", (2, 8, 1, 1)),
             numpy_helper.from_array(np.array([1, 4, -1], np.int64), "s4"),
             numpy_helper.from_array(np.array([1, 2, -1], np.int64), "s2")]  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["images", "w0", "b0"], ["c0"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1], strides=[4, 4]),
        n("Sigmoid", ["c0"], ["s0"], name="/model.0/act/Sigmoid"),
        n("Mul", ["c0", "s0"], ["a0"], name="/model.0/act/Mul"),
        n("Conv", ["a0", "wb"], ["box"], name="/model.1/cv2/Conv"),
        n("Conv", ["box", "wd"], ["dfl"], name="/model.1/dfl/conv/Conv"),
        n("Conv", ["a0", "wc"], ["cls"], name="/model.1/cv3/Conv"),
        n("Sigmoid", ["cls"], ["score"], name="/model.1/Sigmoid"),
        n("Reshape", ["dfl", "s4"], ["b"], name="/model.1/Reshape"),
        n("Reshape", ["score", "s2"], ["sc"], name="/model.1/Reshape_1"),
        n("Concat", ["b", "sc"], ["output0"], name="/model.1/Concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "yolo_like", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, (imgsz // 4) ** 2])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_head_policies(tmp_path: Path) -> None:
    model = onnx.load(_yolo_like(tmp_path / "m.onnx"))
    head = set(head_nodes(model, "head"))
    assert head == {n.name for n in model.graph.node if n.name.startswith("/model.1/")}
    post = set(head_nodes(model, "head-post"))
    assert "/model.1/dfl/conv/Conv" in post and "/model.1/Sigmoid" in post and "/model.1/cv2/Conv" not in post
    assert head_nodes(model, "none") == []
    model.graph.node[0].name = "conv_without_module_path"
    for node in model.graph.node:
        node.name = node.name.replace("/model.", "/x.")
    with pytest.raises(ValueError, match="detect head"):
        head_nodes(model, "head")


def test_frames_are_extracted_evenly_and_recorded(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=40)
    fs = extract_frames(video, 8, tmp_path / "calib")
    assert fs.indices[0] == 0 and fs.indices[-1] == 39 and len(fs.indices) == 8
    record = json.loads((tmp_path / "calib" / "frames.json").read_text())
    assert record["source_sha256"] == fs.source_sha256 and record["files"] == fs.files
    frames = load_frames(tmp_path / "calib")
    assert len(frames) == 8 and frames[0].shape == (120, 160, 3)


def test_quantize_makes_a_qdq_model_that_keeps_the_head_float(tmp_path: Path) -> None:
    import onnxruntime as ort

    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(8)]
    settings = quantize(src, tmp_path / "q.onnx", frames, method="minmax", exclude="head")
    assert settings["excluded_nodes"] == 7 and settings["calibration_frames"] == 8
    q = onnx.load(tmp_path / "q.onnx")
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the backbone conv reads dequantized int8 weights; the head's convs keep float weights
    float_weights = {i.name for i in q.graph.initializer if i.data_type == TensorProto.FLOAT}
    assert {"wb", "wd", "wc"} <= float_weights and "w0" not in float_weights
    x = np.random.default_rng(9).random((1, 3, 64, 64), dtype=np.float32)
    a = ort.InferenceSession(str(src)).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"images": x})[0]
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.1 * (np.abs(a).mean() + 1e-6)


def _qdq_params(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(op, scale, zero point, reads an initializer) of every Q/DQ node."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(n.op_type, inits[n.input[1]], inits[n.input[2]], n.input[0] in inits)
            for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]  # fmt: skip


def test_tensorrt_and_cpu_files_share_one_calibration(tmp_path: Path) -> None:
    """TensorRT builds only signed symmetric INT8 Q/DQ (zero point 0) and rejects int32 bias DQs; ONNX
    Runtime's fast CPU path wants uint8 activations and int32 biases. Both files come from one calibration
    (the ranges cache): placed alike and symmetric (--placement all), their activation scales differ only by
    int8's 254 vs uint8's 255 steps; each target's own placement (the default) puts them elsewhere."""
    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(6)]
    ranges = tmp_path / "ranges.json"
    shared = {"conv_only": False, "conv_outputs": True, "symmetric_activations": True}  # --placement all
    quantize(src, tmp_path / "trt.onnx", frames, method="percentile", exclude="head-post", ranges_cache=ranges,
             **shared)  # fmt: skip
    assert ranges.is_file()
    quantize(src, tmp_path / "cpu.onnx", [], method="percentile", exclude="head-post", target="cpu",
             ranges_cache=ranges, **shared)  # fmt: skip
    trt, cpu = onnx.load(tmp_path / "trt.onnx"), onnx.load(tmp_path / "cpu.onnx")
    trt_q = _qdq_params(trt)
    assert trt_q and all(zp.dtype == np.int8 and not zp.any() for _, _, zp, _ in trt_q)
    cpu_q = _qdq_params(cpu)
    act = [(s, zp) for op, s, zp, const in cpu_q if not const]
    assert act and all(zp.dtype == np.uint8 and (zp == 128).all() for _, zp in act)
    assert any(zp.dtype == np.int32 for _, _, zp, const in cpu_q if const), "int32 bias for QLinearConv fusion"
    assert not any(zp.dtype == np.int32 for _, _, zp, _ in trt_q), "TensorRT: the bias stays float"
    assert "b0" in {i.name for i in trt.graph.initializer if i.data_type == TensorProto.FLOAT}
    trt_act = sorted(float(s) for _, s, _, const in trt_q if not const)
    # the same ranges: int8 spreads [-r, r] over 254 steps, uint8 around 128 over 255
    assert [s * 127 / 127.5 for s in trt_act] == pytest.approx(sorted(float(s) for s, _ in act), rel=1e-6)
    with pytest.raises(ValueError, match="no calibration frames"):
        quantize(src, tmp_path / "x.onnx", [], ranges_cache=tmp_path / "missing.json")


def test_calibrate_cli_writes_both_files_and_gates_them(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO

    model = _yolo_like(tmp_path / "m.onnx")
    video = make_video(tmp_path / "v.mp4", frames=30)
    args = [sys.executable, "-m", "app", "engine", "calibrate", "--model", str(model), "--from-video", str(video),
            "--frames", "20", "--name", "site", "--exclude", "head-post", "--keep-first-convs", "0",
            "--min-f1", "0", "--max-shift", "1"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    reports = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["target"] for r in reports] == ["tensorrt", "cpu"]
    assert all(r["holdout_frames"] == 4 and r["calibration_frames"] == 16 and r["gate"]["passed"] for r in reports)
    # which weight grid the CPU file got (7-bit on x86 without VNNI) is in its report
    assert reports[0]["reduce_range"] is False
    cpu = reports[1]
    assert cpu["reduce_range"] == needs_reduce_range(host_cpu_int8_isa()) and cpu["reduce_range_auto"]
    assert f"CPU file: {cpu['weight_bits']}-bit weights (reduce_range {cpu['reduce_range']}, auto)" in res.stderr
    for suffix in (".int8-site.onnx", ".int8-site.cpu.onnx", ".int8-site.ranges.json"):
        assert (tmp_path / f"m{suffix}").is_file(), suffix
    assert json.loads((tmp_path / "calibration" / "site" / "frames.json").read_text())["indices"][0] == 0
    strict = [*args[:-4], "--min-f1", "1.01"]
    res = subprocess.run(strict, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "failed the accuracy gate" in res.stderr


def test_vnni_detection_from_real_cpu_flags(tmp_path: Path) -> None:
    """x86 without VNNI (ONNX Runtime's u8s8 kernels saturate int16 pairs there) gets 7-bit weights; VNNI
    x86 and Arm keep 8-bit ones."""
    rome = f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nflags\t\t: {EPYC_ROME_FLAGS}\nbugs\t\t: x\n"
    assert cpuinfo_flags(rome) == EPYC_ROME_FLAGS
    assert "avx2" in EPYC_ROME_FLAGS.split() and not has_vnni(EPYC_ROME_FLAGS)
    assert cpu_int8_isa(EPYC_ROME_FLAGS, "x86_64") == X86_NO_VNNI and needs_reduce_range(X86_NO_VNNI)
    assert has_vnni(EPYC_ZEN4_FLAGS) and cpu_int8_isa(EPYC_ZEN4_FLAGS, "x86_64") == X86_VNNI
    assert not needs_reduce_range(X86_VNNI)
    assert has_vnni(EPYC_ROME_FLAGS.replace("avx2", "avx2 avx_vnni"))  # AVX-VNNI (Alder Lake, Zen 5)
    assert has_vnni(EPYC_ROME_FLAGS + " amx_bf16 amx_tile amx_int8")
    graviton = f"processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: {GRAVITON2_FEATURES}\nCPU implementer\t: 0x41\n"
    assert cpuinfo_flags(graviton) == GRAVITON2_FEATURES
    assert cpu_int8_isa(cpuinfo_flags(graviton), "aarch64") == NOT_X86 and not needs_reduce_range(NOT_X86)
    (tmp_path / "cpuinfo").write_text(rome)
    assert host_cpu_int8_isa(tmp_path / "cpuinfo", "x86_64") == X86_NO_VNNI
    assert host_cpu_int8_isa(tmp_path / "cpuinfo", "aarch64") == NOT_X86
    assert host_cpu_int8_isa(tmp_path / "missing", "AMD64") == X86_NO_VNNI, "unreadable flags: the safe side"


def test_cpu_file_reduce_range_is_7_bit_weights_on_the_same_ranges(tmp_path: Path) -> None:
    """reduce_range halves the weight grid (|q| <= 64: 2 x 255 x 64 fits int16, no saturation without
    VNNI) and leaves the activation ranges of the shared calibration alone; auto follows this CPU."""
    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(4)]
    ranges = tmp_path / "ranges.json"
    kw = dict(method="minmax", exclude="head-post", target="cpu", ranges_cache=ranges)
    full = quantize(src, tmp_path / "s8.onnx", frames, reduce_range=False, **kw)
    seven = quantize(src, tmp_path / "s7.onnx", [], reduce_range=True, **kw)
    auto = quantize(src, tmp_path / "auto.onnx", [], **kw)
    assert (full["reduce_range"], full["weight_bits"]) == (False, 8)
    assert (seven["reduce_range"], seven["weight_bits"]) == (True, 7)
    assert not full["reduce_range_auto"] and auto["reduce_range_auto"] and auto["build_cpu"] == host_cpu_int8_isa()
    assert auto["reduce_range"] == needs_reduce_range(host_cpu_int8_isa())
    assert json.loads((tmp_path / "s7.onnx.json").read_text())["reduce_range"] is True

    def weights(path: Path) -> np.ndarray:
        q = onnx.load(path)
        return np.concatenate([numpy_helper.to_array(i).ravel() for i in q.graph.initializer if i.data_type == 3])

    assert np.abs(weights(tmp_path / "s8.onnx").astype(int)).max() == 127
    assert np.abs(weights(tmp_path / "s7.onnx").astype(int)).max() == 64
    acts = [sorted(float(s) for _, s, _, const in _qdq_params(onnx.load(tmp_path / f)) if not const)
            for f in ("s8.onnx", "s7.onnx")]  # fmt: skip
    assert acts[0] and acts[0] == acts[1]
    trt = quantize(src, tmp_path / "trt.onnx", [], method="minmax", exclude="head-post", ranges_cache=ranges)
    assert trt["reduce_range"] is False and "build_cpu" not in trt
    with pytest.raises(ValueError, match="reduce_range is for target 'cpu'"):
        quantize(src, tmp_path / "x.onnx", [], method="minmax", ranges_cache=ranges, reduce_range=True)


def _calibrate(args: list[str], cwd: Path):
    import subprocess
    import sys

    from conftest import REPO

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "app", "engine", "calibrate", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_calibrate_with_no_frames_extracts_them_from_the_configured_camera(tmp_path: Path) -> None:
    """A fresh install: no calibration/default/ yet. `vigil engine calibrate` takes frames from the configured
    camera source (cameras[0] of the config, through the normal loader), says so, and shows its progress."""
    model = _yolo_like(tmp_path / "m.onnx")
    make_video(tmp_path / "cam.mp4", frames=40)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("cameras:\n  - name: porch\n    source: cam.mp4\n")
    res = _calibrate(["--model", str(model), "--frames", "15", "--exclude", "head-post", "--speed-frames", "2",
                      "--min-f1", "0", "--max-shift", "1"], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "calibration/default has 0 frames: extracting up to 15 from the configured camera source" in err
    assert "configs/default.yaml, cameras[0] porch: cam.mp4" in err
    record = json.loads((tmp_path / "calibration" / "default" / "frames.json").read_text())
    assert len(record["files"]) == 15 and record["source"] == "cam.mp4" and record["source_sha256"]
    # progress of every long step: what, how far, elapsed and what is left
    for step in ("extracting frames from the configured camera source", "FP32 reference on 3 held-out frames",
                 "calibrating ranges (percentile, 12 frames", "module search (tensorrt)", "gate (tensorrt)",
                 "module search (cpu)", "gate (cpu)"):  # fmt: skip
        assert f"vigil engine: {step}" in err, step
    assert " s left" in err and ", done" in err
    assert [json.loads(line)["target"] for line in res.stdout.splitlines()] == ["tensorrt", "cpu"]
    cpu = json.loads(res.stdout.splitlines()[1])
    assert cpu["cpu_speed_vs_fp32"]["speedup"] > 0 and "search" in cpu
    # frames now exist: a second run uses them and extracts nothing
    again = _calibrate(["--model", str(model), "--target", "tensorrt", "--exclude", "head-post",
                        "--float-modules", "none", "--min-f1", "0", "--max-shift", "1"], tmp_path)  # fmt: skip
    assert again.returncode == 0 and "extracting" not in again.stderr


def test_calibrate_with_no_config_uses_the_sample_video(tmp_path: Path) -> None:
    model = _yolo_like(tmp_path / "m.onnx")
    (tmp_path / "calibration" / "samples").mkdir(parents=True)
    make_video(tmp_path / "calibration" / "samples" / "bikes.mp4", frames=30)
    res = _calibrate(["--model", str(model), "--frames", "10", "--target", "tensorrt", "--exclude", "head-post",
                      "--float-modules", "none", "--min-f1", "0", "--max-shift", "1"], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "extracting up to 10 from the sample video calibration/samples/bikes.mp4" in res.stderr
    assert len(load_frames(tmp_path / "calibration" / "default")) == 10
    # a configured camera that gives nothing: the sample video, said so
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("cameras:\n  - name: gone\n    source: missing.mp4\n")
    res = _calibrate(["--model", str(model), "--name", "x", "--frames", "10", "--target", "tensorrt",
                      "--exclude", "head-post", "--float-modules", "none", "--min-f1", "0", "--max-shift", "1"],
                     tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "using the sample video calibration/samples/bikes.mp4 instead" in res.stderr


def test_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress("doing things", 3, every_s=3600)
    for _ in range(3):
        bar.step()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, "the first step, then none until the last (rate-limited)"
    assert lines[0].startswith("vigil engine: doing things: 1/3, ") and lines[0].endswith(" s left")
    assert lines[1].startswith("vigil engine: doing things: 3/3, ") and lines[1].endswith(", done")


def test_darknet_graph_head_and_modules(coco_model: Path) -> None:
    """The Darknet conversion (app/darknet.py) names nodes after layers (conv15, leaky14, yolo16.*): its head
    is the yolo layers' decode and output0; the modules it reads are the 1x1 prediction convolutions."""
    model = onnx.load(coco_model, load_external_data=False)
    head = set(head_nodes(model, "head"))
    assert "output0" in head and all(n.startswith("yolo") or n == "output0" for n in head)
    assert head_nodes(model, "head-post") == head_nodes(model, "head")  # no Conv in a Darknet head
    assert head_feeders(model) == (15, 22)
    assert quantizable_modules(model) == (0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21, 22)
    assert quantizable_modules(model, ["conv0", "conv22"]) == (2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21)


def test_search_keeps_modules_float_until_the_gate_passes(tmp_path: Path) -> None:
    """An impossible gate: every module is measured, the bisection finds no quantizable prefix, everything
    stays float; a gate anything passes: everything is quantized after one try."""
    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(8)]
    ranges = tmp_path / "ranges.json"
    quantize(src, tmp_path / "q.onnx", frames, method="minmax", exclude="head-post", ranges_cache=ranges)
    recipe = {"method": "minmax", "exclude": "head-post"}
    strict = search_float_modules(src, frames, ranges_cache=ranges, target="tensorrt", recipe=recipe, min_f1=1.01,
                                  max_shift=0.0, progress=False)  # fmt: skip
    assert strict["int8_modules"] == [] and strict["float_modules"] == [0, 1]
    assert set(strict["sensitivity"]) == {0, 1} and strict["tried"] and not any(t["passed"] for t in strict["tried"])
    assert sorted(strict["ranking"]) == [0, 1]
    easy = search_float_modules(src, frames, ranges_cache=ranges, target="cpu", recipe=recipe, min_f1=0.0,
                                max_shift=1.0, f1_margin=0, shift_margin=0, progress=False)  # fmt: skip
    assert easy["float_modules"] == [] and easy["int8_modules"] == [0, 1] and len(easy["tried"]) == 1
    assert easy["int8_conv_flops_share"] == 1.0


def test_each_target_gets_its_own_placement(tmp_path: Path) -> None:
    """placement "target" (the default recipe's): TensorRT gets Q/DQ on Conv inputs and weights only (its
    recommended placement), symmetric int8; CPU every op, asymmetric uint8 (QLinearConv needs the Conv output
    quantized). Without a placement, quantize() quantizes every op, symmetric, for either target."""
    src = _yolo_like(tmp_path / "m.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(4)]
    ranges = tmp_path / "ranges.json"
    kw = {"method": "minmax", "exclude": "head-post", "ranges_cache": ranges, "placement": "target"}
    trt = quantize(src, tmp_path / "trt.onnx", frames, **kw)
    cpu = quantize(src, tmp_path / "cpu.onnx", [], target="cpu", **kw)
    assert (trt["conv_only"], trt["conv_outputs"], trt["symmetric_activations"]) == (True, False, True)
    assert (cpu["conv_only"], cpu["conv_outputs"], cpu["symmetric_activations"]) == (False, True, False)
    q = onnx.load(tmp_path / "trt.onnx")
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert "images" in quantized and "c0" not in quantized, "a Conv output stays float in the TensorRT file"
    zps = [zp for _, _, zp, const in _qdq_params(onnx.load(tmp_path / "cpu.onnx")) if not const]
    assert zps and all(zp.dtype == np.uint8 for zp in zps) and any((zp != 128).any() for zp in zps)
    with pytest.raises(ValueError, match="symmetric INT8 activations only"):
        quantize(src, tmp_path / "x.onnx", [], method="minmax", ranges_cache=ranges, symmetric_activations=False)
    with pytest.raises(ValueError, match="none given"):
        quantize(src, tmp_path / "x.onnx", [], method="minmax", ranges_cache=ranges, float_modules="auto")
    plain = quantize(src, tmp_path / "plain.onnx", [], method="minmax", exclude="head-post", ranges_cache=ranges)
    assert (plain["conv_only"], plain["conv_outputs"], plain["symmetric_activations"]) == (False, True, True)
    with pytest.raises(ValueError, match="placement one of"):
        quantize(src, tmp_path / "x.onnx", [], method="minmax", ranges_cache=ranges, placement="everywhere")
    auto = quantize(src, tmp_path / "auto.onnx", frames, method="minmax", exclude="head-post", ranges_cache=ranges,
                    placement="target", float_modules="auto", min_f1=0.0, max_shift=1.0)  # fmt: skip
    assert auto["search"]["tried"] and auto["float_modules"] == auto["search"]["float_modules"]
