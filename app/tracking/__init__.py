"""Multi-object tracking and the object lifecycle (new / update / end / alert events)."""
