"""MQTT: the topic contract, the broker link, Home Assistant discovery and the publishing service."""
