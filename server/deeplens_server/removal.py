"""Deleting images from the index — vector, colour vector, row, links, group, thumbnails — and, if asked, the
original bytes from wherever they are stored. Order: vectors first (idempotent), then the row and links in one
transaction, then files; a failure part-way leaves the call safe to repeat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deeplens_server import locations
from deeplens_server.backend import Backend
from deeplens_server.db import scoped
from deeplens_server.duplicate_store import remove_image
from deeplens_server.errors import NotFound
from deeplens_server.repository import ImageRecord
from deeplens_server.storage import delete_object, validate


@dataclass(frozen=True, slots=True)
class Removed:
    image: ImageRecord
    original_deleted: bool
    freed_bytes: int


async def delete_image(backend: Backend, tenant_id: str, key: tuple[str, str], *, delete_original: bool) -> Removed:
    """Raises ``NotFound`` when the image is not indexed."""
    record = await backend.repo.get_image(tenant_id, *key)
    where = await backend.objects.path_of(tenant_id, *key) if delete_original and record.location_id else None
    await backend.vectors.delete_images(tenant_id, [key])
    async with scoped(backend.repo.pool, tenant_id) as conn:
        removed = await remove_image(conn, tenant_id, key)
    if removed is None:
        raise NotFound("image", f"tenants/{tenant_id}/collections/{key[0]}/images/{key[1]}", reason="IMAGE_NOT_FOUND")
    in_use = await backend.repo.content_in_use(tenant_id, record.sha256)
    original_deleted = False
    if where is not None:
        location = await backend.locations.get(tenant_id, where[0])
        spec = validate(locations.spec_of(backend, location), backend.storage_policy)
        await asyncio.to_thread(delete_object, spec, where[1])
        original_deleted = True
    if not in_use:
        # Thumbnails and uploaded originals are kept per content; another image with these bytes still needs them.
        freed = await backend.blobs.delete_content(tenant_id, record.sha256, original=delete_original)
        original_deleted = original_deleted or freed > 0
    return Removed(record, original_deleted, record.size_bytes)
