"""Model lifecycle on the live stack: a tenant moves to another embedding model version (MobileNetV2) and back
by a re-index operation; searches work throughout and switch in one step; vectors of different versions are
never compared; other tenants are untouched."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from deeplens.client import DeepLensClient, error_info
from deeplens.v1 import admin_service_pb2, ingest_service_pb2, resources_pb2
from deeplens_server.vectors import VectorIndex
from deeplens_stack.stack import Stack
from google.longrunning import operations_proto_pb2 as operations_pb2
from pymilvus import MilvusClient

from tests.conftest import ClientFactory, new_tenant, wait_until

EFFICIENTNET = "efficientnet_lite0@1"
MOBILENET = "mobilenet_v2@1"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "coins", "camera", "moon", "brick", "grass", "page")


def _vectors(stack: Stack, tenant: str, model: str) -> int:
    client = MilvusClient(uri=stack.config.endpoints["DEEPLENS_MILVUS_URI"])
    try:
        rows = client.query(VectorIndex.collection(model), filter=f'tenant_id == "{tenant}"', output_fields=["pk"])
    finally:
        client.close()
    return len(rows)


def _reason(err: Any) -> str:
    info = error_info(err)
    return info.reason if info is not None else ""


def _reindex(client: DeepLensClient, tenant: str, model: str) -> operations_pb2.Operation:
    op = client.reindex_tenant(tenant, model)
    return client.wait_operation(op.name, timeout=240)


def _response(op: operations_pb2.Operation) -> admin_service_pb2.ReindexTenantResponse:
    assert op.done
    assert not op.HasField("error"), op.error
    response = admin_service_pb2.ReindexTenantResponse()
    assert op.response.Unpack(response)
    return response


class Searcher(threading.Thread):
    """Searches for a photo again and again while a re-index runs, recording (model, top-1 id) each time."""

    def __init__(self, client: DeepLensClient, parent: str, photo: bytes) -> None:
        super().__init__(daemon=True)
        self.client, self.parent, self.photo = client, parent, photo
        self.seen: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.client.search_images(self.parent, image_content=self.photo, top_k=3)
                self.seen.append((reply.model, reply.results[0].image.name.rsplit("/", 1)[-1]))
            except grpc.RpcError as exc:
                self.errors.append(str(exc))


@pytest.mark.stack
def test_tenant_moves_to_another_model_and_back(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    bystander, other = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/lifecycle"
    for name in PHOTOS:
        client.index_image(parent, photos[name], image_id=name, timeout=120)
    other_parent = f"tenants/{bystander}/collections/c"
    other.index_image(other_parent, photos["chelsea"], image_id="chelsea", timeout=120)
    assert client.get_tenant(f"tenants/{tenant}").embedding_model == EFFICIENTNET
    before = client.search_images(parent, image_content=photos["chelsea"], top_k=3)
    assert (before.model, before.results[0].image.name.rsplit("/", 1)[-1]) == (EFFICIENTNET, "chelsea")

    # Searches run all through the re-index, and an image arrives while it runs.
    searcher = Searcher(client, parent, photos["chelsea"])
    searcher.start()
    op = client.reindex_tenant(tenant, MOBILENET)
    late = client.ingest_image(parent, photos["motorcycle-left"], image_id="late")
    assert client.wait_operation(late.name, timeout=120).done
    done = client.wait_operation(op.name, timeout=240)
    wait_until(lambda: len(searcher.seen) >= 3 and searcher.seen[-1][0] == MOBILENET, 30, "a search on the new model")
    searcher.stop.set()
    searcher.join(timeout=30)

    response = _response(done)
    assert (response.model, response.previous_model) == (MOBILENET, EFFICIENTNET)
    assert response.images in (len(PHOTOS), len(PHOTOS) + 1)  # the late image, if it was stored before the start
    assert not searcher.errors
    assert {top for _, top in searcher.seen} == {"chelsea"}
    models = [m for m, _ in searcher.seen]
    switch = models.index(MOBILENET)
    assert set(models[:switch]) <= {EFFICIENTNET}
    assert set(models[switch:]) == {MOBILENET}, "one switch, never back"

    tenant_now = client.get_tenant(f"tenants/{tenant}")
    assert (tenant_now.embedding_model, tenant_now.reindex_model) == (MOBILENET, "")
    stats = client.get_tenant_stats(tenant)
    assert stats.images == stats.vectors == len(PHOTOS) + 1
    assert stats.embedding_model == MOBILENET
    found = client.search_images(
        parent, image_content=photos["motorcycle-left"], top_k=1, view=resources_pb2.IMAGE_VIEW_FULL
    )
    assert found.model == MOBILENET
    assert found.results[0].image.name == f"{parent}/images/late"
    assert found.results[0].image.model == MOBILENET
    assert found.results[0].score > 0.99
    by_name = client.search_images(parent, image_name=f"{parent}/images/coffee", top_k=2)
    assert by_name.model == MOBILENET
    assert all(r.image.name != f"{parent}/images/coffee" for r in by_name.results)
    exact = client.find_duplicates(parent, image_content=photos["rocket"])
    assert exact.model == MOBILENET
    assert [m.image.name for m in exact.matches] == [f"{parent}/images/rocket"]
    wait_until(lambda: _vectors(stack, tenant, EFFICIENTNET) == 0, 30, "the old model's vectors removed")
    assert _vectors(stack, tenant, MOBILENET) == len(PHOTOS) + 1

    # The other tenant never moved.
    assert other.get_tenant(f"tenants/{bystander}").embedding_model == EFFICIENTNET
    mine = other.search_images(other_parent, image_content=photos["chelsea"], top_k=1)
    assert (mine.model, mine.results[0].score > 0.99) == (EFFICIENTNET, True)
    assert _vectors(stack, bystander, EFFICIENTNET) == 1
    assert _vectors(stack, bystander, MOBILENET) == 0
    listed = {m.name: m for m in admin.list_models()}
    assert listed[MOBILENET].ready
    assert listed[MOBILENET].tenants >= 1
    assert listed[EFFICIENTNET].active
    assert not listed[MOBILENET].active

    # And back.
    response = _response(_reindex(client, tenant, EFFICIENTNET))
    assert (response.model, response.previous_model, response.images) == (EFFICIENTNET, MOBILENET, len(PHOTOS) + 1)
    back = client.search_images(parent, image_content=photos["chelsea"], top_k=1, view=resources_pb2.IMAGE_VIEW_FULL)
    assert (back.model, back.results[0].image.name.rsplit("/", 1)[-1]) == (EFFICIENTNET, "chelsea")
    assert back.results[0].image.model == EFFICIENTNET
    wait_until(lambda: _vectors(stack, tenant, MOBILENET) == 0, 30, "the new model's vectors removed")
    assert _vectors(stack, tenant, EFFICIENTNET) == len(PHOTOS) + 1


@pytest.mark.stack
def test_reindex_refusals(admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]) -> None:
    tenant, client = new_tenant(admin, connect)
    other, _ = new_tenant(admin, connect)
    _, viewer = new_tenant(admin, connect, role=resources_pb2.ROLE_VIEWER)
    cases: list[tuple[DeepLensClient, str, str, grpc.StatusCode, str]] = [
        (client, tenant, EFFICIENTNET, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_ALREADY_ACTIVE"),
        (client, tenant, "nope@1", grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_READY"),
        # A model's query-lane twin is served by Triton but is not a model a tenant can move to.
        (client, tenant, "mobilenet_v2_query@1", grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_READY"),
        (client, tenant, "mobilenet_v2", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL"),
        (client, other, MOBILENET, grpc.StatusCode.PERMISSION_DENIED, ""),
        (viewer, tenant, MOBILENET, grpc.StatusCode.PERMISSION_DENIED, "ROLE_TOO_LOW"),
    ]
    for caller, target, model, code, reason in cases:
        with pytest.raises(grpc.RpcError) as refused:
            caller.reindex_tenant(target, model)
        err: Any = refused.value
        assert err.code() == code, (target, model)
        if reason:
            assert _reason(err) == reason
    assert client.get_tenant(f"tenants/{tenant}").embedding_model == EFFICIENTNET

    # A tenant with no images switches at once; a second request while one runs is refused.
    empty = _response(_reindex(client, tenant, MOBILENET))
    assert (empty.model, empty.images) == (MOBILENET, 0)
    parent = f"tenants/{tenant}/collections/c"
    for name in PHOTOS[:4]:
        client.index_image(parent, photos[name], image_id=name, timeout=120)
    assert client.search_images(parent, image_content=photos["coins"], top_k=1).model == MOBILENET
    op = client.reindex_tenant(tenant, EFFICIENTNET)
    try:
        client.reindex_tenant(tenant, EFFICIENTNET)
    except grpc.RpcError as exc:
        err = exc
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _reason(err) in ("REINDEX_RUNNING", "MODEL_ALREADY_ACTIVE")  # the first may have finished already
    else:
        raise AssertionError("a second re-index was accepted")
    _response(client.wait_operation(op.name, timeout=240))


@pytest.mark.stack
def test_cancelled_reindex_leaves_the_tenant_where_it_was(
    stack: Stack, admin: DeepLensClient, connect: ClientFactory, photos: dict[str, bytes]
) -> None:
    tenant, client = new_tenant(admin, connect)
    parent = f"tenants/{tenant}/collections/c"
    for name in PHOTOS[:3]:
        client.index_image(parent, photos[name], image_id=name, timeout=120)
    op = client.reindex_tenant(tenant, MOBILENET)
    client.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), metadata=client.metadata)
    final = client.wait_operation(op.name, timeout=120)
    state = resources_pb2.OperationMetadata()
    final.metadata.Unpack(state)
    model = client.get_tenant(f"tenants/{tenant}").embedding_model
    if state.state == resources_pb2.OPERATION_STATE_CANCELLED:  # the usual case: cancelled before the pages ran
        assert model == EFFICIENTNET
        assert final.error.code == grpc.StatusCode.CANCELLED.value[0]
        wait_until(lambda: _vectors(stack, tenant, MOBILENET) == 0, 30, "the abandoned target's vectors removed")
    else:  # every page had already run: the switch happened
        assert (state.state, model) == (resources_pb2.OPERATION_STATE_SUCCEEDED, MOBILENET)
    reply = client.search_images(parent, image_content=photos[PHOTOS[0]], top_k=1)
    assert (reply.model, reply.results[0].image.name) == (model, f"{parent}/images/{PHOTOS[0]}")
    with pytest.raises(grpc.RpcError) as refused:
        client.ingest.RetryDeadLetters(
            ingest_service_pb2.RetryDeadLettersRequest(name=op.name), metadata=client.metadata
        )
    err: Any = refused.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.stack
def test_batch_reindex_moves_the_named_tenants(admin: DeepLensClient, connect: ClientFactory) -> None:
    first, client = new_tenant(admin, connect)
    second, _ = new_tenant(admin, connect)
    names = [f"tenants/{first}", f"tenants/{second}"]
    reply = admin.admin.BatchReindexTenants(
        admin_service_pb2.BatchReindexTenantsRequest(model=MOBILENET, names=names), metadata=admin.metadata
    )
    assert len(reply.operations) == 2
    assert not reply.skipped
    for op in reply.operations:
        assert op.done  # no images: the switch is immediate
    again = admin.admin.BatchReindexTenants(
        admin_service_pb2.BatchReindexTenantsRequest(model=MOBILENET, names=names), metadata=admin.metadata
    )
    assert (list(again.operations), sorted(again.skipped)) == ([], sorted(names))
    assert client.get_tenant(f"tenants/{first}").embedding_model == MOBILENET
    with pytest.raises(grpc.RpcError) as refused:
        client.admin.BatchReindexTenants(
            admin_service_pb2.BatchReindexTenantsRequest(model=MOBILENET, names=names[:1]), metadata=client.metadata
        )
    err: Any = refused.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
