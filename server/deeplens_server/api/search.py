from __future__ import annotations

import io
import time
from typing import Any

import grpc
from deeplens.v1 import resources_pb2, search_service_pb2, search_service_pb2_grpc
from google.protobuf import duration_pb2
from PIL import Image

from deeplens_server import paging
from deeplens_server.api.convert import check_view, filter_from_proto, image_to_proto
from deeplens_server.api.duplicates import DuplicateRpcs
from deeplens_server.api.images import ImageRpcs
from deeplens_server.backend import Backend
from deeplens_server.errors import InvalidArgument, NotFound
from deeplens_server.names import parse_image, parse_scope
from deeplens_server.search import MAX_RESULTS, SearchQuery, check_query, check_ranking, search_similar
from deeplens_server.tenancy import require_tenant

Context = grpc.aio.ServicerContext[Any, Any]
THUMBNAIL_PIXELS = {
    resources_pb2.THUMBNAIL_SIZE_150: 150,
    resources_pb2.THUMBNAIL_SIZE_300: 300,
    resources_pb2.THUMBNAIL_SIZE_600: 600,
}


class SearchServicer(ImageRpcs, DuplicateRpcs, search_service_pb2_grpc.SearchServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def SearchImages(
        self, request: search_service_pb2.SearchImagesRequest, context: Context
    ) -> search_service_pb2.SearchImagesResponse:
        started = time.perf_counter()
        scope = parse_scope(request.parent)
        require_tenant(scope.tenant)
        top_k, min_score = check_query(request.top_k, request.min_score)
        ranking, colour_weight = check_ranking(request.ranking, request.colour_weight)
        view = check_view(request.view, resources_pb2.IMAGE_VIEW_BASIC)
        offset = _offset(request.page_token)
        common: dict[str, Any] = {
            "image_filter": filter_from_proto(request.filter),
            "ranking": ranking,
            "colour_weight": colour_weight,
            "offset": offset,
        }
        which = request.WhichOneof("query")
        if which == "image_content":
            query = SearchQuery(scope, top_k, min_score, content=request.image_content, **common)
        elif which == "image_name":
            image = parse_image(request.image_name, field="image_name")
            require_tenant(image.tenant)
            query = SearchQuery(scope, top_k, min_score, image=image, **common)
        elif which == "image_uri":
            query = SearchQuery(scope, top_k, min_score, url=request.image_uri, **common)
        else:
            raise InvalidArgument("give image_content, image_name or image_uri", field="query", reason="MISSING_QUERY")
        settings = await self._backend.tenant_settings(query.scope.tenant)
        hits = await search_similar(
            self._backend,
            query,
            model=settings.models.active,
            limits=settings.limits,
            timeout=context.time_remaining(),
        )
        more = len(hits) == top_k and offset + top_k < MAX_RESULTS
        elapsed = duration_pb2.Duration()
        elapsed.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
        return search_service_pb2.SearchImagesResponse(
            results=[
                search_service_pb2.SearchResult(
                    score=h.score,
                    image=image_to_proto(h.image, view),
                    visual_score=h.visual,
                    colour_score=h.colour or 0.0,
                )
                for h in hits
            ],
            model=settings.models.active,
            next_page_token=paging.encode(str(offset + top_k)) if more else "",
            processing_time=elapsed,
        )

    async def GetImageThumbnail(
        self, request: search_service_pb2.GetImageThumbnailRequest, context: Context
    ) -> search_service_pb2.GetImageThumbnailResponse:
        image = parse_image(request.name)
        tenant = require_tenant(image.tenant)
        size = THUMBNAIL_PIXELS.get(request.size or resources_pb2.THUMBNAIL_SIZE_300)
        if size is None:
            raise InvalidArgument("unknown thumbnail size", field="size", reason="INVALID_THUMBNAIL_SIZE")
        record = await self._backend.repo.get_image(tenant, image.collection, image.image)
        if size not in record.thumbnails:
            raise NotFound("thumbnail", f"{request.name}@{size}", reason="THUMBNAIL_MISSING")
        content = await self._backend.blobs.get_thumbnail(tenant, record.sha256, size)
        with Image.open(io.BytesIO(content)) as thumb:
            width, height = thumb.size
        return search_service_pb2.GetImageThumbnailResponse(
            content=content, mime_type="image/webp", width=width, height=height
        )


def _offset(token: str) -> int:
    value = paging.decode(token)
    if value is None:
        return 0
    if not value.isdigit() or int(value) >= MAX_RESULTS:
        raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN")
    return int(value)
