"""Image filters (collection, tags, storage location, format, size, time), checked once and rendered for the two
stores that apply them: a Milvus boolean expression (search) and SQL conditions (listing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

from deeplens_server.errors import InvalidArgument
from deeplens_server.vector_keys import collection_key

MAX_VALUES = 64
UPLOADS = "-"  # the storage-location id that stands for uploaded images (stored as '')


@dataclass(frozen=True, slots=True)
class ImageFilter:
    collections: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    storage_locations: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    min_width: int = 0
    max_width: int = 0
    min_height: int = 0
    max_height: int = 0
    created_after: datetime | None = None
    created_before: datetime | None = None


NO_FILTER = ImageFilter()


def _values(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    if len(values) > MAX_VALUES:
        raise InvalidArgument(
            f"at most {MAX_VALUES} values in filter.{name}", field=f"filter.{name}", reason="INVALID_FILTER"
        )
    for value in values:
        if not value or len(value) > 128 or not value.isprintable():
            raise InvalidArgument(
                f"filter.{name} holds an invalid value", field=f"filter.{name}", reason="INVALID_FILTER"
            )
    return values


def check(f: ImageFilter) -> ImageFilter:
    for name in ("collections", "tags", "storage_locations", "formats"):
        _values(name, getattr(f, name))
    for name in ("min_width", "max_width", "min_height", "max_height"):
        if getattr(f, name) < 0:
            raise InvalidArgument(
                f"filter.{name} must not be negative", field=f"filter.{name}", reason="INVALID_FILTER"
            )
    if f.created_after and f.created_before and f.created_after > f.created_before:
        raise InvalidArgument(
            "filter.create_time_after is after create_time_before",
            field="filter.create_time_after",
            reason="INVALID_FILTER",
        )
    return f


def within(f: ImageFilter, collection_id: str | None) -> ImageFilter:
    """The filter restricted to one collection (a request scoped to `tenants/{t}/collections/{c}`)."""
    return f if collection_id is None else replace(f, collections=(collection_id,))


def _location(value: str) -> str:
    return "" if value == UPLOADS else value


def milvus_expr(f: ImageFilter, tenant_id: str) -> str:
    """Conditions on the scalar fields every vector carries (the tenant's, whose collections the filter names);
    empty when nothing restricts. Collections are named by their 64-bit keys (see vector_keys.py), so the
    search checks the names of the collections its hits are in."""
    q = json.dumps
    parts: list[str] = []
    if f.collections:
        parts.append(f"collection_key in {[collection_key(tenant_id, c) for c in f.collections]}")
    for tag in f.tags:
        parts.append(f"array_contains(tags, {q(tag)})")
    if f.storage_locations:
        parts.append(f"location_id in {q([_location(v) for v in f.storage_locations])}")
    if f.formats:
        parts.append(f"format in {q([v.upper() for v in f.formats])}")
    for field, op, value in (
        ("width", ">=", f.min_width),
        ("width", "<=", f.max_width),
        ("height", ">=", f.min_height),
        ("height", "<=", f.max_height),
    ):
        if value:
            parts.append(f"{field} {op} {int(value)}")
    if f.created_after:
        parts.append(f"create_ts >= {int(f.created_after.timestamp())}")
    if f.created_before:
        parts.append(f"create_ts < {int(f.created_before.timestamp())}")
    return " and ".join(parts)


def sql_conditions(f: ImageFilter, first_arg: int) -> tuple[list[str], list[object]]:
    """SQL conditions on the images table and their arguments, numbered from ``first_arg``."""
    conditions: list[str] = []
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${first_arg + len(args) - 1}"

    if f.collections:
        conditions.append(f"collection_id = ANY({arg(list(f.collections))}::text[])")
    if f.tags:
        conditions.append(f"tags @> {arg(list(f.tags))}::text[]")
    if f.storage_locations:
        conditions.append(f"location_id = ANY({arg([_location(v) for v in f.storage_locations])}::text[])")
    if f.formats:
        conditions.append(f"format = ANY({arg([v.upper() for v in f.formats])}::text[])")
    for column, op, value in (
        ("width", ">=", f.min_width),
        ("width", "<=", f.max_width),
        ("height", ">=", f.min_height),
        ("height", "<=", f.max_height),
    ):
        if value:
            conditions.append(f"{column} {op} {arg(int(value))}")
    if f.created_after:
        conditions.append(f"create_time >= {arg(f.created_after)}")
    if f.created_before:
        conditions.append(f"create_time < {arg(f.created_before)}")
    return conditions, args
