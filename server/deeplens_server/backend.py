"""The collaborators the API and the workers share, opened once and passed in (no globals)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from deeplens_server import model_pointer, vector_migration
from deeplens_server.admin_repository import AdminRepository, ObjectIndex, StorageLocationRepository
from deeplens_server.blobs import BlobStore
from deeplens_server.config import Settings
from deeplens_server.duplicates import DEFAULT_POLICY, DuplicatePolicy
from deeplens_server.embedder import Embedder
from deeplens_server.errors import Unavailable
from deeplens_server.events import EventLog
from deeplens_server.freshness import WriteMarks
from deeplens_server.imaging import ImageLimits
from deeplens_server.migrations import VECTOR_LOCK_KEY, advisory_lock
from deeplens_server.operation_store import OperationStore
from deeplens_server.queue import JobQueue
from deeplens_server.repository import Repository
from deeplens_server.sealing import Sealer
from deeplens_server.storage import StoragePolicy
from deeplens_server.vectors import VectorIndex

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """What indexing one image of a tenant, or answering a query of it, needs to know of it."""

    models: model_pointer.TenantModels
    policy: DuplicatePolicy
    limits: ImageLimits


@dataclass
class Backend:
    settings: Settings
    repo: Repository
    ops: OperationStore
    admin: AdminRepository
    locations: StorageLocationRepository
    objects: ObjectIndex
    sealer: Sealer
    vectors: VectorIndex
    embedder: Embedder
    events: EventLog
    queue: JobQueue
    blobs: BlobStore

    @property
    def storage_policy(self) -> StoragePolicy:
        return StoragePolicy(
            local_roots=tuple(p.resolve() for p in self.settings.local_storage_roots),
            allow_private_endpoints=self.settings.allow_private_endpoints,
        )

    @property
    def limits(self) -> ImageLimits:
        """The server's image limits (what every tenant's own may tighten)."""
        return ImageLimits(max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels)

    @classmethod
    async def open(cls, settings: Settings, *, timeout: float = 120.0) -> Backend:
        """Connects to every dependency, retrying while they come up, for at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                return await cls._open(settings, model_ready_timeout=max(1.0, deadline - loop.time()))
            except Unavailable as exc:
                if loop.time() >= deadline:
                    raise
                _log.warning("a dependency is not ready yet (%s); retrying", exc.message)
                await asyncio.sleep(1.0)

    @classmethod
    async def _open(cls, settings: Settings, *, model_ready_timeout: float) -> Backend:
        repo = await Repository.connect(settings.postgres_dsn, max_size=settings.postgres_pool_max)
        vectors = VectorIndex(
            settings.milvus_uri,
            token=settings.milvus_token,
            search_consistency=settings.milvus_search_consistency,
            search_ef=settings.milvus_search_ef,
        )
        embedder = Embedder(
            settings.triton_url,
            model=settings.embedding_model,
            version=settings.embedding_model_version,
            query_suffix=settings.triton_query_suffix,
        )
        try:
            # One process at a time copies collections of an earlier schema; the others wait, then find none.
            async with advisory_lock(repo.pool, VECTOR_LOCK_KEY):
                await asyncio.to_thread(vector_migration.migrate, settings.milvus_uri, token=settings.milvus_token)
            await vectors.open()
            await embedder.wait_ready(model_ready_timeout)
            await vectors.ensure(embedder.model_id, await embedder.dim(embedder.model_id))
            for model in set(await model_pointer.tenants_per_model(repo.pool)) - {embedder.model_id}:
                try:
                    await vectors.ensure(model, await embedder.dim(model))
                except Unavailable:  # its tenants' searches fail (MODEL_NOT_READY) until it is served again
                    _log.warning("model %s is in use by tenants but not served", model)
            queue = await JobQueue.connect(settings.redis_url, settings.queue_name)
        except BaseException:
            await embedder.close()
            await vectors.close()
            await repo.close()
            raise
        vectors.marks = WriteMarks(queue.redis, window_ms=settings.milvus_write_window_ms)
        events = EventLog(queue.redis, maxlen=settings.event_stream_maxlen)
        _log.info("backend ready: default model %s", embedder.model_id)
        return cls(
            settings=settings,
            repo=repo,
            ops=OperationStore(repo.pool),
            admin=AdminRepository(repo.pool),
            locations=StorageLocationRepository(repo.pool),
            objects=ObjectIndex(repo.pool),
            sealer=Sealer(settings.master_keys.get_secret_value()),
            vectors=vectors,
            embedder=embedder,
            events=events,
            queue=queue,
            blobs=BlobStore(settings.blob_root),
        )

    async def tenant_models(self, tenant_id: str) -> model_pointer.TenantModels:
        """The model versions serving the tenant (its searches use ``active``)."""
        return await model_pointer.tenant_models(self.repo.pool, tenant_id, self.embedder.model_id)

    async def tenant_settings(self, tenant_id: str) -> TenantSettings:
        """The tenant's models, duplicate thresholds and image limits (its own under the server's), read together:
        once per ingested image, search and duplicate query."""
        models, overrides, (max_bytes, max_pixels) = await model_pointer.tenant_settings(
            self.repo.pool, tenant_id, self.embedder.model_id
        )
        return TenantSettings(models, DEFAULT_POLICY.override(overrides), self.limits.tightened(max_bytes, max_pixels))

    async def model_for(self, tenant_id: str) -> str:
        """The model version the tenant's searches embed with and read."""
        return (await self.tenant_models(tenant_id)).active

    async def vector_count(self, tenant_id: str, model: str) -> int:
        """The tenant's embeddings in ``model``'s collection: counted by the vector index where that is cheap (a
        Milvus server), else PostgreSQL's count of the images that model embedded (Milvus Lite, which would read
        every row of the tenant to count them and serve nothing else meanwhile)."""
        if self.vectors.counts_tenants:
            return await self.vectors.count(tenant_id, model)
        return await self.repo.count_embedded(tenant_id, model)

    async def prepare_model(self, model: str) -> None:
        """Makes sure ``model`` is served and its vector collection exists."""
        await self.vectors.ensure(model, await self.embedder.dim(model))

    @property
    def redis(self) -> Redis:
        return self.queue.redis

    async def close(self) -> None:
        await self.queue.close()
        await self.embedder.close()
        await self.vectors.close()
        await self.repo.close()
