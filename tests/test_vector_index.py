"""VectorIndex against the stack's vector store: concurrent upserts are coalesced into few calls and none is
lost, a tenant reads its own rows only, and every finished write is seen by the next read even where reads of
tenants not being written skip Milvus's time tick."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from deeplens_server.errors import Unavailable
from deeplens_server.filters import NO_FILTER, ImageFilter, within
from deeplens_server.freshness import PREFIX, WriteMarks
from deeplens_server.vector_keys import collection_key, tenant_key
from deeplens_server.vectors import GRPC_OPTIONS, VectorIndex, VectorRecord
from deeplens_stack.stack import Stack
from pymilvus import MilvusClient, MilvusException
from redis.asyncio import Redis

MODEL = "efficientnet_lite0@1"
DIM = 1280


class CountingIndex(VectorIndex):
    """The real index, counting the write calls it makes to the store."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, token="")
        self.calls: list[tuple[str, int]] = []

    async def _upsert(self, tenant_id: str, collection: str, rows: list[dict[str, Any]]) -> None:
        self.calls.append((collection, len(rows)))
        await super()._upsert(tenant_id, collection, rows)


class CountingMarks(WriteMarks):
    """The real write marks in Redis, counting how often a tenant is marked."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis, window_ms=10_000)
        self.marked: list[set[str]] = []

    async def wrote(self, tenant_ids: Any) -> None:
        self.marked.append(set(tenant_ids))
        await super().wrote(tenant_ids)


class FailingAfterWriteIndex(VectorIndex):
    """The real index, failing after the rows of its first collection reached the store: a write that fails
    part-way."""

    async def _upsert(self, tenant_id: str, collection: str, rows: list[dict[str, Any]]) -> None:
        await super()._upsert(tenant_id, collection, rows)
        raise MilvusException(message="the connection was lost after the rows were sent")


def _record(image_id: str, seed: int) -> VectorRecord:
    rng = np.random.default_rng(seed)
    embedding = rng.normal(size=DIM).astype(np.float32)
    colour = np.abs(rng.normal(size=64)).astype(np.float32)
    fields: dict[str, Any] = {
        "sha256": f"{seed:064x}",
        "phash": "0" * 16,
        "dhash": "0" * 16,
        "detail": "0" * 128,
        "location_id": "",
        "format": "JPEG",
        "width": 10,
        "height": 10,
        "create_ts": 1,
        "tags": [],
    }
    return VectorRecord(
        "photos", image_id, embedding / np.linalg.norm(embedding), colour / np.linalg.norm(colour), fields
    )


async def test_concurrent_upserts_are_coalesced_and_all_stored(stack: Stack) -> None:
    index = CountingIndex(stack.config.endpoints["DEEPLENS_MILVUS_URI"])
    await index.open()
    await index.ensure(MODEL, DIM)
    tenant, other = f"vi-{uuid.uuid4().hex[:8]}", f"vi-{uuid.uuid4().hex[:8]}"
    try:
        records = {f"img{i}": _record(f"img{i}", i) for i in range(24)}
        await asyncio.gather(
            *(index.upsert(tenant, MODEL, [r]) for r in records.values()),
            index.upsert(other, MODEL, [_record("img0", 999)]),
        )
        # 25 callers, two collections each: far fewer calls than 50, one per tenant and collection per batch.
        assert len(index.calls) < 25
        assert sum(n for _, n in index.calls) == 50
        stored = await index.get_vectors(tenant, [("photos", k) for k in records], model=MODEL)
        assert set(stored) == {("photos", k) for k in records}
        for key, vector in stored.items():
            assert np.allclose(vector, records[key[1]].embedding, atol=1e-6)
        colours = await index.get_vectors(tenant, [("photos", "img3")], model=MODEL, signal="colour")
        assert np.allclose(colours[("photos", "img3")], records["img3"].colour, atol=1e-6)
        theirs = await index.get_vectors(other, [("photos", "img0")], model=MODEL)
        assert np.allclose(theirs[("photos", "img0")], _record("img0", 999).embedding, atol=1e-6)

        # Two writes of one image in one batch: the later wins, as it would one after the other.
        index.calls.clear()
        await asyncio.gather(
            index.upsert(tenant, MODEL, [_record("img5", 1005)]), index.upsert(tenant, MODEL, [_record("img5", 2005)])
        )
        again = await index.get_vectors(tenant, [("photos", "img5")], model=MODEL)
        assert np.allclose(again[("photos", "img5")], _record("img5", 2005).embedding, atol=1e-6)
        assert await index.count(tenant, MODEL) == 24
    finally:
        await index.delete(tenant)
        await index.delete(other)
        await index.close()


async def test_every_finished_write_is_read_and_idle_tenants_read_bounded(stack: Stack) -> None:
    redis = Redis.from_url(stack.config.endpoints["DEEPLENS_REDIS_URL"])
    index = VectorIndex(stack.config.endpoints["DEEPLENS_MILVUS_URI"], token="", search_consistency="Tenant")
    index.marks = WriteMarks(redis, window_ms=1500)
    await index.open()
    await index.ensure(MODEL, DIM)
    on_server = index.counts_tenants  # a Milvus server; Milvus Lite applies each write before it answers
    written, idle = f"vi-{uuid.uuid4().hex[:8]}", f"vi-{uuid.uuid4().hex[:8]}"
    try:
        await index.upsert(idle, MODEL, [_record("old", 7)])
        for i in range(15):  # each write, then at once a search and a lookup from that tenant
            record = _record(f"fresh{i}", 100 + i)
            await index.upsert(written, MODEL, [record])
            hits = await index.search(written, record.embedding, model=MODEL, limit=1)
            assert [h.image_id for h in hits] == [f"fresh{i}"]
            assert await index.get_vectors(written, [("photos", f"fresh{i}")], model=MODEL)
        assert await redis.exists(PREFIX + written) == on_server
        assert await index._read_level(written) == ("Strong" if on_server else "Bounded")
        assert await index._read_level(f"vi-{uuid.uuid4().hex[:8]}") == "Bounded"  # a tenant nobody wrote
        await asyncio.sleep(1.6)  # both marks have expired
        assert await index._read_level(idle) == "Bounded"
        assert await index._read_level(written) == "Bounded"
        # Bounded reads see every write older than the server's gracefulTime: all of them, by now.
        hits = await index.search(written, _record("fresh0", 100).embedding, model=MODEL, limit=20)
        assert {h.image_id for h in hits} == {f"fresh{i}" for i in range(15)}
        assert [h.image_id for h in await index.search(idle, _record("old", 7).embedding, model=MODEL, limit=5)] == [
            "old"
        ]

        await index.delete_images(written, [("photos", "fresh3")])  # deletes mark the tenant too
        assert await redis.exists(PREFIX + written) == on_server
        hits = await index.search(written, _record("fresh3", 103).embedding, model=MODEL, limit=20)
        assert "fresh3" not in {h.image_id for h in hits}
    finally:
        await index.delete(written)
        await index.delete(idle)
        await index.close()
        await redis.aclose()


async def test_a_write_that_fails_part_way_marks_its_tenant_after_the_failure_too(stack: Stack) -> None:
    redis = Redis.from_url(stack.config.endpoints["DEEPLENS_REDIS_URL"])
    index = FailingAfterWriteIndex(stack.config.endpoints["DEEPLENS_MILVUS_URI"], token="", search_consistency="Tenant")
    index.marks = marks = CountingMarks(redis)
    await index.open()
    await index.ensure(MODEL, DIM)
    tenant = f"vi-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(Unavailable):
            await index.upsert(tenant, MODEL, [_record("partial", 11)])
        if index.counts_tenants:  # a Milvus server: the rows applied before the failure are read Strong
            assert marks.marked == [{tenant}, {tenant}]
            assert await redis.exists(PREFIX + tenant)
            assert await index._read_level(tenant) == "Strong"
        else:  # Milvus Lite applies each write before it answers: no marks
            assert marks.marked == []
    finally:
        index.marks = None
        await index.delete(tenant)
        await index.close()
        await redis.aclose()


async def test_searches_filter_by_key_and_keep_only_hits_whose_names_match(stack: Stack) -> None:
    """Searches filter on the 64-bit keys; a row whose keys are a tenant's (or a collection's) but whose names are
    not (what a shared key would look like) is never returned to that tenant, nor counted or deleted with it."""
    uri = stack.config.endpoints["DEEPLENS_MILVUS_URI"]
    index = VectorIndex(uri, token="")
    await index.open()
    await index.ensure(MODEL, DIM)
    tenant, other = f"vi-{uuid.uuid4().hex[:8]}", f"vi-{uuid.uuid4().hex[:8]}"
    probe = _record("probe", 5)
    try:
        await index.upsert(tenant, MODEL, [probe, _record("near", 6)])
        await index.upsert(tenant, MODEL, [replace(_record("elsewhere", 7), collection_id="albums")])
        await index.upsert(other, MODEL, [replace(probe, image_id="theirs")])
        # Forged rows: the tenant's keys with another tenant's or another collection's name.
        client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
        forged = [
            {**VectorIndex._row(other, replace(probe, image_id="forged"), "embedding", probe.embedding),
             "tenant_key": tenant_key(tenant), "collection_key": collection_key(tenant, "photos")},
            {**VectorIndex._row(tenant, replace(probe, collection_id="albums", image_id="mislabelled"), "embedding",
                                probe.embedding), "collection_key": collection_key(tenant, "photos")},
        ]  # fmt: skip
        client.insert(VectorIndex.collection(MODEL), forged)
        client.close()

        hits = await index.search(tenant, probe.embedding, model=MODEL, limit=10)
        assert {(h.collection_id, h.image_id) for h in hits} == {
            ("photos", "probe"), ("photos", "near"), ("albums", "elsewhere"), ("albums", "mislabelled")
        }  # fmt: skip
        in_photos = await index.search(
            tenant, probe.embedding, model=MODEL, limit=10, image_filter=within(NO_FILTER, "photos")
        )
        assert {h.image_id for h in in_photos} == {"probe", "near"}
        in_albums = await index.search(
            tenant, probe.embedding, model=MODEL, limit=10, image_filter=ImageFilter(collections=("albums",))
        )
        assert {h.image_id for h in in_albums} == {"elsewhere"}  # "mislabelled" carries the key of "photos"
        theirs = await index.search(other, probe.embedding, model=MODEL, limit=10)
        assert {h.image_id for h in theirs} == {"theirs"}  # "forged" has their name but the tenant's key
        if index.counts_tenants:
            assert await index.count(tenant, MODEL) == 4  # by key and name: not "forged"
        await index.delete(tenant, collection_id="photos")  # by key and name: not "mislabelled", nor "forged"
        left = await index.search(tenant, probe.embedding, model=MODEL, limit=10)
        assert {h.image_id for h in left} == {"elsewhere", "mislabelled"}
        forged_left = await index.get_vectors(other, [("photos", "forged")], model=MODEL)
        assert list(forged_left) == [("photos", "forged")]
    finally:
        await index.delete(tenant)
        await index.delete(other)
        await index.close()
