"""Watching jobs: metrics and curves, the SSE event stream, Prometheus and health."""
