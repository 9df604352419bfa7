-- Purchases and reloads of all time, newest first, a page at a time (the admin page's
-- "Purchases and reloads"): a small index of the credits only.
CREATE INDEX IF NOT EXISTS ledger_entries_credits ON ledger_entries (org_id, ts DESC, op_id DESC)
    WHERE kind IN ('purchase', 'reload');
