"""`vigil bench`: side-by-side throughput and latency measurements."""
