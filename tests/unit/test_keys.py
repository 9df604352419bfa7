from __future__ import annotations

from pathlib import Path

import pytest
from redis.crc import key_slot

from proxy.core.credentials import PROXY_KEY_PREFIX, hash_secret, new_secret, org_of
from proxy.storage.keys import op_key, org_keys
from proxy.storage.scripts import SPECS, WRITE_TARGETS


@pytest.mark.parametrize("org", ["acme", "a", "org-with-dashes-1", "z" * 63])
def test_every_scripts_keys_map_to_one_slot(org: str) -> None:
    keys = org_keys("eup", org)
    for name, spec in SPECS.items():
        # write.lua takes one of the org's hashes (its target) plus the audit stream
        attrs = [a for a in spec.keys if a != "target"]
        targets = WRITE_TARGETS if "target" in spec.keys else ()
        names = [getattr(keys, a) for a in [*attrs, *targets] if a != "op"]
        if "op" in spec.keys:  # the operation's key, and the reload settle.lua names beside it
            op = spec.keys_of(keys, "req-1{other}")[-1]
            names += [op, op_key(keys, "reload:rl-x"), op_key(keys, "purchase:k}{")]
        slots = {key_slot(n.encode()) for n in names}
        assert len(slots) == 1, name


def test_every_script_declares_its_keys() -> None:
    lua = {p.stem for p in (Path(__file__).parents[2] / "lua").glob("*.lua")}
    assert set(SPECS) | {"lib"} == lua
    for spec in SPECS.values():
        assert spec.keys, spec.name


def test_orgs_spread_over_slots() -> None:
    slots = {key_slot(org_keys("eup", f"org{i}").org.encode()) for i in range(50)}
    assert len(slots) > 40


def test_secrets_name_their_org() -> None:
    secret = new_secret(PROXY_KEY_PREFIX, "my-org-2")
    assert org_of(secret, PROXY_KEY_PREFIX) == "my-org-2"
    assert org_of(secret[:-1], PROXY_KEY_PREFIX) is None
    assert org_of("sk-ant-api03-xyz", PROXY_KEY_PREFIX) is None
    assert org_of(PROXY_KEY_PREFIX + "UPPER-" + "a" * 64, PROXY_KEY_PREFIX) is None
    assert len(hash_secret(secret)) == 64
