"""Observability: Prometheus metrics and JSON logs. Importable from any layer; imports only
``proxy.core``."""
