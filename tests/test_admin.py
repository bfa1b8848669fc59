"""The admin API: tenants, collections, keys and roles, limits and quotas, the audit log, and tenant purge."""

from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from deeplens.client import DeepLensClient, error_info, operation_metadata, rpc_status
from deeplens.v1 import admin_service_pb2, resources_pb2
from deeplens_server.policy import POLICIES
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from PIL import Image

from tests.conftest import ClientFactory, new_tenant

pytestmark = pytest.mark.stack
ROLE = resources_pb2


def _reason(err: grpc.RpcError) -> str:
    info = error_info(err)
    assert info is not None
    return info.reason


def _expect(code: grpc.StatusCode, reason: str, call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call()  # type: ignore[operator]
    assert exc.value.code() == code, exc.value.details()
    assert _reason(exc.value) == reason
    return exc.value


def test_every_rpc_has_a_policy() -> None:
    from deeplens.v1 import admin_service_pb2 as a
    from deeplens.v1 import ingest_service_pb2 as i
    from deeplens.v1 import search_service_pb2 as s
    from google.longrunning import operations_proto_pb2 as o

    methods = {
        f"/{svc.full_name}/{m.name}"
        for module in (a, i, s, o)
        for svc in module.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert methods - POLICIES.keys() == set()


def test_tenant_lifecycle_with_paging_update_and_etag(admin: DeepLensClient) -> None:
    prefix = f"p{uuid.uuid4().hex[:6]}"
    for n in range(5):
        admin.create_tenant(f"{prefix}-{n}", f"Tenant {n}")
    _expect(grpc.StatusCode.ALREADY_EXISTS, "TENANT_EXISTS", lambda: admin.create_tenant(f"{prefix}-0"))

    seen: list[str] = []
    token = ""
    while True:
        reply = admin.admin.ListTenants(
            admin_service_pb2.ListTenantsRequest(page_size=2, page_token=token), metadata=admin.metadata
        )
        assert len(reply.tenants) <= 2
        seen += [t.name for t in reply.tenants]
        token = reply.next_page_token
        if not token:
            break
    assert [f"tenants/{prefix}-{n}" for n in range(5)] == [s for s in seen if s.startswith(f"tenants/{prefix}-")]
    assert seen == sorted(seen)

    tenant = admin.get_tenant(f"tenants/{prefix}-1")
    update = resources_pb2.Tenant(
        name=tenant.name, etag=tenant.etag, limits=resources_pb2.TenantLimits(max_images=7), display_name="ignored"
    )
    reply = admin.admin.UpdateTenant(
        admin_service_pb2.UpdateTenantRequest(
            tenant=update, update_mask=field_mask_pb2.FieldMask(paths=["limits.max_images"])
        ),
        metadata=admin.metadata,
    )
    assert reply.tenant.limits.max_images == 7
    assert reply.tenant.display_name == "Tenant 1"
    assert reply.tenant.etag != tenant.etag
    stale = admin_service_pb2.UpdateTenantRequest(
        tenant=resources_pb2.Tenant(name=tenant.name, etag=tenant.etag, display_name="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )
    _expect(grpc.StatusCode.ABORTED, "ETAG_MISMATCH", lambda: admin.admin.UpdateTenant(stale, metadata=admin.metadata))
    bad_mask = admin_service_pb2.UpdateTenantRequest(
        tenant=resources_pb2.Tenant(name=tenant.name), update_mask=field_mask_pb2.FieldMask(paths=["create_time"])
    )
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
        lambda: admin.admin.UpdateTenant(bad_mask, metadata=admin.metadata),
    )


def test_roles_gate_each_rpc(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> None:
    tenant, owner = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    keys = {
        role: owner.create_api_key(tenant, role)[1] for role in (ROLE.ROLE_VIEWER, ROLE.ROLE_UPLOADER, ROLE.ROLE_EDITOR)
    }
    viewer, uploader, editor = (connect(keys[r]) for r in (ROLE.ROLE_VIEWER, ROLE.ROLE_UPLOADER, ROLE.ROLE_EDITOR))

    denied = grpc.StatusCode.PERMISSION_DENIED
    _expect(denied, "ROLE_TOO_LOW", lambda: viewer.ingest_image(parent, photos["moon"]))
    uploader.index_image(parent, photos["moon"], image_id="moon", timeout=120)
    hits = viewer.search_images(parent, image_content=photos["moon"], top_k=1).results
    assert [h.image.name for h in hits] == [f"{parent}/images/moon"]
    delete = admin_service_pb2.DeleteCollectionRequest(name=parent, force=True)
    _expect(denied, "ROLE_TOO_LOW", lambda: uploader.admin.DeleteCollection(delete, metadata=uploader.metadata))
    _expect(denied, "ROLE_TOO_LOW", lambda: editor.create_api_key(tenant, ROLE.ROLE_VIEWER))
    assert editor.admin.DeleteCollection(delete, metadata=editor.metadata).deleted_images == 1
    assert not viewer.search_images(f"tenants/{tenant}", image_content=photos["moon"]).results
    # A tenant administrator cannot mint a platform key.
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ROLE", lambda: owner.create_api_key(tenant, ROLE.ROLE_PLATFORM_ADMIN)
    )


def test_collections(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> None:
    tenant, client = new_tenant(admin, connect)
    md = client.metadata
    create = admin_service_pb2.CreateCollectionRequest(
        parent=f"tenants/{tenant}",
        collection_id="holidays",
        collection=resources_pb2.Collection(display_name="Holidays"),
    )
    made = client.admin.CreateCollection(create, metadata=md).collection
    assert (made.name, made.display_name, made.image_count) == (f"tenants/{tenant}/collections/holidays", "Holidays", 0)
    _expect(
        grpc.StatusCode.ALREADY_EXISTS, "COLLECTION_EXISTS", lambda: client.admin.CreateCollection(create, metadata=md)
    )
    client.index_image(made.name, photos["coffee"], timeout=120)
    client.index_image(f"tenants/{tenant}/collections/auto", photos["rocket"], timeout=120)
    listed = client.admin.ListCollections(
        admin_service_pb2.ListCollectionsRequest(parent=f"tenants/{tenant}"), metadata=md
    )
    assert [(c.name.rsplit("/", 1)[1], c.image_count) for c in listed.collections] == [("auto", 1), ("holidays", 1)]
    plain = admin_service_pb2.DeleteCollectionRequest(name=made.name)
    _expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "COLLECTION_NOT_EMPTY",
        lambda: client.admin.DeleteCollection(plain, metadata=md),
    )
    assert (
        client.admin.DeleteCollection(
            admin_service_pb2.DeleteCollectionRequest(name=made.name, force=True), metadata=md
        ).deleted_images
        == 1
    )
    _expect(
        grpc.StatusCode.NOT_FOUND,
        "COLLECTION_NOT_FOUND",
        lambda: client.admin.GetCollection(admin_service_pb2.GetCollectionRequest(name=made.name), metadata=md),
    )
    names = [r.image.name for r in client.search_images(f"tenants/{tenant}", image_content=photos["coffee"]).results]
    assert all("/collections/holidays/" not in n for n in names)


def test_api_keys_are_listed_without_secrets_and_revocation_is_immediate(
    admin: DeepLensClient, connect: ClientFactory
) -> None:
    tenant, owner = new_tenant(admin, connect)
    key, secret = owner.create_api_key(tenant, ROLE.ROLE_VIEWER, "ci reader")
    assert secret.startswith("dlk_")
    assert key.name.startswith(f"tenants/{tenant}/apiKeys/")
    reader = connect(secret)
    assert reader.get_tenant(f"tenants/{tenant}").name == f"tenants/{tenant}"
    listed = owner.admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{tenant}"), metadata=owner.metadata
    )
    assert key.name in [k.name for k in listed.api_keys]
    assert secret not in str(listed)
    used = next(k for k in listed.api_keys if k.name == key.name)
    assert used.HasField("last_use_time")  # the reader's call was recorded
    for _ in range(3):  # recorded at most once a minute: more calls keep the first time
        reader.get_tenant(f"tenants/{tenant}")
    again = owner.admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{tenant}"), metadata=owner.metadata
    )
    assert next(k for k in again.api_keys if k.name == key.name).last_use_time == used.last_use_time
    owner.admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=key.name), metadata=owner.metadata)
    _expect(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED", lambda: reader.get_tenant(f"tenants/{tenant}"))


def test_image_limits_and_quota_per_tenant(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    limits = resources_pb2.TenantLimits(max_images=2, max_image_bytes=200_000, max_image_pixels=300_000)
    tenant, client = new_tenant(admin, connect, limits=limits)
    parent = f"tenants/{tenant}/collections/c"
    err = _expect(
        grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE", lambda: client.ingest_image(parent, photos["astronaut"])
    )
    assert error_info(err).metadata["max_bytes"] == "200000"  # type: ignore[union-attr]
    flat = io.BytesIO()
    Image.new("RGB", (1000, 1000), (40, 90, 160)).save(flat, format="PNG")  # few bytes, a million pixels
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_TOO_MANY_PIXELS",
        lambda: client.ingest_image(parent, flat.getvalue()),
    )
    for name in ("coins", "camera"):
        client.index_image(parent, photos[name], timeout=120)
    err = _expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "IMAGE_QUOTA_EXCEEDED", lambda: client.ingest_image(parent, photos["moon"])
    )
    status = rpc_status(err)
    assert status is not None
    quota = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    assert len(quota) == 1


def test_rate_limit_answers_resource_exhausted_with_retry_info(admin: DeepLensClient, connect: ClientFactory) -> None:
    tenant, client = new_tenant(admin, connect, limits=resources_pb2.TenantLimits(requests_per_second=2))

    def call() -> grpc.RpcError | None:
        try:
            client.get_tenant(f"tenants/{tenant}")
        except grpc.RpcError as err:
            return err
        return None

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: call(), range(20)))
    elapsed = time.monotonic() - started
    errors = [r for r in results if r is not None]
    passed = len(results) - len(errors)
    # A full bucket holds 2x the rate (4); it refills at 2/s while the burst is in flight.
    assert 4 <= passed <= 4 + 2 * elapsed + 1
    assert errors
    assert {(e.code(), _reason(e)) for e in errors} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")}
    delays = []
    for err in errors:
        status = rpc_status(err)
        assert status is not None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                delays.append(info.retry_delay.ToTimedelta().total_seconds())
    assert len(delays) == len(errors)
    assert all(0 < d <= 1 for d in delays)
    time.sleep(1.1)
    assert client.get_tenant(f"tenants/{tenant}").name == f"tenants/{tenant}"


def test_audit_log_records_mutations_with_actor_and_outcome(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, owner = new_tenant(admin, connect)
    key, secret = owner.create_api_key(tenant, ROLE.ROLE_VIEWER)
    viewer = connect(secret)
    with pytest.raises(grpc.RpcError):
        viewer.ingest_image(f"tenants/{tenant}/collections/c", photos["moon"])
    owner.index_image(f"tenants/{tenant}/collections/c", photos["moon"], timeout=120)
    viewer.search_images(f"tenants/{tenant}", image_content=photos["moon"])  # a read: not audited
    events = owner.admin.ListAuditEvents(
        admin_service_pb2.ListAuditEventsRequest(parent=f"tenants/{tenant}", page_size=100), metadata=owner.metadata
    ).audit_events
    rows = [(e.method.rsplit("/", 1)[1], e.outcome, e.actor) for e in events]
    assert ("IngestImage", "OK", owner_actor(owner, tenant, events)) in rows
    assert ("IngestImage", "PERMISSION_DENIED", key.name) in rows
    assert ("CreateApiKey", "OK", owner_actor(owner, tenant, events)) in rows
    assert not [r for r in rows if r[0] == "SearchImages"]
    times = [e.time.ToDatetime() for e in events]
    assert times == sorted(times, reverse=True)
    assert any(e.actor.startswith("platform/apiKeys/") for e in events)  # the platform admin created the first key
    _expect(
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_TOO_LOW",
        lambda: viewer.admin.ListAuditEvents(
            admin_service_pb2.ListAuditEventsRequest(parent=f"tenants/{tenant}"), metadata=viewer.metadata
        ),
    )


def owner_actor(owner: DeepLensClient, tenant: str, events: object) -> str:
    stub = owner.admin
    keys = stub.ListApiKeys(admin_service_pb2.ListApiKeysRequest(parent=f"tenants/{tenant}"), metadata=owner.metadata)
    admins = [k.name for k in keys.api_keys if k.role == ROLE.ROLE_TENANT_ADMIN]
    assert len(admins) == 1
    return admins[0]


def test_delete_tenant_dry_run_then_purge(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    for name in ("coffee", "chelsea", "rocket"):
        client.index_image(parent, photos[name], timeout=120)
    other, other_client = new_tenant(admin, connect)
    other_client.index_image(f"tenants/{other}/collections/c", photos["coffee"], timeout=120)

    def purge(force: bool) -> admin_service_pb2.PurgeTenantResponse:
        op = admin.admin.DeleteTenant(
            admin_service_pb2.DeleteTenantRequest(name=f"tenants/{tenant}", force=force, delete_originals=True),
            metadata=admin.metadata,
        )
        done = admin.wait_operation(op.name, timeout=120)
        assert not done.HasField("error"), done.error
        assert operation_metadata(done).state == resources_pb2.OPERATION_STATE_SUCCEEDED
        response = admin_service_pb2.PurgeTenantResponse()
        done.response.Unpack(response)
        return response

    dry = purge(force=False)
    assert (dry.dry_run, dry.images, dry.vectors, dry.api_keys, dry.original_files) == (True, 3, 3, 1, 3)
    assert client.search_images(parent, image_content=photos["coffee"]).results  # nothing removed yet

    done = purge(force=True)
    assert (done.dry_run, done.images, done.vectors) == (False, 3, 3)
    _expect(grpc.StatusCode.UNAUTHENTICATED, "TENANT_DELETED", lambda: client.get_tenant(f"tenants/{tenant}"))
    assert admin.get_tenant(f"tenants/{tenant}").HasField("delete_time")
    again = purge(force=False)
    assert (again.images, again.vectors, again.original_files, again.api_keys) == (0, 0, 0, 0)
    # The other tenant is untouched.
    hits = other_client.search_images(f"tenants/{other}", image_content=photos["coffee"]).results
    assert [h.image.name.split("/")[1] for h in hits] == [other]
    _expect(grpc.StatusCode.INVALID_ARGUMENT, "TENANT_DELETED", lambda: admin.create_api_key(tenant, ROLE.ROLE_VIEWER))


def test_platform_key_holds_no_tenant_data(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    client.index_image(parent, photos["coins"], timeout=120)
    _expect(
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
        lambda: admin.search_images(parent, image_content=photos["coins"]),
    )
    _expect(grpc.StatusCode.PERMISSION_DENIED, "TENANT_MISMATCH", lambda: admin.ingest_image(parent, photos["coins"]))
    listing = admin_service_pb2.ListCollectionsRequest(parent=f"tenants/{tenant}")
    _expect(
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_MISMATCH",
        lambda: admin.admin.ListCollections(listing, metadata=admin.metadata),
    )
    # What it may do: read the tenant itself.
    assert admin.get_tenant(f"tenants/{tenant}").name == f"tenants/{tenant}"


def test_concurrent_operation_limit(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> None:
    limits = resources_pb2.TenantLimits(max_concurrent_operations=1, requests_per_second=1000)
    tenant, client = new_tenant(admin, connect, limits=limits)
    parent = f"tenants/{tenant}/collections/c"
    accepted, refused = [], []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle-left", "motorcycle-right"):
        try:
            accepted.append(client.ingest_image(parent, photos[name], image_id=name))
        except grpc.RpcError as err:
            refused.append(err)
    assert accepted
    assert refused  # submitted faster than one image is indexed: the second in flight is refused
    assert {(e.code(), _reason(e)) for e in refused} == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_OPERATIONS")}
    for op in accepted:
        assert not client.wait_operation(op.name, timeout=120).HasField("error")
    # Once nothing is in flight, the next one is accepted again.
    assert client.index_image(parent, photos["moon"], timeout=120).name


def test_hostile_names_are_still_audited_and_nul_text_is_refused(
    admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, owner = new_tenant(admin, connect)
    hostile = f"tenants/{tenant}/apiKeys/\x00'; DROP TABLE audit_events; --"
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RESOURCE_NAME",
        lambda: owner.admin.RevokeApiKey(admin_service_pb2.RevokeApiKeyRequest(name=hostile), metadata=owner.metadata),
    )
    events = owner.admin.ListAuditEvents(
        admin_service_pb2.ListAuditEventsRequest(parent=f"tenants/{tenant}"), metadata=owner.metadata
    ).audit_events
    assert events[0].method.endswith("RevokeApiKey")
    assert events[0].outcome == "INVALID_ARGUMENT"
    assert events[0].resource == f"tenants/{tenant}/apiKeys/\\x00'; DROP TABLE audit_events; --"
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST_ID",
        lambda: owner.ingest_image(f"tenants/{tenant}/collections/c", photos["moon"], request_id="a\x00b"),
    )
    _expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        lambda: owner.admin.ListCollections(
            admin_service_pb2.ListCollectionsRequest(parent=f"tenants/{tenant}", page_token="eyJhIjogIlx1MDAwMCJ9"),
            metadata=owner.metadata,
        ),
    )
