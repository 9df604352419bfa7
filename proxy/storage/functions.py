"""How the product's Lua is called: as Redis Functions (FCALL of one library), or script by
script (EVALSHA) where the server has no functions (before Redis 7).

A script called with EVALSHA runs its whole text on every call: every function it defines is
made again (a closure, with its upvalues) and collected afterwards. A library is run once,
when it is loaded, and FCALL calls one of its functions: about 20,000 Redis instructions less
an admission (``bench/script_instructions.py``). Functions are kept by Redis like data (in
its RDB and AOF, and replicated), but a server that keeps nothing on disk forgets them when
it restarts: a call that finds its function missing loads the library and is sent again, as
a call that meets NOSCRIPT loads its script. A server that does not know FCALL (Redis 6) puts
the whole library in EVALSHA mode, once.

The same Lua runs either way (``proxy.storage.scripts``: ``library_source`` and
``script_source``), so the two modes cannot disagree.
"""

from __future__ import annotations

from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from proxy.storage.scripts import LIBRARY_PREFIX, SPECS, library_source, script_source


def _text(message: str) -> str:
    """An error reply without its "ERR " (redis-py takes it off; the raw reply has it)."""
    return message[4:] if message.startswith("ERR ") else message


def is_missing(message: str) -> bool:
    """A reply saying the script or function is not loaded (a restarted or flushed Redis)."""
    return message.startswith("NOSCRIPT") or _text(message).startswith("Function not found")


def is_unsupported(message: str) -> bool:
    """A reply saying the server has no FCALL or FUNCTION (before Redis 7)."""
    text = _text(message).lower()
    return text.startswith("unknown command") and ("fcall" in text or "function" in text)


class Library:
    """Every script of ``SPECS`` on one client: ``scripts[name]`` is what ``Store`` and the
    pipeliners call. ``functions``: FCALL (the default), or EVALSHA."""

    def __init__(self, client: Any, functions: bool = True) -> None:
        self.client = client
        self.functions = functions
        self.name, self.code = library_source()
        self.scripts = {name: LuaScript(self, name) for name in SPECS}

    def evalsha_only(self) -> None:
        """The server has no functions: every script is called with EVALSHA from now on."""
        self.functions = False
        for script in self.scripts.values():
            script.head = ("EVALSHA", script.sha)

    def load_commands(self) -> list[tuple[str, ...]]:
        """What loads every script: one FUNCTION LOAD, or a SCRIPT LOAD each."""
        if self.functions:
            return [("FUNCTION", "LOAD", "REPLACE", self.code)]
        return [("SCRIPT", "LOAD", s.source) for s in self.scripts.values()]

    async def load(self) -> None:
        """Load every script (at start: readiness). A server without FCALL (its FUNCTION
        LOAD is an unknown command) turns the library to EVALSHA."""
        if self.functions:
            try:
                await self.client.function_load(self.code, replace=True)
                return
            except ResponseError as exc:
                if not is_unsupported(str(exc)):
                    raise
                self.evalsha_only()
        for script in self.scripts.values():
            await self.client.script_load(script.source)

    async def libraries(self) -> list[str]:
        """The product's libraries on the server (on a cluster, on any master), this
        build's among them once it has loaded it: every version of the proxy that ran
        against it left its own (``prune``)."""
        reply = await self.client.function_list(library=f"{LIBRARY_PREFIX}*")
        names: set[str] = set()
        for entries in reply.values() if isinstance(reply, dict) else [reply]:
            for entry in entries or ():
                names.add(_library_name(entry))
        return sorted(names)

    async def prune(self) -> list[str]:
        """Delete the product's libraries other than this build's (the versions before a
        finished rollout: a proxy still running one would load it again on its next call);
        the names deleted."""
        gone = [name for name in await self.libraries() if name != self.name]
        for name in gone:
            try:
                await self.client.function_delete(name)
            except ResponseError as exc:  # a cluster master that never had it
                if "library not found" not in str(exc).lower():
                    raise
        return gone


def _library_name(entry: Any) -> str:
    """The name in one entry of FUNCTION LIST (a map, or RESP2's flat list of pairs)."""
    if isinstance(entry, dict):
        value = entry.get(b"library_name", entry.get("library_name", b""))
    else:
        pairs = dict(zip(entry[::2], entry[1::2], strict=True))
        value = pairs.get(b"library_name", pairs.get("library_name", b""))
    return value.decode() if isinstance(value, bytes) else str(value)


class LuaScript:
    """One script of the library: ``head`` is how a call of it begins (the pipeliners pack
    it); calling it (``await script(keys=..., args=...)``) goes through redis-py, loading
    what is missing once."""

    __slots__ = ("evalscript", "fname", "head", "library", "name", "source")

    def __init__(self, library: Library, name: str) -> None:
        self.library = library
        self.name = name
        self.fname = f"{library.name}_{name}"
        self.source = script_source(name)
        self.evalscript: AsyncScript = library.client.register_script(self.source)
        # ("FCALL", function) or ("EVALSHA", digest): what comes before the number of keys
        # (one tuple, kept: the pipeliner keys its packed heads by it on every call)
        self.head: tuple[str, str] = (
            ("FCALL", self.fname) if library.functions else ("EVALSHA", self.sha)
        )

    @property
    def sha(self) -> str:
        """The EVALSHA digest of the script on its own."""
        return str(self.evalscript.sha)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        library = self.library
        if library.functions:
            client = library.client
            try:
                return await client.fcall(self.fname, len(keys), *keys, *args)
            except ResponseError as exc:
                message = str(exc)
                if is_missing(message):
                    await client.function_load(library.code, replace=True)
                    return await client.fcall(self.fname, len(keys), *keys, *args)
                if not is_unsupported(message):
                    raise
                library.evalsha_only()
        # redis-py's Script loads the script on NOSCRIPT
        return await self.evalscript(keys=keys, args=args)
