"""Tenant storage locations through obstore (S3-compatible, GCS, Azure, HTTP, local): validation of what a
tenant may configure, and a connection test. No request signing is written here.

Local paths are accepted only under directories the operator lists, and endpoints that resolve to private,
loopback or link-local addresses only when the operator allows them — a tenant must not be able to point
DeepLens at the server's own disk or internal network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError
from obstore.store import from_url

from deeplens_server.errors import DeepLensError, InvalidArgument, NotFound, PermissionDenied, Unavailable

SCHEMES = {"s3", "gs", "az", "file", "http", "https"}
OPTIONS = {
    "s3": {"endpoint", "region", "allow_http"},
    "gs": set(),
    "az": {"account_name", "endpoint", "allow_http"},
    "file": set(),
    "http": {"allow_http"},
    "https": set(),
}
CREDENTIALS = {
    "s3": {"access_key_id", "secret_access_key", "session_token"},
    "gs": {"service_account_key"},
    "az": {"account_key", "sas_key"},
    "file": set(),
    "http": set(),
    "https": set(),
}
TEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class LocationSpec:
    uri: str
    options: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme


@dataclass(frozen=True, slots=True)
class StoragePolicy:
    local_roots: tuple[Path, ...]
    allow_private_endpoints: bool


def mask(value: str) -> str:
    """A hint that identifies a secret without revealing it."""
    if len(value) <= 8:
        return "…" * min(len(value), 3)
    return f"{value[:4]}…{value[-4:]}" if len(value) < 64 else f"…{value[-4:]}"


def _bad(message: str, field_name: str, reason: str) -> InvalidArgument:
    return InvalidArgument(message, field=field_name, reason=reason)


def check_host(host: str, policy: StoragePolicy, field_name: str) -> None:
    if policy.allow_private_endpoints:
        return
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise _bad(f"cannot resolve {host!r}", field_name, "ENDPOINT_UNRESOLVABLE") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
            raise _bad(
                f"{host!r} is a private or local address, which this server does not allow",
                field_name,
                "ENDPOINT_NOT_ALLOWED",
            )


def validate(spec: LocationSpec, policy: StoragePolicy) -> LocationSpec:
    """Checks scheme, option and credential names, local roots and endpoint addresses."""
    parts = urlsplit(spec.uri)
    scheme = parts.scheme
    if scheme not in SCHEMES or len(spec.uri) > 1024:
        raise _bad(f"uri must start with one of {', '.join(sorted(SCHEMES))}", "uri", "INVALID_STORAGE_URI")
    for key in spec.options:
        if key not in OPTIONS[scheme]:
            raise _bad(f"option {key!r} does not apply to {scheme}://", f"options[{key}]", "INVALID_STORAGE_OPTION")
    for key in spec.credentials:
        if key not in CREDENTIALS[scheme]:
            raise _bad(
                f"credential {key!r} does not apply to {scheme}://", f"credentials[{key}]", "INVALID_STORAGE_CREDENTIAL"
            )
    if not spec.uri.isprintable():
        raise _bad("uri must be printable", "uri", "INVALID_STORAGE_URI")
    values = (*spec.options.values(), *spec.credentials.values())
    if any(len(v) > 8192 or "\x00" in v for v in values):
        raise _bad("an option or credential is too long", "options", "INVALID_STORAGE_OPTION")
    if scheme == "file":
        path = Path(parts.path).resolve()
        if not any(path == root or root in path.parents for root in policy.local_roots):
            raise _bad("local paths must lie under a directory the operator allows", "uri", "LOCAL_PATH_NOT_ALLOWED")
    elif not parts.netloc:
        raise _bad("uri needs a bucket, container or host", "uri", "INVALID_STORAGE_URI")
    if scheme in ("http", "https"):
        check_host(parts.hostname or "", policy, "uri")
    if "endpoint" in spec.options:
        endpoint = urlsplit(spec.options["endpoint"])
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise _bad("endpoint must be an http(s) URL", "options[endpoint]", "INVALID_STORAGE_OPTION")
        check_host(endpoint.hostname, policy, "options[endpoint]")
    return spec


def _client_options(spec: LocationSpec) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": "8s", "connect_timeout": "3s"}
    if spec.options.get("allow_http", "").lower() == "true" or spec.options.get("endpoint", "").startswith("http:"):
        options["allow_http"] = True
    return options


def open_store(spec: LocationSpec) -> Any:
    """An obstore store for a validated spec."""
    config = {k: v for k, v in spec.options.items() if k != "allow_http"} | spec.credentials
    retry = {
        "max_retries": 1,
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1), "base": 2},
        "retry_timeout": timedelta(seconds=5),
    }
    if spec.scheme == "file":
        return from_url(spec.uri)
    try:
        # The config keys were checked against OPTIONS/CREDENTIALS above; obstore's overloads want literals.
        return from_url(spec.uri, config=config, client_options=_client_options(spec), retry_config=retry)  # type: ignore[call-overload]
    except Exception as exc:
        raise _bad("the storage settings are not usable", "uri", "INVALID_STORAGE_SETTINGS") from exc


def _classify(exc: Exception) -> DeepLensError:
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermissionDenied("the storage refused the credentials", reason="STORAGE_ACCESS_DENIED")
    if isinstance(exc, NotFoundError | FileNotFoundError):
        return NotFound("storage location", "", reason="STORAGE_NOT_FOUND")
    return Unavailable("the storage could not be reached", reason="STORAGE_UNREACHABLE")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    objects_listed: int
    latency_seconds: float
    error: DeepLensError | None


async def probe(spec: LocationSpec) -> ProbeResult:
    """Lists at most one object under the location's prefix."""
    started = time.perf_counter()

    def run() -> int:
        store = open_store(spec)
        stream = obstore.list(store, chunk_size=1)
        for chunk in stream:
            return len(chunk[:1])
        return 0

    try:
        listed = await asyncio.wait_for(asyncio.to_thread(run), TEST_TIMEOUT_SECONDS)
    except InvalidArgument:
        raise
    except Exception as exc:  # TimeoutError included
        return ProbeResult(False, 0, time.perf_counter() - started, _classify(exc))
    return ProbeResult(True, listed, time.perf_counter() - started, None)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


@dataclass(frozen=True, slots=True)
class ListedObject:
    path: str
    size_bytes: int
    etag: str
    last_modified: Any


def list_images(spec: LocationSpec, prefix: str) -> list[ListedObject]:
    """Every object with an image extension under ``prefix`` (blocking: run it in a thread)."""
    store = open_store(spec)
    found = []
    try:
        for chunk in obstore.list(store, prefix=prefix or None, chunk_size=1000):
            for meta in chunk:
                if meta["path"].lower().endswith(IMAGE_SUFFIXES):
                    found.append(
                        ListedObject(
                            meta["path"], int(meta["size"]), meta.get("e_tag") or "", meta.get("last_modified")
                        )
                    )
    except Exception as exc:
        raise _classify(exc) from exc
    return found


def read_object(spec: LocationSpec, path: str) -> bytes:
    """One object's bytes (blocking: run it in a thread)."""
    try:
        return bytes(obstore.get(open_store(spec), path).bytes())
    except Exception as exc:
        raise _classify(exc) from exc


def delete_object(spec: LocationSpec, path: str) -> None:
    """Deletes one object (blocking: run it in a thread)."""
    try:
        obstore.delete(open_store(spec), path)
    except Exception as exc:
        raise _classify(exc) from exc


def object_uri(spec: LocationSpec, path: str) -> str:
    return f"{spec.uri.rstrip('/')}/{path}"
