"""Where results go: MQTT, Home Assistant, Sparkplug B, Prometheus, systemd."""
