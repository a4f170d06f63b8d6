"""The appliance's HTTP side: preview page, WebRTC signalling, JSON API and Prometheus metrics."""
