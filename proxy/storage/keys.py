"""Redis key names. Pure.

Every key of one organization carries the org id as its hash tag (``eup:{acme}:org``), so that
each script's keys live in one Redis Cluster slot. Members and credentials are fields of a few
per-org hashes, never keys of their own: a script reaches a member whose id it only learns
inside the script (from a proxy key) without inventing a key name in Lua.

An operation (a request's reservation and its result, a purchase, a reload) is a key of its
own, ``eup:{acme}:op:<id>``, that expires whole once its replay window has passed: nothing of
an org grows with its history but the ledger stream, which the sink trims. Its caller names it
(``OrgKeys.op``); only settle.lua names one more, the reload it asks for, by the same prefix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OrgKeys:
    org: str  # hash: plan, settings, balance, org spend, reserved total, clock
    members: str  # hash: "<member>|<field>"
    creds: str  # hash: proxy keys and admin tokens by hash
    ops: str  # prefix of the operation keys: "<ops><operation id>" (string, with a TTL)
    due: str  # zset: the live extra-usage reservations ("<amount>|<member>|<id>") by expiry
    ledger: str  # stream: one entry per charge, purchase, reload
    audit: str  # stream: who changed what, before, after, when
    dead: str  # stream: ledger entries the durable ledger refused, kept for an operator
    requests: str  # hash: extra-usage request id -> JSON (Enterprise)


@functools.lru_cache(maxsize=65536)
def org_keys(prefix: str, org: str) -> OrgKeys:
    tag = f"{prefix}:{{{org}}}"
    return OrgKeys(
        org=f"{tag}:org",
        members=f"{tag}:members",
        creds=f"{tag}:creds",
        ops=f"{tag}:op:",
        # not "due": the zset of every operation record of the versions before, which a
        # proxy of such a version may still be using during a rolling upgrade
        due=f"{tag}:reserved",
        ledger=f"{tag}:ledger",
        audit=f"{tag}:audit",
        dead=f"{tag}:ledger_dead",
        requests=f"{tag}:requests",
    )


def op_key(keys: OrgKeys, op_id: str) -> str:
    """The key of one operation of the org: its reservation and result, kept for replays."""
    return keys.ops + op_id


def orgs_index(prefix: str) -> str:
    """The set of all org ids: an index for operators and the ledger sink, outside scripts."""
    return f"{prefix}:orgs"
