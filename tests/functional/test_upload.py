"""Large bodies go upstream as they arrive, all but the last chunk until admission allows.

Against a real aiohttp proxy, a real Redis and the mock Messages API; the cut-off case also
against a raw TCP upstream that counts the bytes it was sent.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.upstream.upload import STREAM_FROM
from tests.conftest import UPSTREAM_KEY, Proxy, ProxyFactory, message, messages_reply
from tests.functional.helpers import member_counters


def big(text_bytes: int = STREAM_FROM * 2, **kw: Any) -> dict[str, Any]:
    return message(text="x" * text_bytes, **kw)


async def uploads(proxy: Proxy) -> dict[str, float]:
    await proxy.settled()
    async with proxy.session.get(proxy.url + "/metrics") as r:
        text = await r.text()
    found = re.findall(r'^eup_streamed_uploads_total\{outcome="(\w+)"\} ([\d.e+]+)$', text, re.M)
    return {k: float(v) for k, v in found}


async def test_a_known_keys_large_body_is_streamed_and_arrives_whole(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "alice")
    body = big()
    status, _, _ = await proxy.post(key, body)  # first admission: the key becomes known
    assert status == 200
    assert await uploads(proxy) == {}
    status, headers, answer = await proxy.post(key, body, headers={"anthropic-beta": "b-1"})
    assert status == 200, answer
    assert await uploads(proxy) == {"sent": 1.0}
    seen = proxy.mock.requests[-1]
    assert seen["body"] == body  # every byte, in order
    assert seen["headers"]["Content-Length"] == str(len(json.dumps(body)))  # as the client sent it
    assert "Transfer-Encoding" not in seen["headers"]
    assert seen["headers"]["x-api-key"] == UPSTREAM_KEY
    assert seen["headers"]["anthropic-beta"] == "b-1"
    assert headers["anthropic-ratelimit-unified-status"] == "allowed"
    assert len(proxy.mock.requests) == 2
    assert len(await proxy.store.ledger(org)) == 2  # charged like any other request
    assert (await member_counters(proxy.store, org, "alice"))["s_used"] > 0


async def test_small_bodies_and_unknown_keys_are_not_streamed(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "bob")
    for _ in range(2):
        assert (await proxy.post(key, message()))[0] == 200
    other = await proxy.member(org, "carol")  # never admitted in this process
    assert (await proxy.post(other, big()))[0] == 200
    assert await uploads(proxy) == {}


async def test_an_invalid_large_body_is_cut_off_before_the_api_has_it(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "dave")
    assert (await proxy.post(key, big()))[0] == 200
    before = len(proxy.mock.requests)
    raw = b'{"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": "' + b"x" * STREAM_FROM * 2
    h = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    async with proxy.session.post(proxy.url + "/v1/messages", data=raw, headers=h) as r:
        assert r.status == 400
        assert "not valid JSON" in (await r.json())["error"]["message"]
    assert await uploads(proxy) == {"cut": 1.0}
    await asyncio.sleep(0.1)
    assert len(proxy.mock.requests) == before  # the mock never read a whole request


async def test_a_changed_upstream_credential_sends_the_body_again_with_the_new_one(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_API_KEY_OTHER", "sk-ant-other")
    org = await proxy.org("team")
    key = await proxy.member(org, "erin")
    assert (await proxy.post(key, big()))[0] == 200
    status, doc = await proxy.admin(
        "PATCH", f"/admin/v1/orgs/{org}", json={"upstream_credential": "UPSTREAM_API_KEY_OTHER"}
    )
    assert status == 200, doc
    before = len(proxy.mock.requests)
    assert (await proxy.post(key, big()))[0] == 200
    assert await uploads(proxy) == {"resent": 1.0}
    await asyncio.sleep(0.1)
    assert len(proxy.mock.requests) == before + 1  # one whole request, with the new credential
    assert proxy.mock.requests[-1]["headers"]["x-api-key"] == "sk-ant-other"


class CountingUpstream:
    """A raw HTTP/1.1 upstream: answers a whole request with a Messages reply and records, for
    a connection closed mid-body, how many body bytes of how many it received."""

    def __init__(self) -> None:
        self.cut: list[tuple[int, int]] = []
        self.whole = 0
        self.drop_next = False  # close the next request's connection before its body
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(m[1]) if m else 0
                if self.drop_next:
                    self.drop_next = False
                    self.cut.append((0, length))
                    return
                got = 0
                while got < length:
                    chunk = await reader.read(min(65536, length - got))
                    if not chunk:
                        self.cut.append((got, length))
                        return
                    got += len(chunk)
                self.whole += 1
                reply = messages_reply(10, 5)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(reply), reply)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def counting_upstream() -> AsyncIterator[tuple[CountingUpstream, str]]:
    up = CountingUpstream()
    url = await up.start()
    yield up, url
    assert up.server is not None
    up.server.close()
    await up.server.wait_closed()


async def known_key(
    proxy_factory: ProxyFactory, up: CountingUpstream, url: str, member: str
) -> tuple[Proxy, str, str]:
    """A proxy in front of ``up``, and a key it has admitted once (proxy, org, key)."""
    proxy = await proxy_factory(upstream={"url": url})
    org = await proxy.org("team")
    key = await proxy.member(org, member)
    assert (await proxy.post(key, big()))[0] == 200
    assert up.whole == 1
    return proxy, org, key


async def cut_off(up: CountingUpstream) -> tuple[int, int]:
    """(bytes received, Content-Length) of the one request cut off mid-body."""
    for _ in range(100):  # the connection closes a moment after the answer
        if up.cut:
            break
        await asyncio.sleep(0.02)
    assert up.whole == 1  # no second whole request ever reached the API
    [(got, length)] = up.cut
    return got, length


async def post_in_halves(proxy: Proxy, key: str, body: bytes, *, finish: bool) -> bytes:
    """POST a body in two halves 0.2 s apart (or go away after the first); what came back."""
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: %b\r\nconnection: close\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % (key.encode(), len(body))
    )
    writer.write(body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.2)  # the first half is on its way upstream
    if not finish:
        writer.close()  # the client goes away mid-body
        return b""
    writer.write(body[len(body) // 2 :])
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_disabled_members_large_body_never_opens_an_upstream_request(
    proxy_factory: ProxyFactory, counting_upstream: tuple[CountingUpstream, str]
) -> None:
    up, url = counting_upstream
    proxy, org, key = await known_key(proxy_factory, up, url, "frank")
    status, doc = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/frank",
        json={"role": "member", "tier": "standard", "enabled": False},
    )
    assert status == 200, doc
    body = big(STREAM_FROM * 3)
    status, _, answer = await proxy.post(key, body)
    assert status == 403, answer
    # the key is checked in Redis before an upload opens: the API never saw this request
    await asyncio.sleep(0.1)
    assert (up.whole, up.cut) == (1, [])
    assert await uploads(proxy) == {}


async def test_an_upload_the_api_dropped_mid_body_is_sent_again_whole(
    proxy_factory: ProxyFactory, counting_upstream: tuple[CountingUpstream, str]
) -> None:
    up, url = counting_upstream
    proxy, org, key = await known_key(proxy_factory, up, url, "hank")
    up.drop_next = True
    answer = await post_in_halves(
        proxy, key, json.dumps(big(STREAM_FROM * 3)).encode(), finish=True
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert await uploads(proxy) == {"resent": 1.0}
    assert len(up.cut) == 1 and up.whole == 2  # the API ran it once, from the whole body
    assert len(await proxy.store.ledger(org)) == 2  # charged once


async def test_a_client_gone_mid_body_cuts_the_upload_and_charges_nothing(
    proxy_factory: ProxyFactory, counting_upstream: tuple[CountingUpstream, str]
) -> None:
    up, url = counting_upstream
    proxy, org, key = await known_key(proxy_factory, up, url, "gina")
    before = await member_counters(proxy.store, org, "gina")
    body = json.dumps(big(STREAM_FROM * 3)).encode()
    await post_in_halves(proxy, key, body, finish=False)
    got, length = await cut_off(up)
    assert 0 < got < length == len(body)
    assert await uploads(proxy) == {"cut": 1.0}
    assert await member_counters(proxy.store, org, "gina") == before  # nothing charged
    async with proxy.session.get(proxy.url + "/healthz") as r:
        assert r.status == 200  # the worker goes on
