"""Collections of an earlier schema are copied into the current one at startup: every row, with the keys the
new schema adds, without overwriting a row the new collection already holds, and the old collection dropped."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import numpy as np
from deeplens_server import vector_migration
from deeplens_server.filters import ImageFilter
from deeplens_server.vector_keys import collection_key, tenant_key
from deeplens_server.vectors import GRPC_OPTIONS, SCHEMA_VERSION, VectorIndex, create_collection
from deeplens_stack.stack import Stack
from pymilvus import DataType, MilvusClient

DIM = 1280


def _schema_3(client: MilvusClient) -> Any:
    """The vector collections' schema 3, as that version created them: the tenant's name as partition key."""
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("tenant_id", DataType.VARCHAR, max_length=64, is_partition_key=True)
    schema.add_field("collection_id", DataType.VARCHAR, max_length=64)
    schema.add_field("image_id", DataType.VARCHAR, max_length=128)
    for name, length in (("sha256", 64), ("phash", 16), ("dhash", 16), ("detail", 128), ("location_id", 64)):
        schema.add_field(name, DataType.VARCHAR, max_length=length)
    schema.add_field("format", DataType.VARCHAR, max_length=16)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("create_ts", DataType.INT64)
    schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=128)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    return schema


def _row(tenant: str, collection: str, image: str, seed: int) -> dict[str, Any]:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return {
        "pk": f"{tenant}/{collection}/{image}",
        "tenant_id": tenant,
        "collection_id": collection,
        "image_id": image,
        "sha256": f"{seed:064x}",
        "phash": "0" * 16,
        "dhash": "0" * 16,
        "detail": "0" * 128,
        "location_id": "",
        "format": "JPEG",
        "width": 10 + seed,
        "height": 10,
        "create_ts": 1,
        "tags": [f"t{seed}"],
        "embedding": (vector / np.linalg.norm(vector)).tolist(),
    }


async def test_a_schema_3_collection_is_copied_with_keys_and_dropped(stack: Stack) -> None:
    uri = stack.config.endpoints["DEEPLENS_MILVUS_URI"]
    model = f"mig_{uuid.uuid4().hex[:8]}@1"
    target = VectorIndex.collection(model)
    legacy = target.removesuffix(f"__s{SCHEMA_VERSION}") + "__s3"
    a, b = f"mig-{uuid.uuid4().hex[:8]}", f"mig-{uuid.uuid4().hex[:8]}"
    old = [_row(a, "photos", "one", 1), _row(a, "photos", "two", 2), _row(a, "albums", "three", 3)]
    old.append(_row(b, "photos", "one", 4))
    client = MilvusClient(uri=uri, grpc_options=GRPC_OPTIONS)
    index = VectorIndex(uri, token="")
    try:
        params = client.prepare_index_params()
        params.add_index("embedding", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
        client.create_collection(legacy, schema=_schema_3(client), index_params=params, consistency_level="Strong")
        client.insert(legacy, old)
        # A copy cut short: the new collection exists and already holds a newer version of one row.
        create_collection(client, target, "embedding", DIM)
        newer = {
            **_row(a, "photos", "two", 22),
            "tenant_key": tenant_key(a),
            "collection_key": collection_key(a, "photos"),
        }
        client.insert(target, [newer])

        assert target in await asyncio.to_thread(vector_migration.migrate, uri, token="")
        assert not client.has_collection(legacy)
        assert await asyncio.to_thread(vector_migration.migrate, uri, token="") == []  # nothing left to copy

        client.load_collection(target)
        pks = json.dumps([r["pk"] for r in old])
        rows = client.query(target, filter=f"pk in {pks}", output_fields=["*"], consistency_level="Strong")
        mine = {r["pk"]: r for r in rows}
        assert set(mine) == {r["pk"] for r in old}
        for r in old:
            got = mine[r["pk"]]
            assert got["tenant_key"] == tenant_key(r["tenant_id"])
            assert got["collection_key"] == collection_key(r["tenant_id"], r["collection_id"])
            source = newer if r["pk"] == newer["pk"] else r
            assert (got["width"], got["tags"]) == (source["width"], source["tags"])
            assert np.allclose(got["embedding"], source["embedding"], atol=1e-6)

        # The copied rows serve the current code's searches, scoped by key.
        await index.open()
        await index.ensure(model, DIM)
        hits = await index.search(a, np.asarray(old[2]["embedding"], np.float32), model=model, limit=10)
        assert {(h.collection_id, h.image_id) for h in hits} == {
            ("photos", "one"),
            ("photos", "two"),
            ("albums", "three"),
        }
        albums = ImageFilter(collections=("albums",))
        hits = await index.search(
            a, np.asarray(old[0]["embedding"], np.float32), model=model, limit=10, image_filter=albums
        )
        assert [h.image_id for h in hits] == ["three"]
        hits = await index.search(b, np.asarray(old[0]["embedding"], np.float32), model=model, limit=10)
        assert [(h.collection_id, h.image_id) for h in hits] == [("photos", "one")]
    finally:
        await index.close()
        for name in (legacy, target):
            if client.has_collection(name):
                client.drop_collection(name)
        client.close()
