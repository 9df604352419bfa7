"""How the administration layer reads an org and writes a change: one audited write
(write.lua), whose refusals become the admin context's errors (``proxy.core.refusals``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from proxy.core.errors import NotFound
from proxy.core.refusals import Context, refusal_error
from proxy.core.vocabulary import Refusal
from proxy.storage.model import Org
from proxy.storage.scripts import Reply
from proxy.storage.store import Store, StoreRefusal


@contextlib.contextmanager
def refused(*, org: str = "", member: str = "", subject: str = "") -> Iterator[None]:
    """A script's refusal inside, as the admin API's error (the one translation)."""
    try:
        yield
    except StoreRefusal as exc:
        raise refusal_error(
            Context.ADMIN, exc.code, exc.detail, org=org, member=member, subject=subject
        ) from exc


async def org_settings(store: Store, org: str) -> dict[str, str]:
    """The org's settings, or 404."""
    settings = await store.org_settings(org)
    if not settings.get(Org.PLAN):
        raise NotFound(f"organization {org!r} not found")
    return settings


async def write(
    store: Store,
    org: str,
    target: str,
    *,
    actor: str,
    action: str,
    fields: Mapping[str, str],
    guards: Sequence[str] = (),
    subject: str,
    meanwhile: bool = False,
) -> Reply:
    """One audited change of one of the org's hashes under ``guards``. ``subject`` names what
    the guards are about in an error; ``meanwhile``: an "absent" guard is about a concurrent change
    (a field that appeared meanwhile), not about something that already exists."""
    try:
        return await store.update(
            org, target, actor=actor, action=action, fields=fields, guards=guards
        )
    except StoreRefusal as exc:
        code = Refusal.CONFLICT if meanwhile and exc.code == Refusal.EXISTS else exc.code
        raise refusal_error(Context.ADMIN, code, exc.detail, org=org, subject=subject) from exc
