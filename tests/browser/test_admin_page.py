"""The admin page in a real headless Chromium (Playwright, Debian's chromium), against a real
proxy process, a real redis-server and the mock Messages API."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client
from playwright.sync_api import Browser, Page, expect, sync_playwright

from proxy.tools.embedded import RedisServer
from tests.servers import PostgresServer, free_port

BIN = Path(sys.executable).parent / "extra-usage-proxy"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"
OPERATOR = "browser-operator-token"
CHROMIUM = "/usr/bin/chromium"


class Live:
    def __init__(self, base: str, redis_url: str, env: dict[str, str]) -> None:
        self.base = base
        self.redis_url = redis_url
        self.env = env  # the proxy's: REDIS_URL, DATABASE_URL …

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str = OPERATOR,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        h = {"content-type": "application/json", **(headers or {})}
        if token:
            h["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def org(self, org: str, plan: str) -> dict[str, str]:
        """An org with an owner (admin token), an admin-role member and two members' keys."""
        assert (
            self.call("POST", "/admin/v1/orgs", {"id": org, "name": org.title(), "plan": plan})[0]
            == 201
        )
        out: dict[str, str] = {}
        for member, role, tier in (
            ("olga", "primary_owner", "premium"),
            ("mia", "member", "standard"),
            ("pat", "member", "premium"),
        ):
            self.call("PUT", f"/admin/v1/orgs/{org}/members/{member}", {"role": role, "tier": tier})
            _, tok = self.call("POST", f"/admin/v1/orgs/{org}/members/{member}/admin-tokens")
            out[f"{member}_token"] = tok["token"]
            _, key = self.call("POST", f"/admin/v1/orgs/{org}/members/{member}/keys")
            out[f"{member}_key"] = key["key"]
        return out

    def funded(self, org: str, idempotency_key: str) -> None:
        """Extra usage turned on for a Team org, and $10.00 bought."""
        self.call("PATCH", f"/admin/v1/orgs/{org}/extra-usage", {"enabled": True})
        self.call(
            "POST",
            f"/admin/v1/orgs/{org}/extra-usage/purchases",
            {"amount": "10.00", "idempotency_key": idempotency_key},
        )

    def message(self, key: str, output_tokens: int) -> tuple[int, Any]:
        return self.call(
            "POST",
            "/v1/messages",
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": output_tokens,
                "messages": [{"role": "user", "content": "hi"}],
            },
            token="",
            headers={
                "x-api-key": key,
                "x-mock-output-tokens": str(output_tokens),
                "x-mock-input-tokens": "0",
            },
        )


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


def _wait_port(port: int) -> None:
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    redis = RedisServer().start()
    pg = PostgresServer().start()
    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen(
        [str(BIN), "mock-upstream", "--port", str(mock_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "OPERATOR_TOKEN": OPERATOR,
        "UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
        "UPSTREAM_API_KEY": "k",
        "DATABASE_URL": pg.url,
    }
    subprocess.run([str(BIN), "migrate"], env=env, check=True, capture_output=True)
    proxy = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/healthz")
        _wait_port(mock_port)  # the mock starts beside the proxy, and can be the slower one
        yield Live(f"http://127.0.0.1:{port}", redis.url, env)
    finally:
        for p in (proxy, mock):
            p.terminate()
            p.wait(20)
        redis.cleanup()
        pg.cleanup()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    p = context.new_page()
    yield p
    context.close()


def sign_in(page: Page, live: Live, token: str) -> None:
    page.goto(live.base + "/admin")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def shot(page: Page, name: str, selector: str | None = None) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    if selector:
        page.locator(selector).screenshot(path=str(SHOTS / f"{name}.png"))
    else:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_owner_sets_a_limit_in_the_dialog_and_the_proxy_enforces_it(page: Page, live: Live) -> None:
    t = live.org("browser-team", "team")
    live.funded("browser-team", "b1")
    assert live.message(t["mia_key"], 300_000)[0] == 200  # past the seat allowance
    assert live.message(t["mia_key"], 100)[0] == 200  # extra usage
    sign_in(page, live, t["olga_token"])
    expect(page.locator("#who")).to_contain_text("Browser-Team (team)")
    expect(page.locator("#limit-value")).to_have_text("Unlimited")
    expect(page.locator("#balance")).to_have_text("$9.9985")
    shot(page, "team-page")
    shot(page, "team-credit", "#team-credit")
    page.get_by_role("button", name="Adjust limit").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Monthly limit (USD)").fill("0.0015")
    dialog.get_by_role("button", name="Set limit").click()  # a fraction of a cent: refused
    expect(page.locator("#limit-error")).to_contain_text("at most 2 decimals")
    dialog.get_by_label("Monthly limit (USD)").fill("0.00")
    shot(page, "limit-dialog", "#limit-dialog")
    dialog.get_by_role("button", name="Set limit").click()
    expect(page.locator("#limit-value")).to_have_text("$0.00")
    status, body = live.message(t["mia_key"], 100)  # the very next request
    assert status == 429
    assert body["error"]["type"] == "billing_error"
    assert "monthly organization spend limit" in body["error"]["message"]
    # and back to unlimited
    page.get_by_role("button", name="Adjust limit").click()
    page.get_by_role("dialog").get_by_role("button", name="Set to unlimited").click()
    expect(page.locator("#limit-value")).to_have_text("Unlimited")
    assert live.message(t["mia_key"], 100)[0] == 200
    shot(page, "spend-limit", "#spend-limit")
    # a bad amount is explained in plain words and changes nothing
    page.get_by_role("button", name="Adjust limit").click()
    page.get_by_label("Monthly limit (USD)").fill("-5")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#limit-error")).to_contain_text("must not be negative")
    page.keyboard.press("Escape")
    # keyboard: buy credit with the keyboard only, confirmed first
    page.get_by_label("Credit to buy (USD)").focus()
    page.keyboard.type("5.505")
    page.keyboard.press("Enter")
    expect(page.locator(".field-error")).to_contain_text("dollars and cents")
    expect(page.locator("#buy-confirm")).to_be_hidden()
    page.get_by_label("Credit to buy (USD)").fill("")
    page.get_by_label("Credit to buy (USD)").focus()
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    expect(page.locator("#buy-confirm")).to_contain_text("Buy $5 of prepaid credit")
    _, before = live.call("GET", "/admin/v1/orgs/browser-team/extra-usage")
    assert before["balance"] == "9.997"  # nothing bought until it is confirmed
    page.keyboard.press("Enter")  # the focused "Confirm purchase"
    expect(page.locator("#balance")).to_have_text("$14.997")
    expect(page.locator("#credit-history li").first).to_contain_text(
        "Purchase of $5.00 · completed · balance after $14.997"
    )
    assert page.locator("#credit-history li").count() == 2  # and the first $10.00
    expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d\d:\d\d$"))
    # a save the API refuses: the reason next to its form, in the page's words, and the
    # checkbox back as it was
    page.get_by_label("Auto-reload").check()
    page.get_by_role("button", name="Save auto-reload").click()
    expect(page.locator("#reload-form + .field-error")).to_contain_text("Reload amount")
    expect(page.get_by_label("Auto-reload")).not_to_be_checked()
    shot(page, "reload-error", "#team-credit")
    page.set_viewport_size({"width": 390, "height": 844})  # the same on a phone
    shot(page, "team-credit-390", "#team-credit")
    page.set_viewport_size({"width": 1280, "height": 720})  # the default again
    page.get_by_label("Auto-reload").check()
    page.get_by_label("Reload when balance reaches").fill("2.00")
    page.get_by_label("reload amount").fill("20.00")
    page.get_by_role("button", name="Save auto-reload").click()
    expect(page.locator("#notice")).to_have_text("Auto-reload saved.")
    _, s = live.call("GET", "/admin/v1/orgs/browser-team/extra-usage")
    assert s["auto_reload"] == {
        "enabled": True,
        "threshold": "2.00",
        "amount": "20.00",
        "pending_reload_id": None,
    }
    shot(page, "team-members", "#team-members")


def test_owner_edits_a_tier_limit_and_reviews_requests(page: Page, live: Live) -> None:
    t = live.org("browser-ent", "enterprise")
    live.call("PATCH", "/admin/v1/orgs/browser-ent/extra-usage", {"enabled": True})
    live.call(
        "PUT", "/admin/v1/orgs/browser-ent/extra-usage/members/pat", {"monthly_limit": "5.00"}
    )
    live.call(
        "POST",
        "/v1/usage/me/extra-usage-requests",
        {"amount": "25.00", "message": "quarter close"},
        token="",
        headers={"x-api-key": t["pat_key"]},
    )
    sign_in(page, live, t["olga_token"])
    expect(page.get_by_role("heading", name="Seat-tier limits")).to_be_visible()
    page.get_by_role("button", name="Edit Standard limit").click()
    page.get_by_label("Monthly limit (USD)").fill("75.50")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#tier-rows")).to_contain_text("$75.50")
    _, s = live.call("GET", "/admin/v1/orgs/browser-ent/extra-usage")
    assert s["tier_limits"]["standard"] == "75.50"
    shot(page, "tier-limits", "#tier-limits")
    page.get_by_role("button", name="Edit limit for mia").click()
    page.get_by_label("Monthly limit (USD)").fill("10")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#user-rows")).to_contain_text("$10.00")
    shot(page, "user-limits", "#user-limits")
    expect(page.locator("#request-list")).to_contain_text("pat asks for $25.00")
    shot(page, "requests", "#requests")
    # the owner grants less than asked, typed in cents
    page.get_by_label("Amount to grant pat (USD)").fill("20.00")
    page.get_by_role("button", name="Approve the request of pat").click()
    expect(page.locator("#no-requests")).to_be_visible()
    expect(page.locator("#decided-list")).to_contain_text("pat asked for $25.00 on 20")
    expect(page.locator("#decided-list")).to_contain_text("approved $20.00 by olga")
    expect(page.locator("#decided-list")).to_contain_text("own limit now $25.00")
    _, usage = live.call("GET", "/admin/v1/orgs/browser-ent/usage")
    pat = next(m for m in usage["members"] if m["member_id"] == "pat")
    assert pat["monthly_limit"] == "25.00"
    shot(page, "enterprise-page")
    # mia is at the Standard tier's $75.50: approving her $10 alone would change nothing, so
    # the page says why and offers to raise the tier limit with it
    period = time.strftime("%Y-%m", time.gmtime())
    with redis_client.Redis.from_url(live.redis_url) as r:
        r.hset(
            "eup:{browser-ent}:members",
            mapping={"mia|spend_p": period, "mia|spend": 75_500_000_000},
        )
    live.call(
        "POST",
        "/v1/usage/me/extra-usage-requests",
        {"amount": "10.00"},
        token="",
        headers={"x-api-key": t["mia_key"]},
    )
    page.reload()
    page.get_by_role("button", name="Approve the request of mia").click()
    expect(page.locator("#request-list")).to_contain_text("Standard seat-tier limit ($75.50)")
    shot(page, "approval-blocked", "#requests")
    page.get_by_role("button", name="Raise the tier limit too and approve").click()
    expect(page.locator("#decided-list")).to_contain_text("tier limit now $85.50")
    expect(page.locator("#tier-rows")).to_contain_text("$85.50")
    # consent and requests from the page, and the audit log in the API's words
    page.get_by_label("At their seat limit, members continue").select_option("required")
    expect(page.locator("#notice")).to_contain_text("only once they accept")
    page.get_by_label("Members may ask for more extra usage").uncheck()
    expect(page.locator("#notice")).to_have_text("Members can no longer ask for more.")
    _, s2 = live.call("GET", "/admin/v1/orgs/browser-ent/extra-usage")
    assert (s2["member_consent"], s2["requests_enabled"]) == ("required", False)
    audit = page.locator("#audit-list")
    expect(audit).to_contain_text("olga · requests enabled on → off")
    expect(audit).to_contain_text("tier limits · standard $75.50 → $85.50")
    expect(audit).to_contain_text("members · pat · monthly limit $5.00 → $25.00")
    expect(audit).not_to_contain_text("tlimit")
    shot(page, "audit", "#audit")


def test_a_members_token_sees_no_data(page: Page, live: Live) -> None:
    t = live.org("browser-priv", "enterprise")
    sign_in(page, live, t["mia_token"])
    expect(page.get_by_role("alert").first).to_contain_text("cannot view usage settings")
    expect(page.locator("#app")).to_be_hidden()
    assert "$" not in page.locator("body").inner_text()
    shot(page, "member-refused")
    # a token never goes into a URL
    assert t["mia_token"] not in page.url


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_what_binds_is_shown_for_the_org_and_every_member_at_both_widths(
    browser: Browser, live: Live, width: int, height: int
) -> None:
    """Pat's own limit is $400 but the Premium tier's $200 stopped her at $201.60: the page
    says the tier limit binds and that it is reached, not "$400.00"; the org's spend is shown
    against its limit; nothing sticks out of a phone's screen."""
    org = f"browser-binds-{width}"
    t = live.org(org, "enterprise")
    base = f"/admin/v1/orgs/{org}/extra-usage"
    live.call("PATCH", base, {"enabled": True, "monthly_limit": "300.00"})
    live.call("PUT", f"{base}/tiers/premium", {"monthly_limit": "200.00"})
    live.call("PUT", f"{base}/members/pat", {"monthly_limit": "400.00"})
    live.call("PUT", f"{base}/members/mia", {"monthly_limit": "0"})
    period = time.strftime("%Y-%m", time.gmtime())
    with redis_client.Redis.from_url(live.redis_url) as r:
        r.hset(
            f"eup:{{{org}}}:members", mapping={"pat|spend_p": period, "pat|spend": 201_600_000_000}
        )
        r.hset(f"eup:{{{org}}}:org", mapping={"spend_p": period, "spend": 201_600_000_000})
    _, usage = live.call("GET", f"/admin/v1/orgs/{org}/usage")
    pat = next(m for m in usage["members"] if m["member_id"] == "pat")
    assert pat["binding"] == {
        "rule": "seat_tier_spend_limit",
        "effective_limit": "200.00",
        "remaining": "0.00",
        "reached": True,
    }
    assert usage["totals"]["binding"]["rule"] == "org_spend_limit"
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        sign_in(page, live, t["olga_token"])
        row = page.locator("#user-rows tr", has_text="pat")
        expect(row).to_contain_text("$201.60 of $200.00 · Premium tier limit")
        expect(row).to_contain_text("Reached")
        expect(row).to_contain_text("$400.00")  # her own, shown as her own
        expect(page.locator("#user-rows tr", has_text="mia")).to_contain_text(
            "extra usage is off for this member"
        )
        expect(page.locator("#org-binding")).to_contain_text(
            "$201.60 of $300.00 · the organization's limit"
        )
        expect(page.locator("#user-rows")).not_to_contain_text("Unlimited (tier")
        # pat's and olga's (Premium: the tier's $200 binds her); mia's extra usage is off
        assert page.locator("#user-rows .spend meter").count() == 2
        shot(page, f"binds-{width}")
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"the page is {overflow} px wide at {width}"
        page.get_by_role("button", name="Adjust limit").click()
        box = page.get_by_role("dialog").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        shot(page, f"binds-dialog-{width}")
    finally:
        context.close()


def test_five_hundred_members_stay_usable(page: Page, live: Live) -> None:
    """Search, sort, pages of 50 and a limit set for a selection at once, on 500 members."""
    t = live.org("browser-many", "enterprise")
    live.call("PATCH", "/admin/v1/orgs/browser-many/extra-usage", {"enabled": True})
    period = time.strftime("%Y-%m", time.gmtime())
    with redis_client.Redis.from_url(live.redis_url) as r:
        fields: dict[str, str | int] = {}
        for i in range(497):
            fields[f"u{i:03d}|tier"] = "standard"
            fields[f"u{i:03d}|role"] = "member"
        fields["u123|spend_p"], fields["u123|spend"] = period, 99 * 10**9
        r.hset("eup:{browser-many}:members", mapping=fields)
    sign_in(page, live, t["olga_token"])
    tools = page.locator("#user-tools")
    expect(tools).to_contain_text("1–50 of 500")
    assert page.locator("#user-rows tr").count() == 50
    tools.get_by_role("button", name="Next").click()
    expect(tools).to_contain_text("51–100 of 500")
    tools.get_by_label("Sort by").select_option("spend")
    expect(tools).to_contain_text("1–50 of 500")
    expect(page.locator("#user-rows tr").first).to_contain_text("u123")
    tools.get_by_label("Search members").fill("u12")
    expect(tools).to_contain_text("1–10 of 10")
    tools.get_by_label("Select all on this page").check()
    expect(tools).to_contain_text("10 selected")
    tools.get_by_role("button", name="Set a limit for selected…").click()
    page.get_by_label("Monthly limit (USD)").fill("15.00")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#notice")).to_have_text("Limit set to $15.00.")
    expect(tools).not_to_contain_text("10 selected")
    _, usage = live.call("GET", "/admin/v1/orgs/browser-many/usage")
    limited = {m["member_id"] for m in usage["members"] if m["monthly_limit"] == "15.00"}
    assert limited == {f"u12{i}" for i in range(10)}
    shot(page, "many-members")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "many-members-390")


def test_statements_are_viewed_and_downloaded(page: Page, live: Live) -> None:
    t = live.org("browser-stmt", "team")
    live.funded("browser-stmt", "s1")
    assert live.message(t["mia_key"], 300_000)[0] == 200  # included, past the allowance
    assert live.message(t["mia_key"], 100)[0] == 200  # extra usage: $0.0015
    subprocess.run(
        [str(BIN), "ledger-sink", "--once"], env=live.env, check=True, capture_output=True
    )
    sign_in(page, live, t["olga_token"])
    # this month by day (plain SVG: one bar per day), split by member, then by model
    today = int(time.strftime("%d", time.gmtime()))
    bar = page.locator("svg.daily rect").nth(today - 1)
    expect(bar.locator("title")).to_have_text(
        f"{time.strftime('%Y-%m-%d', time.gmtime())}: $0.0015"
    )
    expect(page.locator("#daily-split-rows")).to_contain_text("mia$0.0015")
    page.get_by_label("Split by").select_option("by_model")
    expect(page.locator("#daily-split-rows")).to_contain_text("claude-sonnet-4-5$0.0015")
    # and each member's seat windows: mia's 5-hour window is used up
    mia = page.locator("#team-member-rows tr", has_text="mia")
    expect(mia).to_contain_text("5-hour $4.50 of $4.00")
    expect(mia).to_contain_text("7-day $4.50 of $40.00")
    shot(page, "daily", "#daily")
    shot(page, "windows", "#team-members")
    page.get_by_role("button", name="View statement").click()
    box = page.locator("#statement")
    expect(box).to_contain_text("(open): 2 requests")
    expect(box).to_contain_text("extra usage $0.0015")
    expect(box.locator("tr", has_text="extra usage")).to_contain_text("mia")
    expect(box.locator(".statement-credits li")).to_contain_text("Purchase of $10.00")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    path = download.value.path()
    text = Path(path).read_text()
    assert download.value.suggested_filename.startswith("statement-browser-stmt-")
    assert "mia" in text and "extra_usage" in text
    assert ",CREDIT purchase " in text and ",CLOSING BALANCE," in text
    assert t["olga_token"] not in page.url
    shot(page, "statements", "#statements")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "statements-390", "#statements")


@pytest.mark.parametrize("width", [1280, 390])
def test_enable_walks_a_team_owner_through_the_article_steps(
    browser: Browser, live: Live, width: int
) -> None:
    org = f"browser-enable-{width}"
    t = live.org(org, "team")
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, live, t["olga_token"])
        expect(page.locator("#eu-state")).to_have_text("Extra usage is off.")
        # buying credit while it is off is said to be buying ahead
        page.locator("#buy-amount").fill("1.00")
        page.get_by_role("button", name="Buy credit").click()
        expect(page.locator("#buy-confirm")).to_contain_text("Buy $1.00 ahead anyway")
        page.locator("#buy-confirm-no").click()
        page.get_by_role("button", name="Enable").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Step 1 of 4")
        dialog.get_by_label("Amount of the first purchase (USD)").fill("12.345")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog.locator("#enable-error")).to_contain_text("dollars and cents")
        dialog.get_by_label("Amount of the first purchase (USD)").fill("20.00")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("Buy $20.00 of prepaid credit")
        _, before = live.call("GET", f"/admin/v1/orgs/{org}/extra-usage")
        assert before["balance"] == "0.00"  # nothing bought until confirmed
        shot(page, f"enable-buy-{width}")
        box = dialog.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        dialog.get_by_role("button", name="Confirm purchase").click()
        expect(dialog).to_contain_text("Payment accepted: $20.00 added, balance $20.00.")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("Step 2 of 4")
        dialog.get_by_label("Reload automatically").check()
        dialog.get_by_label("When the balance falls to (USD)").fill("5.00")
        dialog.get_by_label("add (USD)").fill("20.00")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("Step 3 of 4")
        dialog.get_by_label("Monthly organization limit (USD)").fill("100.00")
        dialog.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("Step 4 of 4")
        dialog.get_by_role("button", name="Turn on extra usage").click()
        expect(page.locator("#notice")).to_have_text("Extra usage is on.")
        expect(page.locator("#eu-state")).to_have_text("Extra usage is on.")
        _, s = live.call("GET", f"/admin/v1/orgs/{org}/extra-usage")
        assert (s["enabled"], s["balance"], s["monthly_limit"], s["member_scope"]) == (
            True,
            "20.00",
            "100.00",
            "all",
        )
        assert s["auto_reload"]["enabled"] and s["auto_reload"]["amount"] == "20.00"
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, f"enabled-{width}")
    finally:
        context.close()


def test_enable_asks_an_enterprise_owner_for_the_limits(page: Page, live: Live) -> None:
    t = live.org("browser-enable-ent", "enterprise")
    sign_in(page, live, t["olga_token"])
    page.get_by_role("button", name="Enable").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Step 1 of 1")
    dialog.get_by_label("Organization (USD)").fill("500.00")
    dialog.get_by_label("Standard seat tier, per member (USD)").fill("50.00")
    shot(page, "enable-enterprise", "#enable-dialog")
    dialog.get_by_role("button", name="Turn on extra usage").click()
    expect(page.locator("#notice")).to_have_text("Extra usage is on.")
    _, s = live.call("GET", "/admin/v1/orgs/browser-enable-ent/extra-usage")
    assert (s["enabled"], s["monthly_limit"]) == (True, "500.00")
    assert s["tier_limits"] == {"standard": "50.00", "premium": None}


def test_an_admin_sees_the_settings_and_is_told_only_owners_change_them(
    page: Page, live: Live
) -> None:
    t = live.org("browser-admin", "team")
    live.call(
        "PUT", "/admin/v1/orgs/browser-admin/members/ada", {"role": "admin", "tier": "standard"}
    )
    _, tok = live.call("POST", "/admin/v1/orgs/browser-admin/members/ada/admin-tokens")
    sign_in(page, live, tok["token"])
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#read-only")).to_contain_text("Only owners can change these settings")
    expect(page.get_by_role("button", name="Adjust limit")).to_be_disabled()
    expect(page.get_by_role("button", name="Enable")).to_be_disabled()
    expect(page.get_by_role("button", name="View statement")).to_be_enabled()
    expect(page.get_by_label("Search members").first).to_be_enabled()  # finding stays open
    shot(page, "admin-read-only")
    assert t["olga_token"]  # the owner's token was issued and not used here


def test_figures_refresh_on_focus_with_the_time_of_the_update(page: Page, live: Live) -> None:
    """An open tab does not show a balance from before the traffic: coming back to the tab
    reloads the figures (and every 30 s)."""
    t = live.org("browser-live", "team")
    live.funded("browser-live", "l1")
    sign_in(page, live, t["olga_token"])
    expect(page.locator("#balance")).to_have_text("$10.00")
    live.call(
        "POST",
        "/admin/v1/orgs/browser-live/extra-usage/purchases",
        {"amount": "1000.00", "idempotency_key": "l2"},
    )
    expect(page.locator("#balance")).to_have_text("$10.00")  # nothing has told the tab yet
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    expect(page.locator("#balance")).to_have_text("$1,010.00")  # with its separator
    expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d\d:\d\d$"))
