"""`vigil bench`: the benchmark modes side by side (`app.bench.runner`)."""

from __future__ import annotations

import argparse

from app.bench.common import BenchError
from app.bench.realtime_bench import DEFAULT_CONFIG, DEFAULT_DECODE_SWEEP, DEFAULT_SWEEP
from app.bench.runner import MODE_NAMES
from app.cli.common import UsageError, setup_logging
from app.config import DEFAULT_MODEL_PATH, DEFAULT_SAMPLE_VIDEO


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the `--modes` and print their results; an option the bench refuses is a usage error."""
    from app.bench.runner import run_bench

    setup_logging(args.log_level or "warning")
    try:
        run_bench(args)
    except BenchError as exc:
        raise UsageError(str(exc)) from exc
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `bench` to the `vigil` subcommands."""
    p = sub.add_parser("bench", help="side-by-side throughput/latency benchmark")
    p.add_argument("--model", default=DEFAULT_MODEL_PATH)
    p.add_argument("--source", default=DEFAULT_SAMPLE_VIDEO)
    p.add_argument("--frames", type=int, default=30, help="frames per round of the backend/ultralytics/detect modes")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of those modes (fps: median)")
    p.add_argument("--modes", default="backend,ultralytics,detect,live", help=f"comma list of {', '.join(MODE_NAMES)}")
    p.add_argument("--live-seconds", type=float, default=60.0)
    p.add_argument("--soak-frames", type=int, default=1000, help="results to collect in the soak mode")
    p.add_argument("--mqtt-seconds", type=float, default=20.0, help="seconds per MQTT run")
    p.add_argument("--api-seconds", type=float, default=30.0, help="window per client count (api mode)")
    p.add_argument("--ws-seconds", type=float, default=60.0, help="window with and without clients (api-ws mode)")
    p.add_argument("--preview-seconds", type=float, default=20.0, help="window per viewer count (preview mode)")
    p.add_argument("--preview-rounds", type=int, default=2, help="interleaved rounds of 0/1/4 viewers")
    p.add_argument("--recycle-seconds", type=float, default=600.0, help="length of the recycle soak")
    p.add_argument("--recycle-every-s", type=float, default=60.0, help="periodic recycle interval in that soak")
    p.add_argument("--deploy-count", type=int, default=10, help="deployments of the deploy mode (model, copy, ...)")
    p.add_argument("--static-seconds", type=float, default=30.0, help="window per run of the static mode")
    p.add_argument("--static-idle-interval", type=float, default=10.0, help="detect.idle_interval_s (static mode)")
    p.add_argument("--capacity-seconds", type=float, default=20.0, help="window per run of the capacity mode")
    p.add_argument("--capacity-cameras", type=int, default=4, help="moving cameras of the capacity mode")
    p.add_argument("--capacity-sweep", default="4,6,8",
                   help="camera counts tried with half of them static (comma list; empty: no sweep)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="model.threads (default: 0 = all cores; realtime: the config's)")  # fmt: skip
    p.add_argument("--config", default=DEFAULT_CONFIG, help="the config the realtime mode runs")
    p.add_argument("--realtime-sizes", default="416,320", help="model sizes of the realtime mode (comma list)")
    p.add_argument("--realtime-seconds", type=float, default=20.0, help="measured window per realtime round")
    p.add_argument("--realtime-warmup", type=float, default=2.0, help="seconds of results skipped per live run")
    p.add_argument("--sweep", default=DEFAULT_SWEEP,
                   help="realtime mode: THREADS:on|off (spin_wait) pairs to compare at the first size")  # fmt: skip
    p.add_argument("--decode-sweep", default=DEFAULT_DECODE_SWEEP,
                   help="realtime mode: file decoder threadings (PyAV TYPE[:THREADS]) to compare live")  # fmt: skip
    p.add_argument("--sweep-seconds", type=float, default=10.0, help="window per sweep run (0 = no sweep)")
    p.add_argument("--sweep-rounds", type=int, default=2)
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                   help="realtime mode on a shared machine: wait up to S s for other processes to go quiet "
                        "before each measurement, and repeat disturbed ones (up to --quiet-retries)")  # fmt: skip
    p.add_argument("--quiet-retries", type=int, default=2)
    p.add_argument("--batch-repeats", type=int, default=7, help="interleaved repeats of the batch mode (medians)")
    p.add_argument("--small-frames", type=int, default=60, help="frames of the source the small mode's clip uses")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"), help="model.backend")
    p.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"), help="TensorRT engine precision")
    p.add_argument("--engine-dir", default="engines", help="TensorRT engine cache")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write/replace the results section in FILE")
    p.set_defaults(func=cmd_bench)
