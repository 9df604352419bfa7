"""Commands: ``cli`` (serve, check-config, migrate, ledger-sink, reconcile, demo), the demo,
the embedded Redis and the mock of the Messages API."""
