"""The demo: bring the stack up, ingest sample photos while streaming progress, search with an edited copy."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from deeplens.client import DeepLensClient, error_info, operation_metadata
from deeplens.v1 import admin_service_pb2, resources_pb2, search_service_pb2
from PIL import Image, ImageOps

from deeplens_stack.photos import edited_copy, sample_photos
from deeplens_stack.stack import Stack

TENANT = "demo"
PARENT = f"tenants/{TENANT}/collections/photos"
QUERY_PHOTO = "chelsea"


def _state(value: int) -> str:
    return resources_pb2.OperationState.Name(value).removeprefix("OPERATION_STATE_")  # type: ignore[arg-type]


def run_demo(stack: Stack) -> int:
    print("== Starting the embedded stack (data in", stack.data_dir, ")")
    t0 = time.monotonic()
    timings = stack.up()
    print("   ready in %.1f s: " % (time.monotonic() - t0) + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

    with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key()) as admin:
        try:
            admin.create_tenant(TENANT, "DeepLens demo")
            print(f"== Created tenant {TENANT!r} (as the platform administrator)")
        except grpc.RpcError as err:
            info = error_info(err)
            if info is None or info.reason != "TENANT_EXISTS":
                raise
            print(f"== Tenant {TENANT!r} exists already")
        key, secret = admin.create_api_key(TENANT, resources_pb2.ROLE_EDITOR, "demo")
        print(f"== Created API key {key.name} (editor); the demo calls with it from here on")

    with DeepLensClient(stack.config.grpc_target, api_key=secret) as client:
        photos = sample_photos()
        print(f"== Ingesting {len(photos)} photos from scikit-image into {PARENT}; the progress stream:")
        start = time.monotonic()
        ops = {
            name: client.ingest_image(PARENT, data, image_id=name, tags=["demo", "scikit-image"])
            for name, data in photos.items()
        }
        lock = threading.Lock()
        outcome: dict[str, str] = {}

        def follow(name: str, op_name: str) -> None:
            for op in client.watch_operation(op_name, timeout=300):
                meta = operation_metadata(op)
                with lock:
                    print(f"   {time.monotonic() - start:6.2f}s  {name:<20} {_state(meta.state):<10} {meta.stage}")
                if op.done:
                    outcome[name] = "ok" if not op.HasField("error") else op.error.message

        with ThreadPoolExecutor(max_workers=len(ops)) as pool:
            for future in [pool.submit(follow, n, op.name) for n, op in ops.items()]:
                future.result()
        elapsed = time.monotonic() - start
        ok = sum(1 for v in outcome.values() if v == "ok")
        print(f"== Ingested {ok}/{len(ops)} in {elapsed:.2f} s ({len(ops) / elapsed:.1f} images/s)")
        for name, why in outcome.items():
            if why != "ok":
                print(f"   {name}: {why}")

        query = edited_copy(photos[QUERY_PHOTO])
        print(f"== Searching with an edited copy of {QUERY_PHOTO!r} (8% crop per side, 60% size, JPEG q70):")
        t1 = time.monotonic()
        reply = client.search_images(PARENT, image_content=query, top_k=5)
        latency = (time.monotonic() - t1) * 1000
        print(f"   {'rank':>4}  {'score':>6}  {'image':<58} size")
        for rank, result in enumerate(reply.results, 1):
            img = result.image
            print(f"   {rank:>4}  {result.score:6.3f}  {img.name:<58} {img.width}x{img.height} {img.format}")
        top = reply.results[0].image.name if reply.results else ""
        found = top.endswith(f"/images/{QUERY_PHOTO}")
        print(f"   model {reply.model}, {latency:.0f} ms; top-1 is the original: {'yes' if found else 'NO'}")

        probe = f"{PARENT}/images/motorcycle-left"
        print(f"== Searching by indexed image name {probe}:")
        reply = client.search_images(PARENT, image_name=probe, top_k=3)
        for rank, result in enumerate(reply.results, 1):
            print(f"   {rank:>4}  {result.score:6.3f}  {result.image.name}")

        grouped = show_duplicates(client, photos)
        switched = show_model_switch(stack, client, query)

    print(f"== The stack is still running at {stack.config.grpc_target}. Try, with the demo's editor key:")
    print(f"   .venv/bin/grpcurl -plaintext {stack.config.grpc_target} list")
    print(
        f"   .venv/bin/grpcurl -plaintext -H 'authorization: Bearer {secret}' -d '{{\"name\": \"tenants/{TENANT}\"}}' "
        f"{stack.config.grpc_target} deeplens.v1.AdminService/GetTenant"
    )
    print("   Stop everything with: python3 dev.py down")
    return 0 if found and ok == len(ops) and grouped and switched else 1


def show_model_switch(stack: Stack, client: DeepLensClient, query: bytes) -> bool:
    """Moves the tenant to the other embedding model (the platform administrator calls ReindexTenant)."""
    with DeepLensClient(stack.config.grpc_target, api_key=stack.admin_key()) as admin:
        current = admin.get_tenant(f"tenants/{TENANT}").embedding_model
        target = next(m.name for m in admin.list_models() if m.ready and m.name != current)
        print(f"== Moving tenant {TENANT!r} from {current} to {target} (ReindexTenant): every image is embedded")
        print(f"   again into {target}'s own collection while searches go on, then searches switch at once")
        started = time.monotonic()
        final = admin.wait_operation(admin.reindex_tenant(TENANT, target).name, timeout=300)
    moved = admin_service_pb2.ReindexTenantResponse()
    if final.HasField("error") or not final.response.Unpack(moved):
        print(f"   the re-index failed: {final.error.message}")
        return False
    print(f"   {moved.images} images embedded again in {time.monotonic() - started:.1f} s")
    reply = client.search_images(PARENT, image_content=query, top_k=1)
    top = reply.results[0] if reply.results else None
    print(f"   the edited {QUERY_PHOTO!r} again: model {reply.model}, top-1 {top.image.name if top else '-'}"
          f" ({top.score if top else 0:.3f})")  # fmt: skip
    return reply.model == target and top is not None and top.image.name.endswith(f"/images/{QUERY_PHOTO}")


def show_duplicates(client: DeepLensClient, photos: dict[str, bytes]) -> bool:
    """Uploads copies of two photos (the same bytes, a mirrored one, a cropped and shrunk one) next to the
    originals, lists the duplicate groups and the storage report, and asks what the cropped copy is.
    Returns whether all three copies were grouped."""
    copies = {
        "coffee-again": photos["coffee"],
        "coffee-edited": edited_copy(photos["coffee"]),
        "rocket-mirrored": mirrored(photos["rocket"]),
    }
    print(f"== Uploading {len(copies)} copies ({', '.join(copies)}) into tenants/{TENANT}/collections/inbox")
    op = client.upload_images(f"tenants/{TENANT}/collections/inbox", [(d, n, ["copy"]) for n, d in copies.items()])
    client.wait_operation(op.name, timeout=300)
    print(f"   the operation counted {operation_metadata(client.get_operation(op.name)).duplicates} duplicates")
    groups = client.search.ListDuplicateGroups(
        search_service_pb2.ListDuplicateGroupsRequest(parent=f"tenants/{TENANT}"), metadata=client.metadata
    )
    print(f"== {groups.total_size} duplicate groups (largest reclaimable first); the keeper is marked *")
    for group in groups.duplicate_groups:
        print(f"   {group.name}: {len(group.members)} images, {group.reclaimable_bytes:,} bytes reclaimable")
        for member in group.members:
            mark = "*" if member.name == group.keeper else " "
            print(f"     {mark} {member.name:<54} {member.width}x{member.height} {member.size_bytes:>9,} B")
        for link in group.links:
            tier = resources_pb2.MatchTier.Name(link.tier).removeprefix("MATCH_TIER_")
            a, b = link.image_a.rsplit("/", 1)[1], link.image_b.rsplit("/", 1)[1]
            print(f"       {a} ~ {b}: {tier} by {link.rule} ({_evidence(link.scores)})")
    report = client.search.GetStorageReport(
        search_service_pb2.GetStorageReportRequest(parent=f"tenants/{TENANT}"), metadata=client.metadata
    )
    total = report.total
    print(f"== Storage: {total.images} images, {total.bytes:,} bytes; {total.reclaimable_bytes:,} reclaimable")
    for usage in report.by_collection:
        print(f"   {usage.key:<40} {usage.images:>4} images {usage.bytes:>11,} B {usage.reclaimable_bytes:>11,} B")
    found = client.search.FindDuplicates(
        search_service_pb2.FindDuplicatesRequest(
            parent=f"tenants/{TENANT}",
            image_name=f"tenants/{TENANT}/collections/inbox/images/coffee-edited",
            include_similar=True,
        ),
        metadata=client.metadata,
    )
    print("== FindDuplicates for coffee-edited (cropped 8 % a side, shrunk): the crop moves every hash, the")
    print("   keypoints align it onto the original and the pixels agree")
    for m in found.matches[:3]:
        tier = resources_pb2.MatchTier.Name(m.tier).removeprefix("MATCH_TIER_")
        print(f"   {tier:<15} {m.image.name:<54} by {m.rule} ({_evidence(m.scores)})")
    names = {m.name.rsplit("/", 1)[1] for g in groups.duplicate_groups for m in g.members}
    return {"coffee-again", "coffee-edited", "rocket-mirrored"} <= names


def _evidence(scores: resources_pb2.MatchScores) -> str:
    text = f"pHash {scores.phash_distance}, dHash {scores.dhash_distance}, cosine {scores.cosine:.3f}"
    if scores.keypoint_inliers:
        text += f", {scores.keypoint_inliers} keypoints, {scores.keypoint_agreement:.0%} of pixels agree"
    return text


def mirrored(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        ImageOps.mirror(img.convert("RGB")).save(out, format="JPEG", quality=90)
    return out.getvalue()
