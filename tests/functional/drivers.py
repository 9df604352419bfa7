"""Two ways to spend: through the proxy (a member's key) and through the check API
(a first-party backend with the service token). Scenario tests run on both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tests.conftest import SERVICE, Proxy, message

MODEL = "claude-sonnet-4-5"
OUT = 15_000  # nano-USD per output token of MODEL


@dataclass
class Outcome:
    allowed: bool
    mode: str | None
    reason: str | None
    error_type: str | None = None
    message: str = ""
    headers: Any = None


class Driver:
    name = ""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.keys: dict[tuple[str, str], str] = {}

    async def member(self, org: str, member: str, tier: str = "standard") -> None:
        self.keys[(org, member)] = await self.proxy.member(org, member, tier)

    async def spend(
        self, org: str, member: str, output_tokens: int, *, accept: bool = False
    ) -> Outcome:
        raise NotImplementedError


class ProxyDriver(Driver):
    name = "proxy"

    async def spend(
        self, org: str, member: str, output_tokens: int, *, accept: bool = False
    ) -> Outcome:
        headers = {"x-mock-output-tokens": str(output_tokens), "x-mock-input-tokens": "0"}
        if accept:
            headers["x-extra-usage"] = "accept"
        status, h, body = await self.proxy.post(
            self.keys[(org, member)], message(MODEL, max_tokens=output_tokens), headers=headers
        )
        if status == 200:
            claim = h["anthropic-ratelimit-unified-representative-claim"]
            return Outcome(
                True, "extra_usage" if claim == "overage" else "included", None, headers=h
            )
        doc = orjson.loads(body)
        assert status == 429, doc
        reason = h.get("anthropic-ratelimit-unified-overage-disabled-reason")
        return Outcome(False, None, reason, doc["error"]["type"], doc["error"]["message"], h)


class CheckDriver(Driver):
    name = "check"
    n = 0

    async def spend(
        self, org: str, member: str, output_tokens: int, *, accept: bool = False
    ) -> Outcome:
        CheckDriver.n += 1
        auth = {"authorization": f"Bearer {SERVICE}"}
        body = {
            "org_id": org,
            "member_id": member,
            "model": MODEL,
            "input_tokens": 0,
            "max_tokens": output_tokens,
            "request_id": f"chat-{CheckDriver.n}",
            "accept_extra_usage": accept,
        }
        async with self.proxy.session.post(
            self.proxy.url + "/v1/usage/check", json=body, headers=auth
        ) as r:
            assert r.status == 200, await r.text()
            d = await r.json()
        if d["decision"] == "deny":
            kind = (
                "billing_error"
                if d["reason"]
                in (
                    "member_spend_limit",
                    "seat_tier_spend_limit",
                    "org_spend_limit",
                    "out_of_credits",
                )
                else "rate_limit_error"
            )
            return Outcome(False, None, d["reason"], kind, d["message"] or "")
        settle = {
            "reservation_id": d["reservation_id"],
            "usage": {"input_tokens": 0, "output_tokens": output_tokens},
        }
        async with self.proxy.session.post(
            self.proxy.url + "/v1/usage/settle", json=settle, headers=auth
        ) as r:
            assert r.status == 200, await r.text()
            s = await r.json()
        assert s["mode"] == d["mode"]
        return Outcome(True, d["mode"], None)
