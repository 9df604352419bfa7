"""The API client (proxy/upstream.py) against real sockets: a scripted raw HTTP/1.1 server
for framing, failures and timing, and a real aiohttp server for what it must interoperate
with."""

from __future__ import annotations

import asyncio
import gzip
import re
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from proxy.upstream.client import Upstream, UpstreamError, UpstreamTimeout
from tests.conftest import ProxyFactory, message, messages_reply

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Raw"], Awaitable[None]]


class Raw:
    """A raw HTTP/1.1 server: ``script`` answers each connection; heads and connections
    are recorded."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heads: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        return await reader.readexactly(int(m[1])) if m else b""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(reader, writer, self)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the test is over
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[Script], Awaitable[tuple[Raw, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[Raw, str]:
        r = Raw(script)
        server = await asyncio.start_server(r._serve, "127.0.0.1", 0)
        servers.append(server)
        return r, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


def reply(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n" + "".join(
        f"{h}\r\n" for h in extra
    )
    return head.encode() + b"\r\n" + body


def answer_each(body: bytes, *extra: str) -> Script:
    """Every request on a connection gets ``reply(body, *extra)``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        while True:
            await r.read_request(reader)
            writer.write(reply(body, *extra))
            await writer.drain()

    return script


def answer_once(*parts: bytes, pause: float = 0.0) -> Script:
    """The first request gets ``parts`` as they are (``pause`` seconds between them), then
    the connection closes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        await r.read_request(reader)
        for i, part in enumerate(parts):
            if i:
                await writer.drain()
                await asyncio.sleep(pause)
            writer.write(part)

    return script


async def test_connections_are_kept_alive_and_reused(raw: Any) -> None:
    server, url = await raw(answer_each(b"ok"))
    up = Upstream(url + "/prefix")
    for _ in range(3):
        resp = await up.request("POST", "/v1/messages?beta=true", [("a", "1")], b"{}")
        assert (resp.status, await resp.read()) == (200, b"ok")
        resp.release()
    assert server.connections == 1
    port = url.rsplit(":", 1)[1]
    assert server.heads[0] == (
        b"POST /prefix/v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:"
        + port.encode()
        + b"\r\na: 1\r\nContent-Length: 2\r\n\r\n"
    )
    await up.close()


async def test_connection_close_and_unread_bodies_are_not_reused(raw: Any) -> None:
    server, url = await raw(answer_each(b"ok", "Connection: close"))
    up = Upstream(url)
    for _ in range(2):
        resp = await up.request("GET", "/v1/models", [], None)
        assert await resp.read() == b"ok"
        resp.release()
    assert server.connections == 2
    assert server.heads[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert b"content-length" not in server.heads[0].lower()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        while True:
            await r.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            await asyncio.sleep(0.05)
            writer.write(b"cd")

    server2, url2 = await raw(slow_body)
    up2 = Upstream(url2)
    for _ in range(2):
        resp = await up2.request("POST", "/v1/messages", [], b"")
        resp.release()  # the body was not read: the connection cannot be reused
    assert server2.connections == 2
    assert up2.open == 0
    await up.close()
    await up2.close()


async def test_gzip_and_deflate_bodies_arrive_decoded(raw: Any) -> None:
    doc = b'{"usage": {"input_tokens": 3}}' * 100
    for encoding, data in (("gzip", gzip.compress(doc)), ("deflate", zlib.compress(doc))):
        _, url = await raw(answer_each(data, f"Content-Encoding: {encoding}"))
        up = Upstream(url)
        resp = await up.request("POST", "/", [], b"")
        assert "content-encoding" not in resp.headers
        assert "content-length" not in resp.headers
        assert await resp.read() == doc
        resp.release()
        await up.close()


async def test_a_body_delimited_by_the_close_is_complete(raw: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    _, url = await raw(answer_once(head + b"part one, ", b"part two", pause=0.05))
    up = Upstream(url)
    resp = await up.request("POST", "/", [], b"")
    assert await resp.read() == b"part one, part two"
    resp.release()
    await up.close()


async def test_a_body_cut_short_is_an_error(raw: Any) -> None:
    _, url = await raw(answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some"))
    up = Upstream(url)
    resp = await up.request("POST", "/", [], b"")
    with pytest.raises(UpstreamError):
        await resp.read()
    resp.release()
    assert up.open == 0
    await up.close()


async def test_silence_times_out_and_a_refused_connect_fails(raw: Any) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        await r.read_request(reader)
        await asyncio.sleep(5)

    _, url = await raw(silent)
    up = Upstream(url, read_timeout_s=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await up.request("POST", "/", [], b"")
    assert 0.19 <= loop.time() - t0 < 2
    await up.close()

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    gone = Upstream(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamError, match="could not be reached"):
        await gone.request("POST", "/", [], b"")
    assert gone.open == 0


async def test_the_read_timeout_counts_silences_not_the_whole_stream(raw: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    # 0.7 s in all, never 0.3 s of silence
    _, url = await raw(answer_once(head, *[b"1\r\n.\r\n"] * 6, b"0\r\n\r\n", pause=0.1))
    up = Upstream(url, read_timeout_s=0.3)
    resp = await up.request("POST", "/", [], b"")
    got = [chunk async for chunk in resp.chunks()]
    assert b"".join(got) == b"......" and len(got) >= 3  # handed over as they came
    resp.release()
    await up.close()


async def test_interim_responses_are_skipped(raw: Any) -> None:
    _, url = await raw(answer_once(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"done")))
    up = Upstream(url)
    resp = await up.request("POST", "/", [], b"x")
    assert (resp.status, await resp.read()) == (200, b"done")
    resp.release()
    await up.close()


async def test_the_connection_limit_queues_requests(raw: Any) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        while True:
            await r.read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(reply(b"ok"))

    server, url = await raw(script)
    up = Upstream(url, max_connections=2)

    async def one() -> bytes:
        resp = await up.request("POST", "/", [], b"")
        try:
            return await resp.read()
        finally:
            resp.release()

    assert await asyncio.gather(*[one() for _ in range(10)]) == [b"ok"] * 10
    assert server.most_open == 2
    await up.close()


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(raw: Any) -> None:
    server, url = await raw(answer_each(b"ok"))
    up = Upstream(url)
    for value in ("k\r\nx-evil: 1", "k\rx-evil: 1", "k\nx-evil: 1"):
        with pytest.raises(UpstreamError, match="line break"):
            await up.request("POST", "/", [("x-api-key", value)], b"")
    assert server.connections == 0
    await up.close()


async def test_an_idle_connection_the_server_closed_is_not_reused(raw: Any) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        await r.read_request(reader)
        writer.write(reply(b"ok"))  # keep-alive announced, then closed anyway
        await writer.drain()

    server, url = await raw(once)
    up = Upstream(url)
    for _ in range(2):
        resp = await up.request("POST", "/", [], b"")
        assert await resp.read() == b"ok"
        resp.release()
        await asyncio.sleep(0.05)  # the server's close arrives while idle
    assert server.connections == 2
    await up.close()


async def test_a_response_to_no_request_closes_the_connection(raw: Any) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: Raw) -> None:
        await r.read_request(reader)
        writer.write(reply(b"first"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(reply(b"nobody asked"))  # out of step: on a kept-alive connection
        await asyncio.sleep(5)

    server, url = await raw(chatty)
    up = Upstream(url)
    resp = await up.request("POST", "/", [], b"")
    assert await resp.read() == b"first"
    resp.release()
    await asyncio.sleep(0.2)
    assert up.open == 0  # dropped, never handed to the next request
    resp = await up.request("POST", "/", [], b"")
    assert await resp.read() == b"first"
    resp.release()
    assert server.connections == 2
    await up.close()


async def test_a_slow_reader_pauses_the_connection_and_loses_nothing(aiohttp_server: Any) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(block)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    up = Upstream(str(server.make_url("")).rstrip("/"))
    resp = await up.request("POST", "/", [], b"")
    await asyncio.sleep(0.3)  # nobody reads: the connection stops reading
    assert resp._conn._paused
    data = b"".join([chunk async for chunk in resp.chunks()])
    assert data == block * 8
    resp.release()
    assert len(up.idle) == 1  # read to its end: kept
    await up.close()


async def test_the_proxy_charges_a_gzip_answer_and_forwards_it_decoded(
    raw: Any, proxy_factory: ProxyFactory
) -> None:
    doc = messages_reply(1000, 200)
    server, url = await raw(
        answer_each(gzip.compress(doc), "Content-Encoding: gzip", "Content-Type: application/json")
    )
    proxy = await proxy_factory(upstream={"url": url})
    org = await proxy.org("team")
    key = await proxy.member(org, "gz")
    async with proxy.session.post(
        proxy.url + "/v1/messages",
        headers={"x-api-key": key},
        json=message(),
        auto_decompress=False,
    ) as resp:
        assert resp.status == 200
        assert "content-encoding" not in resp.headers
        assert await resp.read() == doc
    assert b"accept-encoding" not in server.heads[0].lower()  # the proxy asks for none
    [row] = await proxy.store.ledger(org)
    assert int(row["cost"]) == 1000 * 3000 + 200 * 15000


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1: (certificate, key) paths."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", key, "-out", cert, "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_is_verified_against_the_trusted_authorities(
    aiohttp_server: Any, certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls: " + await request.read())

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = await aiohttp_server(app, ssl=context)
    url = f"https://localhost:{server.port}"

    untrusted = Upstream(url)  # the system's authorities do not know this certificate
    with pytest.raises(UpstreamError, match=r"could not be reached.*CERTIFICATE_VERIFY_FAILED"):
        await untrusted.request("POST", "/v1/messages", [], b"hi")
    assert untrusted.open == 0

    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])  # now it is a trusted authority
    up = Upstream(url)
    for _ in range(2):
        resp = await up.request("POST", "/v1/messages", [], b"hi")
        assert (resp.status, await resp.read()) == (200, b"over tls: hi")
        resp.release()
    assert up.open == 1  # kept alive over TLS too
    await up.close()
