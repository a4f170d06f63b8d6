"""Recent tracked-object events (`GET /api/events`) and the snapshots of their best frames."""
