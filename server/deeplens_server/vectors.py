"""The one module that talks to Milvus. Every search, query, upsert and delete is scoped to one tenant here.

One collection per embedding model version (``images__{model}__v{version}``), tenant as partition key, so
vectors of different models are never compared. The same code serves Milvus Lite (``milvus-lite server``)
and Milvus standalone/distributed: only the URI differs.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pymilvus import AsyncMilvusClient, DataType, MilvusClient, MilvusException

from deeplens_server.errors import NotFound, Unavailable

_SAFE = re.compile(r"[^A-Za-z0-9_]")


# pymilvus pings every 10 s even on idle connections; Milvus Lite's gRPC server (default policy: at most one
# ping per 5 minutes without data) answers that with GOAWAY "too many pings", breaking idle connections.
# No pings while idle, and a gentle interval otherwise, suit both Lite and Milvus proper.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 310_000, "grpc.keepalive_permit_without_calls": False}


def collection_name(model: str, version: str) -> str:
    return f"images__{_SAFE.sub('_', model)}__v{_SAFE.sub('_', version)}"


def _quote(value: str) -> str:
    """A string literal for a Milvus boolean expression."""
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class VectorRecord:
    collection_id: str
    image_id: str
    embedding: NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VectorHit:
    collection_id: str
    image_id: str
    score: float


class VectorIndex:
    def __init__(self, uri: str, *, token: str, model: str, version: str, dim: int) -> None:
        self._uri = uri
        self._token = token
        self._dim = dim
        self.collection = collection_name(model, version)
        self._client: AsyncMilvusClient | None = None
        # Milvus Lite wants one writer per collection; one lock per process keeps this process's writes serial.
        self._write_lock = asyncio.Lock()

    def _ensure_collection_sync(self) -> None:
        # AsyncMilvusClient.create_collection is not implemented by Milvus Lite, so setup uses the sync client.
        client = MilvusClient(uri=self._uri, token=self._token, grpc_options=GRPC_OPTIONS)
        try:
            if not client.has_collection(self.collection):
                schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=512)
                schema.add_field("tenant_id", DataType.VARCHAR, max_length=64, is_partition_key=True)
                schema.add_field("collection_id", DataType.VARCHAR, max_length=64)
                schema.add_field("image_id", DataType.VARCHAR, max_length=128)
                schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self._dim)
                index = client.prepare_index_params()
                index.add_index(
                    "embedding",
                    index_type="HNSW",
                    metric_type="COSINE",
                    params={"M": 16, "efConstruction": 200},
                )
                try:
                    client.create_collection(self.collection, schema=schema, index_params=index)
                except MilvusException:
                    # Another process (server or worker starting at the same moment) may have won the race.
                    if not client.has_collection(self.collection):
                        raise
            client.load_collection(self.collection)
        finally:
            client.close()

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._ensure_collection_sync)
            self._client = AsyncMilvusClient(uri=self._uri, token=self._token, grpc_options=GRPC_OPTIONS)
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _c(self) -> AsyncMilvusClient:
        if self._client is None:
            raise RuntimeError("VectorIndex.open() was not called")
        return self._client

    @staticmethod
    def _pk(tenant_id: str, collection_id: str, image_id: str) -> str:
        return f"{tenant_id}/{collection_id}/{image_id}"

    @staticmethod
    def _scope(tenant_id: str, collection_id: str | None = None) -> str:
        expr = f"tenant_id == {_quote(tenant_id)}"
        if collection_id is not None:
            expr += f" and collection_id == {_quote(collection_id)}"
        return expr

    async def ping(self) -> None:
        try:
            await self._c.has_collection(self.collection)
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc

    async def upsert(self, tenant_id: str, records: list[VectorRecord]) -> None:
        rows = [
            {
                "pk": self._pk(tenant_id, r.collection_id, r.image_id),
                "tenant_id": tenant_id,
                "collection_id": r.collection_id,
                "image_id": r.image_id,
                "embedding": r.embedding.astype(np.float32).tolist(),
            }
            for r in records
        ]
        try:
            async with self._write_lock:
                await self._c.upsert(self.collection, rows)
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc

    async def delete(self, tenant_id: str, *, collection_id: str | None = None) -> None:
        """Deletes the tenant's vectors (one collection's, if given)."""
        try:
            async with self._write_lock:
                await self._c.delete(self.collection, filter=self._scope(tenant_id, collection_id))
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc

    async def delete_images(self, tenant_id: str, keys: list[tuple[str, str]]) -> None:
        """Deletes the vectors of these (collection, image) keys."""
        if not keys:
            return
        pks = ", ".join(_quote(self._pk(tenant_id, c, i)) for c, i in keys)
        try:
            async with self._write_lock:
                await self._c.delete(self.collection, filter=f"{self._scope(tenant_id)} and pk in [{pks}]")
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc

    async def count(self, tenant_id: str) -> int:
        try:
            rows = await self._c.query(self.collection, filter=self._scope(tenant_id), output_fields=["count(*)"])
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc
        return int(rows[0]["count(*)"]) if rows else 0

    async def get_embedding(self, tenant_id: str, collection_id: str, image_id: str) -> NDArray[np.float32]:
        expr = (
            f"{self._scope(tenant_id, collection_id)} and pk == {_quote(self._pk(tenant_id, collection_id, image_id))}"
        )
        try:
            rows = await self._c.query(self.collection, filter=expr, output_fields=["embedding"], limit=1)
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc
        if not rows:
            raise NotFound(
                "image",
                f"tenants/{tenant_id}/collections/{collection_id}/images/{image_id}",
                reason="IMAGE_NOT_FOUND",
            )
        return np.asarray(rows[0]["embedding"], dtype=np.float32)

    async def search(
        self,
        tenant_id: str,
        embedding: NDArray[np.float32],
        *,
        limit: int,
        collection_id: str | None = None,
        exclude: tuple[str, str] | None = None,
        timeout: float | None = None,
    ) -> list[VectorHit]:
        expr = self._scope(tenant_id, collection_id)
        if exclude is not None:
            expr += f" and pk != {_quote(self._pk(tenant_id, *exclude))}"
        params: dict[str, Any] = {"metric_type": "COSINE", "params": {"ef": max(64, limit)}}
        try:
            result = await self._c.search(
                self.collection,
                data=[embedding.astype(np.float32).tolist()],
                filter=expr,
                limit=limit,
                output_fields=["tenant_id", "collection_id", "image_id"],
                search_params=params,
                timeout=timeout,
            )
        except MilvusException as exc:
            raise Unavailable("the vector index is unavailable") from exc
        hits = []
        for hit in result[0]:
            entity = hit["entity"]
            if entity["tenant_id"] != tenant_id:  # defence in depth: the filter above already scopes the query
                continue
            hits.append(VectorHit(entity["collection_id"], entity["image_id"], float(hit["distance"])))
        return hits
