"""Metering: admission and settlement around one request (``meter``), the fail_open journal
(``journal``), auto-reload payments (``payments``) and webhooks (``webhooks``)."""
