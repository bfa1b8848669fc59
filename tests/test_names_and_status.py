"""Resource names and the mapping of domain errors to google.rpc.Status."""

from __future__ import annotations

import grpc
import pytest
from deeplens_server import errors
from deeplens_server.names import parse_collection, parse_image, parse_operation, parse_scope, parse_tenant
from deeplens_server.status import ERROR_DOMAIN, grpc_code, to_rpc_status
from google.rpc import error_details_pb2


def test_parses_well_formed_names() -> None:
    assert parse_tenant("tenants/acme").tenant == "acme"
    c = parse_collection("tenants/acme/collections/photos")
    assert (c.tenant, c.collection) == ("acme", "photos")
    i = parse_image("tenants/acme/collections/photos/images/IMG_0001.jpg")
    assert (i.tenant, i.collection, i.image) == ("acme", "photos", "IMG_0001.jpg")
    assert str(i) == "tenants/acme/collections/photos/images/IMG_0001.jpg"
    assert parse_operation("tenants/acme/operations/0123abcd").operation == "0123abcd"
    assert str(parse_scope("tenants/acme")) == "tenants/acme"
    assert str(parse_scope("tenants/acme/collections/x")) == "tenants/acme/collections/x"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "tenants/",
        "tenants/Acme",
        "tenants/acme/",
        "projects/acme",
        "tenants/acme/collections",
        "tenants/../collections/x",
        "tenants/acme/collections/x/images/../../etc",
        "tenants/acme/collections/x/images/a b",
        "tenants/" + "a" * 64,
        "tenants/acme\n",  # '$' would let a final newline through; ids must match whole
        "tenants/acme/collections/photos\n",
        "tenants/acme/collections/x/images/a.jpg\n",
    ],
)
def test_rejects_malformed_names(name: str) -> None:
    parse = parse_image if name.count("/") >= 4 else parse_collection if name.count("/") >= 2 else parse_tenant
    with pytest.raises(errors.InvalidArgument) as exc:
        parse(name)
    assert exc.value.reason.startswith("INVALID_")


def _details(status: object) -> dict[str, object]:
    found: dict[str, object] = {}
    for detail in status.details:  # type: ignore[attr-defined]
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def test_invalid_argument_carries_error_info_and_field_violation() -> None:
    status = to_rpc_status(errors.ImageRejected("bad", field="content", reason="IMAGE_UNDECODABLE"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = _details(status)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("IMAGE_UNDECODABLE", ERROR_DOMAIN)
    bad = details["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "content"


def test_not_found_carries_resource_info() -> None:
    status = to_rpc_status(errors.NotFound("image", "tenants/a/collections/b/images/c"))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = _details(status)["ResourceInfo"]
    assert isinstance(info, error_details_pb2.ResourceInfo)
    assert info.resource_name == "tenants/a/collections/b/images/c"


def test_unexpected_errors_become_internal_without_leaking_text() -> None:
    status = to_rpc_status(RuntimeError("password=hunter2 at /srv/secret/path"))
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "hunter2" not in status.message
    assert "/srv" not in status.message
    info = _details(status)["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INTERNAL"


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_each_domain_error_has_its_code(err: errors.DeepLensError, code: grpc.StatusCode) -> None:
    assert grpc_code(err) == code
