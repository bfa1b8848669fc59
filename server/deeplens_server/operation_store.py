"""Long-running operations and their items in PostgreSQL.

An operation holds ``total`` items. An item leaves PENDING exactly once — succeeded, failed, dead (transient
failures exhausted its retries) or cancelled — and in the same transaction its operation's counters move and,
for the last item, the operation ends. A job delivered twice finds its item no longer pending and changes
nothing, so counts stay exact whatever crashes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from deeplens_server import model_pointer
from deeplens_server import operations as op_states
from deeplens_server.db import ScopedPool, scoped
from deeplens_server.duplicate_store import LateMatcher, store_image
from deeplens_server.duplicates import Match
from deeplens_server.errors import FailedPrecondition, NotFound
from deeplens_server.repository import ImageRecord


@dataclass(frozen=True, slots=True)
class OperationRecord:
    tenant_id: str
    id: str
    kind: str
    state: int
    stage: str
    total: int
    processed: int
    succeeded: int
    failed: int
    duplicates: int
    request_id: str | None
    payload: dict[str, Any]
    response: bytes | None
    error: bytes | None
    create_time: datetime
    update_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    paused: bool
    cancel_requested: bool
    generation: int


@dataclass(frozen=True, slots=True)
class ItemRecord:
    tenant_id: str
    operation_id: str
    item: int
    state: int
    source: dict[str, Any]
    error: bytes | None
    update_time: datetime


def _operation(row: Any) -> OperationRecord:
    return OperationRecord(**{k: row[k] for k in OperationRecord.__dataclass_fields__})


def _item(row: Any) -> ItemRecord:
    fields = {k: row[k] for k in ItemRecord.__dataclass_fields__}
    fields["error"] = bytes(fields["error"]) if fields["error"] is not None else None
    return ItemRecord(**fields)


async def _lock(conn: asyncpg.Connection, tenant_id: str, operation_id: str) -> asyncpg.Record:
    """The operation's row, locked for the rest of the transaction."""
    op = await conn.fetchrow(
        "SELECT * FROM operations WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant_id, operation_id
    )
    if op is None:
        raise _not_found(tenant_id, operation_id)
    return op


def _complete(record: OperationRecord) -> bool:
    """All items are counted, and no listing (a storage scan) may still add more."""
    return record.end_time is None and record.processed >= record.total and not record.payload.get("listing")


def _not_found(tenant_id: str, operation_id: str) -> NotFound:
    return NotFound("operation", f"tenants/{tenant_id}/operations/{operation_id}", reason="OPERATION_NOT_FOUND")


# Decides how a finished operation ends: (state, response, error) from its final counters.
Outcome = Callable[[OperationRecord, bytes | None], tuple[int, bytes | None, bytes | None]]


class OperationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._db = ScopedPool(pool)

    async def create(
        self,
        tenant_id: str,
        operation_id: str,
        *,
        kind: str,
        items: Sequence[tuple[int, dict[str, Any], bytes | None]],
        payload: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> tuple[OperationRecord, bool]:
        """Inserts an operation with its items — (state, source, error) each; items already failed at the door
        count as processed. With a ``request_id`` seen before, returns the earlier operation and False."""
        done = [s for s, _, _ in items if s != op_states.ITEM_PENDING]
        async with scoped(self._pool, tenant_id) as conn:
            row = await conn.fetchrow(
                "INSERT INTO operations (tenant_id, id, kind, state, total, processed, failed, payload, request_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8) "
                "ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING *",
                tenant_id,
                operation_id,
                kind,
                op_states.PENDING,
                len(items),
                len(done),
                payload or {},
                request_id,
            )
            if row is None:
                existing = await conn.fetchrow(
                    "SELECT * FROM operations WHERE tenant_id = $1 AND request_id = $2", tenant_id, request_id
                )
                assert existing is not None
                return _operation(existing), False
            await conn.executemany(
                "INSERT INTO operation_items (tenant_id, operation_id, item, state, source, error) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(tenant_id, operation_id, n, s, src, err) for n, (s, src, err) in enumerate(items)],
            )
            return _operation(row), True

    async def create_reindex(
        self, tenant_id: str, operation_id: str, *, target: str, default_model: str
    ) -> OperationRecord:
        """Starts a re-index to ``target``: in one transaction, marks the tenant's pointer (under its row lock,
        so every image stored before is in this snapshot and every image stored after is embedded with the
        target too) and creates the operation with one item per image the tenant holds."""
        async with scoped(self._pool, tenant_id) as conn:
            models = await model_pointer.begin_reindex(conn, tenant_id, target, operation_id, default_model)
            row = await conn.fetchrow(
                "INSERT INTO operations (tenant_id, id, kind, state, total, payload) "
                "VALUES ($1, $2, $3, $4, (SELECT count(*) FROM images WHERE tenant_id = $1), $5) RETURNING *",
                tenant_id,
                operation_id,
                op_states.KIND_REINDEX,
                op_states.PENDING,
                {"model": target, "previous_model": models.active},
            )
            await conn.execute(
                "INSERT INTO operation_items (tenant_id, operation_id, item, state, source) "
                "SELECT $1, $2, (row_number() OVER (ORDER BY collection_id, image_id)) - 1, $3, "
                "jsonb_build_object('collection_id', collection_id, 'image_id', image_id) "
                "FROM images WHERE tenant_id = $1",
                tenant_id,
                operation_id,
                op_states.ITEM_PENDING,
            )
            record = _operation(row)
            if _complete(record):  # nothing to embed: the switch is immediate
                record = await self._end(conn, record, op_states.reindex_outcome, None)
            return record

    async def get(self, tenant_id: str, operation_id: str) -> OperationRecord:
        row = await self._db.fetchrow(
            tenant_id, "SELECT * FROM operations WHERE tenant_id = $1 AND id = $2", tenant_id, operation_id
        )
        if row is None:
            raise _not_found(tenant_id, operation_id)
        return _operation(row)

    async def list_recent(
        self, tenant_id: str, *, states: Sequence[int], after: str | None, limit: int
    ) -> list[OperationRecord]:
        """Newest first; ``after`` is the last id of the previous page."""
        rows = await self._db.fetch(
            tenant_id,
            "SELECT * FROM operations WHERE tenant_id = $1 AND (cardinality($2::smallint[]) = 0 OR state = ANY($2)) "
            "AND ($3::text IS NULL OR (create_time, id) < "
            "(SELECT create_time, id FROM operations WHERE tenant_id = $1 AND id = $3)) "
            "ORDER BY create_time DESC, id DESC LIMIT $4",
            tenant_id,
            list(states),
            after,
            limit,
        )
        return [_operation(r) for r in rows]

    async def item(self, tenant_id: str, operation_id: str, item: int) -> ItemRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "SELECT * FROM operation_items WHERE tenant_id = $1 AND operation_id = $2 AND item = $3",
            tenant_id,
            operation_id,
            item,
        )
        if row is None:
            raise _not_found(tenant_id, operation_id)
        return _item(row)

    async def items(
        self, tenant_id: str, operation_id: str, *, states: Sequence[int], after: int, limit: int
    ) -> list[ItemRecord]:
        rows = await self._db.fetch(
            tenant_id,
            "SELECT * FROM operation_items WHERE tenant_id = $1 AND operation_id = $2 AND state = ANY($3) "
            "AND item > $4 ORDER BY item LIMIT $5",
            tenant_id,
            operation_id,
            list(states),
            after,
            limit,
        )
        return [_item(r) for r in rows]

    async def pending_of(self, tenant_id: str, operation_id: str, numbers: Sequence[int]) -> list[ItemRecord]:
        """Those of the items ``numbers`` still pending."""
        rows = await self._db.fetch(
            tenant_id,
            "SELECT * FROM operation_items WHERE tenant_id = $1 AND operation_id = $2 AND item = ANY($3) "
            "AND state = $4 ORDER BY item",
            tenant_id,
            operation_id,
            list(numbers),
            op_states.ITEM_PENDING,
        )
        return [_item(r) for r in rows]

    async def pending_items(self, tenant_id: str, operation_id: str) -> list[int]:
        rows = await self._db.fetch(
            tenant_id,
            "SELECT item FROM operation_items WHERE tenant_id = $1 AND operation_id = $2 AND state = $3 ORDER BY item",
            tenant_id,
            operation_id,
            op_states.ITEM_PENDING,
        )
        return [r["item"] for r in rows]

    async def mark_running(self, tenant_id: str, operation_id: str, stage: str) -> OperationRecord:
        row = await self._db.fetchrow(
            tenant_id,
            "UPDATE operations SET state = $3, stage = $4, start_time = coalesce(start_time, now()), "
            "update_time = now() WHERE tenant_id = $1 AND id = $2 AND end_time IS NULL RETURNING *",
            tenant_id,
            operation_id,
            op_states.RUNNING,
            stage,
        )
        return _operation(row) if row is not None else await self.get(tenant_id, operation_id)

    async def finish_item(
        self,
        tenant_id: str,
        operation_id: str,
        item: int,
        *,
        state: int,
        outcome: Outcome,
        error: bytes | None = None,
        image: ImageRecord | None = None,
        matches: Sequence[Match] = (),
        late_matches: LateMatcher | None = None,
        embedded_under: int | None = None,
    ) -> tuple[OperationRecord, bool]:
        """Moves a pending item to ``state`` and counts it; returns the operation and whether this call
        counted (False: the item had already left PENDING — a re-delivery). ``image`` and its duplicate
        ``matches`` (plus ``late_matches``' under the tenant's lock) are stored only then, in the same
        transaction. ``embedded_under`` is the tenant's model generation the image was embedded under: if a
        re-index started or switched since, nothing is stored and MODEL_CHANGED (retryable) is raised."""
        async with scoped(self._pool, tenant_id) as conn:
            op = await _lock(conn, tenant_id, operation_id)
            if image is not None and embedded_under is not None:
                await model_pointer.check_generation(conn, tenant_id, embedded_under)
            moved = await conn.fetchval(
                "UPDATE operation_items SET state = $4, error = $5, update_time = now() "
                "WHERE tenant_id = $1 AND operation_id = $2 AND item = $3 AND state = $6 RETURNING item",
                tenant_id,
                operation_id,
                item,
                state,
                error,
                op_states.ITEM_PENDING,
            )
            if moved is None:
                return _operation(op), False
            duplicate = image is not None and await store_image(conn, image, matches, late_matches)
            row = await conn.fetchrow(
                "UPDATE operations SET processed = processed + 1, succeeded = succeeded + $3, failed = failed + $4, "
                "duplicates = duplicates + $5, update_time = now() WHERE tenant_id = $1 AND id = $2 RETURNING *",
                tenant_id,
                operation_id,
                int(state == op_states.ITEM_SUCCEEDED),
                int(state in (op_states.ITEM_FAILED, op_states.ITEM_DEAD)),
                int(duplicate),
            )
            record = _operation(row)
            if _complete(record):
                record = await self._end(conn, record, outcome, error)
            return record, True

    async def finish_items(
        self, tenant_id: str, operation_id: str, results: Sequence[tuple[int, int, bytes | None]], *, outcome: Outcome
    ) -> OperationRecord:
        """Moves pending items to their states — (item, state, error) each — and counts them, in one
        transaction; items no longer pending (a re-delivery) are skipped."""
        async with scoped(self._pool, tenant_id) as conn:
            op = await _lock(conn, tenant_id, operation_id)
            moved = await conn.fetch(
                "UPDATE operation_items i SET state = r.state, error = r.error, update_time = now() "
                "FROM unnest($3::int[], $4::int[], $5::bytea[]) AS r(item, state, error) "
                "WHERE i.tenant_id = $1 AND i.operation_id = $2 AND i.item = r.item AND i.state = $6 "
                "RETURNING i.state",
                tenant_id,
                operation_id,
                [r[0] for r in results],
                [r[1] for r in results],
                [r[2] for r in results],
                op_states.ITEM_PENDING,
            )
            if not moved:
                return _operation(op)
            states = [m["state"] for m in moved]
            row = await conn.fetchrow(
                "UPDATE operations SET processed = processed + $3, succeeded = succeeded + $4, failed = failed + $5, "
                "update_time = now() WHERE tenant_id = $1 AND id = $2 RETURNING *",
                tenant_id,
                operation_id,
                len(states),
                sum(st == op_states.ITEM_SUCCEEDED for st in states),
                sum(st in op_states.ITEM_FAILED_STATES for st in states),
            )
            record = _operation(row)
            if _complete(record):
                record = await self._end(conn, record, outcome, None)
            return record

    async def add_items(
        self,
        tenant_id: str,
        operation_id: str,
        items: Sequence[dict[str, Any]],
        *,
        payload: dict[str, Any],
        outcome: Outcome,
    ) -> tuple[OperationRecord, list[int]]:
        """Appends pending items to an operation whose listing just ended (clearing ``listing``) and returns
        their numbers; an operation left with nothing to do ends here."""
        async with scoped(self._pool, tenant_id) as conn:
            op = await _lock(conn, tenant_id, operation_id)
            record = _operation(op)
            if not record.payload.get("listing") or record.end_time is not None:
                return record, []  # a re-delivered listing job: the items are already there
            first = record.total
            numbers = list(range(first, first + len(items)))
            await conn.executemany(
                "INSERT INTO operation_items (tenant_id, operation_id, item, state, source) "
                "VALUES ($1, $2, $3, $4, $5)",
                [
                    (tenant_id, operation_id, n, op_states.ITEM_PENDING, src)
                    for n, src in zip(numbers, items, strict=True)
                ],
            )
            row = await conn.fetchrow(
                "UPDATE operations SET total = total + $3, payload = $4, update_time = now() "
                "WHERE tenant_id = $1 AND id = $2 RETURNING *",
                tenant_id,
                operation_id,
                len(items),
                {**record.payload, **payload, "listing": False},
            )
            record = _operation(row)
            if _complete(record):
                record = await self._end(conn, record, outcome, None)
            return record, numbers

    @staticmethod
    async def _end(
        conn: asyncpg.Connection, record: OperationRecord, outcome: Outcome, last_error: bytes | None
    ) -> OperationRecord:
        state, response, error = outcome(record, last_error)
        if record.kind == op_states.KIND_REINDEX:
            # The tenant's searches move to the new model in the transaction that ends the re-index.
            await model_pointer.end_reindex(conn, record.tenant_id, record.id, switch=state == op_states.SUCCEEDED)
        row = await conn.fetchrow(
            "UPDATE operations SET state = $3, stage = 'done', response = $4, error = $5, update_time = now(), "
            "end_time = now() WHERE tenant_id = $1 AND id = $2 RETURNING *",
            record.tenant_id,
            record.id,
            state,
            response,
            error,
        )
        return _operation(row)

    async def abort(self, tenant_id: str, operation_id: str, error: bytes) -> OperationRecord:
        """Ends an unfinished operation as FAILED with ``error`` (a scan whose listing could not be done)."""
        row = await self._db.fetchrow(
            tenant_id,
            "UPDATE operations SET state = $3, stage = 'done', error = $4, "
            "payload = payload || '{\"listing\": false}'::jsonb, update_time = now(), end_time = now() "
            "WHERE tenant_id = $1 AND id = $2 AND end_time IS NULL RETURNING *",
            tenant_id,
            operation_id,
            op_states.FAILED,
            error,
        )
        return _operation(row) if row is not None else await self.get(tenant_id, operation_id)

    async def cancel(self, tenant_id: str, operation_id: str, outcome: Outcome) -> OperationRecord:
        """Cancels every pending item at once; items a worker is finishing right now still count as they end."""
        async with scoped(self._pool, tenant_id) as conn:
            op = await _lock(conn, tenant_id, operation_id)
            if op["end_time"] is not None:
                return _operation(op)
            result = await conn.execute(
                "UPDATE operation_items SET state = $3, update_time = now() "
                "WHERE tenant_id = $1 AND operation_id = $2 AND state = $4",
                tenant_id,
                operation_id,
                op_states.ITEM_CANCELLED,
                op_states.ITEM_PENDING,
            )
            cancelled = int(result.split()[-1])
            row = await conn.fetchrow(
                "UPDATE operations SET cancel_requested = true, processed = processed + $3, update_time = now() "
                "WHERE tenant_id = $1 AND id = $2 RETURNING *",
                tenant_id,
                operation_id,
                cancelled,
            )
            record = _operation(row)
            if _complete(record):
                record = await self._end(conn, record, outcome, None)
            return record

    async def revive_dead_letters(self, tenant_id: str, operation_id: str) -> tuple[OperationRecord, list[int]]:
        """Puts dead items back to PENDING, uncounting them, and reopens the operation under a new generation."""
        async with scoped(self._pool, tenant_id) as conn:
            op = await _lock(conn, tenant_id, operation_id)
            revived = [
                r["item"]
                for r in await conn.fetch(
                    "UPDATE operation_items SET state = $3, error = NULL, update_time = now() "
                    "WHERE tenant_id = $1 AND operation_id = $2 AND state = $4 RETURNING item",
                    tenant_id,
                    operation_id,
                    op_states.ITEM_PENDING,
                    op_states.ITEM_DEAD,
                )
            ]
            if not revived:
                return _operation(op), []
            row = await conn.fetchrow(
                "UPDATE operations SET processed = processed - $3, failed = failed - $3, state = $4, stage = 'index', "
                "response = NULL, error = NULL, end_time = NULL, cancel_requested = false, paused = false, "
                "generation = generation + 1, update_time = now() WHERE tenant_id = $1 AND id = $2 RETURNING *",
                tenant_id,
                operation_id,
                len(revived),
                op_states.RUNNING,
            )
            return _operation(row), sorted(revived)

    async def set_paused(self, tenant_id: str, operation_id: str, paused: bool) -> OperationRecord:
        """Pauses or resumes; resuming starts a new generation, whose jobs re-deliver the pending items."""
        row = await self._db.fetchrow(
            tenant_id,
            "UPDATE operations SET paused = $3, "
            "generation = generation + CASE WHEN paused AND NOT $3 THEN 1 ELSE 0 END, update_time = now() "
            "WHERE tenant_id = $1 AND id = $2 AND end_time IS NULL RETURNING *",
            tenant_id,
            operation_id,
            paused,
        )
        if row is None:
            record = await self.get(tenant_id, operation_id)
            raise FailedPrecondition(
                f"operation {record.id} has ended", reason="OPERATION_DONE", metadata={"state": str(record.state)}
            )
        return _operation(row)

    async def delete(self, tenant_id: str, operation_id: str) -> None:
        async with scoped(self._pool, tenant_id) as conn:
            end_time = await conn.fetchval(
                "SELECT end_time FROM operations WHERE tenant_id = $1 AND id = $2 FOR UPDATE", tenant_id, operation_id
            )
            if end_time is None:
                if not await conn.fetchval(
                    "SELECT 1 FROM operations WHERE tenant_id = $1 AND id = $2", tenant_id, operation_id
                ):
                    raise _not_found(tenant_id, operation_id)
                raise FailedPrecondition("an operation can be deleted once it has ended", reason="OPERATION_NOT_DONE")
            await conn.execute("DELETE FROM operations WHERE tenant_id = $1 AND id = $2", tenant_id, operation_id)
