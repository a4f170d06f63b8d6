"""The live pipeline in the main process: capture threads, worker supervision, sinks, stats."""
