"""Recycling benchmark.

The live pipeline with the worker replaced blue-green every N seconds (or on an injected leak), measuring the longest
gap in results around each switch against 2x the median interval, lost capture sequence beyond latest-frame drops, and
main-process RSS over the whole run.
"""

from __future__ import annotations

import statistics

from app.bench.common import bench_camera, run_to_end
from app.bench.recorders import ResultTimes, RssSampler, SwitchTimes
from app.config import ModelConfig, VigilConfig


def bench_recycle(model: ModelConfig, source: str, seconds: float, every_s: float, leak_mb: float = 0.0) -> dict:
    """Run the live pipeline on `source` for `seconds` s while workers are recycled.

        Recycles every `every_s` s, or, with `leak_mb`, lets an injected leak of that many MiB per frame trigger the
        RSS-growth policy. Returns the gaps between results (ms; overall, per recycle, over 2x the median), the
    recycle and restart counts, out-of-order results, and the main process's RSS (MiB).
    """
    from app.pipeline.live import LivePipeline

    watchdog: dict = {"recycle_every_h": every_s / 3600} if not leak_mb else {
        "rss_warmup_s": 5, "rss_window_s": 20, "max_rss_growth_mb_per_hour": 2000,
    }  # fmt: skip
    cfg = VigilConfig.model_validate(
        {
            "device_id": "bench",
            "cameras": [bench_camera("bench", source)],
            "model": model.model_dump(),
            "output": {"json_lines": False, "status_interval_s": 0},
            "watchdog": watchdog,
            "debug": {"faults": {"leak_mb_per_frame": leak_mb}},
        }
    )
    sink, rss, switches = ResultTimes(), RssSampler(1.0), SwitchTimes()
    pipe = LivePipeline(cfg, [sink, rss, switches], duration_s=seconds)
    summary = run_to_end(pipe)
    g = sink.gaps_around(switches.times, 5.0)
    main = rss.rss_mb["main"]
    steady = main[len(main) // 10 :]
    growth = (statistics.median(steady[-10:]) - statistics.median(steady[:10])) / statistics.median(steady[:10])
    return {
        "seconds": round(summary.duration_s, 1),
        "trigger": f"leak {leak_mb} MB/frame" if leak_mb else f"every {every_s:g} s",
        "recycles": summary.worker_recycles,
        "restarts": summary.worker_restarts,
        "results": len(sink.t),
        "median_interval_ms": g["median_interval_ms"],
        "bound_ms": g["bound_ms"],
        "max_gap_ms": round(float(g["gaps_s"].max()) * 1000, 1),
        "max_gap_per_recycle_ms": g["per_switch_ms"],
        "gaps_over_bound": g["gaps_over_bound"],
        "out_of_order_results": g["out_of_order_results"],
        "main_rss_mb_start": round(statistics.median(steady[:10]), 1),
        "main_rss_mb_end": round(statistics.median(steady[-10:]), 1),
        "main_rss_growth_pct": round(growth * 100, 2),
    }
