"""SearchService's duplicate RPCs: find, list/get groups, resolve, storage report."""

from __future__ import annotations

from typing import Any

import grpc
from deeplens.v1 import resources_pb2, search_service_pb2

from deeplens_server import duplicate_store, paging
from deeplens_server.api.convert import (
    check_view,
    image_to_proto,
    match_to_proto,
    policy_overrides,
    policy_to_proto,
    scores_to_proto,
)
from deeplens_server.backend import Backend
from deeplens_server.db import scoped
from deeplens_server.duplicate_store import GroupRecord, Usage
from deeplens_server.duplicates import DUPLICATE_TIERS, Fingerprint
from deeplens_server.errors import Aborted, InvalidArgument, NotFound
from deeplens_server.imaging import perceptual_hashes
from deeplens_server.keypoints import keypoints
from deeplens_server.matching import DEFAULT_CANDIDATES, MAX_CANDIDATES, QueryKeypoints, find_matches, stored_keypoints
from deeplens_server.names import CollectionName, image_name, parse_duplicate_group, parse_image, parse_scope
from deeplens_server.operations import timestamp
from deeplens_server.removal import delete_image
from deeplens_server.search import decode_query, embed_decoded
from deeplens_server.tenancy import current_principal, require_tenant

Context = grpc.aio.ServicerContext[Any, Any]
BASIC, FULL = resources_pb2.IMAGE_VIEW_BASIC, resources_pb2.IMAGE_VIEW_FULL
UPLOADS = "uploads"


async def group_to_proto(backend: Backend, group: GroupRecord, view: int) -> resources_pb2.DuplicateGroup:
    tenant = group.tenant_id
    async with scoped(backend.repo.pool, tenant) as conn:
        members = await duplicate_store.group_members(conn, tenant, group.id)
        links = await duplicate_store.group_links(conn, tenant, group.id)
    members.sort(key=lambda m: ((m.collection_id, m.image_id) != group.keeper, m.collection_id, m.image_id))
    return resources_pb2.DuplicateGroup(
        name=f"tenants/{tenant}/duplicateGroups/{group.id}",
        members=[image_to_proto(m, view) for m in members],
        keeper=image_name(tenant, *group.keeper),
        links=[
            resources_pb2.DuplicateLink(
                image_a=image_name(tenant, *link.a),
                image_b=image_name(tenant, *link.b),
                tier=link.tier,  # type: ignore[arg-type]
                scores=scores_to_proto(link),
                rule=link.rule,
                decision=link.decision,  # type: ignore[arg-type]
            )
            for link in sorted(links, key=lambda x: (x.a, x.b))
        ],
        total_bytes=group.total_bytes,
        reclaimable_bytes=group.reclaimable_bytes,
        resolved=group.resolved,
        etag=group.etag,
        update_time=timestamp(group.update_time),
    )


def _usage(u: Usage, key: str) -> search_service_pb2.StorageUsage:
    return search_service_pb2.StorageUsage(
        key=key, images=u.images, bytes=u.bytes, duplicate_images=u.duplicate_images,
        reclaimable_bytes=u.reclaimable_bytes,
    )  # fmt: skip


class DuplicateRpcs:
    _backend: Backend

    async def _get_group(self, tenant: str, group_id: str, name: str) -> GroupRecord:
        async with scoped(self._backend.repo.pool, tenant) as conn:
            group = await duplicate_store.get_group(conn, tenant, group_id)
        if group is None:
            raise NotFound("duplicate group", name, reason="DUPLICATE_GROUP_NOT_FOUND")
        return group

    async def FindDuplicates(
        self, request: search_service_pb2.FindDuplicatesRequest, context: Context
    ) -> search_service_pb2.FindDuplicatesResponse:
        backend = self._backend
        scope = parse_scope(request.parent)
        tenant = require_tenant(scope.tenant)
        view = check_view(request.view, BASIC)
        candidates = request.max_candidates or DEFAULT_CANDIDATES
        if not 0 < candidates <= MAX_CANDIDATES:
            raise InvalidArgument(
                f"max_candidates must be in [1, {MAX_CANDIDATES}]", field="max_candidates", reason="INVALID_CANDIDATES"
            )
        settings = await backend.tenant_settings(tenant)
        policy = settings.policy.override(policy_overrides(request.policy))
        which = request.WhichOneof("query")
        model = settings.models.active
        exclude: tuple[str, str] | None = None
        query_keypoints: QueryKeypoints | None = None
        if which == "image_name":
            image = parse_image(request.image_name, field="image_name")
            require_tenant(image.tenant)
            exclude = (image.collection, image.image)
            record = await backend.repo.get_image(tenant, *exclude)
            fingerprint = record.fingerprint
            embedding = await backend.vectors.get_embedding(tenant, *exclude, model=model)
            query_keypoints = await stored_keypoints(backend, tenant, record.sha256)
        elif which == "image_content":
            decoded = await decode_query(request.image_content, settings.limits)
            hashes = perceptual_hashes(decoded.working)
            fingerprint = Fingerprint(decoded.sha256, hashes.phash, hashes.dhash, hashes.detail, hashes.variants)
            embedding = await embed_decoded(backend, decoded, model=model, timeout=context.time_remaining())
            working = decoded.working
            query_keypoints = lambda: keypoints(working)  # noqa: E731
        else:
            raise InvalidArgument("give image_content or image_name", field="query", reason="MISSING_QUERY")
        matches = await find_matches(
            backend,
            tenant,
            fingerprint,
            embedding,
            model=model,
            policy=policy,
            query_keypoints=query_keypoints,
            collection_id=scope.collection if isinstance(scope, CollectionName) else None,
            exclude=exclude,
            candidates=candidates,
            timeout=context.time_remaining(),
        )
        if not request.include_similar:
            matches = [m for m in matches if m.tier in DUPLICATE_TIERS]
        rows = await backend.repo.get_images(tenant, [m.key for m in matches])
        return search_service_pb2.FindDuplicatesResponse(
            matches=[match_to_proto(image_to_proto(rows[m.key], view), m) for m in matches if m.key in rows],
            policy=policy_to_proto(policy),
            model=model,
        )

    async def ListDuplicateGroups(
        self, request: search_service_pb2.ListDuplicateGroupsRequest, context: Context
    ) -> search_service_pb2.ListDuplicateGroupsResponse:
        scope = parse_scope(request.parent)
        tenant = require_tenant(scope.tenant)
        view = check_view(request.view, BASIC)
        size = paging.page_size(request.page_size)
        after = _group_cursor(paging.decode(request.page_token))
        async with scoped(self._backend.repo.pool, tenant) as conn:
            groups, total = await duplicate_store.list_groups(
                conn,
                tenant,
                collection_id=scope.collection if isinstance(scope, CollectionName) else None,
                include_resolved=request.include_resolved,
                limit=size + 1,
                after=after,
            )
        page, token = paging.split_page(groups, size, lambda g: f"{g.reclaimable_bytes}:{g.id}")
        return search_service_pb2.ListDuplicateGroupsResponse(
            duplicate_groups=[await group_to_proto(self._backend, g, view) for g in page],
            next_page_token=token,
            total_size=total,
        )

    async def GetDuplicateGroup(
        self, request: search_service_pb2.GetDuplicateGroupRequest, context: Context
    ) -> search_service_pb2.GetDuplicateGroupResponse:
        name = parse_duplicate_group(request.name)
        tenant = require_tenant(name.tenant)
        group = await self._get_group(tenant, name.group, request.name)
        view = check_view(request.view, FULL)
        return search_service_pb2.GetDuplicateGroupResponse(
            duplicate_group=await group_to_proto(self._backend, group, view)
        )

    async def ResolveDuplicateGroup(
        self, request: search_service_pb2.ResolveDuplicateGroupRequest, context: Context
    ) -> search_service_pb2.ResolveDuplicateGroupResponse:
        backend = self._backend
        name = parse_duplicate_group(request.name)
        tenant = require_tenant(name.tenant)
        action = request.action
        if action not in (
            search_service_pb2.RESOLVE_ACTION_KEEP_ALL,
            search_service_pb2.RESOLVE_ACTION_NOT_DUPLICATES,
            search_service_pb2.RESOLVE_ACTION_DELETE_OTHERS,
        ):
            raise InvalidArgument("give an action", field="action", reason="INVALID_ACTION")
        group = await self._get_group(tenant, name.group, request.name)
        if request.etag and request.etag != group.etag:
            raise Aborted("the group changed since it was read; read it again", metadata={"etag": group.etag})
        keeper = group.keeper
        if request.keeper:
            chosen = parse_image(request.keeper, field="keeper")
            require_tenant(chosen.tenant)
            keeper = (chosen.collection, chosen.image)
        async with scoped(backend.repo.pool, tenant) as conn:
            members = await duplicate_store.group_members(conn, tenant, group.id)
        if keeper not in {(m.collection_id, m.image_id) for m in members}:
            raise InvalidArgument("the keeper is not a member of the group", field="keeper", reason="INVALID_KEEPER")
        doomed = (
            [m for m in members if (m.collection_id, m.image_id) != keeper]
            if action == search_service_pb2.RESOLVE_ACTION_DELETE_OTHERS
            else []
        )
        response = search_service_pb2.ResolveDuplicateGroupResponse(
            dry_run=not request.force,
            deleted_images=[image_name(tenant, m.collection_id, m.image_id) for m in doomed],
            freed_bytes=sum(m.size_bytes for m in doomed),
        )
        if not request.force:
            response.duplicate_group.CopyFrom(await group_to_proto(backend, group, BASIC))
            return response
        if action == search_service_pb2.RESOLVE_ACTION_DELETE_OTHERS:
            for m in doomed:
                try:
                    await delete_image(
                        backend, tenant, (m.collection_id, m.image_id), delete_original=request.delete_originals
                    )
                except NotFound:
                    continue  # deleted meanwhile: the outcome is the same
        else:
            decision = (
                duplicate_store.KEEP_ALL
                if action == search_service_pb2.RESOLVE_ACTION_KEEP_ALL
                else duplicate_store.NOT_DUPLICATES
            )
            async with scoped(backend.repo.pool, tenant) as conn:
                await duplicate_store.decide(conn, tenant, group.id, decision, current_principal().actor)
        async with scoped(backend.repo.pool, tenant) as conn:
            after = await duplicate_store.get_group(conn, tenant, group.id)
        if after is not None:
            response.duplicate_group.CopyFrom(await group_to_proto(backend, after, BASIC))
        return response

    async def GetStorageReport(
        self, request: search_service_pb2.GetStorageReportRequest, context: Context
    ) -> search_service_pb2.GetStorageReportResponse:
        scope = parse_scope(request.parent)
        tenant = require_tenant(scope.tenant)
        collection = scope.collection if isinstance(scope, CollectionName) else None
        async with scoped(self._backend.repo.pool, tenant) as conn:
            total, by_location, by_collection = await duplicate_store.storage_usage(conn, tenant, collection)
        return search_service_pb2.GetStorageReportResponse(
            total=_usage(total, ""),
            by_storage_location=[
                _usage(u, f"tenants/{tenant}/storageLocations/{u.key}" if u.key else UPLOADS) for u in by_location
            ],
            by_collection=[_usage(u, f"tenants/{tenant}/collections/{u.key}") for u in by_collection],
        )


def _group_cursor(token: str | None) -> tuple[int, str] | None:
    if token is None:
        return None
    size, _, group = token.partition(":")
    try:
        return int(size), group
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid", field="page_token", reason="INVALID_PAGE_TOKEN") from exc
