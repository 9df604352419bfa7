r"""The shapes of ids that reach Redis: an org id is a key's hash tag, a member id a field
prefix (``<member>|<field>``), so neither may hold braces, "|" or spaces; a model id is stored
in every charge's ledger entry and in PostgreSQL, so it holds no "|", control character or NUL
(one such value would stop the ledger). Every pattern matches a whole string (``\Z``). Pure."""

from __future__ import annotations

import re

ORG_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})\Z")
MEMBER_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._@+-]{0,127})\Z")
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,255}\Z")


def model_error(model: str) -> str:
    """What is wrong with a model id that ``MODEL_ID`` refuses (the id shown safely)."""
    return (
        "model: must be a model id of letters, digits and . _ : @ / [ ] - (at most 256), "
        f"such as claude-sonnet-4-5 (got {model[:60]!r})"
    )
