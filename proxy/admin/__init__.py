"""The administration layer: one function per operation of the admin API and the member's own
settings (organizations, members, credentials, extra-usage settings and limits, purchases and
reloads, extra usage requests and approvals, statements and usage views, the audit log).

Each takes the store (and the ledger, or the payments, where it needs them), the ``Actor``
who acts and typed arguments; it checks who may, what must hold and what is written, and
returns a view in the admin API's words or raises a ``proxy.core.errors`` error. The HTTP
handlers (``proxy.http.admin``) parse, call one of these and render; nothing here knows HTTP,
and nothing above knows the storage model.
"""
