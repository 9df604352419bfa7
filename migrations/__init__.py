"""PostgreSQL schema migrations of the durable ledger, applied in order by `migrate`."""
