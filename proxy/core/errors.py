"""One error hierarchy; every client-visible error is built here, in the Anthropic envelope.

    ProxyError                      status, error type, message, extra headers
    ├── InvalidRequest       400    invalid_request_error
    ├── AuthenticationFailed 401    authentication_error
    ├── PermissionDenied     403    permission_error
    ├── NotFound             404    not_found_error
    ├── Conflict             409    invalid_request_error
    ├── RequestTimeout       408    timeout_error (the body did not arrive in time)
    ├── RequestTooLarge      413    request_too_large
    ├── Refused              429    rate_limit_error | billing_error (a decision, with headers)
    ├── TooBusy              429    rate_limit_error (the org's requests in flight, retryable)
    ├── InternalError        500    api_error
    ├── UpstreamUnavailable  502    api_error (the upstream could not be reached)
    └── StoreUnavailable     503    api_error (Redis unavailable under fail_closed)

Library errors (redis, aiohttp) are translated into these in one place each
(``proxy.storage.store``, ``proxy.http``) with ``raise ... from exc``; nothing is swallowed
silently. The envelope a client sees is built by ``proxy.http.errors.error_response``.
"""

from __future__ import annotations

from collections.abc import Mapping


class ProxyError(Exception):
    status = 500
    error_type = "api_error"
    # whether a client's retry could succeed: when not, the answer says so
    # (``x-should-retry: false``), so that the SDKs and Claude Code stop at once and show the
    # message instead of retrying silently for minutes
    retryable = False
    # the handler wrote the request's access line already (a refused admission)
    logged = False

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        if error_type is not None:
            self.error_type = error_type


class InvalidRequest(ProxyError):
    status, error_type = 400, "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status, error_type = 401, "authentication_error"


class PermissionDenied(ProxyError):
    status, error_type = 403, "permission_error"


class NotFound(ProxyError):
    status, error_type = 404, "not_found_error"


class Conflict(ProxyError):
    status, error_type = 409, "invalid_request_error"


class RequestTimeout(ProxyError):
    status, error_type = 408, "timeout_error"


class TooBusy(ProxyError):
    """429: too many of the org's requests in flight at once (a moment later may work)."""

    status, error_type = 429, "rate_limit_error"
    retryable = True


class RequestTooLarge(ProxyError):
    status, error_type = 413, "request_too_large"


class Refused(ProxyError):
    """A 429 decision: seat limit, consent required (rate_limit_error) or spend (billing_error)."""

    status, error_type = 429, "rate_limit_error"


class InternalError(ProxyError):
    status, error_type = 500, "api_error"


class UpstreamUnavailable(ProxyError):
    status, error_type = 502, "api_error"
    retryable = True  # the API may answer the next attempt


class StoreUnavailable(ProxyError):
    status, error_type = 503, "api_error"
