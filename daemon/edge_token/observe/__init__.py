"""What reports: logs, metrics, the HTTP endpoints, systemd, consumer hooks."""
