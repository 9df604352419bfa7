-- A charge made on the estimate rule: the API accepted the request (200) but its usage never
-- came (the answer was cut by the API or by the member), so input came from the request's
-- size and output from the text that came. Shown apart on statements and usage views.
ALTER TABLE ledger_entries ADD COLUMN estimated boolean NOT NULL DEFAULT false;
