-- The durable ledger: every charge, purchase and reload, moved here from the orgs' Redis
-- streams by `extra-usage-proxy ledger-sink`. The record of truth for statements and invoices.
CREATE TABLE ledger_entries (
    org_id                text        NOT NULL,
    op_id                 text        NOT NULL,   -- request id, purchase:<key>, reload:<id>
    stream_id             text        NOT NULL,   -- the Redis stream entry it came from
    kind                  text        NOT NULL CHECK (kind IN ('usage', 'purchase', 'reload')),
    ts                    timestamptz NOT NULL,
    period                text        NOT NULL,   -- YYYY-MM (UTC) the charge counts in
    statement_period      text        NOT NULL,   -- the statement it is billed on
    member_id             text,
    tier                  text,
    mode                  text,                   -- included | extra_usage
    model                 text,
    cost_nano             bigint      NOT NULL,
    balance_delta_nano    bigint      NOT NULL,
    input_tokens          bigint      NOT NULL DEFAULT 0,
    output_tokens         bigint      NOT NULL DEFAULT 0,
    cache_write_5m_tokens bigint      NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint      NOT NULL DEFAULT 0,
    cache_read_tokens     bigint      NOT NULL DEFAULT 0,
    web_search_requests   bigint      NOT NULL DEFAULT 0,
    source                text,
    inserted_at           timestamptz NOT NULL DEFAULT now(),
    -- one row per operation: a redelivered or replayed entry is a no-op
    PRIMARY KEY (org_id, op_id)
);
CREATE INDEX ledger_entries_statement ON ledger_entries (org_id, statement_period);

-- A closed month's statement, frozen the first time it is read after the month closed.
CREATE TABLE statements (
    org_id     text        NOT NULL,
    period     text        NOT NULL,
    document   jsonb       NOT NULL,
    frozen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, period)
);
