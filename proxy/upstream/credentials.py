"""The org's upstream credential: an org names the environment variable that holds its key
(``upstream_credential``, a name the operator allowed: ``upstream.credential_prefix``), else
the proxy's default key is used. A member is never told the variable's name."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from proxy.config import UpstreamConfig, allowed_credential
from proxy.core.errors import InternalError
from proxy.obs.logs import Throttled

failures = Throttled(logging.getLogger(__name__))
NOT_CONFIGURED = (
    "this organization's upstream credential is not configured on the proxy; "
    "ask the proxy's operator"
)


def upstream_key(upstream: UpstreamConfig, ref: str, env: Mapping[str, str] = os.environ) -> str:
    """The key to send for an org whose credential reference is ``ref`` ("" = the default)."""
    if not ref:
        return upstream.api_key
    value = env.get(ref) if allowed_credential(upstream, ref) else None
    if not value:
        failures.warning(
            f"credential:{ref}",
            "an org's upstream credential is not allowed or not set",
            variable=ref,
            allowed_prefix=upstream.credential_prefix,
        )
        raise InternalError(NOT_CONFIGURED)
    return value
