"""Ingest at scale: many-item operations with exact counts through corrupt input, a killed worker, pauses,
cancellation, and watchers that disconnect and resume across a server restart."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
import time

import asyncpg
import grpc
import numpy as np
import pytest
from deeplens.client import DeepLensClient, error_info, operation_metadata
from deeplens.v1 import ingest_service_pb2, resources_pb2
from deeplens_server.vectors import GRPC_OPTIONS, VectorIndex, collection_name
from deeplens_stack import Stack
from google.longrunning import operations_proto_pb2 as operations_pb2
from PIL import Image
from pymilvus import MilvusClient, MilvusException

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack
FAST = resources_pb2.TenantLimits(requests_per_second=10_000)
STATE = resources_pb2


def _jpeg(seed: int, size: tuple[int, int] = (64, 48), quality: int = 85) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _batch(n: int, seed: int = 0) -> list[tuple[bytes, str, list[str]]]:
    return [(_jpeg(seed * 100_000 + i), f"img-{i:05d}", ["batch"]) for i in range(n)]


def _wait(client: DeepLensClient, name: str, timeout: float = 300) -> operations_pb2.Operation:
    return client.wait_operation(name, timeout=timeout)


async def _stored_counts(stack: Stack, tenant: str) -> tuple[int, int]:
    """(image rows, vectors) the tenant holds, read straight from PostgreSQL and Milvus."""
    conn = await asyncpg.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"])
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
            rows = int(await conn.fetchval("SELECT count(*) FROM images"))
    finally:
        await conn.close()
    found: list[dict[str, str]] = []
    for attempt in range(3):  # a fresh client each time: a broken cached channel must not fail the count
        milvus = MilvusClient(uri=stack.config.endpoints["DEEPLENS_MILVUS_URI"], timeout=60, grpc_options=GRPC_OPTIONS)
        try:
            found = milvus.query(
                collection_name("efficientnet_lite0", "1"), filter=VectorIndex._scope(tenant), output_fields=["pk"]
            )
            break
        except MilvusException:
            if attempt == 2:
                raise
            await asyncio.sleep(1)
        finally:
            milvus.close()
    pks = [v["pk"] for v in found]
    assert len(pks) == len(set(pks))
    return rows, len(pks)


async def _settled_counts(stack: Stack, tenant: str, expected: tuple[int, int]) -> tuple[int, int]:
    """``_stored_counts`` once they equal ``expected``, or after 10 s. A lost row still fails (CI on Milvus Lite
    once found 948 of 950 vectors for good: concurrent writers losing rows, now prevented by
    deeplens_stack.lite_writes); a read that misses a row only for a moment is reported and read again."""
    counts = await _stored_counts(stack, tenant)
    for _ in range(10):
        if counts == expected:
            break
        print(f"\nstored counts {counts}, expected {expected}: reading again")
        await asyncio.sleep(1)
        counts = await _stored_counts(stack, tenant)
    if counts != expected:
        await _report_missing(stack, tenant)
    return counts


async def _report_missing(stack: Stack, tenant: str) -> None:
    """Prints the images with a row but no vector found by the tenant filter, and what a lookup by key finds."""
    conn = await asyncpg.connect(stack.config.endpoints["DEEPLENS_POSTGRES_DSN"])
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('deeplens.tenant', $1, true)", tenant)
            rows = await conn.fetch("SELECT collection_id, image_id FROM images")
    finally:
        await conn.close()
    milvus = MilvusClient(uri=stack.config.endpoints["DEEPLENS_MILVUS_URI"], timeout=60, grpc_options=GRPC_OPTIONS)
    try:
        name = collection_name("efficientnet_lite0", "1")
        found = {v["pk"] for v in milvus.query(name, filter=VectorIndex._scope(tenant), output_fields=["pk"])}
        stored = (VectorIndex._pk(tenant, r["collection_id"], r["image_id"]) for r in rows)
        missing = [pk for pk in stored if pk not in found]
        by_key = milvus.query(name, filter=VectorIndex._by_pks(missing), output_fields=["*"]) if missing else []
        print(f"\nno vector found by tenant filter: {missing}; by key: {[{**r, 'embedding': '...'} for r in by_key]}")
    finally:
        milvus.close()


def test_thousand_images_with_five_percent_corrupt_end_with_exact_counts(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    images = _batch(1000, seed=1)
    corrupt = set(range(0, 1000, 20))  # 50 items: half refused at the door, half broken after the header
    for i in sorted(corrupt):
        content, image_id, tags = images[i]
        images[i] = ((b"not an image " * 8) if i % 40 == 0 else content[: len(content) // 3], image_id, tags)
    started = time.monotonic()
    op = client.upload_images(f"tenants/{tenant}/collections/bulk", images, timeout=300)
    submitted = time.monotonic() - started
    done = _wait(client, op.name, timeout=600)
    elapsed = time.monotonic() - started
    meta = operation_metadata(done)
    assert done.done
    assert not done.HasField("error")
    assert (meta.total, meta.processed, meta.succeeded, meta.failed, meta.remaining) == (1000, 1000, 950, 50, 0)
    assert meta.state == STATE.OPERATION_STATE_SUCCEEDED
    assert meta.percent == 100
    assert len(meta.failures) == 20
    response = ingest_service_pb2.IngestImagesResponse()
    done.response.Unpack(response)
    assert (response.succeeded, response.failed) == (950, 50)

    failed_items, token = [], ""
    while True:
        page = client.ingest.ListOperationFailures(
            ingest_service_pb2.ListOperationFailuresRequest(name=op.name, page_size=20, page_token=token),
            metadata=client.metadata,
        )
        failed_items += [(f.item, f.image_id, error_info(f.status).reason) for f in page.failures]  # type: ignore[union-attr]
        token = page.next_page_token
        if not token:
            break
    assert [i for i, _, _ in failed_items] == sorted(corrupt)
    assert {reason for _, _, reason in failed_items} == {"IMAGE_UNDECODABLE"}
    assert asyncio.run(_settled_counts(stack, tenant, (950, 950))) == (950, 950)
    print(f"\n1000-image upload: submitted in {submitted:.1f} s, done in {elapsed:.1f} s ({1000 / elapsed:.0f} img/s)")


def test_worker_killed_mid_batch_finishes_with_exact_counts(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    op = client.upload_images(f"tenants/{tenant}/collections/c", _batch(300, seed=2), timeout=120)
    deadline = time.monotonic() + 120
    while operation_metadata(client.get_operation(op.name)).processed < 40:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        # Mid-batch, with jobs in flight; stop() returns once the process is gone, so up() starts a new one.
        assert stack.procs.stop("worker", sig=signal.SIGKILL)
        at_kill = operation_metadata(client.get_operation(op.name)).processed
    finally:
        stack.up()  # a new worker, whatever happened above; the dead one's jobs come back after their limit
    assert stack.procs.running("worker")
    assert at_kill < 300
    done = _wait(client, op.name, timeout=200)  # below the per-test limit: a stall fails here, readably
    meta = operation_metadata(done)
    assert (meta.total, meta.processed, meta.succeeded, meta.failed) == (300, 300, 300, 0)
    assert asyncio.run(_settled_counts(stack, tenant, (300, 300))) == (300, 300)


def test_chunked_upload_of_a_large_image_and_malformed_streams(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    parent = f"tenants/{tenant}/collections/big"
    large = _jpeg(7, size=(2400, 1800), quality=95)
    assert len(large) > 3_000_000
    op = client.upload_images(parent, [(large, "large", ["big"])], chunk_bytes=256 * 1024)
    done = _wait(client, op.name)
    assert operation_metadata(done).succeeded == 1
    result = client.search_images(parent, image_name=f"{parent}/images/large", top_k=1)
    assert list(result.results) == []  # the only image; search by name leaves itself out
    hits = client.search_images(parent, image_content=large, top_k=1).results
    assert [(h.image.width, h.image.height) for h in hits] == [(2400, 1800)]

    def stream(messages: list[ingest_service_pb2.UploadImagesRequest]) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as exc:
            client.ingest.UploadImages(iter(messages), metadata=client.metadata, timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return exc.value

    header = ingest_service_pb2.UploadImagesRequest(header=ingest_service_pb2.UploadHeader(parent=parent))
    chunk = ingest_service_pb2.UploadImagesRequest(chunk=ingest_service_pb2.ImageChunk(item=0, data=b"\xff\xd8"))
    assert error_info(stream([chunk])).reason == "HEADER_MISSING"  # type: ignore[union-attr]
    assert error_info(stream([header, chunk])).reason == "IMAGE_INCOMPLETE"  # type: ignore[union-attr]
    assert error_info(stream([header])).reason == "EMPTY_UPLOAD"  # type: ignore[union-attr]


def test_pause_resume_cancel_list_delete_wait(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    md = client.metadata
    parent = f"tenants/{tenant}/collections/c"
    op = client.upload_images(parent, _batch(120, seed=3))
    paused = client.ingest.PauseOperation(ingest_service_pb2.PauseOperationRequest(name=op.name), metadata=md)
    assert operation_metadata(paused).paused
    time.sleep(2.0)  # items already in flight finish; nothing new starts
    before = operation_metadata(client.get_operation(op.name)).processed
    time.sleep(1.5)
    after = client.get_operation(op.name)
    assert operation_metadata(after).processed == before < 120
    assert not after.done
    client.ingest.ResumeOperation(ingest_service_pb2.ResumeOperationRequest(name=op.name), metadata=md)
    done = _wait(client, op.name)
    assert (operation_metadata(done).succeeded, operation_metadata(done).state) == (
        120,
        STATE.OPERATION_STATE_SUCCEEDED,
    )

    big = client.upload_images(parent, _batch(400, seed=4))
    client.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=big.name), metadata=md)
    cancelled = _wait(client, big.name)
    meta = operation_metadata(cancelled)
    assert meta.state == STATE.OPERATION_STATE_CANCELLED
    assert meta.processed == meta.total == 400
    assert meta.succeeded < 400
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]

    waited = client.operations.WaitOperation(operations_pb2.WaitOperationRequest(name=op.name), metadata=md, timeout=30)
    assert waited.done

    def listed(text: str) -> list[str]:
        request = operations_pb2.ListOperationsRequest(name=f"tenants/{tenant}", filter=text, page_size=1)
        names, token = [], ""
        while True:
            request.page_token = token
            reply = client.operations.ListOperations(request, metadata=md)
            names += [o.name for o in reply.operations]
            token = reply.next_page_token
            if not token:
                return names

    assert listed("") == [big.name, op.name]  # newest first, paged one by one
    assert listed("state = SUCCEEDED") == [op.name]
    assert listed("state = CANCELLED OR state = FAILED") == [big.name]
    assert listed("done = false") == []
    with pytest.raises(grpc.RpcError) as exc:
        listed("name = x")
    assert error_info(exc.value).reason == "INVALID_FILTER"  # type: ignore[union-attr]

    client.operations.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name), metadata=md)
    with pytest.raises(grpc.RpcError) as exc:
        client.get_operation(op.name)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_tenant_watch_resumes_after_disconnect_and_server_restart(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    other, other_client = new_tenant(admin, connect, limits=FAST)
    parent = f"tenants/{tenant}/collections/c"
    seen: list[tuple[str, int, bool, str]] = []
    lock = threading.Lock()

    def follow(token: str, stop_after: int | None, stop: threading.Event) -> None:
        request = ingest_service_pb2.WatchOperationsRequest(parent=f"tenants/{tenant}", resume_token=token)
        call = client.ingest.WatchOperations(request, metadata=client.metadata, timeout=240)
        try:
            for reply in call:
                meta = operation_metadata(reply.operation)
                with lock:
                    seen.append((reply.operation.name, meta.processed, reply.operation.done, reply.resume_token))
                    count = len(seen)
                if (stop_after is not None and count >= stop_after) or stop.is_set():
                    call.cancel()
                    return
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise

    first_stop = threading.Event()
    watcher = threading.Thread(target=follow, args=("", 3, first_stop))
    watcher.start()
    time.sleep(0.5)
    first = client.upload_images(parent, _batch(60, seed=5))
    other_client.upload_images(f"tenants/{other}/collections/c", _batch(10, seed=6))
    watcher.join(timeout=120)
    assert not watcher.is_alive()
    token = seen[-1][3]
    assert token

    try:
        stack.procs.stop("server")  # the watcher's server goes away; state lives in PostgreSQL and Redis
    finally:
        stack.up()
    second_op = client.upload_images(parent, _batch(30, seed=7))
    _wait(client, first.name)
    _wait(client, second_op.name)

    resumed_stop = threading.Event()
    resumed = threading.Thread(target=follow, args=(token, None, resumed_stop))
    resumed.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            finished = {name for name, _, done, _ in seen if done}
        if {first.name, second_op.name} <= finished:
            break
        time.sleep(0.2)
    resumed_stop.set()
    client.upload_images(parent, _batch(1, seed=8))  # one more event, so the watcher notices the stop
    resumed.join(timeout=60)
    with lock:
        names = {name for name, _, _, _ in seen}
        finished = {name for name, _, done, _ in seen if done}
    assert {first.name, second_op.name} <= finished  # nothing missed across the disconnect and the restart
    assert all(name.startswith(f"tenants/{tenant}/") for name in names)  # never another tenant's


def test_dead_letters_after_a_dependency_outage_can_be_retried(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, client = new_tenant(admin, connect, limits=FAST)
    stack.procs.stop("triton")  # the embedding service is down: every item fails transiently
    try:
        op = client.upload_images(f"tenants/{tenant}/collections/c", _batch(3, seed=9))
        failed = _wait(client, op.name, timeout=180)  # retried with backoff, then dead-lettered
    finally:
        stack.up()
    meta = operation_metadata(failed)
    assert (meta.state, meta.processed, meta.failed) == (STATE.OPERATION_STATE_FAILED, 3, 3)
    assert error_info(failed.error).reason == "ALL_ITEMS_FAILED"  # type: ignore[union-attr]
    assert all(f.retryable for f in meta.failures)
    assert {error_info(f.status).reason for f in meta.failures} == {"EMBEDDING_UNAVAILABLE"}  # type: ignore[union-attr]

    reopened = client.ingest.RetryDeadLetters(
        ingest_service_pb2.RetryDeadLettersRequest(name=op.name), metadata=client.metadata
    )
    assert not reopened.done
    done = _wait(client, op.name)
    meta = operation_metadata(done)
    assert (meta.state, meta.processed, meta.succeeded, meta.failed) == (STATE.OPERATION_STATE_SUCCEEDED, 3, 3, 0)
    assert not done.HasField("error")
