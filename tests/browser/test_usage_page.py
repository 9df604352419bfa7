"""The member's usage page (GET /usage) in a real headless Chromium, against a real proxy
process, a real redis-server and the mock Messages API: sign in with the proxy key, both
windows as bars, extra usage and what binds, consent given and withdrawn, asking for more —
at desktop and phone width, with screenshots kept."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.test_admin_page import Live, browser, live, page, shot

__all__ = ["browser", "live", "page"]  # the fixtures, from the admin page's tests


def enterprise_member(live: Live, org: str) -> str:
    """An Enterprise member whose session is used up, extra usage on, consent required."""
    assert (
        live.call("POST", "/admin/v1/orgs", {"id": org, "name": org.title(), "plan": "enterprise"})[
            0
        ]
        == 201
    )
    assert (
        live.call(
            "PUT", f"/admin/v1/orgs/{org}/members/ivy", {"role": "member", "tier": "standard"}
        )[0]
        == 201
    )
    status, key = live.call("POST", f"/admin/v1/orgs/{org}/members/ivy/keys")
    assert status == 201
    assert live.call("PATCH", f"/admin/v1/orgs/{org}/extra-usage", {"enabled": True})[0] == 200
    tier = {"monthly_limit": "50.00"}
    assert live.call("PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", tier)[0] == 200
    assert live.message(key["key"], 300_000)[0] == 200  # $4.50 of a $4 session
    return str(key["key"])


def no_overflow(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width  # type: ignore[index]


def test_a_member_sees_their_usage_gives_consent_and_asks_for_more(page: Page, live: Live) -> None:
    key = enterprise_member(live, "usage-ent")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(live.base + "/usage")
    page.get_by_label("Proxy key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Included in your seat")).to_be_visible()
    expect(page.locator("#s-text")).to_have_text("113% of $4.00")  # $4.50: the allowance is soft
    expect(page.locator("#s-reset")).to_contain_text("Session limit reached · resets ")
    expect(page.locator("#w-text")).to_have_text("11% of $40.00")
    expect(page.locator("#eu-status")).to_contain_text("once you accept")
    expect(page.locator("#spend-text")).to_have_text("$0.00 of $50.00")
    expect(page.locator("#spend-name")).to_contain_text("standard tier limit")
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('eup-proxy-key')") == key
    shot(page, "usage-desktop-consent-needed")
    no_overflow(page)

    page.get_by_role("button", name="Continue on extra usage").click()
    expect(page.locator("#notice")).to_have_text("You accepted continuing on extra usage.")
    expect(page.locator("#eu-status")).to_contain_text("You are on extra usage")
    expect(page.get_by_role("button", name="Stop using extra usage")).to_be_visible()

    page.get_by_label("Amount (USD, optional)").fill("25.505")
    page.get_by_role("button", name="Ask for more").click()
    expect(page.locator("#error")).to_contain_text("dollars and cents")
    page.get_by_label("Amount (USD, optional)").fill("25.50")
    page.get_by_role("button", name="Ask for more").click()
    expect(page.locator("#ask-state")).to_contain_text("for $25.50 is pending")
    expect(page.locator("#error")).to_be_hidden()

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()  # still signed in: the key is in this tab's sessionStorage
    expect(page.locator("#ask-state")).to_contain_text("is pending")
    no_overflow(page)
    shot(page, "usage-phone-on-extra-usage")

    page.get_by_role("button", name="Stop using extra usage").click()
    expect(page.locator("#eu-status")).to_contain_text("once you accept")


def test_a_wrong_key_is_told_in_plain_words(page: Page, live: Live) -> None:
    page.goto(live.base + "/usage")
    page.get_by_label("Proxy key").fill("sk-eup-nobody-" + "0" * 64)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("This key was not accepted")
    expect(page.locator("#app")).to_be_hidden()


def test_the_page_forbids_framing_and_foreign_scripts(page: Page, live: Live) -> None:
    response = page.goto(live.base + "/usage")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
