"""Bring-your-own-storage locations: validate, seal credentials, store; open them only to connect."""

from __future__ import annotations

import json

from deeplens.v1 import resources_pb2

from deeplens_server.admin_repository import StorageLocationRecord
from deeplens_server.backend import Backend
from deeplens_server.errors import Aborted, InvalidArgument
from deeplens_server.operations import timestamp
from deeplens_server.storage import LocationSpec, ProbeResult, mask, probe, validate

UPDATABLE = ("display_name", "uri", "options", "credentials")


def _seal(backend: Backend, name: str, credentials: dict[str, str]) -> tuple[bytes | None, dict[str, str]]:
    if not credentials:
        return None, {}
    sealed = backend.sealer.seal(json.dumps(credentials, sort_keys=True).encode(), bound_to=name)
    return sealed, {k: mask(v) for k, v in credentials.items()}


def spec_of(backend: Backend, record: StorageLocationRecord) -> LocationSpec:
    credentials: dict[str, str] = {}
    if record.credentials is not None:
        credentials = json.loads(backend.sealer.open(record.credentials, bound_to=record.name))
    return LocationSpec(uri=record.uri, options=dict(record.options), credentials=credentials)


def to_proto(record: StorageLocationRecord) -> resources_pb2.StorageLocation:
    """The public view: credentials are never included, only their masked hints."""
    return resources_pb2.StorageLocation(
        name=record.name,
        display_name=record.display_name,
        uri=record.uri,
        options=record.options,
        credential_hints=record.credential_hints,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=record.etag,
    )


async def create(
    backend: Backend, tenant: str, location_id: str, message: resources_pb2.StorageLocation
) -> StorageLocationRecord:
    spec = validate(
        LocationSpec(uri=message.uri, options=dict(message.options), credentials=dict(message.credentials)),
        backend.storage_policy,
    )
    name = f"tenants/{tenant}/storageLocations/{location_id}"
    sealed, hints = _seal(backend, name, spec.credentials)
    draft = StorageLocationRecord(
        tenant_id=tenant,
        id=location_id,
        display_name=message.display_name,
        uri=spec.uri,
        options=spec.options,
        credentials=sealed,
        credential_hints=hints,
        create_time=None,  # type: ignore[arg-type]
        update_time=None,  # type: ignore[arg-type]
        version=0,
    )
    return await backend.locations.create(draft)


async def update(
    backend: Backend, tenant: str, location_id: str, message: resources_pb2.StorageLocation, paths: list[str]
) -> StorageLocationRecord:
    current = await backend.locations.get(tenant, location_id)
    if message.etag and message.etag != current.etag:
        raise Aborted("the storage location changed since it was read", reason="ETAG_MISMATCH")
    unknown = set(paths) - set(UPDATABLE)
    if unknown:
        raise InvalidArgument(f"cannot update {sorted(unknown)}", field="update_mask", reason="INVALID_UPDATE_MASK")
    paths = paths or list(UPDATABLE)
    spec = spec_of(backend, current)
    new = LocationSpec(
        uri=message.uri if "uri" in paths else spec.uri,
        options=dict(message.options) if "options" in paths else spec.options,
        credentials=dict(message.credentials) if "credentials" in paths else spec.credentials,
    )
    validate(new, backend.storage_policy)
    sealed, hints = _seal(backend, current.name, new.credentials)
    replacement = StorageLocationRecord(
        tenant_id=tenant,
        id=location_id,
        display_name=message.display_name if "display_name" in paths else current.display_name,
        uri=new.uri,
        options=new.options,
        credentials=sealed,
        credential_hints=hints,
        create_time=current.create_time,
        update_time=current.update_time,
        version=current.version,
    )
    return await backend.locations.replace(replacement, expected_version=current.version)


async def test(backend: Backend, tenant: str, location_id: str) -> ProbeResult:
    record = await backend.locations.get(tenant, location_id)
    spec = validate(spec_of(backend, record), backend.storage_policy)  # the operator's policy may have changed
    return await probe(spec)
