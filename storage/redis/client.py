"""One Redis connection pool per backend, its Lua scripts, and error translation."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..base import StorageUnavailable

SCRIPTS = ("create", "commit", "declare", "transition", "acquire", "renew", "release",
           "leader", "retry", "dead", "due")


def info_key(upload_id: str) -> str:
    # The {id} hash tag keeps an upload's keys in one Cluster slot.
    return f"tus:{{{upload_id}}}:info"


def epoch_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:epoch"


def lock_key(upload_id: str) -> str:
    return f"tus:{{{upload_id}}}:lock"


EXPIRY = "tus:expiry"
STREAM = "tus:completed"
DEAD = "tus:dead"
RETRY = "tus:retry"
GROUP = "processors"
RELEASE_CHANNEL = "tus:release"  # message: an upload id whose holder should let go
RELEASED_CHANNEL = "tus:released"  # message: an upload id that was just unlocked
HEARTBEAT_PREFIX = "tus:instance:"


_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)


def connect(url: str) -> aioredis.Redis:
    """redis://, rediss://, unix:// or redis+sentinel://[:pw@]h1:p1,h2:p2/master[/db]."""
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for hostport in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, sep, port = hostport.rpartition(":")
            if not sep:
                host, port = hostport, ""
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a Sentinel URL needs the master name: redis+sentinel://h:p/name")
        password = unquote(parts.password) if parts.password else None
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, socket_timeout=5,  # type: ignore[no-untyped-call]
                            password=password)
        master: aioredis.Redis = sentinel.master_for(path[0], db=db, password=password,
                                                     socket_timeout=10)
        return master
    # A pooled connection that sat idle across a Redis restart fails once: retry it. Every
    # write is a compare-and-set script, so a retry after a lost reply cannot apply twice.
    return aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5,
                                   health_check_interval=15, retry=_RETRY)


class RedisConnection:
    """The client plus the registered scripts; every call maps outages to StorageUnavailable."""

    def __init__(self, url: str, instance: str | None = None) -> None:
        self.url = url
        # Typed as Any: redis-py's response types are unions of every reply shape.
        self.client: Any = connect(url)
        # Identifies this process in lock owners and heartbeats.
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.scripts: dict[str, Any] = {
            name: self.client.register_script(
                resources.files(__package__).joinpath("lua", f"{name}.lua").read_text())
            for name in SCRIPTS
        }

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        async with unavailable_on_outage():
            return await self.scripts[script](keys=keys, args=args)

    async def aclose(self) -> None:
        await self.client.aclose()


@asynccontextmanager
async def unavailable_on_outage() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StorageUnavailable(f"redis unavailable: {exc}") from exc
