"""SearchService's image-resource RPCs: get, list, delete."""

from __future__ import annotations

from typing import Any

import grpc
from deeplens.v1 import resources_pb2, search_service_pb2

from deeplens_server import duplicate_store, paging
from deeplens_server.api.convert import check_view, filter_from_proto, image_to_proto, match_to_proto
from deeplens_server.backend import Backend
from deeplens_server.db import scoped
from deeplens_server.errors import InvalidArgument
from deeplens_server.filters import within
from deeplens_server.names import CollectionName, parse_image, parse_scope
from deeplens_server.removal import delete_image
from deeplens_server.tenancy import require_tenant

Context = grpc.aio.ServicerContext[Any, Any]


class ImageRpcs:
    _backend: Backend

    async def GetImage(
        self, request: search_service_pb2.GetImageRequest, context: Context
    ) -> search_service_pb2.GetImageResponse:
        name = parse_image(request.name)
        tenant = require_tenant(name.tenant)
        view = check_view(request.view, resources_pb2.IMAGE_VIEW_FULL)
        key = (name.collection, name.image)
        record = await self._backend.repo.get_image(tenant, *key)
        async with scoped(self._backend.repo.pool, tenant) as conn:
            links = await duplicate_store.links_of(conn, tenant, key)
        others = await self._backend.repo.get_images(tenant, [link.other(key) for link in links])
        links = sorted(links, key=lambda x: (x.tier, -x.cosine, x.other(key)))
        return search_service_pb2.GetImageResponse(
            image=image_to_proto(record, view),
            duplicates=[
                match_to_proto(image_to_proto(others[link.other(key)], resources_pb2.IMAGE_VIEW_BASIC), link)
                for link in links
                if link.other(key) in others and link.decision != duplicate_store.NOT_DUPLICATES
            ],
        )

    async def ListImages(
        self, request: search_service_pb2.ListImagesRequest, context: Context
    ) -> search_service_pb2.ListImagesResponse:
        scope = parse_scope(request.parent)
        tenant = require_tenant(scope.tenant)
        view = check_view(request.view, resources_pb2.IMAGE_VIEW_BASIC)
        collection = scope.collection if isinstance(scope, CollectionName) else None
        image_filter = within(filter_from_proto(request.filter), collection)
        size = paging.page_size(request.page_size)
        cursor = paging.decode(request.page_token)
        after: tuple[str, str] | None = None
        if cursor is not None:
            collection, sep, image = cursor.partition("/")
            if not sep:
                raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN")
            after = (collection, image)
        records = await self._backend.repo.list_images(tenant, image_filter, limit=size + 1, after=after)
        page, token = paging.split_page(records, size, lambda r: f"{r.collection_id}/{r.image_id}")
        return search_service_pb2.ListImagesResponse(
            images=[image_to_proto(r, view) for r in page], next_page_token=token
        )

    async def DeleteImage(
        self, request: search_service_pb2.DeleteImageRequest, context: Context
    ) -> search_service_pb2.DeleteImageResponse:
        name = parse_image(request.name)
        tenant = require_tenant(name.tenant)
        removed = await delete_image(
            self._backend, tenant, (name.collection, name.image), delete_original=request.delete_original
        )
        return search_service_pb2.DeleteImageResponse(
            original_deleted=removed.original_deleted, freed_bytes=removed.freed_bytes
        )
