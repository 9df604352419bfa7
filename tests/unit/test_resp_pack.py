"""RESP encoding of script calls: byte-identical to redis-py's packer for every argument kind."""

from __future__ import annotations

import pytest
from redis.connection import PythonRespSerializer

from proxy.pipelining import pack


def _encode(value: str | int | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def reference(args: tuple[str | int | bytes, ...]) -> bytes:
    return b"".join(PythonRespSerializer(6000, _encode).pack(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "a" * 40, 5, "eup:{acme}:org", "req_1", 0, -42, 10**15),
        ("SET", "clé", "漢字 and emoji 🙂"),
        ("SCRIPT", "LOAD", b"return 1"),
        ("X", "", b"", "\r\n inside"),
    ],
)
def test_pack_matches_redis_py(args: tuple[str | int | bytes, ...]) -> None:
    assert pack(args) == reference(args)
