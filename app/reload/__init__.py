"""Live config reload (SIGHUP, `POST /api/config/reload`, `vigil reload`): read, plan, apply section by section.

`source` re-reads the file with the service's own `--set` overrides, `plan` compares the running and the new
config (pure), `apply` changes the running pipeline, `controller` runs one reload at a time and reports it.
"""
