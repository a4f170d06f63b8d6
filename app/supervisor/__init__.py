"""Keeping the service alive: systemd notification and the worker watchdog policies."""
