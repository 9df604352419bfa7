from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import fakeredis
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from proxy.config import Config, parse_config
from proxy.http.app import build_app
from proxy.http.appkeys import CONFIG, METER, STORE
from proxy.http.server import ProxyRunner
from proxy.ledger.db import LedgerDB
from proxy.storage.store import Store
from proxy.tools.mock_upstream import MockUpstream, build_mock_app
from tests.servers import PostgresServer, RedisServer

OPERATOR = "operator-test-token"
SERVICE = "service-test-token"
UPSTREAM_KEY = "sk-ant-upstream-test"
_org_ids = itertools.count(1)
# where the proxies under test journal usage Redis could not take: never the working tree,
# and a folder per proxy (a proxy replays every journal it finds in its folder)
JOURNALS = tempfile.mkdtemp(prefix="eup-test-journals-")
atexit.register(shutil.rmtree, JOURNALS, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the module's own (a module may stop and start it)."""
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture
async def db(postgres: PostgresServer) -> AsyncIterator[LedgerDB]:
    ledger = await LedgerDB.connect(postgres.url)
    await ledger.migrate()
    yield ledger
    await ledger.close()


def make_config(redis_url: str, upstream_url: str, **sections: dict[str, Any]) -> Config:
    doc: dict[str, Any] = {
        "redis": {"url": redis_url},
        "upstream": {"url": upstream_url, "read_timeout_s": 30},
        "policy": {"reservation_ttl_s": 60, "journal_dir": tempfile.mkdtemp(dir=JOURNALS)},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    env = {"OPERATOR_TOKEN": OPERATOR, "SERVICE_TOKEN": SERVICE, "UPSTREAM_API_KEY": UPSTREAM_KEY}
    return parse_config(doc, "<test>", env)


@dataclass
class Proxy:
    """A running proxy (real aiohttp server, real Redis) in front of a mock Messages API."""

    server: TestServer
    mock: MockUpstream
    mock_server: TestServer
    session: aiohttp.ClientSession
    config: Config
    orgs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def settled(self) -> None:
        """Wait for what settlements do after the answer: metrics, logs, auto-reloads."""
        await self.server.app[METER].drain()  # type: ignore[union-attr]

    async def mock_server_close(self) -> None:
        await self.mock_server.close()

    @property
    def store(self) -> Store:
        return self.server.app[STORE]  # type: ignore[union-attr]

    async def admin(
        self, method: str, path: str, token: str = OPERATOR, json: Any = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=json, headers={"authorization": f"Bearer {token}"}
        ) as r:
            body = await r.json(content_type=None)
            return r.status, body

    async def org(self, plan: str = "team", **settings: Any) -> str:
        org = f"org{next(_org_ids)}-{plan}"
        status, body = await self.admin(
            "POST", "/admin/v1/orgs", json={"id": org, "name": org, "plan": plan}
        )
        assert status == 201, body
        if settings:
            k = self.store.keys(org)
            await self.store.client.hset(k.org, mapping=settings)
        return org

    async def member(
        self, org: str, member: str, tier: str = "standard", role: str = "member"
    ) -> str:
        status, body = await self.admin(
            "PUT", f"/admin/v1/orgs/{org}/members/{member}", json={"role": role, "tier": tier}
        )
        assert status in (200, 201), body
        status, body = await self.admin("POST", f"/admin/v1/orgs/{org}/members/{member}/keys")
        assert status == 201, body
        return str(body["key"])

    async def post(
        self,
        key: str,
        body: dict[str, Any],
        *,
        path: str = "/v1/messages",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        h = {"x-api-key": key, "anthropic-version": "2023-06-01", **(headers or {})}
        async with self.session.post(self.url + path, json=body, headers=h) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[TestServer, MockUpstream]:
    mock = MockUpstream()
    server = await aiohttp_server(build_mock_app(mock))
    return server, mock


ProxyFactory = Callable[..., Awaitable[Proxy]]


class ProxyTestServer(TestServer):
    """A test server on the runner ``serve`` uses (its answer to unparseable requests)."""

    async def _make_runner(self, **kwargs: Any) -> ProxyRunner:
        config = self.app[CONFIG]
        # as serve runs it: aiohttp's TestServer cancels a handler whose client goes away,
        # the proxy's server does not (the handler itself decides what a departure means)
        kwargs.pop("handler_cancellation", None)
        return ProxyRunner(self.app, header_timeout_s=config.server.header_timeout_s, **kwargs)


@pytest.fixture
async def proxy_factory(
    redis_server: RedisServer, upstream: tuple[TestServer, MockUpstream]
) -> AsyncIterator[ProxyFactory]:
    """Start proxies (sharing one Redis and one mock upstream) with config overrides."""
    up_server, mock = upstream
    sessions: list[aiohttp.ClientSession] = []
    servers: list[TestServer] = []

    async def make(backend: str = "redis-server", **sections: dict[str, Any]) -> Proxy:
        config = make_config(redis_server.url, str(up_server.make_url("")).rstrip("/"), **sections)
        client = fakeredis.FakeAsyncRedis() if backend == "in-process" else None
        server = ProxyTestServer(build_app(config, redis_client=client))
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sessions.append(session)
        return Proxy(server, mock, up_server, session, config)

    yield make
    for session in sessions:
        await session.close()
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory) -> Proxy:
    return await proxy_factory()


def messages_reply(input_tokens: int, output_tokens: int) -> bytes:
    """A non-streaming Messages API answer, as the API sends it."""
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    )


def message(
    model: str = "claude-sonnet-4-5",
    max_tokens: int = 100,
    stream: bool = False,
    text: str = "Hello",
) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }
