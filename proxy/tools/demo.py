"""``extra-usage-proxy demo``: the whole product on one machine, with nothing installed but us.

An embedded Redis, the built-in mock of the Messages API, the proxy on a real port; then a
Team and an Enterprise organization are provisioned through the admin API and their members
are driven through included usage, the seat limit, extra usage and the spend limits, each
request printed as it happens, and a summary table at the end. Then it keeps serving (unless
``--once``) and prints what to point Claude Code or an SDK at.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from proxy.config import Config, parse_config
from proxy.core.money import format_usd, parse_usd
from proxy.core.vocabulary import Claim, Consent, Mode, Plan, Role
from proxy.http.app import build_app
from proxy.tools.embedded import EmbeddedRedis, free_port
from proxy.tools.mock_upstream import build_mock_app

OUTPUT_TOKENS = 10_000  # $0.15 a request on Sonnet 4.5
MODEL = "claude-sonnet-4-5"


@dataclass
class Member:
    org: str
    id: str
    tier: str
    key: str = ""
    requests: int = 0
    included: int = 0
    extra: int = 0
    last: str = ""


@dataclass
class Demo:
    base: str
    operator: str
    session: aiohttp.ClientSession
    out: TextIO
    members: list[Member] = field(default_factory=list)

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method,
            self.base + path,
            json=body,
            headers={"authorization": f"Bearer {self.operator}"},
        ) as r:
            doc = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {doc}")
            return doc

    async def member(self, org: str, mid: str, tier: str, role: str = Role.MEMBER) -> Member:
        await self.admin("PUT", f"/admin/v1/orgs/{org}/members/{mid}", {"role": role, "tier": tier})
        m = Member(org, mid, tier)
        m.key = (await self.admin("POST", f"/admin/v1/orgs/{org}/members/{mid}/keys"))["key"]
        self.members.append(m)
        return m

    async def accept(self, m: Member) -> None:
        """The member accepts continuing on extra usage (POST /v1/usage/me/extra-usage)."""
        async with self.session.post(
            self.base + "/v1/usage/me/extra-usage", headers={"x-api-key": m.key}
        ) as r:
            assert r.status == 200, await r.text()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def request(self, m: Member) -> tuple[int, str]:
        body = {
            "model": MODEL,
            "max_tokens": OUTPUT_TOKENS,
            "messages": [{"role": "user", "content": "Summarize our quarter."}],
        }
        headers = {
            "x-api-key": m.key,
            "anthropic-version": "2023-06-01",
            "x-mock-output-tokens": str(OUTPUT_TOKENS),
            "x-mock-input-tokens": "0",
        }
        async with self.session.post(self.base + "/v1/messages", json=body, headers=headers) as r:
            doc = await r.json()
            h = r.headers
            m.requests += 1
            if r.status == 200:
                claim = h.get("anthropic-ratelimit-unified-representative-claim")
                mode = "extra usage" if claim == Claim.OVERAGE else Mode.INCLUDED
                cost = parse_usd("0.15")
                if claim == Claim.OVERAGE:
                    m.extra += cost
                else:
                    m.included += cost
                m.last = mode
                detail = (
                    f"5h {float(h['anthropic-ratelimit-unified-5h-utilization']):.0%}"
                    f"  status {h['anthropic-ratelimit-unified-status']}"
                )
                return r.status, f"{mode:<12} $0.15   {detail}"
            err = doc["error"]
            m.last = f"{r.status} {err['type']}"
            return r.status, f"{r.status} {err['type']}: {err['message']}"

    async def drive(self, m: Member, *, limit: int = 30) -> str:
        """Requests until the member is refused for good (or ``limit`` requests)."""
        message = ""
        for _ in range(limit):
            status, line = await self.request(m)
            self.say(f"  {m.org:<7} {m.id:<6} #{m.requests:<3} {line}")
            if status != 200:
                return line
            message = line
        return message

    async def balance(self, org: str) -> str:
        doc = await self.admin("GET", f"/admin/v1/orgs/{org}/extra-usage")
        return str(doc.get("balance", ""))

    async def summary(self) -> None:
        self.say("\nSummary")
        for org in dict.fromkeys(m.org for m in self.members):
            doc = await self.admin("GET", f"/admin/v1/orgs/{org}/extra-usage")
            usage = await self.session.get(
                self.base + "/v1/usage/me",
                headers={"x-api-key": next(m.key for m in self.members if m.org == org)},
            )
            spend = (await usage.json())["extra_usage"]
            usage.release()
            line = (
                f"  {org} ({doc['plan']}): extra usage this month "
                f"${spend['organization_spend']} of "
                f"{'$' + doc['monthly_limit'] if doc['monthly_limit'] else 'unlimited'}"
            )
            if doc["plan"] == Plan.TEAM:
                line += f", balance ${doc['balance']}"
            self.say(line)
        self.say(
            f"  {'org':<8}{'member':<8}{'tier':<10}{'requests':>9}{'included':>11}"
            f"{'extra usage':>13}  last answer"
        )
        for m in self.members:
            if not m.requests:
                continue
            self.say(
                f"  {m.org:<8}{m.id:<8}{m.tier:<10}{m.requests:>9}"
                f"{'$' + format_usd(m.included):>11}{'$' + format_usd(m.extra):>13}"
                f"  {m.last}"
            )


async def scenario(demo: Demo) -> None:
    say = demo.say
    # Team: prepaid credit, auto-reload, a monthly org limit
    await demo.admin("POST", "/admin/v1/orgs", {"id": "acme", "name": "Acme", "plan": Plan.TEAM})
    await demo.member("acme", "alice", "premium", Role.PRIMARY_OWNER)
    bob = await demo.member("acme", "bob", "standard")
    carol = await demo.member("acme", "carol", "standard")
    await demo.admin(
        "PATCH",
        "/admin/v1/orgs/acme/extra-usage",
        {
            "enabled": True,
            "monthly_limit": "1.20",
            "auto_reload": {"enabled": True, "threshold": "0.20", "amount": "0.50"},
        },
    )
    await demo.admin(
        "POST",
        "/admin/v1/orgs/acme/extra-usage/purchases",
        {"amount": "0.50", "idempotency_key": "demo-first-purchase"},
    )
    say(
        "\nTeam org acme: seat allowance $0.50 / 5h, extra usage on, $0.50 prepaid, "
        "auto-reload $0.50 at $0.20, monthly limit $1.20"
    )
    await demo.drive(bob)
    say(f"  -> acme balance now ${await demo.balance('acme')} (one auto-reload included)")
    await demo.drive(carol)

    # Enterprise: postpaid, seat-tier and member limits, consent
    await demo.admin(
        "POST", "/admin/v1/orgs", {"id": "globex", "name": "Globex", "plan": Plan.ENTERPRISE}
    )
    await demo.member("globex", "grace", "premium", Role.PRIMARY_OWNER)
    dave = await demo.member("globex", "dave", "standard")
    erin = await demo.member("globex", "erin", "premium")
    await demo.admin(
        "PATCH",
        "/admin/v1/orgs/globex/extra-usage",
        {"enabled": True, "monthly_limit": "5.00", "member_consent": Consent.REQUIRED},
    )
    await demo.admin(
        "PUT", "/admin/v1/orgs/globex/extra-usage/tiers/standard", {"monthly_limit": "0.30"}
    )
    await demo.admin(
        "PUT", "/admin/v1/orgs/globex/extra-usage/members/erin", {"monthly_limit": "0.60"}
    )
    await demo.admin(
        "PUT", "/admin/v1/orgs/globex/extra-usage/members/dave", {"monthly_limit": None}
    )
    say(
        "\nEnterprise org globex: standard seats $0.50 / 5h, premium $1.00 / 5h; members "
        "accept extra usage themselves; standard tier limit $0.30, erin's limit $0.60, "
        "org limit $5.00"
    )
    await demo.accept(dave)
    await demo.drive(dave)
    await demo.drive(erin)
    say("  -> erin accepts extra usage (POST /v1/usage/me/extra-usage)")
    await demo.accept(erin)
    await demo.drive(erin)
    await demo.summary()


def demo_config(port: int, upstream: str, redis_url: str, operator: str) -> Config:
    text = resources.files("proxy.defaults").joinpath("demo.toml").read_text("utf-8")
    doc = tomllib.loads(text)
    doc["server"]["port"] = port
    env = {
        "OPERATOR_TOKEN": operator,
        "SERVICE_TOKEN": secrets.token_hex(16),
        "UPSTREAM_URL": upstream,
        "UPSTREAM_API_KEY": "sk-ant-demo-mock",
        "REDIS_URL": redis_url,
    }
    return parse_config(doc, "demo.toml", env)


async def run(*, port: int, once: bool, prefer: str = "auto", out: TextIO = sys.stdout) -> int:
    # SIGTERM stops the demo as Ctrl-C does: everything it started, its redis-server too
    main = asyncio.current_task()
    if main is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    embedded = EmbeddedRedis(prefer)
    mock_runner = web.AppRunner(build_mock_app(), access_log=None)
    runner: web.AppRunner | None = None
    try:
        await mock_runner.setup()
        mock_port = free_port()
        await web.TCPSite(mock_runner, "127.0.0.1", mock_port).start()
        operator = secrets.token_urlsafe(24)
        redis_url = embedded.server.url if embedded.server else "redis://in-process"
        config = demo_config(port, f"http://127.0.0.1:{mock_port}", redis_url, operator)
        app = build_app(config, redis_client=embedded.client(), access_log_fd=None)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError:
            port = free_port()  # the port is taken: any free one will do for a demo
            await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        print(
            f"extra-usage-proxy demo\n  Redis:     {embedded.describe()}\n"
            f"  upstream:  built-in mock of the Messages API on 127.0.0.1:{mock_port}\n"
            f"  proxy:     {base}",
            file=out,
            flush=True,
        )
        async with aiohttp.ClientSession() as session:
            demo = Demo(base, operator, session, out)
            await scenario(demo)
        if once:
            return 0
        print(
            f"\nThe proxy keeps serving on {base} (Ctrl-C to stop). Try it:\n"
            f"  export ANTHROPIC_BASE_URL={base}",
            file=out,
        )
        for m in demo.members:
            print(f"  {m.org}/{m.id:<6} ANTHROPIC_API_KEY={m.key}", file=out)
        print(f"  operator token (admin API): {operator}", file=out, flush=True)
        await asyncio.Event().wait()
        return 0
    except asyncio.CancelledError:
        return 0  # SIGTERM: a clean stop
    finally:
        if main is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        if runner is not None:
            await runner.cleanup()
        await mock_runner.cleanup()
        embedded.close()
