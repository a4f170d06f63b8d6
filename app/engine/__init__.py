"""TensorRT engines: cache keys and manifests, plan files, the builder (needs TensorRT)."""
