"""The official anthropic SDK as the client, with the key sent both ways."""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import Proxy


def clients(proxy: Proxy, key: str) -> list[anthropic.AsyncAnthropic]:
    bearer = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key, max_retries=0)
    x_api_key = anthropic.AsyncAnthropic(
        base_url=proxy.url,
        api_key=None,
        auth_token=None,
        default_headers={"x-api-key": key},
        max_retries=0,
    )
    return [bearer, x_api_key]


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)


async def test_sdk_non_streaming_streaming_and_count_tokens(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "sam")
    for client in clients(proxy, key):
        async with client:
            msg = await client.messages.create(
                model="claude-sonnet-5-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "Hello"}],
            )
            assert msg.usage.output_tokens == 50
            async with client.messages.stream(
                model="claude-sonnet-5-5",
                max_tokens=64,
                messages=[{"role": "user", "content": "Hello"}],
            ) as stream:
                final = await stream.get_final_message()
            assert final.usage.output_tokens == 50
            assert final.usage.input_tokens == msg.usage.input_tokens
            counted = await client.messages.count_tokens(
                model="claude-sonnet-5-5", messages=[{"role": "user", "content": "Hello"}]
            )
            assert counted.input_tokens > 0
    sent = proxy.mock.requests
    assert {r["headers"].get("anthropic-version") for r in sent} == {
        anthropic._constants.ANTHROPIC_API_VERSION
    }  # forwarded as is
    rows = await proxy.store.ledger(org)
    assert len(rows) == 4  # count_tokens is not metered
    assert len({r["cost"] for r in rows}) == 1
