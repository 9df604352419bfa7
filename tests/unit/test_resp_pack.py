"""RESP encoding of script calls: byte-identical to redis-py's packer for every argument kind."""

from __future__ import annotations

import pytest
from redis.connection import PythonRespSerializer

from proxy.storage.pipelining import CallPacker, pack


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


KEYS = ("eup:{acme}:org", "eup:{acme}:members", "eup:{acme}:op:req_1")


@pytest.mark.parametrize(
    ("args", "tail"),
    [
        (("req_1", "k", "f" * 64, 123456789, 0), ("estimate", 3600, "0", "1", ";standard,1,2")),
        (("req_2", -42, "clé", "漢字 🙂"), (0, 86400, "proxy")),
        (("req_3",), ()),
        ((), ("1", "")),
        (("", "\r\n inside", 10**15), ("0",)),
    ],
)
def test_call_packer_matches_one_pack_of_the_whole_command(
    args: tuple[str | int, ...], tail: tuple[str | int, ...]
) -> None:
    packer = CallPacker()
    sha = ("EVALSHA", "a" * 40)
    whole = reference((*sha, len(KEYS), *KEYS, *args, *tail))
    assert packer(sha, KEYS, args, tail) == whole
    assert packer(sha, KEYS, args, tail) == whole  # from the kept head and tail
    assert packer(("EVALSHA", "b" * 40), KEYS, args, tail) != whole  # another script
    fcall = ("FCALL", "eup_0123456789ab_admit")
    assert packer(fcall, KEYS, args, tail) == reference((*fcall, len(KEYS), *KEYS, *args, *tail))
    # the last key the call's own: packed per call, the head kept without it
    assert packer(sha, KEYS, args, tail, own=1) == whole
    other = (*KEYS[:-1], "eup:{acme}:op:req_2")
    assert packer(sha, other, args, tail, own=1) == reference(
        (*sha, len(other), *other, *args, *tail)
    )
    assert (sha, KEYS[:-1]) in packer.heads and (sha, other) not in packer.heads


def test_call_packer_keeps_a_bounded_number_of_heads_and_tails() -> None:
    packer = CallPacker()
    packer.LIMIT = 3
    for org in range(10):
        keys = (f"eup:{{o{org}}}:org",)
        for pinned in range(5):
            got = packer(("EVALSHA", "a" * 40), keys, ("req",), (pinned, "proxy"))
            assert got == reference(("EVALSHA", "a" * 40, 1, *keys, "req", pinned, "proxy"))
            assert len(packer.heads) <= 3 and len(packer.tails) <= 3
