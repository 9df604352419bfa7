"""Real servers for the tests: redis-server processes on free ports (see proxy.embedded)."""

from proxy.embedded import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
