"""Keeping the service alive.

The worker supervisor (restart, blue-green recycle), its pure policies, the capture watchdog, process facts (RSS, GPU
memory, niceness) and systemd notification.
"""
