"""The durable ledger: PostgreSQL (``db``), the sink that moves the Redis streams into it
(``sink``), and reconcile (``reconcile``)."""
