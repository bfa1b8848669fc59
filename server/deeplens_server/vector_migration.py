"""Copies the vector collections of earlier schemas into this schema's, then drops them.

A schema change gives every collection a new name (``__s{version}``). At startup, before anything reads or writes
vectors, every collection of a schema in ``UPGRADES`` is copied row by row into its new name, the fields the
new schema adds computed from the ones stored (no image is read or embedded again), and then dropped. The copy
skips rows the target already holds, so a copy cut short is finished by the next start; the legacy collection is
dropped only once every row was copied. Callers serialize (``Backend.open`` holds a PostgreSQL advisory lock), so
no process serves while a copy runs, and processes of the earlier version must be stopped first: what they write
during the copy may be missed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from pymilvus import DataType, MilvusClient, MilvusException

from deeplens_server.errors import Unavailable
from deeplens_server.vector_keys import collection_key, tenant_key
from deeplens_server.vectors import GRPC_OPTIONS, SCHEMA_VERSION, create_collection

_log = logging.getLogger(__name__)
_NAME = re.compile(r"(images__.+|colours)__s(\d+)")
BATCH = 1000


def _new_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A row of schema 3 as schema 4 stores it: with the tenant's and the collection's 64-bit keys."""
    return {
        **row,
        "tenant_key": tenant_key(row["tenant_id"]),
        "collection_key": collection_key(row["tenant_id"], row["collection_id"]),
    }


# What turns a row of each legacy schema into one of this schema.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {3: _new_fields}


def _vector_field(client: MilvusClient, name: str) -> tuple[str, int]:
    for field in client.describe_collection(name)["fields"]:
        if field["type"] == DataType.FLOAT_VECTOR:
            return str(field["name"]), int(field["params"]["dim"])
    raise ValueError(f"collection {name} has no float vector field")


def _copy(client: MilvusClient, legacy: str, target: str, upgrade: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Inserts into ``target`` every row of ``legacy`` it lacks; returns how many."""
    client.load_collection(legacy)
    fields = [f["name"] for f in client.describe_collection(legacy)["fields"]]
    copied = 0
    iterator = client.query_iterator(legacy, batch_size=BATCH, output_fields=fields, consistency_level="Strong")
    try:
        while batch := iterator.next():
            pks = [str(row["pk"]) for row in batch]
            have = client.query(
                target,
                filter=f"pk in {json.dumps(pks)}",
                output_fields=["pk"],
                consistency_level="Strong",
            )
            present = {str(row["pk"]) for row in have}
            rows = [upgrade(row) for row in batch if str(row["pk"]) not in present]
            if rows:
                client.insert(target, rows)
                copied += len(rows)
    finally:
        iterator.close()
    return copied


def migrate(uri: str, *, token: str) -> list[str]:
    """Copies every collection of a legacy schema into this schema's and drops it; returns the targets filled."""
    try:
        return _migrate(MilvusClient(uri=uri, token=token, grpc_options=GRPC_OPTIONS))
    except MilvusException as exc:
        raise Unavailable("the vector index is unavailable") from exc


def _migrate(client: MilvusClient) -> list[str]:
    done: list[str] = []
    try:
        for legacy in sorted(client.list_collections()):
            match = _NAME.fullmatch(legacy)
            if match is None or int(match[2]) not in UPGRADES:
                continue
            target = f"{match[1]}__s{SCHEMA_VERSION}"
            field, dim = _vector_field(client, legacy)
            create_collection(client, target, field, dim)
            client.load_collection(target)
            copied = _copy(client, legacy, target, UPGRADES[int(match[2])])
            client.flush(target)
            client.drop_collection(legacy)
            _log.info("copied %d vectors of %s into %s and dropped it", copied, legacy, target)
            done.append(target)
    finally:
        client.close()
    return done
