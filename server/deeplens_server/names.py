"""Resource names (AIP-122): parsing, validation and formatting in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from deeplens_server.errors import InvalidArgument

# Tenant and collection ids follow AIP-122; image ids also allow upper case, '.' and '_' (client keys, hashes).
# Matched whole (fullmatch): no anchors, and no "$" that would let a final newline through.
_TENANT_ID = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")
_COLLECTION_ID = _TENANT_ID
_IMAGE_ID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")
_OPERATION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

DEFAULT_COLLECTION = "default"


def check_tenant_id(value: str, field: str = "tenant_id") -> str:
    if not _TENANT_ID.fullmatch(value):
        raise InvalidArgument(
            "tenant id must be 1-63 lowercase letters, digits or '-', starting with a letter",
            field=field,
            reason="INVALID_TENANT_ID",
        )
    return value


def check_image_id(value: str, field: str = "image_id") -> str:
    if not _IMAGE_ID.fullmatch(value):
        raise InvalidArgument(
            "image id must be 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            field=field,
            reason="INVALID_IMAGE_ID",
        )
    return value


@dataclass(frozen=True, slots=True)
class TenantName:
    tenant: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}"


@dataclass(frozen=True, slots=True)
class CollectionName:
    tenant: str
    collection: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/collections/{self.collection}"


@dataclass(frozen=True, slots=True)
class ImageName:
    tenant: str
    collection: str
    image: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/collections/{self.collection}/images/{self.image}"


@dataclass(frozen=True, slots=True)
class OperationName:
    tenant: str
    operation: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/operations/{self.operation}"


def _parts(value: str, field: str, shape: str, count: int) -> list[str]:
    parts = value.split("/")
    keywords = shape.split("/")[0::2]
    if len(parts) != 2 * count or parts[0::2] != keywords:
        raise InvalidArgument(f"{field} must look like {shape}", field=field, reason="INVALID_RESOURCE_NAME")
    return parts[1::2]


def parse_tenant(value: str, field: str = "name") -> TenantName:
    (tenant,) = _parts(value, field, "tenants/{tenant}", 1)
    return TenantName(check_tenant_id(tenant, field))


def parse_collection(value: str, field: str = "parent") -> CollectionName:
    tenant, collection = _parts(value, field, "tenants/{tenant}/collections/{collection}", 2)
    check_tenant_id(tenant, field)
    if not _COLLECTION_ID.fullmatch(collection):
        raise InvalidArgument(
            "collection id must be 1-63 lowercase letters, digits or '-', starting with a letter",
            field=field,
            reason="INVALID_COLLECTION_ID",
        )
    return CollectionName(tenant, collection)


def parse_scope(value: str, field: str = "parent") -> TenantName | CollectionName:
    """A search scope: a whole tenant or one collection."""
    if value.count("/") == 1:
        return parse_tenant(value, field)
    return parse_collection(value, field)


def parse_image(value: str, field: str = "name") -> ImageName:
    tenant, collection, image = _parts(value, field, "tenants/{tenant}/collections/{collection}/images/{image}", 3)
    parent = parse_collection(f"tenants/{tenant}/collections/{collection}", field)
    return ImageName(parent.tenant, parent.collection, check_image_id(image, field))


def parse_operation(value: str, field: str = "name") -> OperationName:
    tenant, operation = _parts(value, field, "tenants/{tenant}/operations/{operation}", 2)
    if not _OPERATION_ID.fullmatch(operation):
        raise InvalidArgument("malformed operation id", field=field, reason="INVALID_RESOURCE_NAME")
    return OperationName(check_tenant_id(tenant, field), operation)


@dataclass(frozen=True, slots=True)
class ApiKeyName:
    tenant: str
    key_id: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/apiKeys/{self.key_id}"


def parse_api_key(value: str, field: str = "name") -> ApiKeyName:
    tenant, key_id = _parts(value, field, "tenants/{tenant}/apiKeys/{api_key}", 2)
    if not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise InvalidArgument("malformed API key id", field=field, reason="INVALID_RESOURCE_NAME")
    return ApiKeyName(check_tenant_id(tenant, field), key_id)


def check_collection_id(value: str, field: str = "collection_id") -> str:
    return parse_collection(f"tenants/placeholder/collections/{value}", field).collection


@dataclass(frozen=True, slots=True)
class StorageLocationName:
    tenant: str
    location: str


def parse_storage_location(value: str, field: str = "name") -> StorageLocationName:
    tenant, location = _parts(value, field, "tenants/{tenant}/storageLocations/{storage_location}", 2)
    return StorageLocationName(check_tenant_id(tenant, field), check_collection_id(location, field))


@dataclass(frozen=True, slots=True)
class DuplicateGroupName:
    tenant: str
    group: str

    def __str__(self) -> str:
        return f"tenants/{self.tenant}/duplicateGroups/{self.group}"


def parse_duplicate_group(value: str, field: str = "name") -> DuplicateGroupName:
    tenant, group = _parts(value, field, "tenants/{tenant}/duplicateGroups/{duplicate_group}", 2)
    if not re.fullmatch(r"[0-9a-f]{16}", group):
        raise InvalidArgument("malformed duplicate group id", field=field, reason="INVALID_RESOURCE_NAME")
    return DuplicateGroupName(check_tenant_id(tenant, field), group)


def image_name(tenant: str, collection: str, image: str) -> str:
    return str(ImageName(tenant, collection, image))
