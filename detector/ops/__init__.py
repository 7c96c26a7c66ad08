"""Running the detector: `settings` (the one settings model), `metrics` (every Prometheus
metric), `http` (/metrics, /healthz, /readyz), `notify` (systemd's notify protocol).
"""
