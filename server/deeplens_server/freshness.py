"""Which tenants wrote vectors lately, so that only their reads pay for Milvus's Strong consistency.

A Strong read on a Milvus server waits for the proxy's next time tick (10-20 ms); a Bounded one does not, but
may miss writes younger than the server's ``common.gracefulTime``. A tenant that has written nothing for
longer than that loses nothing by reading Bounded. So each write marks its tenant in Redis (a key that
expires after ``window_ms``) before and after it reaches Milvus, and a read is Strong only while its tenant's
mark lives. Any process's completed write is seen by every later read of that tenant, as with Strong reads
throughout; tenants that are not being written search at Bounded cost.

``window_ms`` must exceed the Milvus server's ``gracefulTime`` (5,000 ms by default; 100 ms on the embedded
server) plus the clock skew between Redis and Milvus. When Redis cannot answer, reads are Strong.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deeplens_server.errors import Unavailable

PREFIX = "deeplens:vector-write:"


class WriteMarks:
    def __init__(self, redis: Redis, *, window_ms: int) -> None:
        self._redis = redis
        self._window_ms = window_ms

    async def wrote(self, tenant_ids: Iterable[str]) -> None:
        """Marks these tenants as written to now (call before and after each write)."""
        tenants = set(tenant_ids)
        if not tenants:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tenant_id in tenants:
                    pipe.set(PREFIX + tenant_id, b"1", px=self._window_ms)
                await pipe.execute()
        except (OSError, RedisError) as exc:
            raise Unavailable("the job queue is unavailable") from exc

    async def recent(self, tenant_id: str) -> bool:
        """Whether the tenant may have written within the window (true when Redis cannot tell)."""
        try:
            return bool(await self._redis.exists(PREFIX + tenant_id))
        except (OSError, RedisError):
            return True
