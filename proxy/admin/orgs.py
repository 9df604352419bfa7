"""Organizations: create, read, change (the operator), and who an admin token acts for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.admin.actors import Actor, require
from proxy.admin.writes import org_settings, refused, write
from proxy.config import UpstreamConfig, allowed_credential
from proxy.core.errors import InvalidRequest
from proxy.core.ids import ORG_ID
from proxy.core.vocabulary import Plan
from proxy.storage.model import (
    DEFAULT_CONSENT,
    DEFAULT_ENABLED,
    DEFAULT_REQUESTS_ON,
    DEFAULT_SCOPE,
    DELETE,
    OFF,
    Guard,
    Org,
    flag,
)
from proxy.storage.store import Store

UNSET: Any = object()  # a field the caller did not send (None is a value: "none")


def org_view(org: str, s: dict[str, str]) -> dict[str, Any]:
    return {
        "id": org,
        "name": s.get(Org.NAME, ""),
        "plan": s.get(Org.PLAN),
        "enabled": s.get(Org.ENABLED, DEFAULT_ENABLED) != OFF,
        "upstream_credential": s.get(Org.UPSTREAM) or None,
    }


def check_credential(upstream: UpstreamConfig, name: str | None) -> str | None:
    """The variable an org names as its upstream credential: one the operator allowed."""
    if name and not allowed_credential(upstream, name):
        raise InvalidRequest(
            f"upstream_credential: must name a variable starting with "
            f"{upstream.credential_prefix} (the proxy's own secrets are never allowed)"
        )
    return name


async def whoami(store: Store, actor: Actor) -> dict[str, Any]:
    """Who the admin token acts for: the admin page starts here."""
    out: dict[str, Any] = {
        "actor": actor.name,
        "role": actor.role,
        "org_id": actor.org,
        "member_id": actor.member,
    }
    if actor.org:
        s = await store.org_settings(actor.org)
        out.update(org_name=s.get(Org.NAME), plan=s.get(Org.PLAN))
    return out


async def create_org(
    store: Store,
    actor: Actor,
    upstream: UpstreamConfig,
    *,
    org: str,
    plan: str,
    name: str | None,
    credential: str | None,
) -> dict[str, Any]:
    """A new org, with extra usage off and its plan's defaults written out."""
    require(actor, operator_only=True)
    if not ORG_ID.match(org):
        raise InvalidRequest(
            "id: must be 1-63 lowercase letters, digits or '-', starting with a letter or digit"
        )
    fields = {Org.PLAN: plan, Org.NAME: name or org, Org.ENABLED: DEFAULT_ENABLED}
    if check_credential(upstream, credential):
        fields[Org.UPSTREAM] = credential or ""
    fields.update({Org.EU_ON: OFF, Org.CONSENT: DEFAULT_CONSENT[plan]})
    if plan == Plan.TEAM:
        fields.update({Org.SCOPE: DEFAULT_SCOPE, Org.BALANCE: "0"})
    else:
        fields[Org.REQUESTS_ON] = DEFAULT_REQUESTS_ON
    with refused(org=org, subject=f"organization {org!r}"):
        await store.create_org(org, fields, actor.name)
    return org_view(org, fields)


async def get_org(store: Store, actor: Actor, org: str) -> dict[str, Any]:
    require(actor, org)
    return org_view(org, await org_settings(store, org))


@dataclass(frozen=True, slots=True)
class OrgChange:
    """What the operator changes of an org (``UNSET``: left as it is)."""

    name: Any = UNSET
    plan: Any = UNSET
    credential: Any = UNSET  # a variable's name, or None: the default credential
    enabled: Any = UNSET


async def patch_org(
    store: Store, actor: Actor, upstream: UpstreamConfig, org: str, change: OrgChange
) -> dict[str, Any]:
    require(actor, org, operator_only=True)
    await org_settings(store, org)
    fields: dict[str, str] = {}
    if change.name is not UNSET:
        fields[Org.NAME] = change.name or ""
    if change.plan is not UNSET:
        fields[Org.PLAN] = change.plan
    if change.credential is not UNSET:
        fields[Org.UPSTREAM] = check_credential(upstream, change.credential) or DELETE
    if change.enabled is not UNSET:
        fields[Org.ENABLED] = flag(bool(change.enabled))
    await write(
        store,
        org,
        "org",
        actor=actor.name,
        action="org.update",
        fields=fields,
        guards=[Guard.exists(Org.PLAN)],
        subject=f"organization {org!r}",
    )
    return org_view(org, await store.org_settings(org))
