"""Duplicates on the real stack: tiers explained, groups kept as images arrive and leave, review decisions that
outlive re-ingests, the storage report, and image get/list/delete leaving nothing behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import admin_service_pb2, resources_pb2, search_service_pb2
from deeplens_server.keypoints import Keypoints
from deeplens_stack import Stack
from google.protobuf import field_mask_pb2
from PIL import Image, ImageOps

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack

TIER = resources_pb2.MatchTier
ACTION = search_service_pb2
FULL = resources_pb2.IMAGE_VIEW_FULL


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _variants(data: bytes) -> dict[str, bytes]:
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    return {
        "small": _jpeg(rgb.resize((w // 2, h // 2)), quality=60),
        "mirrored": _jpeg(ImageOps.mirror(rgb)),
        "rotated": _jpeg(rgb.rotate(90, expand=True)),
        "cropped": _jpeg(rgb.crop((w // 10, h // 10, w - w // 10, h - h // 10))),
    }


def _ingest(client: DeepLensClient, parent: str, images: dict[str, bytes], tags: list[str] | None = None) -> None:
    ops = [client.ingest_image(parent, data, image_id=name, tags=tags or []) for name, data in images.items()]
    for op in ops:
        done = client.wait_operation(op.name, timeout=120)
        assert not done.HasField("error"), done.error.message


def _groups(client: DeepLensClient, parent: str, **kwargs: object) -> search_service_pb2.ListDuplicateGroupsResponse:
    request = search_service_pb2.ListDuplicateGroupsRequest(parent=parent, **kwargs)  # type: ignore[arg-type]
    return client.search.ListDuplicateGroups(request, metadata=client.metadata)


def _group_of(client: DeepLensClient, image: str) -> resources_pb2.DuplicateGroup | None:
    got = client.search.GetImage(search_service_pb2.GetImageRequest(name=image), metadata=client.metadata)
    if not got.image.duplicate_group:
        return None
    return client.search.GetDuplicateGroup(
        search_service_pb2.GetDuplicateGroupRequest(name=got.image.duplicate_group), metadata=client.metadata
    ).duplicate_group


def _resolve(
    client: DeepLensClient, group: str, action: int, **kwargs: object
) -> search_service_pb2.ResolveDuplicateGroupResponse:
    request = search_service_pb2.ResolveDuplicateGroupRequest(name=group, action=action, **kwargs)  # type: ignore[arg-type]
    return client.search.ResolveDuplicateGroup(request, metadata=client.metadata)


@pytest.fixture(scope="module")
def library(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> tuple[DeepLensClient, str]:
    """coffee + an exact copy + four transformed copies (one a crop); rocket + one; a stereo pair (two photos
    of one scene: similar, not duplicates); four unrelated photos."""
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/lib"
    images = {"coffee": photos["coffee"], "coffee-copy": photos["coffee"], "rocket": photos["rocket"]}
    images |= {f"coffee-{k}": v for k, v in _variants(photos["coffee"]).items()}
    images["rocket-small"] = _variants(photos["rocket"])["small"]
    for name in ("astronaut", "chelsea", "camera", "moon", "motorcycle-left", "motorcycle-right"):
        images[name] = photos[name]
    _ingest(client, parent, images)
    return client, tenant


def test_tiers_are_explained(library: tuple[DeepLensClient, str], photos: dict[str, bytes]) -> None:
    client, tenant = library
    parent = f"tenants/{tenant}"
    found = client.search.FindDuplicates(
        search_service_pb2.FindDuplicatesRequest(parent=parent, image_content=photos["coffee"]),
        metadata=client.metadata,
    )
    by_name = {m.image.name.rsplit("/", 1)[1]: m for m in found.matches}
    assert by_name["coffee"].tier == by_name["coffee-copy"].tier == TIER.MATCH_TIER_EXACT
    assert by_name["coffee"].rule == "sha256"
    assert by_name["coffee"].scores.phash_distance == 0
    assert by_name["coffee"].scores.cosine > 0.99
    for variant in ("coffee-small", "coffee-mirrored", "coffee-rotated"):
        assert by_name[variant].tier == TIER.MATCH_TIER_NEAR_DUPLICATE, variant
        assert by_name[variant].rule == "hashes"  # flips and rotations included: hashes compare all eight
        assert by_name[variant].scores.phash_distance <= found.policy.max_phash_distance
    # A 10 % crop defeats the hashes; its keypoints align onto the original and the pixels agree.
    cropped = by_name["coffee-cropped"]
    assert cropped.tier == TIER.MATCH_TIER_NEAR_DUPLICATE
    assert cropped.rule == "keypoints"
    assert cropped.scores.detail_distance > found.policy.max_detail_distance
    assert cropped.scores.keypoint_inliers >= found.policy.keypoint_min_inliers
    assert cropped.scores.keypoint_agreement >= found.policy.keypoint_min_agreement
    # Two photos of one scene (a stereo pair): they look alike and share many keypoints, but once aligned their
    # pixels disagree — SIMILAR, with the evidence, never a duplicate.
    stereo = client.search.FindDuplicates(
        search_service_pb2.FindDuplicatesRequest(
            parent=parent, image_name=f"{parent}/collections/lib/images/motorcycle-left", include_similar=True
        ),
        metadata=client.metadata,
    )
    right = next(m for m in stereo.matches if m.image.name.endswith("/motorcycle-right"))
    assert right.tier == TIER.MATCH_TIER_SIMILAR
    assert right.rule == "embedding"
    assert right.scores.cosine >= stereo.policy.similar_min_cosine
    assert right.scores.keypoint_inliers >= stereo.policy.keypoint_min_inliers
    assert 0 < right.scores.keypoint_agreement < stereo.policy.keypoint_min_agreement
    assert all(m.tier == TIER.MATCH_TIER_SIMILAR for m in stereo.matches)
    assert not {"rocket", "astronaut", "chelsea", "camera", "moon", "motorcycle-left"} & set(by_name)
    assert [m.tier for m in found.matches] == sorted(m.tier for m in found.matches)  # strongest first
    assert found.policy.near_duplicate_min_cosine > found.policy.similar_min_cosine > 0

    # A strict policy for this request only (detail hashes must agree to a bit): the resized copy drops to
    # SIMILAR, exact copies stay EXACT.
    strict = client.search.FindDuplicates(
        search_service_pb2.FindDuplicatesRequest(
            parent=parent,
            image_name=f"{parent}/collections/lib/images/coffee",
            policy=resources_pb2.DuplicatePolicy(
                max_phash_distance=1,
                max_dhash_distance=1,
                max_detail_distance=1,
                near_duplicate_min_cosine=0.999,
                similar_min_cosine=0.5,
                keypoint_min_inliers=500,
            ),
            include_similar=True,
        ),
        metadata=client.metadata,
    )
    tiers = {m.image.name.rsplit("/", 1)[1]: m.tier for m in strict.matches}
    assert "coffee" not in tiers  # the query image itself
    assert tiers["coffee-copy"] == TIER.MATCH_TIER_EXACT
    assert tiers["coffee-small"] == TIER.MATCH_TIER_SIMILAR

    # What ingest recorded, as links on the image.
    got = client.search.GetImage(
        search_service_pb2.GetImageRequest(name=f"{parent}/collections/lib/images/coffee-small"),
        metadata=client.metadata,
    )
    linked = {d.image.name.rsplit("/", 1)[1]: d for d in got.duplicates}
    assert {"coffee", "coffee-copy", "coffee-mirrored", "coffee-rotated", "coffee-cropped"} <= set(linked)
    assert linked["coffee"].tier == TIER.MATCH_TIER_NEAR_DUPLICATE
    assert got.image.sha256
    assert got.image.phash
    assert got.image.duplicate_group


def test_groups_keeper_paging_and_storage_report(library: tuple[DeepLensClient, str]) -> None:
    client, tenant = library
    parent = f"tenants/{tenant}"
    listed = _groups(client, parent, view=FULL)
    assert listed.total_size == 2
    groups = {len(g.members): g for g in listed.duplicate_groups}
    coffee, rocket = groups[6], groups[2]
    names = {m.name.rsplit("/", 1)[1] for m in coffee.members}
    assert names == {"coffee", "coffee-copy", "coffee-small", "coffee-mirrored", "coffee-rotated", "coffee-cropped"}
    # Keeper: the largest resolution, then the largest file, then the oldest, then by name.
    # coffee and coffee-copy tie on everything but age (they were indexed concurrently): either may keep.
    assert coffee.keeper.rsplit("/", 1)[1] in ("coffee", "coffee-copy")
    assert coffee.members[0].name == coffee.keeper
    assert rocket.keeper.endswith("/images/rocket")
    sizes = {m.name: m.size_bytes for m in coffee.members}
    assert coffee.total_bytes == sum(sizes.values())
    assert coffee.reclaimable_bytes == coffee.total_bytes - sizes[coffee.keeper]
    assert listed.duplicate_groups[0].reclaimable_bytes >= listed.duplicate_groups[1].reclaimable_bytes
    assert all(link.tier in (TIER.MATCH_TIER_EXACT, TIER.MATCH_TIER_NEAR_DUPLICATE) for link in coffee.links)

    first = _groups(client, parent, page_size=1)
    second = _groups(client, parent, page_size=1, page_token=first.next_page_token)
    assert first.next_page_token
    assert not second.next_page_token
    assert [g.name for g in (*first.duplicate_groups, *second.duplicate_groups)] == [
        g.name for g in listed.duplicate_groups
    ]

    report = client.search.GetStorageReport(
        search_service_pb2.GetStorageReportRequest(parent=parent), metadata=client.metadata
    )
    assert report.total.images == 14
    assert report.total.duplicate_images == 8
    assert report.total.reclaimable_bytes == coffee.reclaimable_bytes + rocket.reclaimable_bytes
    assert [u.key for u in report.by_collection] == [f"{parent}/collections/lib"]
    assert [u.key for u in report.by_storage_location] == ["uploads"]
    assert report.by_collection[0].bytes == report.total.bytes


def test_decisions_are_durable_and_delete_others_leaves_nothing(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    variants = _variants(photos["chelsea"])
    _ingest(client, parent, {"cat": photos["chelsea"], "cat-small": variants["small"], "cat-copy": photos["chelsea"]})
    _ingest(client, parent, {"cup": photos["coffee"], "cup-crop": _variants(photos["coffee"])["mirrored"]})

    # Not duplicates: the group dissolves, and stays dissolved when the same bytes come back under new names.
    cups = _group_of(client, f"{parent}/images/cup")
    assert cups is not None
    dry = _resolve(client, cups.name, ACTION.RESOLVE_ACTION_NOT_DUPLICATES)
    assert dry.dry_run
    assert _group_of(client, f"{parent}/images/cup") is not None
    done = _resolve(client, cups.name, ACTION.RESOLVE_ACTION_NOT_DUPLICATES, force=True, etag=cups.etag)
    assert not done.dry_run
    assert not done.HasField("duplicate_group")
    assert _group_of(client, f"{parent}/images/cup") is None
    _ingest(client, f"tenants/{tenant}/collections/again", {"cup-crop-again": _variants(photos["coffee"])["mirrored"]})
    again = _group_of(client, f"tenants/{tenant}/collections/again/images/cup-crop-again")
    assert again is not None  # an exact copy of cup-crop (no decision on that pair) ...
    assert {m.name.rsplit("/", 1)[1] for m in again.members} == {"cup-crop", "cup-crop-again"}  # ... but not cup

    # Keep all: resolved, out of the default listing, and still resolved after another exact copy arrives.
    cats = _group_of(client, f"{parent}/images/cat")
    assert cats is not None
    assert len(cats.members) == 3
    _resolve(client, cats.name, ACTION.RESOLVE_ACTION_KEEP_ALL, force=True)
    assert cats.name not in {g.name for g in _groups(client, f"tenants/{tenant}").duplicate_groups}
    assert cats.name in {g.name for g in _groups(client, f"tenants/{tenant}", include_resolved=True).duplicate_groups}
    _ingest(client, parent, {"cat-copy-2": photos["chelsea"]})
    cats = _group_of(client, f"{parent}/images/cat")
    assert cats is not None
    assert len(cats.members) == 4
    assert cats.resolved

    # A stale etag is refused; delete the others: a dry run first, then for real.
    with pytest.raises(grpc.RpcError) as stale:
        _resolve(client, cats.name, ACTION.RESOLVE_ACTION_DELETE_OTHERS, etag="0" * 16 + "-1", force=True)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    info = error_info(stale.value)
    assert info is not None
    assert info.reason == "ETAG_MISMATCH"
    preview = _resolve(client, cats.name, ACTION.RESOLVE_ACTION_DELETE_OTHERS, etag=cats.etag)
    assert preview.dry_run
    assert len(preview.deleted_images) == 3
    assert preview.freed_bytes > 0
    assert cats.keeper not in preview.deleted_images
    gone = _resolve(client, cats.name, ACTION.RESOLVE_ACTION_DELETE_OTHERS, etag=cats.etag, force=True)
    assert sorted(gone.deleted_images) == sorted(preview.deleted_images)
    assert not gone.HasField("duplicate_group")
    for name in gone.deleted_images:
        with pytest.raises(grpc.RpcError) as missing:
            client.search.GetImage(search_service_pb2.GetImageRequest(name=name), metadata=client.metadata)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    hits = client.search_images(f"tenants/{tenant}", image_content=photos["chelsea"], top_k=20).results
    assert {h.image.name for h in hits} & set(gone.deleted_images) == set()
    assert cats.keeper in {h.image.name for h in hits}
    keeper = client.search.GetImage(search_service_pb2.GetImageRequest(name=cats.keeper), metadata=client.metadata)
    assert not keeper.image.duplicate_group
    assert keeper.image.thumbnails


def test_list_images_filters_and_delete_image(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    png = io.BytesIO()
    with Image.open(io.BytesIO(photos["camera"])) as img:
        img.save(png, format="PNG")
    _ingest(client, f"tenants/{tenant}/collections/a", {"rocket": photos["rocket"], "moon": photos["moon"]}, ["sky"])
    _ingest(client, f"tenants/{tenant}/collections/b", {"camera": png.getvalue(), "coins": photos["coins"]})

    def names(**kwargs: object) -> list[str]:
        out: list[str] = []
        token = ""
        while True:
            page = client.search.ListImages(
                search_service_pb2.ListImagesRequest(
                    parent=f"tenants/{tenant}", page_size=1, page_token=token, **kwargs
                ),  # type: ignore[arg-type]
                metadata=client.metadata,
            )
            out += [i.name.split("/collections/")[1] for i in page.images]
            token = page.next_page_token
            if not token:
                return out

    assert names() == ["a/images/moon", "a/images/rocket", "b/images/camera", "b/images/coins"]
    assert names(filter=resources_pb2.ImageFilter(tags=["sky"])) == ["a/images/moon", "a/images/rocket"]
    assert names(filter=resources_pb2.ImageFilter(formats=["jpeg"])) == ["a/images/rocket"]
    assert names(filter=resources_pb2.ImageFilter(collections=["b"], min_width=400)) == ["b/images/camera"]

    hits = client.search.SearchImages(
        search_service_pb2.SearchImagesRequest(
            parent=f"tenants/{tenant}", image_content=photos["rocket"], filter=resources_pb2.ImageFilter(tags=["sky"])
        ),
        metadata=client.metadata,
    )
    assert next(h.image.name.split("/collections/")[1] for h in hits.results) == "a/images/rocket"
    assert len(hits.results) == 2
    assert hits.model
    assert hits.processing_time.ToNanoseconds() > 0

    target = f"tenants/{tenant}/collections/a/images/rocket"
    sha = hashlib.sha256(photos["rocket"]).hexdigest()
    stored = Path(stack.config.endpoints["DEEPLENS_BLOB_ROOT"]) / "tenants" / tenant / "thumbnails" / sha[:2]
    files = sorted(p.name for p in stored.glob(f"{sha}-*"))
    assert files == [f"{sha}-150.webp", f"{sha}-300.webp", f"{sha}-600.webp", f"{sha}-orb.bin"]
    features = Keypoints.from_bytes((stored / f"{sha}-orb.bin").read_bytes(), lambda: np.zeros((0, 0), np.uint8))
    assert len(features.points) > 100  # verification features, stored at ingest
    deleted = client.search.DeleteImage(
        search_service_pb2.DeleteImageRequest(name=target, delete_original=True), metadata=client.metadata
    )
    assert deleted.original_deleted
    assert deleted.freed_bytes == len(photos["rocket"])
    assert not list(stored.glob(f"{sha}-*"))  # thumbnails and features go with the image
    assert names() == ["a/images/moon", "b/images/camera", "b/images/coins"]
    with pytest.raises(grpc.RpcError) as missing:
        client.search.GetImageThumbnail(
            search_service_pb2.GetImageThumbnailRequest(name=target), metadata=client.metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    again = client.search_images(f"tenants/{tenant}", image_content=photos["rocket"], top_k=10).results
    assert target not in {h.image.name for h in again}


def test_search_pages_and_colour_ranking(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    _ingest(client, f"tenants/{tenant}/collections/p", dict(list(photos.items())[:12]))

    def search(**kwargs: object) -> search_service_pb2.SearchImagesResponse:
        request = search_service_pb2.SearchImagesRequest(parent=f"tenants/{tenant}", **kwargs)  # type: ignore[arg-type]
        return client.search.SearchImages(request, metadata=client.metadata)

    whole = search(image_content=photos["coffee"], top_k=12)
    first = search(image_content=photos["coffee"], top_k=5)
    second = search(image_content=photos["coffee"], top_k=5, page_token=first.next_page_token)
    assert first.next_page_token
    assert [r.image.name for r in (*first.results, *second.results)] == [r.image.name for r in whole.results[:10]]
    assert not whole.results[0].image.sha256  # BASIC view by default
    assert search(image_content=photos["coffee"], top_k=1, view=FULL).results[0].image.sha256

    # Colour: a flat orange square finds the photos richest in that colour, with a colour score in [0, 1].
    orange = _jpeg(Image.new("RGB", (256, 256), (230, 120, 30)))
    by_colour = search(image_content=orange, top_k=5, ranking=search_service_pb2.SEARCH_RANKING_COLOUR).results
    assert by_colour
    assert all(0.0 <= r.colour_score <= 1.0 for r in by_colour)
    assert [r.score for r in by_colour] == sorted((r.score for r in by_colour), reverse=True)
    assert all(abs(r.score - r.colour_score) < 1e-5 for r in by_colour)
    mixed = search(
        image_content=photos["coffee"], top_k=5, ranking=search_service_pb2.SEARCH_RANKING_COMBINED, colour_weight=0.5
    ).results
    for r in mixed:
        assert abs(r.score - (0.5 * r.visual_score + 0.5 * r.colour_score)) < 1e-4
    assert mixed[0].image.name.endswith("/coffee")


def test_other_tenants_cannot_see_or_resolve_groups(
    library: tuple[DeepLensClient, str], admin: DeepLensClient, connect: ClientFactory
) -> None:
    client, tenant = library
    group = _groups(client, f"tenants/{tenant}").duplicate_groups[0]
    _, intruder = new_tenant(admin, connect, role=resources_pb2.ROLE_EDITOR)
    calls = [
        lambda: intruder.search.GetDuplicateGroup(
            search_service_pb2.GetDuplicateGroupRequest(name=group.name), metadata=intruder.metadata
        ),
        lambda: _resolve(intruder, group.name, ACTION.RESOLVE_ACTION_DELETE_OTHERS, force=True),
        lambda: _groups(intruder, f"tenants/{tenant}"),
        lambda: intruder.search.GetStorageReport(
            search_service_pb2.GetStorageReportRequest(parent=f"tenants/{tenant}"), metadata=intruder.metadata
        ),
        lambda: intruder.search.DeleteImage(
            search_service_pb2.DeleteImageRequest(name=group.keeper), metadata=intruder.metadata
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as denied:
            call()
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(_groups(client, f"tenants/{tenant}").duplicate_groups) == 2


def test_tenant_policy_overrides_defaults(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    default = admin.get_tenant(f"tenants/{tenant}").duplicate_policy
    assert default.near_duplicate_min_cosine > 0
    assert default.max_phash_distance > 0
    update = resources_pb2.Tenant(
        name=f"tenants/{tenant}", duplicate_policy=resources_pb2.DuplicatePolicy(max_phash_distance=3)
    )
    mask = field_mask_pb2.FieldMask(paths=["duplicate_policy"])
    changed = admin.admin.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(tenant=update, update_mask=mask), metadata=admin.metadata
    ).tenant
    assert changed.duplicate_policy.max_phash_distance == 3
    assert changed.duplicate_policy.max_dhash_distance == default.max_dhash_distance  # zero kept the default
    found = client.search.FindDuplicates(
        search_service_pb2.FindDuplicatesRequest(parent=f"tenants/{tenant}", image_content=photos["moon"]),
        metadata=client.metadata,
    )
    assert found.policy.max_phash_distance == 3
    bad = resources_pb2.Tenant(
        name=f"tenants/{tenant}", duplicate_policy=resources_pb2.DuplicatePolicy(near_duplicate_min_cosine=1.5)
    )
    with pytest.raises(grpc.RpcError) as refused:
        admin.admin.UpdateTenant(
            admin_service_pb2.UpdateTenantRequest(tenant=bad, update_mask=mask), metadata=admin.metadata
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
