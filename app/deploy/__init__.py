"""Blue-green model deployment: path confinement, canary validation, the active-model state file, the manager."""
