"""The org's upstream credential: an org names the environment variable that holds its key
(``upstream_credential``), else the proxy's default key is used."""

from __future__ import annotations

import os
from collections.abc import Mapping

from proxy.core.errors import InternalError


def upstream_key(default: str, ref: str, env: Mapping[str, str] = os.environ) -> str:
    """The key to send for an org whose credential reference is ``ref`` ("" = the default)."""
    if not ref:
        return default
    value = env.get(ref)
    if not value:
        raise InternalError(
            f"the upstream credential {ref!r} of this organization is not configured on the proxy"
        )
    return value
