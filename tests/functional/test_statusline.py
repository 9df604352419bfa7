"""The status line: the README's ``statusLine`` entry, run as Claude Code runs it (the command
in a shell, Claude Code's environment, the session JSON on stdin) against a real proxy."""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Proxy

README = Path(__file__).parents[2] / "README.md"
SESSION = {
    "session_id": "s-1",
    "cwd": "/tmp",
    "model": {"id": "claude-opus-4-5", "display_name": "Opus"},
    "workspace": {"current_dir": "/tmp"},
    "version": "2.1.332",
    "cost": {"total_cost_usd": 0.01},
}
USD = 10**9


def readme_command() -> str:
    """The command of the README's statusLine entry (the block that is tested)."""
    for block in re.findall(r"```json\n(.*?)```", README.read_text(), re.S):
        if '"statusLine"' in block:
            entry = json.loads(block)["statusLine"]
            assert entry["type"] == "command"
            return str(entry["command"])
    raise AssertionError("the README has no statusLine entry")


async def run_statusline(proxy: Proxy, key: str, *, auth_token: bool = False) -> str:
    env = {"PATH": os.environ["PATH"], "ANTHROPIC_BASE_URL": proxy.url}
    env["ANTHROPIC_AUTH_TOKEN" if auth_token else "ANTHROPIC_API_KEY"] = key
    proc = await asyncio.create_subprocess_shell(
        readme_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(orjson.dumps(SESSION)), 10)
    return out.decode().splitlines()[0]


async def test_a_fresh_member_sees_both_windows(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "sam")
    assert await run_statusline(proxy, key) == "5h 0% · 7d 0% · extra usage off"
    # with the key in ANTHROPIC_AUTH_TOKEN instead, as Claude Code may have it
    assert await run_statusline(proxy, key, auth_token=True) == "5h 0% · 7d 0% · extra usage off"


async def test_a_member_on_extra_usage_sees_what_binds(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "eve")
    await proxy.admin(
        "PATCH",
        f"/admin/v1/orgs/{org}/extra-usage",
        json={"enabled": True, "member_consent": "automatic", "monthly_limit": "300.00"},
    )
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", json={"monthly_limit": "50.00"}
    )
    k = proxy.store.keys(org)
    status, _, _ = await proxy.post(
        key, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
    )
    assert status == 200  # opens both windows
    period = datetime.now(UTC).strftime("%Y-%m")  # the month the scripts are in
    fields = await proxy.store.member_fields(org, "eve", ["s_end", "w_end"])
    await proxy.store.client.hset(
        k.members,
        mapping={
            "eve|s_used": str(4 * USD),  # the session used up
            "eve|w_used": str(8 * USD),
            "eve|spend_p": period,
            "eve|spend": str(3_200_000_000),
        },
    )
    line = await run_statusline(proxy, key)
    assert line.startswith("5h 100% (reached · resets ")
    assert " · 7d 20% · " in line
    # the tier's $50 binds before the org's $300 and the unlimited member
    assert line.endswith("extra usage $3.20 of $50.00 (standard tier limit)"), line
    assert int(fields["s_end"]) > 0


async def test_consent_needed_says_how_to_give_it(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "cid")
    await proxy.admin("PATCH", f"/admin/v1/orgs/{org}/extra-usage", json={"enabled": True})
    line = await run_statusline(proxy, key)
    assert line == (
        "5h 0% · 7d 0% · extra usage needs your consent: "
        "ANTHROPIC_CUSTOM_HEADERS='x-extra-usage: accept'"
    )


async def test_an_unknown_key_gets_a_line_that_says_so(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "una")
    line = await run_statusline(proxy, key[:-8] + "00000000")
    assert line == "usage: invalid x-api-key: unknown or revoked key"


async def test_a_refusal_names_the_members_usage_page(proxy_factory: Any) -> None:
    for public_url in ("", "https://claude-proxy.example.com"):
        p = await proxy_factory(server={"public_url": public_url})
        org = await p.org("team")
        key = await p.member(org, "rae")
        await p.post(
            key,
            {"model": "claude-sonnet-4-5", "max_tokens": 300_000, "messages": []},
            headers={"x-mock-output-tokens": "300000", "x-mock-input-tokens": "0"},
        )
        status, _, body = await p.post(
            key, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
        )
        message = orjson.loads(body)["error"]["message"]
        assert status == 429
        assert message.endswith(f" · your usage: {public_url}/usage"), message
        # a forged Host never makes the link
        status, _, body = await p.post(
            key,
            {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []},
            headers={"host": "evil.example"},
        )
        assert status == 429 and b"evil.example" not in body
