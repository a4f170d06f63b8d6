"""The `vigil engine` commands: build, calibrate and ensure.

`vigil engine build` (ONNX -> validated, cached TensorRT engine, on the device itself) and
`vigil engine calibrate` (INT8 Q/DQ ONNX with an accuracy gate), and `vigil engine ensure` (what
vigil-engine.service runs). The work is `app.engine`'s; these commands choose the inputs and report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.cli.common import DEFAULT_CONFIG, UsageError, add_config_args, load_config_args
from app.config import DEFAULT_MODEL_PATH, DEFAULT_SAMPLE_VIDEO
from app.engine.calibrate import DEFAULT_RECIPE, PLACEMENTS


def cmd_build(args: argparse.Namespace) -> int:
    """Build, validate and cache a TensorRT engine for this GPU; prints its path."""
    from app.engine.builder import BuildOptions, EngineBuildError, build_engine
    from app.engine.calibrate import evenly_spaced_frames

    if not 1 <= args.max_batch <= 64:
        raise UsageError(f"--max-batch must be 1..64, not {args.max_batch}")
    try:
        frames = [f for _, f in evenly_spaced_frames(args.source, args.frames)]
    except ValueError:
        frames = []
    if not frames:
        raise UsageError(f"no frames could be read from {args.source}")
    legacy = Path("calibration") / args.legacy_calibrator if args.legacy_calibrator else None
    opts = BuildOptions(args.precision, args.imgsz, args.workspace_mb, args.dla_core, legacy, args.max_batch)
    try:
        engine = build_engine(Path(args.model), Path(args.engine_dir), opts, frames)
    except EngineBuildError as exc:
        raise UsageError(str(exc)) from exc
    print(engine)
    return 0


def cmd_ensure(args: argparse.Namespace) -> int:
    """What vigil-engine.service runs.

    Make sure the configured model has a validated engine for this GPU when the TensorRT path is wanted and possible; a
    CPU box or an ONNX Runtime config has nothing to do.
    """
    from app.backends import ENGINE_SUFFIXES
    from app.backends.engine_cache import CacheMiss, cached_engine
    from app.backends.tensorrt import tensorrt_available
    from app.engine.builder import BuildOptions, EngineBuildError, build_engine
    from app.engine.calibrate import evenly_spaced_frames

    cfg = load_config_args(args)
    m = cfg.model
    if m.backend == "onnxruntime" or Path(m.path).suffix in ENGINE_SUFFIXES:
        print(f"ok: nothing to build (model.backend {m.backend}, model.path {m.path})")
        return 0
    usable, why = tensorrt_available()
    if not usable:
        if m.backend == "tensorrt":
            raise UsageError(f"model.backend tensorrt, but {why}")
        print(f"ok: no engine needed: ONNX Runtime will serve ({why})")
        return 0
    try:
        print(f"ok: cached engine {cached_engine(m)}")
        return 0
    except CacheMiss as miss:
        print(f"vigil engine: building: {miss}", file=sys.stderr)
    frames = [f for _, f in evenly_spaced_frames(args.source, args.frames)]
    opts = BuildOptions(m.precision, m.imgsz or 640, dla_core=m.tensorrt.dla_core, max_batch=m.max_batch)
    try:
        build_engine(Path(m.path), Path(m.engine_dir), opts, frames)
        print(f"ok: built {cached_engine(m)}")  # looked up again: only a validated engine counts
    except (EngineBuildError, CacheMiss) as exc:
        if m.backend == "tensorrt":
            raise UsageError(f"no usable TensorRT engine: {exc}") from exc
        print(f"ok: ONNX Runtime will serve: the engine build did not give a usable engine ({exc})")
        return 0
    return 0


def _calibration_source(args: argparse.Namespace) -> tuple[str | int, str]:
    """Where `vigil engine calibrate` takes frames from when it has none.

    The configured camera (cameras[0] of --config, or of the default config when present, through the normal loader),
    else the sample video.
    """
    from app.config import redact_url

    if args.config is None and not Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_SAMPLE_VIDEO, f"the sample video {DEFAULT_SAMPLE_VIDEO} (no {DEFAULT_CONFIG} here)"
    cfg = load_config_args(args)
    cam = cfg.cameras[0]
    where = args.config or DEFAULT_CONFIG
    return cam.source, f"the configured camera source ({where}, cameras[0] {cam.name}: {redact_url(str(cam.source))})"


def _extract(source: str | int, n: int, out_dir: Path, what: str) -> int:
    """Frames of `source` into `out_dir` with progress; how many came out (0 when the source gave none)."""
    from app.engine.calibrate import Progress, extract_frames

    bar = Progress(f"extracting frames from {what}", n)
    try:
        fs = extract_frames(source, n, out_dir, progress=bar)
    except (ValueError, OSError, RuntimeError) as exc:  # not a video, cannot open, a stream that failed
        print(f"vigil engine: no frames from {what}: {exc}", file=sys.stderr)
        return 0
    print(f"vigil engine: {len(fs.files)} frames from {what} -> {out_dir} ({bar.elapsed():.0f} s)", file=sys.stderr)
    return len(fs.files)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`vigil engine calibrate`: INT8 Q/DQ ONNX files from calibration frames, then an accuracy gate.

    Frames -> Q/DQ INT8 ONNX for TensorRT and for ONNX Runtime's CPU kernels (one calibration) -> accuracy
    gate on frames that were not used for calibration. With no frames yet, they are extracted first.
    """
    import json

    from app.config import ModelConfig
    from app.engine.agreement import agreement, map50
    from app.engine.calibrate import (
        Progress,
        calibrate_ranges,
        load_frames,
        quantize,
        search_float_modules,
        speedup_vs_fp32,
    )
    from app.engine.cpu_features import NOT_X86, X86_NO_VNNI, X86_VNNI
    from app.inference.detector import Detector

    t_start = time.monotonic()
    out_dir = Path("calibration") / args.name
    if args.from_video and not _extract(args.from_video, args.frames, out_dir, str(args.from_video)):
        return 2  # _extract said why
    frames = load_frames(out_dir)
    if len(frames) < 10 and not args.from_video:
        source, what = _calibration_source(args)
        print(f"vigil engine: {out_dir} has {len(frames)} frames: extracting up to {args.frames} from {what}",
              file=sys.stderr)  # fmt: skip
        got = _extract(source, args.frames, out_dir, what)
        if got < 10 and str(source) != DEFAULT_SAMPLE_VIDEO and Path(DEFAULT_SAMPLE_VIDEO).is_file():
            print(f"vigil engine: {got} frames from the camera source; using the sample video {DEFAULT_SAMPLE_VIDEO} "
                  "instead (calibrate on the camera's own footage before deploying: --from-video)",
                  file=sys.stderr)  # fmt: skip
            _extract(DEFAULT_SAMPLE_VIDEO, args.frames, out_dir, f"the sample video {DEFAULT_SAMPLE_VIDEO}")
        frames = load_frames(out_dir)
    if len(frames) < 10:
        raise UsageError(f"{out_dir} has {len(frames)} frames; extract some with --from-video")
    every = max(2, args.holdout_every)
    held = frames[every - 1 :: every]
    calib = [f for i, f in enumerate(frames) if i % every != every - 1]
    output = Path(args.output or Path(args.model).with_suffix("").as_posix() + f".int8-{args.name}.onnx")
    outputs = {"tensorrt": output, "cpu": output.with_suffix(".cpu.onnx")}
    outputs = {t: path for t, path in outputs.items() if args.target in (t, "both")}
    ranges = output.with_suffix(".ranges.json")  # one calibration, two files on the same quantization grid
    ranges.unlink(missing_ok=True)  # from an earlier run: other frames, other ranges
    cfg = ModelConfig(path=args.model, backend="onnxruntime", imgsz=args.imgsz)
    ref = Detector.from_config(cfg)
    bar = Progress(f"FP32 reference on {len(held)} held-out frames", len(held))
    ref_dets = []
    for f in held:
        ref_dets.append(ref.detect(f)[0])
        bar.step()
    calibrate_ranges(args.model, calib, ranges, method=args.method, percentile=args.percentile, imgsz=args.imgsz)
    recipe = {"method": args.method, "percentile": args.percentile, "exclude": args.exclude,
              "keep_first_convs": args.keep_first_convs}  # fmt: skip
    reports, passed = {}, True
    for target, path in outputs.items():
        options = {**recipe, "placement": args.placement}
        float_modules, search = args.float_modules, None
        if float_modules == "auto":
            search = search_float_modules(args.model, calib, ranges_cache=ranges, target=target, recipe=options,
                                          min_f1=args.min_f1, max_shift=args.max_shift, imgsz=args.imgsz)  # fmt: skip
            float_modules = tuple(search["float_modules"])
            print(f"vigil engine: {target}: modules kept float {list(float_modules) or 'none'}; quantized "
                  f"{search['int8_modules'] or 'none'} ({search['int8_conv_flops_share']:.0%} of the convolution "
                  f"FLOPs; search {search['seconds']:.0f} s)", file=sys.stderr)  # fmt: skip
        settings = quantize(args.model, path, calib, target=target, ranges_cache=ranges, imgsz=args.imgsz,
                            float_modules=float_modules, **options)  # fmt: skip
        q = Detector.from_config(ModelConfig(path=str(path), backend="onnxruntime", imgsz=args.imgsz))
        bar = Progress(f"gate ({target}) on {len(held)} held-out frames", len(held))
        q_dets = []
        for f in held:
            q_dets.append(q.detect(f)[0])
            bar.step()
        a = agreement(ref_dets, q_dets)
        ok = a.f1 >= args.min_f1 and a.mean_confidence_shift <= args.max_shift
        passed &= ok
        gate = {"min_f1": args.min_f1, "max_confidence_shift": args.max_shift, "passed": ok}
        reports[target] = {**settings, "file": str(path), "holdout_frames": len(held), **a.as_dict(),
                           "map50_vs_fp32": round(map50(ref_dets, q_dets), 4), "gate": gate}  # fmt: skip
        if search is not None:
            reports[target]["search"] = search
        if target == "cpu" and args.speed_frames > 0:  # what the float modules cost, measured on this CPU
            speed = speedup_vs_fp32(args.model, path, held[: args.speed_frames], imgsz=args.imgsz)
            reports[target]["cpu_speed_vs_fp32"] = speed
            print(f"vigil engine: cpu: {speed['speedup']:.2f}x FP32 on this CPU ({speed['int8_fps']} vs "
                  f"{speed['fp32_fps']} fps, backend only, median of {speed['rounds']} interleaved rounds)",
                  file=sys.stderr)  # fmt: skip
        Path(str(path) + ".json").write_text(json.dumps(reports[target], indent=1))
        print(json.dumps(reports[target]))
        if not ok:  # said here, not raised: the other target is still gated and reported, then exit 2
            print(f"error: the {target} INT8 model failed the accuracy gate (F1 {a.f1:.3f}, confidence shift "
                  f"{a.mean_confidence_shift:.3f}); do not deploy it: try more in-domain frames, another --method, "
                  "or more float layers (--float-modules, --keep-first-convs)", file=sys.stderr)  # fmt: skip
    if "cpu" in reports:  # its "reduce_range", "weight_bits" and "build_cpu" record which weight grid it got
        cpu = reports["cpu"]
        build_cpu: str | None = cpu.get("build_cpu")
        why_by_cpu: dict[str | None, str] = {
            X86_NO_VNNI: "this x86 CPU has no VNNI: ONNX Runtime's u8s8 kernels saturate on 8-bit weights here",
            X86_VNNI: "this x86 CPU has VNNI; an x86 CPU without it would saturate on 8-bit weights: calibrate on "
            "the deployment CPU",
            NOT_X86: "not x86: ONNX Runtime's Arm integer kernels do not saturate",
        }
        why = why_by_cpu.get(build_cpu, "chosen by the caller")
        how = "auto" if cpu.get("reduce_range_auto") else "explicit"
        print(f"vigil engine: CPU file: {cpu['weight_bits']}-bit weights (reduce_range {cpu['reduce_range']}, "
              f"{how}): {why}", file=sys.stderr)  # fmt: skip
    print(f"vigil engine: {'passed' if passed else 'FAILED'} the gate in {time.monotonic() - t_start:.0f} s",
          file=sys.stderr)  # fmt: skip
    if passed:
        hints = []
        if "tensorrt" in outputs:
            hints.append(f"TensorRT: vigil engine build --model {outputs['tensorrt']} --precision int8")
        if "cpu" in outputs:
            hints.append(f"CPU: model.path {outputs['cpu']}")
        print(f"vigil engine: {'; '.join(hints)}", file=sys.stderr)
    return 0 if passed else 2  # a model that fails its gate is an error like any other


def _modules(text: str) -> tuple[int, ...] | str:
    if text in ("head-feeders", "auto"):
        return text
    if text == "none":
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected module numbers, auto, head-feeders or none, not {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `engine build`, `engine ensure` and `engine calibrate` to the `vigil` subcommands."""
    e = sub.add_parser("engine", help="TensorRT engines (needs the `gpu` extra or JetPack)")
    esub = e.add_subparsers(dest="engine_cmd", required=True)
    b = esub.add_parser("build", help="build, validate and cache a TensorRT engine for this GPU")
    b.add_argument("--model", default=DEFAULT_MODEL_PATH, help="ONNX model")
    b.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="int8 expects a Q/DQ ONNX (explicit quantization)")  # fmt: skip
    b.add_argument("--imgsz", type=int, default=640)
    b.add_argument("--workspace-mb", type=int, default=2048)
    b.add_argument("--max-batch", type=int, default=4,
                   help="optimisation profile over batch 1..N for a dynamic batch axis (model.max_batch; the "
                        "runtime looks engines up by it)")  # fmt: skip
    b.add_argument("--dla-core", type=int, default=None, help="Jetson DLA core (GPU fallback on)")
    b.add_argument("--engine-dir", default="engines")
    b.add_argument("--legacy-calibrator", metavar="NAME", default=None,
                   help="DEPRECATED (TensorRT 10 only): implicit INT8 of an FP32 ONNX with IInt8EntropyCalibrator2 "
                        "on calibration/NAME frames; prefer `vigil engine calibrate`")  # fmt: skip
    b.add_argument("--source", default=DEFAULT_SAMPLE_VIDEO, help="video for the validation frames")
    b.add_argument("--frames", type=int, default=100, help="validation frames")
    b.set_defaults(func=cmd_build)
    n = esub.add_parser("ensure", help="build the configured model's engine if TensorRT wants one and none is cached")
    add_config_args(n)
    n.add_argument("--source", default=DEFAULT_SAMPLE_VIDEO, help="video for the validation frames")
    n.add_argument("--frames", type=int, default=100, help="validation frames")
    n.set_defaults(func=cmd_ensure)
    c = esub.add_parser("calibrate", help="INT8 Q/DQ ONNX from in-domain frames, with an accuracy gate",
                        description="With no frames in calibration/<name>/ (and no --from-video), frames are "
                        "extracted from the configured camera source (cameras[0] of --config, or of "
                        "configs/default.yaml when present), else from the sample video. Progress goes to stderr, "
                        "one JSON report per file to stdout.")  # fmt: skip
    c.add_argument("--model", default=DEFAULT_MODEL_PATH, help="FP32 ONNX model")
    c.add_argument("--imgsz", type=int, default=None,
                   help="input size of a dynamic model (default: the model's own, from its metadata)")  # fmt: skip
    c.add_argument("--from-video", default=None, help="extract frames from this video into calibration/<name>/")
    add_config_args(c, config_help="config whose cameras[0] gives frames when there are none")
    c.add_argument("--frames", type=int, default=500, help="frames to extract (every --holdout-every-th is held out)")
    c.add_argument("--name", default="default", help="calibration set name (calibration/<name>/)")
    c.add_argument("--target", choices=("both", "tensorrt", "cpu"), default="both",
                   help="which Q/DQ files to write: for TensorRT, for ONNX Runtime on CPU, or both")  # fmt: skip
    c.add_argument("--method", choices=("minmax", "entropy", "percentile"), default=DEFAULT_RECIPE["method"])
    c.add_argument("--percentile", type=float, default=99.999, help="with --method percentile")
    c.add_argument("--exclude", choices=("head", "head-post", "none"), default=DEFAULT_RECIPE["exclude"],
                   help="what of the detect head stays float")  # fmt: skip
    c.add_argument("--placement", choices=tuple(PLACEMENTS), default=DEFAULT_RECIPE["placement"],
                   help="where Q/DQ goes: target = each file its own (TensorRT: Conv inputs; CPU: every op, "
                        "asymmetric uint8), conv = Conv inputs and outputs, all = every op (symmetric)")  # fmt: skip
    c.add_argument("--all-ops", dest="placement", action="store_const", const="all",
                   help="same as --placement all")  # fmt: skip
    c.add_argument("--keep-first-convs", type=int, default=DEFAULT_RECIPE["keep_first_convs"],
                   help="stem convolutions kept float")  # fmt: skip
    c.add_argument("--float-modules", type=_modules, default=DEFAULT_RECIPE["float_modules"], metavar="N,...",
                   help="modules (/model.N/, Darknet layer N) kept float: auto (default: a sensitivity search on "
                        "the calibration frames keeps float the fewest that pass the gate), numbers, "
                        "'head-feeders' (the modules the detect head reads) or 'none'")  # fmt: skip
    c.add_argument("--holdout-every", type=int, default=5, help="every Nth frame is kept out for the gate")
    c.add_argument("--min-f1", type=float, default=0.95)
    c.add_argument("--max-shift", type=float, default=0.03, help="mean confidence shift allowed")
    c.add_argument("--speed-frames", type=int, default=10,
                   help="held-out frames the CPU file's speed against FP32 is measured on (0: skip)")  # fmt: skip
    c.add_argument("--output", default=None, help="Q/DQ ONNX (default: next to the model)")
    c.set_defaults(func=cmd_calibrate)
