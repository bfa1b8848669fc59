"""Per-tenant progress events on Redis Streams (``deeplens:events:{tenant}``, capped with MAXLEN ~).

An event only says "operation X changed"; the state itself lives in PostgreSQL. A watcher therefore sends a
snapshot first, then re-reads the operation whenever its stream says so — nothing is lost if events are
trimmed or a watcher reconnects, because the snapshot is always authoritative.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deeplens_server.errors import Unavailable

if TYPE_CHECKING:
    from deeplens_server.operation_store import OperationRecord


def stream_key(tenant_id: str) -> str:
    return f"deeplens:events:{tenant_id}"


@dataclass(frozen=True, slots=True)
class OperationEvent:
    event_id: str
    operation_id: str
    state: int
    stage: str


def _text(value: object) -> str:
    """Redis replies are bytes unless the client decodes them; accept both."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class EventLog:
    def __init__(self, redis: Redis, *, maxlen: int) -> None:
        self._redis = redis
        self._maxlen = maxlen

    async def publish(self, tenant_id: str, operation_id: str, *, state: int, stage: str) -> str:
        try:
            event_id = await self._redis.xadd(
                stream_key(tenant_id),
                {"operation": operation_id, "state": str(state), "stage": stage},
                maxlen=self._maxlen,
                approximate=True,
            )
        except RedisError as exc:
            raise Unavailable("the event stream is unavailable") from exc
        return _text(event_id)

    async def announce(self, record: OperationRecord) -> str:
        """Says that ``record``'s operation changed (to its state and stage)."""
        return await self.publish(record.tenant_id, record.id, state=record.state, stage=record.stage)

    async def last_id(self, tenant_id: str) -> str:
        """The id of the newest event (``0-0`` if none): read it before a snapshot, then tail from it."""
        try:
            newest = await self._redis.xrevrange(stream_key(tenant_id), count=1)
        except RedisError as exc:
            raise Unavailable("the event stream is unavailable") from exc
        if not newest:
            return "0-0"
        event_id = newest[0][0]
        return _text(event_id)

    async def trimmed_past(self, tenant_id: str, event_id: str) -> bool:
        """Whether events after ``event_id`` may have been trimmed away (the oldest kept is newer)."""
        try:
            oldest = await self._redis.xrange(stream_key(tenant_id), count=1)
        except RedisError as exc:
            raise Unavailable("the event stream is unavailable") from exc
        if not oldest:
            return False
        first = _text(oldest[0][0])
        return _key(first) > _key(event_id) and _key(event_id) != (0, 0)

    async def tail(self, tenant_id: str, after: str, *, block_ms: int) -> AsyncIterator[list[OperationEvent]]:
        """Yields batches of events after ``after``; an empty batch when ``block_ms`` passed with none."""
        key = stream_key(tenant_id)
        cursor = after
        while True:
            try:
                reply = await self._redis.xread({key: cursor}, block=block_ms, count=256)
            except RedisError as exc:
                raise Unavailable("the event stream is unavailable") from exc
            batch: list[OperationEvent] = []
            for _key, entries in reply or []:
                for raw_id, fields in entries:
                    cursor = _text(raw_id)
                    decoded = {_text(k): _text(v) for k, v in fields.items()}
                    batch.append(OperationEvent(cursor, decoded["operation"], int(decoded["state"]), decoded["stage"]))
            yield batch
