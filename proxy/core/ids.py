"""The shapes of ids that reach Redis: an org id is a key's hash tag, a member id a field
prefix (``<member>|<field>``), so neither may hold braces, "|" or spaces. Pure."""

from __future__ import annotations

import re

ORG_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})\Z")
MEMBER_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._@+-]{0,127})\Z")
